"""Training data: image/mask pairs on disk, a patient-level split, augmentation and balancing.

Layouts understood (``discover_samples``):
- ``png_images/`` + ``png_masks/`` (``pneumonode convert-siim`` output; the vbookshelf Kaggle set,
  names like ``0_train_1_.png``), with ``index.csv`` giving PatientID when convert-siim wrote it;
- ``images/`` + ``masks/`` with JPEG or PNG images (like ``siim-positives``), or ``images/`` alone
  (films without a finding, like ``negatives``: no mask means negative).
An ``index.csv`` beside them gives each film's patient (``PatientID``, ``patient_id`` or the NIH
name's part before ``_``: ``nih_name``, preferred where present so that SIIM and NIH films of one
patient agree) and its ``category`` (e.g. "normal (NIH No Finding)"). ``discover_cohort`` joins
several such folders; ``split_cohort`` splits them by patient into training, validation and test.
Images go through the same letterbox as inference (``prepare_8bit_image``); masks through its
nearest-neighbour twin, binarised at 127. Randomness is seeded per epoch and sample index.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from pneumonode.conversion.geometry import Letterbox
from pneumonode.conversion.prepare import prepare_8bit_image

if TYPE_CHECKING:
    import albumentations as A  # noqa: N812  (the library's own convention)

__all__ = [
    "DatasetLayoutError",
    "Sample",
    "SegmentationDataset",
    "augmentations",
    "balanced_sampler",
    "crop_window",
    "discover_cohort",
    "discover_samples",
    "read_split",
    "split_cohort",
    "split_samples",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DatasetLayoutError(ValueError):
    """The folder is not a dataset this module understands, or a file in it is broken."""


@dataclass(frozen=True)
class Sample:
    image_id: str
    image: str
    mask: str | None  # None: no mask (unlabelled, or negative when the layout says so)
    patient_id: str | None
    positive: bool
    category: str | None = None  # "pneumothorax", "normal (NIH No Finding)", ... where known


def _index(root: Path) -> dict[str, tuple[str | None, str | None]]:
    """image stem -> (patient id, category) from ``root/index.csv`` (empty without one)."""
    index = root / "index.csv"
    if not index.is_file():
        return {}
    rows: dict[str, tuple[str | None, str | None]] = {}
    with index.open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            key = row.get("ImageId") or Path(row.get("file") or "").stem
            if not key:
                continue
            nih = (row.get("nih_name") or "").strip()
            patient = (
                nih.split("_")[0]
                if nih
                else (row.get("PatientID") or row.get("patient_id") or "").strip()
            )
            rows[key] = (patient or None, (row.get("category") or "").strip() or None)
    return rows


def discover_samples(root: Path) -> list[Sample]:
    """Image/mask pairs under ``root`` (see the module docstring), sorted by id.

    A mask's positivity is read from its pixels (any value > 127).
    """
    for images_name, masks_name in (("png_images", "png_masks"), ("images", "masks")):
        images_dir, masks_dir = root / images_name, root / masks_name
        if images_dir.is_dir():
            break
    else:
        raise DatasetLayoutError(f"{root}: expected png_images/ + png_masks/ or images/ + masks/")
    masks = {p.stem: p for p in masks_dir.glob("*.png")} if masks_dir.is_dir() else {}
    index = _index(root)
    samples = []
    for path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        mask_path = masks.get(path.stem)
        positive = False
        if mask_path is not None:
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise DatasetLayoutError(f"{mask_path}: unreadable mask")
            positive = bool((mask > 127).any())
        patient, category = index.get(path.stem, (None, None))
        samples.append(
            Sample(
                image_id=path.stem,
                image=str(path),
                mask=str(mask_path) if mask_path else None,
                patient_id=patient,
                positive=positive,
                category=category or ("pneumothorax" if positive else None),
            )
        )
    if not samples:
        raise DatasetLayoutError(f"{images_dir}: no images")
    return samples


def split_samples(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Seeded train/validation split, by patient when PatientIDs are known (no patient on both
    sides), else by image."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be within (0, 1), got {val_fraction}")
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.patient_id or f"image:{sample.image_id}", []).append(sample)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_val = max(1, round(len(keys) * val_fraction))
    val_keys = set(keys[:n_val])
    train = [s for k in sorted(groups) if k not in val_keys for s in groups[k]]
    val = [s for k in sorted(groups) if k in val_keys for s in groups[k]]
    return train, val


def discover_cohort(roots: Sequence[Path]) -> list[Sample]:
    """The samples of several folders (e.g. positives with masks and negatives), sorted by id.

    Raises DatasetLayoutError when two folders hold an image of the same id.
    """
    samples: dict[str, Sample] = {}
    for root in roots:
        for sample in discover_samples(root):
            if sample.image_id in samples:
                raise DatasetLayoutError(
                    f"{sample.image}: image id {sample.image_id!r} is also in "
                    f"{Path(samples[sample.image_id].image).parent}"
                )
            samples[sample.image_id] = sample
    return [samples[k] for k in sorted(samples)]


def split_cohort(
    samples: Sequence[Sample], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Seeded (train, validation, test) split by patient: no patient on two sides.

    Patients with a positive film and patients with negatives only are shuffled separately and
    cut at the same fractions, so that each side has about the cohort's share of positives.
    Films without a patient id are their own patient.
    """
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be "
            "fractions that leave images to train on"
        )
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.patient_id or f"image:{sample.image_id}", []).append(sample)
    rng = random.Random(seed)
    val_keys: set[str] = set()
    test_keys: set[str] = set()
    for stratum in (True, False):
        keys = sorted(k for k, g in groups.items() if any(s.positive for s in g) == stratum)
        rng.shuffle(keys)
        n_test = round(len(keys) * test_fraction)
        n_val = round(len(keys) * val_fraction)
        test_keys.update(keys[:n_test])
        val_keys.update(keys[n_test : n_test + n_val])
    train = [s for k in sorted(groups) if k not in val_keys | test_keys for s in groups[k]]
    val = [s for k in sorted(groups) if k in val_keys for s in groups[k]]
    test = [s for k in sorted(groups) if k in test_keys for s in groups[k]]
    return train, val, test


