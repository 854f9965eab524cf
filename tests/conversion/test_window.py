"""The one-lookup-table display path against pydicom's float path.

The reference is pydicom's apply_modality_lut + apply_voi_lut on the full-resolution image.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import Dataset as Item
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence

from dicom_factory import make_dx, synthetic_chest
from pneumonode.conversion import Letterbox, build_display_lut, prepare_radiograph
from pneumonode.conversion.window import voi_output_range


def pydicom_reference(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom's float path, scaled to 0..255 by the VOI's output range, MONOCHROME1 inverted."""
    with np.errstate(over="ignore"):
        values = apply_voi_lut(apply_modality_lut(stored, ds), ds, index=0)
    black, white = voi_output_range(ds)
    out = np.rint(np.clip((values - black) / (white - black), 0, 1) * 255).astype(np.uint8)
    return 255 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


CASES = {
    "12-bit linear window": dict(bits=12, window=([2048.0], [3000.0])),
    "14-bit two windows (first used)": dict(bits=14, window=([6000.0, 9000.0], [8000.0, 2000.0])),
    "15-bit LINEAR_EXACT": dict(bits=15, window=([16000.0], [20000.0]), voi="LINEAR_EXACT"),
    "16-bit SIGMOID": dict(bits=16, window=([30000.0], [40000.0]), voi="SIGMOID"),
    "12-bit rescaled": dict(bits=12, window=([-200.0], [1800.0]), rescale=(0.5, -1200.0)),
    "12-bit MONOCHROME1": dict(bits=12, window=([2000.0], [3500.0]), mono1=True),
    "8-bit window": dict(bits=8, window=([120.0], [200.0])),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_lut_matches_pydicom_float_path_within_one_grey_level(case: dict) -> None:
    stored = synthetic_chest(300, 250, case["bits"], seed=1)
    ds = make_dx(
        stored,
        case["bits"],
        window=case["window"],
        voi_function=case.get("voi"),
        rescale=case.get("rescale"),
        photometric="MONOCHROME1" if case.get("mono1") else "MONOCHROME2",
    )
    lut = build_display_lut(ds, stored)
    assert lut.method == "window"
    ours = lut.apply(stored)
    reference = pydicom_reference(stored, ds)
    assert np.abs(ours.astype(int) - reference).max() <= 1
    assert ours.min() < 40 and ours.max() > 200  # the window actually spreads the values


def test_lut_matches_pydicom_for_voi_lut_sequence() -> None:
    stored = synthetic_chest(200, 200, 12, seed=2)
    ds = make_dx(stored, 12, window=([9999.0], [1.0]))  # the LUT must win over the window
    item = Item()
    first = 500
    entries = 3000
    lut_data = np.sqrt(np.linspace(0, 1, entries)) * 4095
    item.LUTDescriptor = [entries, first, 12]
    item.LUTData = np.rint(lut_data).astype(np.uint16).tolist()
    ds.VOILUTSequence = Sequence([item])
    lut = build_display_lut(ds, stored)
    assert lut.method == "voi-lut"
    reference = pydicom_reference(stored, ds)
    assert np.abs(lut.apply(stored).astype(int) - reference).max() <= 1


def test_signed_pixels_with_window() -> None:
    stored = (synthetic_chest(120, 100, 12, seed=3).astype(np.int16) - 2048).astype(np.int16)
    ds = make_dx(stored, 12, window=([0.0], [3000.0]), signed=True)
    lut = build_display_lut(ds, stored)
    reference = pydicom_reference(stored, ds)
    assert np.abs(lut.apply(stored).astype(int) - reference).max() <= 1


def test_percentile_window_when_file_has_none() -> None:
    stored = synthetic_chest(400, 300, 14, seed=4)
    ds = make_dx(stored, 14)
    lut = build_display_lut(ds, stored, percentiles=(1.0, 99.0))
    out = lut.apply(stored)
    assert lut.method == "percentile"
    low, high = np.percentile(stored, [1.0, 99.0])
    assert lut.window == pytest.approx((low, high), abs=2)
    assert 0.005 < np.mean(out == 0) < 0.02
    assert 0.005 < np.mean(out == 255) < 0.02


def test_eight_bit_without_window_keeps_full_range() -> None:
    stored = synthetic_chest(64, 64, 8)
    lut = build_display_lut(make_dx(stored, 8), stored)
    assert lut.method == "full-range"
    assert np.array_equal(lut.apply(stored), stored)


def test_invalid_window_width_falls_back_to_percentiles() -> None:
    stored = synthetic_chest(64, 64, 12)
    lut = build_display_lut(make_dx(stored, 12, window=([2000.0], [0.0])), stored)
    assert lut.method == "percentile"


@pytest.mark.parametrize("bits", [8, 12, 14, 15, 16])
def test_resize_then_lut_stays_close_to_lut_then_resize(bits: int) -> None:
    """The fast path (resize stored values, then one LUT) against windowing at full resolution."""
    stored = synthetic_chest(2000, 1600, bits, seed=bits)
    top = 2**bits
    ds = make_dx(stored, bits, window=([top * 0.5], [top * 0.8]))
    fast = prepare_radiograph(ds, size=512).pixels
    box = Letterbox.fit(2000, 1600, 512)
    slow = box.pad(box.resize(pydicom_reference(stored, ds)))
    diff = np.abs(fast.astype(int) - slow.astype(int))
    assert diff.mean() < 0.5
    assert np.percentile(diff, 99) <= 1
