"""A training bundle: a cohort already in model space, decoded once and small enough to move.

``pneumonode prepare-training`` writes one from the cohort's folders and a split::

    samples.csv         image_id, split, positive, patient_id, category
    images/<id>.webp    the film after the inference letterbox (``prepare_8bit_image``), size px
    masks/<id>.png      its 0/255 mask in the same geometry (positives only)
    bundle.json         size, image format, counts, the source folders and split file

Training from a bundle skips the 1024 px JPEG decode and resize of every film on every run, and
the bundle of a 512 px cohort of 1,800 films is about 40 MB: it travels to a GPU machine with the
code. Reading one needs only numpy and OpenCV (no DICOM stack).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

__all__ = ["Bundle", "BundleError", "load_bundle", "resize_bundle", "write_bundle"]

SPLITS = ("train", "validation", "test")
Format = Literal["webp", "png", "jpg"]


class BundleError(ValueError):
    """Not a training bundle, or a damaged one."""


@dataclass(frozen=True)
class Bundle:
    """The films of some splits of a bundle, as arrays (N, size, size) uint8."""

    size: int
    ids: list[str]
    splits: list[str]
    categories: list[str]
    patients: list[str]
    positive: np.ndarray  # (N,) bool
    images: np.ndarray  # (N, size, size) uint8
    masks: np.ndarray  # (N, size, size) uint8 0/1

    def select(self, split: str) -> np.ndarray:
        """Indices of the films in ``split``."""
        return np.array([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)


def write_bundle(
    sides: Mapping[str, Sequence[object]],
    size: int,
    out: Path,
    *,
    image_format: Format = "webp",
    quality: int = 90,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    info: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Write the samples of each side (``pneumonode.model.data.Sample``) to the bundle ``out``.

    Returns the bundle's description (also written to ``bundle.json``).
    """
    from pneumonode.model.data import Sample, SegmentationDataset

    unknown = set(sides) - set(SPLITS)
    if unknown:
        raise BundleError(f"unknown split(s) {sorted(unknown)}; use {', '.join(SPLITS)}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    rows: list[tuple[str, Sample]] = [
        (side, sample)  # type: ignore[misc]
        for side in SPLITS
        for sample in sides.get(side, ())
    ]
    flags = {
        "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
        "jpg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 6],
    }[image_format]
    dataset = SegmentationDataset([s for _, s in rows], size)

    def one(index: int) -> None:
        image, mask = dataset.load(index)
        sample = rows[index][1]
        cv2.imwrite(str(out / "images" / f"{sample.image_id}.{image_format}"), image, flags)
        if sample.positive:
            cv2.imwrite(str(out / "masks" / f"{sample.image_id}.png"), mask * 255)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, _ in enumerate(pool.map(one, range(len(rows))), start=1):
            if progress is not None:
                progress(done, len(rows))
    with (out / "samples.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "split", "positive", "patient_id", "category"])
        for side, s in rows:
            writer.writerow(
                [s.image_id, side, int(s.positive), s.patient_id or "", s.category or ""]
            )
    description: dict[str, object] = {
        "format": "pneumonode-training-bundle",
        "size": size,
        "image_format": image_format,
        "quality": quality,
        "counts": {
            side: {
                "images": sum(1 for r in rows if r[0] == side),
                "positives": sum(1 for r in rows if r[0] == side and r[1].positive),
            }
            for side in SPLITS
        },
        **(info or {}),
    }
    (out / "bundle.json").write_text(json.dumps(description, indent=1) + "\n")
    return description


def load_bundle(folder: Path, splits: Sequence[str] = SPLITS, *, workers: int = 4) -> Bundle:
    """The films of ``splits`` in the bundle ``folder``, decoded (missing splits are empty)."""
    try:
        description = json.loads((folder / "bundle.json").read_text())
        size, image_format = int(description["size"]), str(description["image_format"])
        with (folder / "samples.csv").open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["split"] in splits]
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{folder}: not a training bundle ({exc})") from None

    images = np.zeros((len(rows), size, size), np.uint8)
    masks = np.zeros((len(rows), size, size), np.uint8)

    def one(index: int) -> None:
        row = rows[index]
        path = folder / "images" / f"{row['image_id']}.{image_format}"
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None or image.shape != (size, size):
            raise BundleError(f"{path}: unreadable, or not {size} x {size}")
        images[index] = image
        if row["positive"] == "1":
            mask_path = folder / "masks" / f"{row['image_id']}.png"
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if mask is None or mask.shape != (size, size):
                raise BundleError(f"{mask_path}: unreadable, or not {size} x {size}")
            masks[index] = mask > 127

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, range(len(rows))))
    return Bundle(
        size=size,
        ids=[r["image_id"] for r in rows],
        splits=[r["split"] for r in rows],
        categories=[r["category"] for r in rows],
        patients=[r["patient_id"] for r in rows],
        positive=np.array([r["positive"] == "1" for r in rows], dtype=bool),
        images=images,
        masks=masks,
    )


def resize_bundle(bundle: Bundle, size: int) -> Bundle:
    """The same films at ``size`` px: images by area averaging, masks where at least half of
    the area is lesion (nearest-neighbour when enlarging)."""
    interpolation = cv2.INTER_AREA if size < bundle.size else cv2.INTER_LINEAR
    images = np.stack(
        [cv2.resize(i, (size, size), interpolation=interpolation) for i in bundle.images]
    )
    masks = np.stack(
        [
            (cv2.resize(m.astype(np.float32), (size, size), interpolation=interpolation) >= 0.5)
            for m in bundle.masks
        ]
    ).astype(np.uint8)
    return replace(bundle, size=size, images=images, masks=masks)
