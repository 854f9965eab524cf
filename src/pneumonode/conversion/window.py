"""From stored pixel values to 8-bit display values through one integer lookup table.

The table holds the whole chain for every possible stored value: modality LUT (rescale or Modality
LUT Sequence) -> VOI (VOI LUT Sequence, else window centre/width with its VOILUTFunction, first
value when several; else a robust percentile window) -> scale to 0..255 -> inversion for
MONOCHROME1 so that air is dark. The table is computed with pydicom's own ``apply_modality_lut``
and ``apply_voi_lut``, so applying it is the same as pydicom's float path, at a fraction of the
cost and after the image has been resized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

__all__ = [
    "DisplayLUT",
    "WindowMethod",
    "build_display_lut",
    "has_voi",
    "stored_value_range",
    "voi_output_range",
]

WindowMethod = Literal["voi-lut", "window", "percentile", "full-range"]

#: Images of at most this many stored bits with no VOI are taken as presentation-ready
#: (the SIIM JPEGs, screenshots): their full range is shown, as a DICOM viewer would.
PRESENTATION_READY_BITS = 8

_IDENTITY_8BIT = np.arange(256, dtype=np.uint8)


@dataclass(frozen=True)
class DisplayLUT:
    """A lookup table from stored values to 8-bit display values.

    Attributes:
        table: uint8, one entry per value of the stored dtype's full range.
        offset: stored value of ``table[0]`` (0 for unsigned, the dtype minimum for signed).
        method: which VOI was used.
        inverted: whether MONOCHROME1 inversion is folded in.
        window: (low, high) of the VOI input range in modality units, where one applies.
    """

    table: np.ndarray
    offset: int
    method: WindowMethod
    inverted: bool
    window: tuple[float, float] | None

    @property
    def is_identity(self) -> bool:
        """True when the table maps every 8-bit value to itself (presentation-ready 8-bit)."""
        return self.offset == 0 and bool(np.array_equal(self.table[:256], _IDENTITY_8BIT))

    def apply(self, stored: np.ndarray) -> np.ndarray:
        """Map stored values (any shape, the dtype the table was built for) to uint8."""
        if stored.dtype == np.uint8 and self.is_identity:
            return stored
        if self.offset == 0:
            return np.take(self.table, stored)
        return np.take(self.table, stored.astype(np.int32) - self.offset)


def stored_value_range(ds: Dataset) -> tuple[int, int]:
    """Smallest and largest value representable with BitsStored and PixelRepresentation."""
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _non_empty(ds: Dataset, keyword: str) -> bool:
    elem = ds.get(keyword)
    return elem is not None and elem != "" and elem != []


def has_voi(ds: Dataset) -> WindowMethod | None:
    """Which VOI the dataset carries ("voi-lut" preferred, as pydicom does), or None."""
    seq = ds.get("VOILUTSequence")
    if seq and "LUTData" in seq[0] and "LUTDescriptor" in seq[0]:
        return "voi-lut"
    if _non_empty(ds, "WindowCenter") and _non_empty(ds, "WindowWidth"):
        width = ds.WindowWidth
        first = width[0] if ds["WindowWidth"].VM > 1 else width
        try:
            if float(first) >= 1.0:
                return "window"
        except (TypeError, ValueError):
            return None
    return None


def voi_output_range(ds: Dataset) -> tuple[float, float]:
    """Output of the dataset's VOI far below and far above its input range: black and white."""
    with np.errstate(over="ignore"):
        probe = apply_voi_lut(np.array([-(2**40), 2**40], dtype=np.int64), ds, index=0)
    return float(probe[0]), float(probe[1])


def _apply_voi(modality: np.ndarray, ds: Dataset, method: WindowMethod) -> np.ndarray:
    """pydicom's VOI on modality values; a VOI LUT is indexed by integers, as the standard says."""
    values = np.rint(modality).astype(np.int64) if method == "voi-lut" else modality
    with np.errstate(over="ignore"):
        return np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)


def _weighted_percentiles(
    values: np.ndarray, counts: np.ndarray, percentiles: tuple[float, float]
) -> tuple[float, float]:
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(counts[order])
    total = cumulative[-1]
    low_i = np.searchsorted(cumulative, total * percentiles[0] / 100.0, side="left")
    high_i = np.searchsorted(cumulative, total * percentiles[1] / 100.0, side="left")
    last = len(order) - 1
    return float(values[order[min(low_i, last)]]), float(values[order[min(high_i, last)]])


def build_display_lut(
    ds: Dataset,
    stored_sample: np.ndarray,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> DisplayLUT:
    """Build the stored-value -> display-value table for ``ds``.

    Args:
        ds: the image's dataset (Image Pixel, Modality LUT and VOI LUT modules are read).
        stored_sample: stored values representative of the image (e.g. the resized image),
            used only for the percentile window when the dataset has no VOI.
        percentiles: low/high percentiles for that fallback window.
    """
    dtype = stored_sample.dtype
    if dtype.kind not in "ui" or dtype.itemsize > 2:
        raise ValueError(f"stored values must be 8/16-bit integers, got {dtype}")
    info = np.iinfo(dtype)
    low_stored, high_stored = stored_value_range(ds)
    domain = np.clip(np.arange(info.min, info.max + 1, dtype=np.int64), low_stored, high_stored)
    modality = np.asarray(apply_modality_lut(domain, ds), dtype=np.float64)

    method = has_voi(ds)
    window: tuple[float, float] | None = None
    if method is not None:
        black, white = voi_output_range(ds)
        if white == black:
            method = None
        else:
            voi = _apply_voi(modality, ds, method)
            normalised = (voi - black) / (white - black)
            if method == "window":
                center, width = _first(ds, "WindowCenter"), _first(ds, "WindowWidth")
                window = (center - width / 2.0, center + width / 2.0)
    if method is None:
        if int(ds.BitsStored) <= PRESENTATION_READY_BITS:
            method = "full-range"
            low, high = float(modality.min()), float(modality.max())
        else:
            method = "percentile"
            offset = int(info.min)
            counts = np.bincount(
                (stored_sample.ravel().astype(np.int64) - offset), minlength=len(domain)
            )
            low, high = _weighted_percentiles(modality, counts, percentiles)
        if high <= low:
            high = low + 1.0
        window = (low, high)
        normalised = (modality - low) / (high - low)

    display = np.rint(np.clip(normalised, 0.0, 1.0) * 255.0).astype(np.uint8)
    inverted = str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    if inverted:
        display = 255 - display
    return DisplayLUT(display, int(info.min), method, inverted, window)


def _first(ds: Dataset, keyword: str) -> float:
    elem = ds[keyword]
    return float(elem.value[0] if elem.VM > 1 else elem.value)