def write_split(
    path: Path,
    train: Sequence[Sample],
    val: Sequence[Sample],
    test: Sequence[Sample] = (),
    **info: Any,
) -> None:
    """The split file: image ids per side (``test`` never to be used for any choice)."""
    everything = (*train, *val, *test)
    payload = {
        **info,
        "by": "patient" if any(s.patient_id for s in everything) else "image",
        "train": [s.image_id for s in train],
        "validation": [s.image_id for s in val],
        "test": [s.image_id for s in test],
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")


def read_split(path: Path, samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """{"train": [...], "validation": [...], "test": [...]} of ``samples`` as ``path`` says.

    Raises DatasetLayoutError when the file names an image that is not among ``samples``.
    """
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetLayoutError(f"{path}: unreadable split file ({exc})") from None
    by_id = {s.image_id: s for s in samples}
    sides: dict[str, list[Sample]] = {}
    for side in ("train", "validation", "test"):
        ids = payload.get(side, [])
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise DatasetLayoutError(
                f"{path}: {len(unknown)} {side} image(s) not in the data, e.g. {unknown[0]}"
            )
        sides[side] = [by_id[i] for i in ids]
    return sides


def augmentations(seed: int) -> tuple[A.Compose, A.Compose]:
    """(for positives, for negatives): the seed notebook's recipe, seeded.

    Positives: flips, brightness/contrast, Gaussian noise, CLAHE, mild affine. Negatives: light
    changes, mild noise, an occasional flip.
    """
    # albumentations asks pypi.org for its latest version on import (up to 2 s, and an outbound
    # connection from a hospital machine, where there is often no way out): never.
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    import albumentations as A  # noqa: N812  (the library's own convention)

    positive = A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.GaussNoise(std_range=(0.01, 0.04), p=0.3),
            A.CLAHE(clip_limit=2.0, p=0.2),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.5),
        ],
        seed=seed,
    )
    negative = A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.4),
            A.GaussNoise(std_range=(0.005, 0.02), p=0.2),
            A.HorizontalFlip(p=0.2),
        ],
        seed=seed + 1,
    )
    return positive, negative


