"""One chest radiograph DICOM -> the model's input (and the way back for its mask).

``prepare_radiograph`` is the single preprocessing path shared by training data conversion and
inference: decode -> resize the stored values -> one lookup table (modality LUT, VOI or window,
MONOCHROME1 inversion) -> pad to ``size`` x ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumonode.conversion.decode import DatasetSource, decode_stored_pixels
from pneumonode.conversion.errors import UnsupportedImageError
from pneumonode.conversion.geometry import Letterbox
from pneumonode.conversion.png import encode_png
from pneumonode.conversion.window import DisplayLUT, build_display_lut

__all__ = [
    "DARK_LEVEL",
    "InputStatistics",
    "PreparedImage",
    "input_statistics",
    "prepare_8bit_image",
    "prepare_radiograph",
]

#: A pixel of the model input at or below this 8-bit level counts as near-black (2 %).
DARK_LEVEL = 5


@dataclass(frozen=True)
class InputStatistics:
    """Simple statistics of the film inside the model input (padding left out), on the
    model's scale (0..1): mean, standard deviation, and the share of near-black
    (<= ``DARK_LEVEL``) pixels. Input drift compares them
    with the training films' (``pneumonode.performance``)."""

    mean: float
    std: float
    dark_share: float


def input_statistics(pixels: np.ndarray, letterbox: Letterbox | None = None) -> InputStatistics:
    """The :class:`InputStatistics` of a uint8 model input, over the ``letterbox``'s film area
    (the whole array without one). One histogram: about a millisecond for 512 x 512."""
    if letterbox is not None:
        pixels = pixels[
            letterbox.pad_top : letterbox.pad_top + letterbox.scaled_rows,
            letterbox.pad_left : letterbox.pad_left + letterbox.scaled_cols,
        ]
    counts = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    total = counts.sum()
    if total == 0:
        raise ValueError("no pixels")
    levels = np.arange(counts.size, dtype=np.float64) / 255.0
    mean = float(counts @ levels / total)
    variance = float(counts @ (levels - mean) ** 2 / total)
    return InputStatistics(
        mean=mean,
        std=variance**0.5,
        dark_share=float(counts[: DARK_LEVEL + 1].sum() / total),
    )


@dataclass(frozen=True)
class PreparedImage:
    """A radiograph ready for the model.

    Attributes:
        pixels: uint8 (size, size), air dark, padding 0: the image the model sees (and the PNG).
        letterbox: where the source image sits inside ``pixels``; maps masks back.
        lut: the display lookup table used (method, window, inversion).
        decoder: the decoder plugin that read the pixel data.
        source_pixels: uint8 (Rows, Columns), the same display at the source's size, when asked
            for (``keep_source=True``): the background of overlays.
    """

    pixels: np.ndarray
    letterbox: Letterbox
    lut: DisplayLUT
    decoder: str
    source_pixels: np.ndarray | None = None

    def tensor(self) -> np.ndarray:
        """float32 array of shape (1, size, size) with values in [0, 1]."""
        return (self.pixels.astype(np.float32) * np.float32(1.0 / 255.0))[np.newaxis]

    def statistics(self) -> InputStatistics:
        """The film's :class:`InputStatistics` (the padding left out)."""
        return input_statistics(self.pixels, self.letterbox)

    def png(self, level: int = 1) -> bytes:
        """The 8-bit image as PNG bytes (deflate ``level`` 0..3)."""
        return encode_png(self.pixels, level)


def prepare_radiograph(
    source: DatasetSource,
    size: int = 1024,
    percentiles: tuple[float, float] = (0.5, 99.5),
    label: str | None = None,
    keep_source: bool = False,
) -> PreparedImage:
    """Decode a single-frame monochrome DICOM image and turn it into a ``size`` x ``size`` input.

    Args:
        source: path, bytes, binary file or pydicom Dataset.
        size: side of the square output.
        percentiles: window used when a >8-bit image has no VOI LUT and no window.
        label: name used in error messages (defaults to the file name).
        keep_source: also keep the display image at the source's size (``source_pixels``).

    Raises:
        ConversionError (a subclass naming what was wrong): not DICOM, no pixel data, multi-frame
        or colour image, undecodable transfer syntax, corrupt pixel data, unusable LUT or window
        attributes.
    """
    decoded = decode_stored_pixels(source, label)
    stored = decoded.stored
    letterbox = Letterbox.fit(stored.shape[0], stored.shape[1], size)
    scaled = letterbox.resize(stored)
    try:
        lut = build_display_lut(decoded.dataset, scaled, percentiles)
    except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
        # e.g. a RescaleIntercept that is text, a VOI LUT Sequence without usable data
        raise UnsupportedImageError(
            f"unusable Modality LUT, VOI LUT or window attributes ({type(exc).__name__})",
            decoded.label,
        ) from None
    pixels = letterbox.pad(lut.apply(scaled), 0)
    full_size = lut.apply(stored) if keep_source else None
    return PreparedImage(pixels, letterbox, lut, decoded.decoder, full_size)


def prepare_8bit_image(image: np.ndarray, size: int = 1024) -> PreparedImage:
    """An already windowed 8-bit image (a PNG or JPEG of a radiograph) as a model input.

    Shape: (H, W) uint8 -> PreparedImage of (size, size). Colour images must be converted to
    grey by the caller.
    """
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    letterbox = Letterbox.fit(image.shape[0], image.shape[1], size)
    identity = DisplayLUT(np.arange(256, dtype=np.uint8), 0, "full-range", False, (0.0, 255.0))
    pixels = letterbox.pad(letterbox.resize(image), 0)
    return PreparedImage(pixels, letterbox, identity, "image", image)
