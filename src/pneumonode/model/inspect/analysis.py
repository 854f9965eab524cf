"""The analysis of a segmentation data set: every file read once, what is wrong and what it
holds (``inspect_dataset`` -> ``DatasetInspection``; its ``to_json`` is the report's content).
The folder layouts, and which findings are problems, are described in
:mod:`pneumonode.model.inspect`; :mod:`~pneumonode.model.inspect.report` writes the report."""

from __future__ import annotations

import csv
import hashlib
import math
import multiprocessing
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from pneumonode import __version__

__all__ = [
    "BLANK_STD",
    "LAYOUTS",
    "NEAR_DUPLICATE_DISTANCE",
    "DatasetInspection",
    "DatasetLayout",
    "DatasetLayoutError",
    "ImageStats",
    "MaskStats",
    "NameRecord",
    "difference_hash",
    "inspect_dataset",
    "inspect_image",
    "inspect_mask",
    "noise_sigma",
]

LAYOUTS = (("png_images", "png_masks"), ("images", "masks"))
"""(images folder, masks folder) names, in the order they are looked for."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png",)
"""What the training Dataset (``pneumonode.model.data``) reads; other files are reported."""

BLANK_STD = 4.0
"""An image whose grey-level standard deviation is below this is blank (near-constant)."""

HASH_SIDE = 16
NEAR_DUPLICATE_DISTANCE = 12
"""Near duplicates: dHash distance at most this many of 256 bits. Among the 983 real radiographs
of siim-positives, distinct images are >= 18 apart; a JPEG re-encode (quality 30), gamma change,
resize or added noise keeps the same image within 8. (An 8x8 hash is too coarse for chest films:
43 pairs of different images there are within 1 bit of 64.)"""

SPECK_PIXELS = 10
"""Mask components smaller than this are reported as specks (label noise, or tiny lesions)."""

_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


class DatasetLayoutError(ValueError):
    """The folder is not an image + mask data set."""


@dataclass(frozen=True)
class DatasetLayout:
    """Where a data set keeps its images and masks."""

    root: Path
    images_dir: Path
    masks_dir: Path

    @property
    def name(self) -> str:
        return f"{self.images_dir.name}/ + {self.masks_dir.name}/"

    @property
    def index_csv(self) -> Path:
        return self.root / "index.csv"

    @classmethod
    def detect(cls, root: Path) -> DatasetLayout:
        """The layout of ``root``; ``DatasetLayoutError`` when it has none of ``LAYOUTS``."""
        if not root.is_dir():
            raise DatasetLayoutError(f"{root} is not a folder")
        for images_name, masks_name in LAYOUTS:
            if (root / images_name).is_dir():
                return cls(root, root / images_name, root / masks_name)
        expected = " or ".join(f"{i}/ + {m}/" for i, m in LAYOUTS)
        raise DatasetLayoutError(f"{root} is not a data set: expected {expected} inside it")


# ------------------------------------------------------------------ one file


@dataclass(frozen=True)
class ImageStats:
    """What one image is like. Grey levels are 0..255 (read as 8-bit grey)."""

    height: int
    width: int
    mean: float  # brightness
    std: float  # RMS contrast
    p1: int
    p99: int
    noise: float  # estimated sigma of the noise, grey levels
    pixel_hash: str  # of the decoded pixels and their shape: equal means identical images
    dhash: str  # 256-bit difference hash (hex): small Hamming distance means similar images


@dataclass(frozen=True)
class MaskStats:
    """What one mask is like. Foreground is value > max/2 (255 of 0/255, 1 of 0/1)."""

    height: int
    width: int
    channels: int
    values: tuple[int, ...]  # the distinct values, at most 16 of them
    distinct_values: int
    area: int  # foreground pixels
    component_areas: tuple[int, ...]  # 8-connected foreground components, largest first

    @property
    def binary(self) -> bool:
        return set(self.values) <= {0, 255} or set(self.values) <= {0, 1}

    @property
    def value_set(self) -> str:
        """'0/255', '0/1', '0 only' (empty) or 'other'."""
        values = set(self.values)
        if values == {0}:
            return "0 only"
        if values <= {0, 255}:
            return "0/255"
        if values <= {0, 1}:
            return "0/1"
        return "other"


def noise_sigma(grey: np.ndarray) -> float:
    """Noise standard deviation by Immerkær's method (1996): the mean absolute response to a
    Laplacian-difference kernel that cancels smooth structure, times sqrt(pi/2) / 6.

    Shape: grey (H, W) uint8, H and W >= 3; 0.0 when smaller.
    """
    height, width = (int(n) for n in grey.shape)
    if height < 3 or width < 3:
        return 0.0
    response = cv2.filter2D(grey, cv2.CV_16S, _IMMERKAER)[1:-1, 1:-1]
    total = float(cv2.norm(response, cv2.NORM_L1))
    return total * math.sqrt(math.pi / 2) / (6.0 * (height - 2) * (width - 2))


def difference_hash(grey: np.ndarray, side: int = HASH_SIDE) -> np.ndarray:
    """dHash: shrink to ``side`` rows of ``side + 1`` and compare horizontal neighbours.

    Shape: grey (H, W) uint8 -> (side * side / 8,) uint8, the packed bits.
    """
    height, width = grey.shape
    # first an exact integer-factor shrink (OpenCV's fast INTER_AREA path; the few edge pixels
    # it drops do not matter to the hash), then the small resize to the hash size
    factor = max(1, min(height // (4 * side), width // (4 * (side + 1))))
    if factor > 1:
        cropped = grey[: height - height % factor, : width - width % factor]
        grey = cv2.resize(
            cropped, (width // factor, height // factor), interpolation=cv2.INTER_AREA
        )
    tiny = cv2.resize(grey, (side + 1, side), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits: np.ndarray = np.packbits((tiny[:, 1:] > tiny[:, :-1]).ravel())
    return bits


def inspect_image(grey: np.ndarray) -> ImageStats:
    """Size, brightness, contrast, noise and hashes of one image. Shape: (H, W) uint8."""
    height, width = grey.shape
    cumulative = np.cumsum(cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel())
    mean, std = cv2.meanStdDev(grey)
    digest = hashlib.sha256(f"{height}x{width}:".encode())
    digest.update(np.ascontiguousarray(grey).data)
    return ImageStats(
        height=height,
        width=width,
        mean=round(float(mean[0, 0]), 3),
        std=round(float(std[0, 0]), 3),
        p1=int(np.searchsorted(cumulative, 0.01 * grey.size)),
        p99=int(np.searchsorted(cumulative, 0.99 * grey.size)),
        noise=round(noise_sigma(grey), 3),
        pixel_hash=digest.hexdigest()[:32],
        dhash=difference_hash(grey).tobytes().hex(),
    )


def inspect_mask(mask: np.ndarray) -> MaskStats:
    """Values, foreground area and components of one mask.

    Shape: (H, W) or (H, W, C) uint8 / uint16; several channels are reduced by their maximum
    (grey + alpha: the grey channel).
    """
    channels = 1 if mask.ndim == 2 else int(mask.shape[2])
    if channels > 1:
        mask = np.ascontiguousarray(mask[..., :3].max(axis=2) if channels >= 3 else mask[..., 0])
    if mask.dtype == np.uint8:
        values = np.flatnonzero(cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel())
        top = int(values[-1])
        foreground = cv2.threshold(mask, top // 2, 1, cv2.THRESH_BINARY)[1]
    else:
        values = np.unique(mask)
        top = int(values[-1])
        foreground = (mask > top // 2).astype(np.uint8)
    area = int(cv2.countNonZero(foreground))
    component_areas: tuple[int, ...] = ()
    if area:
        x, y, w, h = cv2.boundingRect(foreground)  # labelling only the lesions' box is faster
        _, _, stats, _ = cv2.connectedComponentsWithStats(
            foreground[y : y + h, x : x + w], connectivity=8
        )
        component_areas = tuple(sorted((int(a) for a in stats[1:, cv2.CC_STAT_AREA]), reverse=True))
    return MaskStats(
        height=int(mask.shape[0]),
        width=int(mask.shape[1]),
        channels=channels,
        values=tuple(int(v) for v in values[:16]),
        distinct_values=int(values.size),
        area=area,
        component_areas=component_areas,
    )


def _read(path: Path, flags: int) -> tuple[np.ndarray | None, str | None]:
    """Decoded pixels, or None and why not."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    if not data:
        return None, "empty file (0 bytes)"
    if data.startswith(b"\x89PNG") and not data.rstrip(b"\0").endswith(_PNG_END):
        return None, "truncated PNG (no IEND chunk at the end)"
    if data.startswith(b"\xff\xd8") and _JPEG_END not in data[-64:]:
        return None, "truncated JPEG (no end-of-image marker)"
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is None or pixels.size == 0:
        return None, "not a decodable image"
    return pixels, None


