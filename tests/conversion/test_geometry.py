"""Letterbox: aspect-preserving resize with padding, and the exact way back to Rows x Columns."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pneumonode.conversion import Letterbox


def blobs(rows: int, cols: int, seed: int) -> np.ndarray:
    """A mask with a few ellipses, like pneumothorax regions at the lung apex and border."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((rows, cols), np.uint8)
    for _ in range(4):
        center = (
            int(rng.integers(cols // 5, 4 * cols // 5)),
            int(rng.integers(rows // 5, 4 * rows // 5)),
        )
        axes = (int(rng.integers(cols // 20, cols // 6)), int(rng.integers(rows // 20, rows // 6)))
        cv2.ellipse(mask, center, axes, float(rng.integers(0, 180)), 0, 360, 255, -1)
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def test_fit_portrait_2500x3000() -> None:
    box = Letterbox.fit(rows=3000, cols=2500, size=1024)
    assert (box.scaled_rows, box.scaled_cols) == (1024, 853)
    assert (box.pad_top, box.pad_left) == (0, 85)


def test_identity_for_square_source_of_model_size() -> None:
    box = Letterbox.fit(1024, 1024, 1024)
    mask = blobs(1024, 1024, 0)
    assert box.is_identity
    assert np.array_equal(box.mask_to_model(mask), mask)
    assert np.array_equal(box.to_source(mask), mask)


@pytest.mark.parametrize(
    ("rows", "cols"), [(3000, 2500), (2500, 3000), (1955, 1841), (3001, 2999), (2048, 2048)]
)
def test_round_trip_downscale_non_square(rows: int, cols: int) -> None:
    box = Letterbox.fit(rows, cols, 1024)
    source = blobs(rows, cols, rows + cols)
    model = box.mask_to_model(source)
    back = box.to_source(model)
    assert back.shape == (rows, cols)
    assert back.dtype == source.dtype
    assert iou(back > 0, source > 0) > 0.98
    # every disagreement lies within one model pixel of a region border
    scale = max(rows, cols) / 1024
    border = cv2.morphologyEx(source, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    near_border = cv2.dilate(border, np.ones((2 * int(np.ceil(scale)) + 3,) * 2, np.uint8)) > 0
    assert not np.any((back != source) & ~near_border)
    # padding stays empty
    assert model[:, : box.pad_left].max(initial=0) == 0
    assert model[: box.pad_top, :].max(initial=0) == 0


@pytest.mark.parametrize(("rows", "cols"), [(169, 211), (512, 300), (700, 1000)])
def test_round_trip_upscale_is_exact(rows: int, cols: int) -> None:
    box = Letterbox.fit(rows, cols, 1024)
    source = blobs(rows, cols, rows)
    assert np.array_equal(box.to_source(box.mask_to_model(source)), source)


def test_full_model_mask_maps_to_full_source_and_padding_is_ignored() -> None:
    box = Letterbox.fit(3000, 2500, 1024)
    model = np.zeros((1024, 1024), np.uint8)
    model[
        box.pad_top : box.pad_top + box.scaled_rows, box.pad_left : box.pad_left + box.scaled_cols
    ] = 1
    model[:, : box.pad_left] = 7  # anything in the padding is discarded
    back = box.to_source(model)
    assert back.shape == (3000, 2500)
    assert np.all(back == 1)


def test_probability_map_back_with_linear_interpolation() -> None:
    box = Letterbox.fit(3000, 2500, 1024)
    prob = np.zeros((1024, 1024), np.float32)
    prob[:, 512:] = 1.0
    back = box.to_source(prob, interpolation="linear")
    assert back.shape == (3000, 2500) and back.dtype == np.float32
    assert back[:, :1000].max() == 0.0 and back[:, -100:].min() == 1.0


def test_wrong_shapes_are_refused() -> None:
    box = Letterbox.fit(300, 200, 64)
    with pytest.raises(ValueError, match="expected an array of shape"):
        box.to_source(np.zeros((32, 32)))
    with pytest.raises(ValueError, match="must be positive"):
        Letterbox.fit(0, 10, 64)