def crop_window(
    mask: np.ndarray, crop: int, lesion_share: float, rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left corner of a ``crop`` x ``crop`` window inside ``mask``'s square.

    With probability ``lesion_share`` (when the mask has any lesion) the window holds a lesion
    pixel chosen at random, placed anywhere inside it; otherwise the window is uniform. Images
    of mostly small lesions would else give mostly empty crops.
    """
    height, width = mask.shape
    if crop > min(height, width):
        raise ValueError(f"crop {crop} is larger than the image ({height} x {width})")
    ys, xs = np.nonzero(mask)
    if len(ys) and rng.random() < lesion_share:
        pick = int(rng.integers(len(ys)))
        top = int(ys[pick]) - int(rng.integers(crop))
        left = int(xs[pick]) - int(rng.integers(crop))
    else:
        top = int(rng.integers(height - crop + 1))
        left = int(rng.integers(width - crop + 1))
    return min(max(top, 0), height - crop), min(max(left, 0), width - crop)


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image, mask) tensors of shape (1, size, size): image float32 in [0, 1], mask 0/1.

    With ``crop``, each item is a random ``crop`` x ``crop`` window of the (augmented) size x
    size image instead (see ``crop_window``): training at a high resolution for the cost of a
    small one; the fully convolutional net is then run on the whole image.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int,
        augment: bool = False,
        seed: int = 0,
        cache: bool = False,
        crop: int | None = None,
        crop_lesion_share: float = 0.7,
    ):
        if crop is not None and not 0 < crop <= size:
            raise ValueError(f"crop must be within 1..{size}, got {crop}")
        self.samples = list(samples)
        self.size = size
        self.augment = augment
        self.seed = seed
        self.crop = crop
        self.crop_lesion_share = crop_lesion_share
        self.epoch = 0
        self._pipelines = augmentations(seed) if augment else None
        # Decoded model-space pixels, kept per process when ``cache`` is on (2 x size^2 bytes
        # an image: 128 KiB at 256 px), so that JPEG decoding and resizing happen once.
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Model-space (uint8 image, uint8 0/1 mask) of one sample, before augmentation."""
        sample = self.samples[index]
        image = cv2.imread(sample.image, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise DatasetLayoutError(f"{sample.image}: unreadable image")
        prepared = prepare_8bit_image(image, self.size)
        if sample.mask is None:
            return prepared.pixels, np.zeros_like(prepared.pixels)
        mask = cv2.imread(sample.mask, cv2.IMREAD_GRAYSCALE)
        if mask is None or mask.shape != image.shape:
            raise DatasetLayoutError(f"{sample.mask}: unreadable or not the image's size")
        box = Letterbox.fit(image.shape[0], image.shape[1], self.size)
        return prepared.pixels, box.mask_to_model((mask > 127).astype(np.uint8))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None:
            image, mask = self.load(index)
        else:
            if index not in self._cache:
                self._cache[index] = self.load(index)
            image, mask = self._cache[index]
        if self._pipelines is not None:
            pipeline = self._pipelines[0 if self.samples[index].positive else 1]
            pipeline.set_random_seed(self.seed + 100_003 * self.epoch + index)
            out = pipeline(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if self.crop is not None and self.crop < self.size:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            top, left = crop_window(mask, self.crop, self.crop_lesion_share, rng)
            image = image[top : top + self.crop, left : left + self.crop]
            mask = mask[top : top + self.crop, left : left + self.crop]
        x = torch.from_numpy(image.astype(np.float32) / 255.0)[None]
        y = torch.from_numpy((mask > 0).astype(np.float32))[None]
        return x, y


def balanced_sampler(
    samples: Sequence[Sample], positive_share: float, seed: int, num_samples: int | None = None
) -> WeightedRandomSampler | None:
    """Draw positives with probability ``positive_share`` per draw (None when one class only)."""
    positives = sum(s.positive for s in samples)
    negatives = len(samples) - positives
    if positives == 0 or negatives == 0:
        return None
    weights = [
        positive_share / positives if s.positive else (1 - positive_share) / negatives
        for s in samples
    ]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        weights, num_samples or len(samples), replacement=True, generator=generator
    )


def describe(samples: Sequence[Sample]) -> dict[str, Any]:
    """Counts for the checkpoint's training-data summary."""
    return {
        "images": len(samples),
        "positives": sum(s.positive for s in samples),
        "negatives": sum(not s.positive for s in samples),
        "patients": len({s.patient_id for s in samples if s.patient_id}) or None,
    }