@dataclass
class NameRecord:
    """Everything found for one file stem: its image, its mask, or both."""

    name: str
    image_file: str | None = None  # relative to the data set root
    mask_file: str | None = None
    image: ImageStats | None = None
    mask: MaskStats | None = None
    image_error: str | None = None
    mask_error: str | None = None

    @property
    def label(self) -> str:
        """positive, negative, unlabeled (no mask), no image, or unreadable."""
        if self.image_file is None:
            return "no image"
        if self.mask_file is None:
            return "unlabeled"
        if self.mask is None:
            return "unreadable"
        return "positive" if self.mask.area else "negative"


@dataclass(frozen=True)
class _Job:
    root: Path
    name: str
    image_file: str | None
    mask_file: str | None


def _inspect_name(job: _Job) -> NameRecord:
    record = NameRecord(job.name, job.image_file, job.mask_file)
    if job.image_file is not None:
        grey, record.image_error = _read(job.root / job.image_file, cv2.IMREAD_GRAYSCALE)
        if grey is not None:
            record.image = inspect_image(grey)
    if job.mask_file is not None:
        mask, record.mask_error = _read(job.root / job.mask_file, cv2.IMREAD_UNCHANGED)
        if mask is not None:
            record.mask = inspect_mask(mask)
    return record


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _run(jobs: list[_Job], workers: int) -> Iterator[NameRecord]:
    if workers <= 1 or len(jobs) < 2:
        yield from map(_inspect_name, jobs)
        return
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
        yield from pool.imap(_inspect_name, jobs, chunksize=8)


