"""How pneumonode identifies itself on the network and in the objects it creates."""

from __future__ import annotations

from pneumonode import __version__

__all__ = ["IMPLEMENTATION_VERSION_NAME", "MANUFACTURER", "SOFTWARE_VERSION"]

#: Manufacturer (0008,0070) of every object we create; the loop guard recognises it.
MANUFACTURER = "pneumonode"
SOFTWARE_VERSION = __version__
#: Implementation Version Name sent in association negotiation (16 characters at most).
IMPLEMENTATION_VERSION_NAME = f"PNEUMONODE_{__version__}"[:16]
