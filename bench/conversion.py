"""Conversion throughput: images/s for SIIM JPEG CR files and synthetic 16-bit 2500x3000 DX.

Each figure is a ratio against a reference measured in the same run: pydicom decoding alone
(``dcmread`` + ``pixel_array``), the floor any conversion has to pay. Runs on one CPU core.

    .venv/bin/python bench/conversion.py [--seconds 3] [--data ../shared/data]

Targets (issue 2): conversion >= 0.5x decode-only on JPEG CR; >= 15 images/s on DX.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dicom_factory import make_dx, save, synthetic_chest
from pneumonode.conversion import prepare_radiograph

REPO = Path(__file__).resolve().parents[1]


def rate(files: list[Path], work: Callable[[Path], object], seconds: float) -> float:
    """Images per second of ``work`` cycling over ``files`` for about ``seconds``."""
    warm_until = time.perf_counter() + min(1.0, seconds / 2)
    while time.perf_counter() < warm_until:  # page cache, allocator, imports
        for path in files:
            work(path)
    done, start = 0, time.perf_counter()
    while True:
        for path in files:
            work(path)
            done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def decode_default(path: Path) -> object:
    return pydicom.dcmread(path).pixel_array


def decode_with(plugin: str) -> Callable[[Path], object]:
    def decode(path: Path) -> object:
        ds = pydicom.dcmread(path)
        ds.pixel_array_options(decoding_plugin=plugin)
        return ds.pixel_array

    return decode


def convert(path: Path) -> bytes:
    return prepare_radiograph(path, 1024).png(level=1)


def pydicom_float_path(path: Path) -> bytes:
    """What a straightforward implementation does: float LUTs at full size, then resize."""
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1.0) * 255
    rows, cols = arr.shape
    scale = 1024 / max(rows, cols)
    small = cv2.resize(arr.astype(np.float32), (round(cols * scale), round(rows * scale)))
    return bytes(cv2.imencode(".png", small.astype(np.uint8))[1])


def synthetic_dx(folder: Path, count: int, windowed: bool) -> list[Path]:
    folder.mkdir()
    files = []
    for i in range(count):
        pixels = synthetic_chest(3000, 2500, 14, seed=i)
        window = ([8000.0 + 100 * i], [12000.0]) if windowed else None
        ds = make_dx(pixels, 14, window=window, rescale=(1.0, 0.0))
        files.append(save(ds, folder / f"dx{i}.dcm"))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)

    siim = sorted((args.data / "siim-sample" / "dicom").glob("*.dcm"))
    if not siim:
        print(f"no SIIM sample DICOMs under {args.data}; pass --data", file=sys.stderr)
        return 1
    rows: list[tuple[str, float, float, str]] = []

    decode_floor = rate(siim, decode_with("pillow"), args.seconds)
    rows.append(("JPEG CR 1024x1024: decode only, pillow (floor)", decode_floor, 1.0, ""))
    default = rate(siim, decode_default, args.seconds)
    rows.append(
        ("JPEG CR: decode only, pydicom default plugin", default, default / decode_floor, "")
    )
    conv = rate(siim, convert, args.seconds)
    verdict = "PASS" if conv / decode_floor >= 0.5 else "FAIL"
    rows.append(
        (
            "JPEG CR: convert (decode+LUT+PNG level 1)",
            conv,
            conv / decode_floor,
            f">=0.5x {verdict}",
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        sets = {
            label: synthetic_dx(Path(tmp) / label, 4, windowed)
            for label, windowed in (("percentile", False), ("window", True))
        }
        os.sync()
        for label, files in sets.items():
            floor = rate(files, decode_default, args.seconds)
            rows.append((f"DX 16-bit 2500x3000 ({label}): decode only (floor)", floor, 1.0, ""))
            conv = rate(files, convert, args.seconds)
            verdict = "PASS" if conv >= 15 else "FAIL"
            rows.append(
                (f"DX ({label}): convert to 1024 + PNG", conv, conv / floor, f">=15/s {verdict}")
            )
            if label == "window":
                slow = rate(files, pydicom_float_path, args.seconds)
                rows.append(("DX (window): pydicom float path + resize", slow, slow / floor, ""))

    print(f"{'measurement (one core)':58} {'images/s':>9} {'ratio':>7}  target")
    for name, value, ratio, note in rows:
        print(f"{name:58} {value:9.1f} {ratio:6.2f}x  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