# ------------------------------------------------------------------ the whole data set


def _list_files(
    folder: Path, suffixes: tuple[str, ...]
) -> tuple[dict[str, Path], list[str], list[str]]:
    """stem -> file, the stems found twice, and the files that are not images."""
    by_stem: dict[str, Path] = {}
    conflicts: list[str] = []
    ignored: list[str] = []
    if not folder.is_dir():
        return by_stem, conflicts, ignored
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # hidden files: convert-siim's partial writes, .DS_Store
        if path.suffix.lower() not in suffixes:
            ignored.append(path.name)
        elif path.stem in by_stem:
            conflicts.append(f"{by_stem[path.stem].name} and {path.name}")
        else:
            by_stem[path.stem] = path
    return by_stem, conflicts, ignored


@dataclass
class IndexCsv:
    """What ``index.csv`` says about each ImageId (the columns we use)."""

    rows: int
    patient_ids: dict[str, str]
    mask_pixels: dict[str, int]
    unlabeled: set[str]
    note: str | None = None


def _read_index(path: Path) -> IndexCsv | None:
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return IndexCsv(0, {}, {}, set(), note=f"index.csv unreadable: {exc}")
    if rows and "ImageId" not in rows[0]:
        return IndexCsv(len(rows), {}, {}, set(), note="index.csv has no ImageId column: ignored")
    patients = {r["ImageId"]: r["PatientID"] for r in rows if r.get("PatientID")}
    mask_pixels = {
        r["ImageId"]: int(r["mask_pixels"])
        for r in rows
        if (r.get("mask_pixels") or "").strip().isdigit()
    }
    unlabeled = {r["ImageId"] for r in rows if r.get("status") == "unlabeled"}
    return IndexCsv(len(rows), patients, mask_pixels, unlabeled)


