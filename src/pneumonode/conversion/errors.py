"""Typed errors of the conversion package.

Each error names the file (when known) and says what was wrong, so that a caller can turn it into a
DICOM status, an HTTP 4xx or one line on stderr without a traceback.
"""

from __future__ import annotations

__all__ = [
    "ConversionError",
    "MissingPixelDataError",
    "NotDicomError",
    "PixelDecodeError",
    "UnsupportedImageError",
    "UnsupportedTransferSyntaxError",
]


class ConversionError(ValueError):
    """A DICOM object could not be turned into a model input.

    Attributes:
        source: the file name or another label of the object (never patient data).
        reason: what was wrong, without the source.
    """

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


class NotDicomError(ConversionError):
    """The bytes are not a readable DICOM dataset (not DICOM, or truncated in the header)."""


class MissingPixelDataError(ConversionError):
    """The dataset has no Pixel Data (e.g. an SR or an encapsulated PDF)."""


class UnsupportedTransferSyntaxError(ConversionError):
    """No installed decoder handles the dataset's transfer syntax."""


class PixelDecodeError(ConversionError):
    """The pixel data is present but could not be decoded (truncated or corrupt)."""


class UnsupportedImageError(ConversionError):
    """The image is not a single-frame monochrome image (multi-frame, colour, odd geometry)."""
