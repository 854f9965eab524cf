"""Presentation contexts: every storage SOP class with every transfer syntax we can keep."""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom.presentation import AllStoragePresentationContexts

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "storage_sop_classes"]

#: Transfer syntaxes accepted for storage, as proposed (we store the bytes as received).
ACCEPTED_TRANSFER_SYNTAXES: list[UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    UID("1.2.840.10008.1.2.4.201"),  # HTJ2K Lossless
    UID("1.2.840.10008.1.2.4.202"),  # HTJ2K Lossless RPCL
    UID("1.2.840.10008.1.2.4.203"),  # HTJ2K
]


def storage_sop_classes() -> list[UID]:
    """Every Storage SOP class pynetdicom knows (not only its 120-context default list)."""
    return [UID(str(cx.abstract_syntax)) for cx in AllStoragePresentationContexts]
