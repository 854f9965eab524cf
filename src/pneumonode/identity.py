"""How pneumonode identifies itself on the network and in the objects it creates."""

from __future__ import annotations

from pneumonode import __version__

__all__ = [
    "IMPLEMENTATION_VERSION_NAME",
    "MANUFACTURER",
    "OWN_OUTPUT_REASON",
    "SOFTWARE_VERSION",
]

#: Manufacturer (0008,0070) of every object we create; the loop guard recognises it.
MANUFACTURER = "pneumonode"
#: The skip reason of such an object coming back to us (the worklist hides them by it).
OWN_OUTPUT_REASON = "our own output (loop guard)"
SOFTWARE_VERSION = __version__
#: Implementation Version Name sent in association negotiation (16 characters at most).
IMPLEMENTATION_VERSION_NAME = f"PNEUMONODE_{__version__}"[:16]
