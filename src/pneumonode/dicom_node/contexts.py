"""Presentation contexts: every storage SOP class with every transfer syntax we can keep."""

from __future__ import annotations

from pydicom.uid import HTJ2K, UID, HTJ2KLossless, HTJ2KLosslessRPCL
from pynetdicom.presentation import AllStoragePresentationContexts

from pneumonode.conversion.decode import DECODER_PREFERENCE, NATIVE_SYNTAXES

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "storage_sop_classes"]

#: Transfer syntaxes accepted for storage, as proposed (the bytes are kept as received): every
#: syntax the conversion module decodes, and HTJ2K, which is stored but not yet decoded.
ACCEPTED_TRANSFER_SYNTAXES: list[UID] = [
    *NATIVE_SYNTAXES,
    *DECODER_PREFERENCE,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
]


def storage_sop_classes() -> list[UID]:
    """Every Storage SOP class pynetdicom knows (not only its 120-context default list)."""
    return [UID(str(cx.abstract_syntax)) for cx in AllStoragePresentationContexts]
