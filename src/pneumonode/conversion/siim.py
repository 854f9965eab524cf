"""Turn the SIIM-ACR pneumothorax DICOMs + run-length label CSV into a PNG training set.

Output layout (the vbookshelf / seed-notebook layout the model's Dataset reads)::

    OUT/png_images/<ImageId>.png   8-bit, size x size, through ``prepare_radiograph``
    OUT/png_masks/<ImageId>.png    0/255, the union of the image's RLE rows, same geometry
    OUT/index.csv                  one row per DICOM found (see ``INDEX_COLUMNS``)
    OUT/summary.json               counts, failed files with reasons, label rows without image

The challenge's ImageId is the image's SOP Instance UID, and the download names each file after
it. A file is matched to its label rows by the SOP Instance UID in its header, then by its file
name (``<ImageId>.dcm``), so a renamed file still gets its mask and a file whose header cannot be
read is still reported under its name. A file with no label rows is named by its SOP Instance UID
too (by its file name when the header has none).

Re-running skips images whose outputs exist and verify (PNG decodes at the right size, mask
equal to the labels); files are written atomically, so an interrupted run resumes cleanly.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom import Dataset, dcmread
from tqdm import tqdm

from pneumonode.conversion.decode import BoundedReader, keep_dicom_values_out_of_logs, read_dataset
from pneumonode.conversion.errors import ConversionError
from pneumonode.conversion.geometry import Letterbox
from pneumonode.conversion.png import encode_png
from pneumonode.conversion.prepare import prepare_radiograph
from pneumonode.conversion.rle import RleError, union_mask

__all__ = [
    "INDEX_COLUMNS",
    "SiimConversionSummary",
    "convert_siim_dataset",
    "find_dicom_files",
    "header_sop_instance_uid",
    "match_image_id",
    "parse_age_years",
]

INDEX_COLUMNS = (
    "ImageId",
    "PatientID",
    "ViewPosition",
    "PatientSex",
    "PatientAgeYears",
    "has_pneumothorax",
    "mask_pixels",
    "regions",
    "source_path",
    "status",
    "error",
)

STATUS_OK = "ok"
STATUS_UNLABELED = "unlabeled"
STATUS_FAILED = "failed"


@dataclass
class SiimConversionSummary:
    """What a conversion run did."""

    images_found: int = 0
    converted: int = 0
    reused: int = 0
    unlabeled: int = 0
    positives: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    labels_without_image: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "images_found": self.images_found,
            "converted": self.converted,
            "reused": self.reused,
            "unlabeled": self.unlabeled,
            "positives": self.positives,
            "failed": len(self.failed),
            "failed_files": self.failed,
            "labels_without_image": len(self.labels_without_image),
            "labels_without_image_ids": self.labels_without_image,
        }

    def lines(self) -> list[str]:
        out = [
            f"images found:          {self.images_found}",
            f"converted:             {self.converted}",
            f"reused (verified):     {self.reused}",
            f"with pneumothorax:     {self.positives}",
            f"unlabeled (no CSV row): {self.unlabeled}",
            f"failed:                {len(self.failed)}",
            f"CSV rows with no image: {len(self.labels_without_image)}",
        ]
        out += [
            f"  failed {image_id}: {reason}" for image_id, reason in sorted(self.failed.items())
        ]
        return out


@dataclass(frozen=True)
class _Job:
    path: Path
    image_id: str
    rles: list[str] | None  # None: no label row for this image
    out: Path
    size: int
    percentiles: tuple[float, float]
    png_level: int


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)


def parse_age_years(value: object) -> int | None:
    """Age in whole years from a DICOM AS value, tolerating SIIM's bare numbers ('38')."""
    match = _AGE.match(str(value or ""))
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2).upper() or "Y"
    days_per_unit = {"D": 1, "W": 7, "M": 30.4375, "Y": 365.25}[unit]
    return int(number * days_per_unit // 365.25)


def find_dicom_files(root: Path) -> list[Path]:
    """All ``*.dcm`` files under ``root`` (any depth, any case of the suffix), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() == ".dcm" and p.is_file())


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def header_sop_instance_uid(path: Path) -> str | None:
    """The SOP Instance UID in the header of the DICOM file at ``path`` (read without its pixel
    data), or None when the header cannot be read or holds no well-formed UID (then the caller
    falls back to the file name, which is never built from a value it has not checked)."""
    keep_dicom_values_out_of_logs()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged file is reported by its conversion
            with BoundedReader(io.FileIO(str(path), "rb")) as handle:
                ds = dcmread(handle, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            uid = str(ds.get("SOPInstanceUID", "") or "").strip().rstrip("\x00")
    except MemoryError:
        raise  # not a property of the file
    except Exception:  # pydicom raises many types on corrupt input
        return None
    return uid if len(uid) <= 64 and _UID.fullmatch(uid) else None


def match_image_id(path: Path, labels: dict[str, list[str]]) -> str:
    """The ImageId of the DICOM at ``path``: its header's SOP Instance UID when the labels
    know it, else its file name when they know that, else the UID (the file name when the
    header has none)."""
    uid = header_sop_instance_uid(path)
    if uid is not None and uid in labels:
        return uid
    if path.stem in labels or uid is None:
        return path.stem
    return uid


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def _read_png(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image if image is not None and image.dtype == np.uint8 and image.ndim == 2 else None


def _metadata(ds: Dataset) -> dict[str, Any]:
    return {
        "PatientID": str(ds.get("PatientID", "") or ""),
        "ViewPosition": str(ds.get("ViewPosition", "") or ""),
        "PatientSex": str(ds.get("PatientSex", "") or ""),
        "PatientAgeYears": parse_age_years(ds.get("PatientAge")),
    }


def _convert_one(job: _Job) -> tuple[dict[str, Any], bool]:
    """Convert one DICOM; returns its index row and whether verified outputs were reused."""
    row: dict[str, Any] = dict.fromkeys(INDEX_COLUMNS, "")
    row.update(ImageId=job.image_id, source_path=str(job.path))
    image_path = job.out / "png_images" / f"{job.image_id}.png"
    mask_path = job.out / "png_masks" / f"{job.image_id}.png"
    try:
        ds = read_dataset(job.path)
        row.update(_metadata(ds))
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        mask: np.ndarray | None = None
        if job.rles is not None and rows > 0 and cols > 0:
            source_mask = union_mask(job.rles, width=cols, height=rows)
            mask = Letterbox.fit(rows, cols, job.size).mask_to_model(source_mask)
            row.update(
                has_pneumothorax=int(bool(job.rles)),
                mask_pixels=int(np.count_nonzero(mask)),
                regions=len(job.rles),
            )
        row["status"] = STATUS_OK if job.rles is not None else STATUS_UNLABELED

        existing = _read_png(image_path)
        if existing is not None and existing.shape == (job.size, job.size):
            existing_mask = _read_png(mask_path)
            if mask is None and not mask_path.exists():
                return row, True
            if (
                mask is not None
                and existing_mask is not None
                and np.array_equal(existing_mask, mask)
            ):
                return row, True

        prepared = prepare_radiograph(ds, job.size, job.percentiles, label=job.path.name)
        if mask is not None:
            _write_atomic(mask_path, encode_png(mask, job.png_level))
        elif mask_path.exists():
            mask_path.unlink()  # labels no longer list this image
        _write_atomic(image_path, prepared.png(job.png_level))
        return row, False
    except (ConversionError, RleError) as exc:
        row.update(status=STATUS_FAILED, error=str(exc.args[0]) if exc.args else type(exc).__name__)
    except OSError as exc:
        row.update(status=STATUS_FAILED, error=f"cannot write output: {exc.strerror or exc}")
    return row, False


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[tuple[dict[str, Any], bool]]:
    if workers <= 1:
        yield from map(_convert_one, jobs)
        return
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_convert_one, jobs, chunksize=4)


def convert_siim_dataset(
    dicom_dir: Path,
    labels: dict[str, list[str]],
    out: Path,
    *,
    size: int = 1024,
    workers: int = 1,
    percentiles: tuple[float, float] = (0.5, 99.5),
    png_level: int = 1,
    show_progress: bool = False,
) -> SiimConversionSummary:
    """Convert every DICOM under ``dicom_dir``; see the module docstring for the outputs.

    Args:
        labels: ImageId -> run-length strings (``read_siim_rle_csv``).
        show_progress: draw a progress bar on stderr.
    """
    (out / "png_images").mkdir(parents=True, exist_ok=True)
    (out / "png_masks").mkdir(parents=True, exist_ok=True)
    summary = SiimConversionSummary()
    files = find_dicom_files(dicom_dir)
    summary.images_found = len(files)

    jobs: list[_Job] = []
    seen: dict[str, Path] = {}
    index_rows: list[dict[str, Any]] = []
    for path in files:
        image_id = match_image_id(path, labels)
        if image_id in seen:
            summary.failed[f"{image_id} ({path})"] = f"duplicate ImageId, also at {seen[image_id]}"
            row = dict.fromkeys(INDEX_COLUMNS, "")
            row.update(ImageId=image_id, source_path=str(path), status=STATUS_FAILED)
            row["error"] = "duplicate ImageId"
            index_rows.append(row)
            continue
        seen[image_id] = path
        jobs.append(_Job(path, image_id, labels.get(image_id), out, size, percentiles, png_level))
    summary.labels_without_image = sorted(set(labels) - set(seen))

    bar = tqdm(total=len(jobs), desc="convert-siim", unit="img", disable=not show_progress)
    for row, reused in _run_jobs(jobs, workers):
        bar.update(1)
        index_rows.append(row)
        if row["status"] == STATUS_FAILED:
            summary.failed[row["ImageId"]] = row["error"]
        else:
            summary.reused += reused
            summary.converted += not reused
            summary.unlabeled += row["status"] == STATUS_UNLABELED
            summary.positives += bool(row["has_pneumothorax"])
    bar.close()

    index_rows.sort(key=lambda r: (r["ImageId"], r["source_path"]))
    tmp = out / ".index.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(index_rows)
    tmp.replace(out / "index.csv")
    _write_atomic(out / "summary.json", json.dumps(summary.to_json(), indent=2).encode())
    return summary
