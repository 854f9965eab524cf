"""Aspect-preserving resize with padding to a square, and its exact inverse.

The image is scaled so that its longer side fills ``size`` and centred; the rest is padding. A
source pixel (r, c) lands on model pixel (pad_top + floor((r + 0.5) * sy), pad_left + floor((c +
0.5) * sx)) where sy, sx are the per-axis scale factors; ``to_source`` samples a model-space map at
exactly those positions, so a mask maps back onto the source's Rows x Columns with no drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

__all__ = ["Letterbox"]


@dataclass(frozen=True)
class Letterbox:
    """Placement of a source image of ``source_shape`` inside a ``size`` x ``size`` square."""

    source_rows: int
    source_cols: int
    size: int
    scaled_rows: int
    scaled_cols: int
    pad_top: int
    pad_left: int

    @classmethod
    def fit(cls, rows: int, cols: int, size: int) -> Letterbox:
        """Placement of a rows x cols image in a size x size square (longer side = size)."""
        if rows <= 0 or cols <= 0 or size <= 0:
            raise ValueError(f"sizes must be positive, got rows={rows} cols={cols} size={size}")
        scale = size / max(rows, cols)
        scaled_rows = min(size, max(1, round(rows * scale)))
        scaled_cols = min(size, max(1, round(cols * scale)))
        return cls(
            source_rows=rows,
            source_cols=cols,
            size=size,
            scaled_rows=scaled_rows,
            scaled_cols=scaled_cols,
            pad_top=(size - scaled_rows) // 2,
            pad_left=(size - scaled_cols) // 2,
        )

    @property
    def is_identity(self) -> bool:
        return self.source_rows == self.size and self.source_cols == self.size

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize a source-sized image to the scaled (unpadded) size; area filter when shrinking.

        Shape: (source_rows, source_cols) -> (scaled_rows, scaled_cols), same dtype.
        """
        self._check(image, (self.source_rows, self.source_cols))
        if (self.scaled_rows, self.scaled_cols) == image.shape:
            return image
        if image.dtype == np.int8:  # OpenCV resizes no signed 8-bit image; the values fit int16
            return self.resize(image.astype(np.int16)).astype(np.int8)
        shrinking = self.scaled_rows < self.source_rows
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        resized: np.ndarray = cv2.resize(
            image, (self.scaled_cols, self.scaled_rows), interpolation=interpolation
        )
        return resized

    def pad(self, scaled: np.ndarray, value: int | float = 0) -> np.ndarray:
        """Place a scaled image in the size x size square.

        Shape: (scaled_rows, scaled_cols) -> (size, size), same dtype.
        """
        self._check(scaled, (self.scaled_rows, self.scaled_cols))
        if scaled.shape == (self.size, self.size):
            return scaled
        out = np.full((self.size, self.size), value, dtype=scaled.dtype)
        out[self._inner] = scaled
        return out

    def mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """Nearest-neighbour map of a source-sized mask into model space (padding = 0).

        Shape: (source_rows, source_cols) -> (size, size), same dtype.
        """
        self._check(mask, (self.source_rows, self.source_cols))
        rows = _nearest(self.scaled_rows, self.source_rows)
        cols = _nearest(self.scaled_cols, self.source_cols)
        return self.pad(mask[np.ix_(rows, cols)], 0)

    def to_source(
        self, model_map: np.ndarray, interpolation: Literal["nearest", "linear"] = "nearest"
    ) -> np.ndarray:
        """Map a model-space map (mask or probabilities) back onto the source's Rows x Columns.

        ``nearest`` samples the model pixel each source pixel landed on (exact for masks);
        ``linear`` interpolates the unpadded region (for probability maps).
        Shape: (size, size) -> (source_rows, source_cols), same dtype.
        """
        self._check(model_map, (self.size, self.size))
        inner = model_map[self._inner]
        if interpolation == "linear":
            if inner.shape == (self.source_rows, self.source_cols):
                return inner.copy()
            resized: np.ndarray = cv2.resize(
                inner, (self.source_cols, self.source_rows), interpolation=cv2.INTER_LINEAR
            )
            return resized
        rows = _nearest(self.source_rows, self.scaled_rows)
        cols = _nearest(self.source_cols, self.scaled_cols)
        # two takes, one per axis: a quarter of the time of one np.ix_ fancy index
        sampled: np.ndarray = np.take(np.take(inner, rows, axis=0), cols, axis=1)
        return sampled

    @property
    def _inner(self) -> tuple[slice, slice]:
        return (
            slice(self.pad_top, self.pad_top + self.scaled_rows),
            slice(self.pad_left, self.pad_left + self.scaled_cols),
        )

    @staticmethod
    def _check(array: np.ndarray, expected: tuple[int, int]) -> None:
        if array.shape != expected:
            raise ValueError(f"expected an array of shape {expected}, got {array.shape}")


def _nearest(count_out: int, count_in: int) -> np.ndarray:
    """Index of the input pixel whose area holds the centre of each of ``count_out`` pixels."""
    centres = (np.arange(count_out) + 0.5) * (count_in / count_out)
    return np.minimum(centres.astype(np.int64), count_in - 1)
