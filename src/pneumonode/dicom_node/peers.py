"""Who may talk to us (calling AE allow-list, optionally bound to hosts) and where we send.

Defined in :mod:`pneumonode.addresses`, below both this package and ``config`` (which checks
the settings with the same parsers, without importing the DICOM node); the node's modules
import them from here.
"""

from __future__ import annotations

from pneumonode.addresses import (
    Destination,
    PeerConfigError,
    PeerPolicy,
    PeerRule,
    parse_destination,
)

__all__ = ["Destination", "PeerConfigError", "PeerPolicy", "PeerRule", "parse_destination"]