def _near_duplicates(
    records: Sequence[NameRecord], max_distance: int
) -> list[tuple[str, str, int]]:
    """Pairs of different images whose dHashes differ in at most ``max_distance`` bits."""
    hashed = [(r.name, r.image) for r in records if r.image is not None]
    if len(hashed) < 2:
        return []
    hashes = np.array([np.frombuffer(bytes.fromhex(s.dhash), np.uint64) for _, s in hashed])
    pairs: list[tuple[str, str, int]] = []
    block = 128  # rows of the distance matrix at a time: memory stays small for 10k+ images
    for start in range(0, len(hashed), block):
        rows = hashes[start : start + block, np.newaxis, :] ^ hashes[np.newaxis]
        distances = np.bitwise_count(rows).sum(axis=2)
        for i, j in zip(*np.nonzero(distances <= max_distance), strict=True):
            (name_a, a), (name_b, b) = hashed[start + int(i)], hashed[int(j)]
            if start + int(i) < int(j) and a.pixel_hash != b.pixel_hash:
                pairs.append((name_a, name_b, int(distances[i, j])))
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))


def _distribution(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    p10, median, p90 = np.percentile(array, [10, 50, 90])
    return {
        "count": len(values),
        "min": round(float(array.min()), 3),
        "p10": round(float(p10), 3),
        "median": round(float(median), 3),
        "mean": round(float(array.mean()), 3),
        "p90": round(float(p90), 3),
        "max": round(float(array.max()), 3),
    }


def _log_edges(values: Sequence[int], per_decade: int = 4) -> list[float]:
    low = math.floor(math.log10(max(1, min(values))) * per_decade)
    high = math.ceil(math.log10(max(values) + 1) * per_decade)
    return [round(10 ** (k / per_decade), 1) for k in range(low, max(high, low + 1) + 1)]


@dataclass
class DatasetInspection:
    """The findings of ``inspect_dataset``; ``to_json`` is the report."""

    layout: DatasetLayout
    records: list[NameRecord]
    index: IndexCsv | None = None
    name_conflicts: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    blank_std: float = BLANK_STD
    near_distance: int = NEAR_DUPLICATE_DISTANCE
    exact_duplicates: list[list[str]] = field(default_factory=list)
    near_duplicates: list[tuple[str, str, int]] = field(default_factory=list)

    # -------------------------------------------------------------- findings, by kind

    def unreadable(self) -> list[dict[str, str]]:
        out = []
        for r in self.records:
            if r.image_error:
                out.append({"file": str(r.image_file), "reason": r.image_error})
            if r.mask_error:
                out.append({"file": str(r.mask_file), "reason": r.mask_error})
        return out

    def images_without_mask(self) -> list[str]:
        return [r.name for r in self.records if r.label == "unlabeled"]

    def unexpected_unlabeled(self) -> list[str]:
        """Images without a mask that index.csv does not declare unlabeled."""
        declared = self.index.unlabeled if self.index else set()
        return [n for n in self.images_without_mask() if n not in declared]

    def masks_without_image(self) -> list[str]:
        return [r.name for r in self.records if r.image_file is None]

    def non_binary_masks(self) -> list[NameRecord]:
        return [r for r in self.records if r.mask is not None and not r.mask.binary]

    def size_mismatches(self) -> list[NameRecord]:
        return [
            r
            for r in self.records
            if r.image is not None
            and r.mask is not None
            and (r.image.height, r.image.width) != (r.mask.height, r.mask.width)
        ]

    def blank_images(self) -> list[NameRecord]:
        return [r for r in self.records if r.image is not None and r.image.std < self.blank_std]

    def labelled(self) -> list[NameRecord]:
        """Names with an image file and a readable mask."""
        return [r for r in self.records if r.label in ("positive", "negative")]

    def specks(self) -> dict[str, int]:
        """Masks with components under SPECK_PIXELS pixels: name -> how many."""
        out = {}
        for r in self.records:
            if r.mask and (n := sum(1 for a in r.mask.component_areas if a < SPECK_PIXELS)):
                out[r.name] = n
        return out

    def patient_of(self, name: str) -> str | None:
        return self.index.patient_ids.get(name) if self.index else None

    # -------------------------------------------------------------- verdict

    def problems(self) -> list[str]:
        """What makes the data set unusable as is (exit code 3)."""
        out = []
        if unreadable := self.unreadable():
            out.append(f"{len(unreadable)} unreadable file(s)")
        if non_binary := self.non_binary_masks():
            out.append(f"{len(non_binary)} non-binary mask(s)")
        if missing := self.masks_without_image():
            out.append(f"{len(missing)} mask(s) without an image")
        if unlabeled := self.unexpected_unlabeled():
            out.append(f"{len(unlabeled)} image(s) without a mask (not declared unlabeled)")
        if mismatched := self.size_mismatches():
            out.append(f"{len(mismatched)} mask(s) of another size than their image")
        if self.name_conflicts:
            out.append(f"{len(self.name_conflicts)} name(s) used by two files")
        return out

    @property
    def usable(self) -> bool:
        return not self.problems()

    def warnings(self) -> list[str]:
        out = []
        if blank := self.blank_images():
            out.append(f"{len(blank)} blank image(s) (grey-level std < {self.blank_std:g})")
        if self.exact_duplicates:
            count = sum(len(g) for g in self.exact_duplicates)
            out.append(f"{count} images in {len(self.exact_duplicates)} exact-duplicate group(s)")
        if self.near_duplicates:
            out.append(f"{len(self.near_duplicates)} near-duplicate pair(s)")
        shapes = {(r.image.height, r.image.width) for r in self.records if r.image}
        if len(shapes) > 1:
            out.append(f"{len(shapes)} different image sizes")
        scales = {r.mask.value_set for r in self.records if r.mask} & {"0/255", "0/1"}
        if "0/1" in scales:
            count = sum(1 for r in self.records if r.mask and r.mask.value_set == "0/1")
            out.append(
                f"{count} mask(s) are 0/1: the training Dataset binarises masks at 127 and "
                "would read them as empty; rescale them to 0/255"
            )
        if multi := [r for r in self.records if r.mask and r.mask.channels > 1]:
            out.append(f"{len(multi)} mask(s) with several channels")
        labels = Counter(r.label for r in self.labelled())
        if labels and not labels["negative"]:
            out.append(
                "no negatives: every labelled image is positive, so a model trained on this "
                "alone cannot learn its false-positive rate on normal films"
            )
        if labels and not labels["positive"]:
            out.append("no positives: every mask is empty")
        if specks := self.specks():
            out.append(
                f"{len(specks)} mask(s) hold components under {SPECK_PIXELS} px "
                f"({sum(specks.values())} in all)"
            )
        if mismatches := self._mask_pixel_mismatches():
            out.append(f"{len(mismatches)} mask(s) whose area differs from index.csv mask_pixels")
        if self.index and self.index.note:
            out.append(self.index.note)
        if self.ignored_files:
            out.append(
                f"{len(self.ignored_files)} file(s) ignored: not {'/'.join(IMAGE_SUFFIXES)} "
                f"images or {'/'.join(MASK_SUFFIXES)} masks (the training Dataset skips them too)"
            )
        return out

    def _mask_pixel_mismatches(self) -> list[dict[str, Any]]:
        if not self.index or not self.index.mask_pixels:
            return []
        return [
            {"name": r.name, "index_csv": self.index.mask_pixels[r.name], "mask": r.mask.area}
            for r in self.records
            if r.mask is not None
            and r.name in self.index.mask_pixels
            and self.index.mask_pixels[r.name] != r.mask.area
        ]

    # -------------------------------------------------------------- the report

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values (no timings: the same data gives the same report)."""
        records = self.records
        images = [r for r in records if r.image_file is not None]
        masks = [r for r in records if r.mask_file is not None]
        labelled = self.labelled()
        positives = [r for r in labelled if r.label == "positive"]
        labels = Counter(r.label for r in labelled)
        areas = [r.mask.area for r in positives if r.mask]
        components = Counter(len(r.mask.component_areas) for r in labelled if r.mask)
        stats = [r.image for r in records if r.image is not None]
        lesion: dict[str, Any] = {
            "pixels": _distribution(areas),
            "percent_of_image": _distribution(
                [100.0 * r.mask.area / (r.mask.height * r.mask.width) for r in positives if r.mask]
            ),
            "component_pixels": _distribution(
                [a for r in positives if r.mask for a in r.mask.component_areas]
            ),
            "masks_with_specks": self.specks(),
        }
        if areas:
            edges = _log_edges(areas)
            counts, _ = np.histogram(areas, bins=edges)
            lesion["histogram"] = {"edges": edges, "counts": [int(c) for c in counts]}
        return {
            "tool": f"pneumonode {__version__} inspect-dataset",
            "dataset": str(self.layout.root),
            "layout": self.layout.name,
            "usable": self.usable,
            "problems": self.problems(),
            "warnings": self.warnings(),
            "settings": {
                "blank_std_below": self.blank_std,
                "near_duplicate_hash": f"dHash {HASH_SIDE}x{HASH_SIDE + 1} "
                f"({HASH_SIDE * HASH_SIDE} bits) of the grey image",
                "near_duplicate_max_distance": self.near_distance,
                "noise": "Immerkaer (1996) sigma from a Laplacian-difference kernel",
                "mask_foreground": "value > max/2",
            },
            "counts": {
                "names": len(records),
                "image_files": len(images),
                "mask_files": len(masks),
                "pairs": sum(1 for r in records if r.image_file and r.mask_file),
                "images_without_mask": len(self.images_without_mask()),
                "masks_without_image": len(self.masks_without_image()),
                "unreadable_images": sum(1 for r in records if r.image_error),
                "unreadable_masks": sum(1 for r in records if r.mask_error),
            },
            "unreadable": self.unreadable(),
            "images_without_mask": self.images_without_mask(),
            "images_without_mask_not_declared_unlabeled": self.unexpected_unlabeled(),
            "masks_without_image": self.masks_without_image(),
            "name_conflicts": self.name_conflicts,
            "ignored_files": self.ignored_files,
            "image_sizes_hxw": dict(
                sorted(Counter(f"{s.height}x{s.width}" for s in stats).items())
            ),
            "mask_size_mismatches": [
                {
                    "name": r.name,
                    "image_hxw": f"{r.image.height}x{r.image.width}",
                    "mask_hxw": f"{r.mask.height}x{r.mask.width}",
                }
                for r in self.size_mismatches()
                if r.image and r.mask
            ],
            "blank_images": [
                {"name": r.name, "std": r.image.std} for r in self.blank_images() if r.image
            ],
            "masks": {
                "readable": sum(1 for r in records if r.mask),
                "empty": sum(1 for r in records if r.mask and not r.mask.area),
                "value_sets": dict(
                    sorted(Counter(r.mask.value_set for r in masks if r.mask).items())
                ),
                "non_binary": [
                    {
                        "name": r.name,
                        "values": list(r.mask.values),
                        "distinct_values": r.mask.distinct_values,
                    }
                    for r in self.non_binary_masks()
                    if r.mask
                ],
                "several_channels": [r.name for r in masks if r.mask and r.mask.channels > 1],
                "area_differs_from_index_csv": self._mask_pixel_mismatches(),
            },
            "class_balance": {
                "positive": labels["positive"],
                "negative": labels["negative"],
                "unlabeled": len(self.images_without_mask()),
                "positive_share": round(labels["positive"] / len(labelled), 4)
                if labelled
                else None,
            },
            "lesion_area": lesion,
            "components_per_mask": {str(k): components[k] for k in sorted(components)},
            "intensity": {
                "brightness_mean": _distribution([s.mean for s in stats]),
                "contrast_std": _distribution([s.std for s in stats]),
                "range_p1_p99": _distribution([s.p99 - s.p1 for s in stats]),
                "noise_sigma": _distribution([s.noise for s in stats]),
            },
            "duplicates": {
                "exact_groups": [
                    {"names": group, "patients": self._patients_in(group)}
                    for group in self.exact_duplicates
                ],
                "near_pairs": [
                    {"a": a, "b": b, "distance": d, "patients": self._patients_in([a, b])}
                    for a, b, d in self.near_duplicates
                ],
            },
            "patients": self._patients(),
        }

    def _patients_in(self, names: Sequence[str]) -> int | None:
        """How many different patients the names belong to (None: unknown)."""
        ids = [self.patient_of(n) for n in names]
        return None if None in ids else len(set(ids))

    def _patients(self) -> dict[str, Any] | None:
        if not self.index or not self.index.patient_ids:
            return None
        with_image = [r for r in self.records if r.image_file is not None]
        by_patient: dict[str, list[NameRecord]] = defaultdict(list)
        for r in with_image:
            if (patient := self.patient_of(r.name)) is not None:
                by_patient[patient].append(r)
        per_patient = Counter(len(v) for v in by_patient.values())
        return {
            "patients": len(by_patient),
            "images_without_patient_id": sum(1 for r in with_image if not self.patient_of(r.name)),
            "images_per_patient": {str(k): per_patient[k] for k in sorted(per_patient)},
            "patients_with_a_positive": sum(
                1 for v in by_patient.values() if any(r.label == "positive" for r in v)
            ),
        }


def inspect_dataset(
    dataset: Path | DatasetLayout,
    *,
    workers: int = 1,
    show_progress: bool = False,
    blank_std: float = BLANK_STD,
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
) -> DatasetInspection:
    """Read every image and mask of the data set once and collect the findings.

    Args:
        dataset: the data set folder, or its layout (``DatasetLayout.detect``).
        workers: parallel processes for the per-file pass.
        show_progress: draw a progress bar on stderr.

    Raises:
        DatasetLayoutError: the folder is not a data set, or holds no image or mask files.
    """
    layout = dataset if isinstance(dataset, DatasetLayout) else DatasetLayout.detect(dataset)
    images, image_conflicts, image_ignored = _list_files(layout.images_dir, IMAGE_SUFFIXES)
    masks, mask_conflicts, mask_ignored = _list_files(layout.masks_dir, MASK_SUFFIXES)
    if not images and not masks:
        raise DatasetLayoutError(
            f"{layout.images_dir} holds no image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    root = layout.root

    def relative(path: Path | None) -> str | None:
        return str(path.relative_to(root)) if path is not None else None

    jobs = [
        _Job(root, name, relative(images.get(name)), relative(masks.get(name)))
        for name in sorted(images.keys() | masks.keys())
    ]
    records: list[NameRecord] = []
    with tqdm(total=len(jobs), desc="inspect", unit="name", disable=not show_progress) as bar:
        for record in _run(jobs, workers):
            records.append(record)
            bar.update(1)

    by_hash: dict[str, list[str]] = defaultdict(list)
    for r in records:
        if r.image is not None:
            by_hash[r.image.pixel_hash].append(r.name)
    return DatasetInspection(
        layout=layout,
        records=records,
        index=_read_index(layout.index_csv),
        name_conflicts=[f"{layout.images_dir.name}/{c}" for c in image_conflicts]
        + [f"{layout.masks_dir.name}/{c}" for c in mask_conflicts],
        ignored_files=[f"{layout.images_dir.name}/{n}" for n in image_ignored]
        + [f"{layout.masks_dir.name}/{n}" for n in mask_ignored],
        blank_std=blank_std,
        near_distance=near_duplicate_distance,
        exact_duplicates=sorted(g for g in by_hash.values() if len(g) > 1),
        near_duplicates=_near_duplicates(records, near_duplicate_distance),
    )
