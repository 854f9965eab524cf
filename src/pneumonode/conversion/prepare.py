"""One chest radiograph DICOM -> the model's input (and the way back for its mask).

``prepare_radiograph`` is the single preprocessing path shared by training data conversion and
inference: decode -> resize the stored values -> one lookup table (modality LUT, VOI or window,
MONOCHROME1 inversion) -> pad to ``size`` x ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumonode.conversion.decode import DatasetSource, decode_stored_pixels
from pneumonode.conversion.geometry import Letterbox
from pneumonode.conversion.png import encode_png
from pneumonode.conversion.window import DisplayLUT, build_display_lut

__all__ = ["PreparedImage", "prepare_radiograph"]


@dataclass(frozen=True)
class PreparedImage:
    """A radiograph ready for the model.

    Attributes:
        pixels: uint8 (size, size), air dark, padding 0: the image the model sees (and the PNG).
        letterbox: where the source image sits inside ``pixels``; maps masks back.
        lut: the display lookup table used (method, window, inversion).
        decoder: the decoder plugin that read the pixel data.
    """

    pixels: np.ndarray
    letterbox: Letterbox
    lut: DisplayLUT
    decoder: str

    def tensor(self) -> np.ndarray:
        """float32 array of shape (1, size, size) with values in [0, 1]."""
        return (self.pixels.astype(np.float32) * np.float32(1.0 / 255.0))[np.newaxis]

    def png(self, level: int = 1) -> bytes:
        """The 8-bit image as PNG bytes (deflate ``level`` 0..3)."""
        return encode_png(self.pixels, level)


def prepare_radiograph(
    source: DatasetSource,
    size: int = 1024,
    percentiles: tuple[float, float] = (0.5, 99.5),
    label: str | None = None,
) -> PreparedImage:
    """Decode a single-frame monochrome DICOM image and turn it into a ``size`` x ``size`` input.

    Args:
        source: path, bytes, binary file or pydicom Dataset.
        size: side of the square output.
        percentiles: window used when a >8-bit image has no VOI LUT and no window.
        label: name used in error messages (defaults to the file name).

    Raises:
        ConversionError (a subclass naming what was wrong): not DICOM, no pixel data, multi-frame
        or colour image, undecodable transfer syntax, corrupt pixel data.
    """
    decoded = decode_stored_pixels(source, label)
    stored = decoded.stored
    letterbox = Letterbox.fit(stored.shape[0], stored.shape[1], size)
    scaled = letterbox.resize(stored)
    lut = build_display_lut(decoded.dataset, scaled, percentiles)
    pixels = letterbox.pad(lut.apply(scaled), 0)
    return PreparedImage(pixels, letterbox, lut, decoded.decoder)
