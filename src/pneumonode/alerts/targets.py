"""Where alerts go: MLLP listeners (``host:port``) and webhook URLs, parsed and named safely.

Defined in :mod:`pneumonode.addresses`, below both this package and ``config`` (which checks
the settings with the same parsers, without importing the alerts); the alerts' modules import
them from here.
"""

from __future__ import annotations

from pneumonode.addresses import (
    AlertTargetError,
    MllpTarget,
    check_webhook_url,
    parse_mllp_target,
    redact_url,
)

__all__ = [
    "AlertTargetError",
    "MllpTarget",
    "check_webhook_url",
    "parse_mllp_target",
    "redact_url",
]
