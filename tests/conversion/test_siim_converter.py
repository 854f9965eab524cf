"""`pneumonode convert-siim` on the real SIIM sample: PNGs, masks, index, resume, failures."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from pneumonode.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, main
from pneumonode.conversion import encode_siim_rle, prepare_radiograph
from pneumonode.conversion.siim import INDEX_COLUMNS, parse_age_years


def kaggle_layout(dicoms: list[Path], root: Path) -> Path:
    """Nest each file in two folders, as the Kaggle download does."""
    for i, path in enumerate(dicoms):
        folder = root / f"1.2.276.0.study{i}" / f"1.2.276.0.series{i}"
        folder.mkdir(parents=True)
        shutil.copy(path, folder / path.name)
    return root


def read_index(out: Path) -> dict[str, dict[str, str]]:
    with (out / "index.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == INDEX_COLUMNS
    return {row["ImageId"]: row for row in rows}


def convert(*args: str | Path) -> int:
    return main(["convert-siim", "--no-progress", *map(str, args)])


def test_converts_the_sample_into_verified_pngs_and_masks(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    dicom_dir = kaggle_layout(siim_sample_dicoms, tmp_path / "dicom-images-train")
    out = tmp_path / "out"
    code = convert(
        "--dicom-dir", dicom_dir, "--rle-csv", siim_sample / "train-rle-sample.csv", "--out", out
    )
    assert code == EXIT_OK
    index = read_index(out)
    assert len(index) == 10
    for path in siim_sample_dicoms:
        image_id = path.stem
        mask = cv2.imread(str(out / "png_masks" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        expected = cv2.imread(str(siim_sample / "masks" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(mask, expected), image_id
        image = cv2.imread(str(out / "png_images" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (1024, 1024) and image.dtype == np.uint8
        assert np.array_equal(image, prepare_radiograph(path).pixels)
        row = index[image_id]
        assert row["status"] == "ok" and row["error"] == ""
        assert int(row["mask_pixels"]) == int(np.count_nonzero(expected))
        assert row["has_pneumothorax"] == str(int(expected.any()))
        assert row["ViewPosition"] in ("PA", "AP") and row["PatientSex"] in ("M", "F")
        assert row["PatientAgeYears"].isdigit()
        assert Path(row["source_path"]).parent.parent.parent == dicom_dir
    assert sum(row["has_pneumothorax"] == "1" for row in index.values()) == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["converted"] == 10 and summary["positives"] == 5 and summary["failed"] == 0


def test_rerun_reuses_verified_outputs_and_repairs_broken_ones(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    csv_path = siim_sample / "train-rle-sample.csv"
    out = tmp_path / "out"
    assert convert("--dicom-dir", siim_sample / "dicom", "--rle-csv", csv_path, "--out", out) == 0
    positive = next(p.stem for p in siim_sample_dicoms if p.stem.endswith("4904.1517875185.355709"))
    first_mtimes = {p: p.stat().st_mtime_ns for p in (out / "png_images").iterdir()}
    broken = out / "png_masks" / f"{positive}.png"
    broken.write_bytes(b"not a png")
    (out / "png_images" / f"{siim_sample_dicoms[0].stem}.png").unlink()

    assert convert("--dicom-dir", siim_sample / "dicom", "--rle-csv", csv_path, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reused"] == 8 and summary["converted"] == 2
    expected = cv2.imread(str(siim_sample / "masks" / f"{positive}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(cv2.imread(str(broken), cv2.IMREAD_UNCHANGED), expected)
    untouched = [p for p in first_mtimes if p.stem not in (positive, siim_sample_dicoms[0].stem)]
    assert all(p.stat().st_mtime_ns == first_mtimes[p] for p in untouched)
    assert not list(out.rglob(".*.tmp*"))


def test_unlabeled_missing_and_corrupt_files_are_reported(
    siim_sample: Path,
    siim_sample_dicoms: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dicom_dir = tmp_path / "dicoms"
    dicom_dir.mkdir()
    for path in siim_sample_dicoms[:4]:
        shutil.copy(path, dicom_dir / path.name)
    corrupt = dicom_dir / "1.2.3.corrupt.dcm"
    corrupt.write_bytes(siim_sample_dicoms[5].read_bytes()[:5000])
    unlabeled = dicom_dir / "1.2.3.unlabeled.DCM"
    shutil.copy(siim_sample_dicoms[6], unlabeled)
    unlabeled_id = siim_sample_dicoms[6].stem  # named by its header's SOP Instance UID
    labels = (siim_sample / "train-rle-sample.csv").read_text(encoding="utf-8-sig").splitlines()
    labelled_ids = {p.stem for p in siim_sample_dicoms[:4]} | {"1.2.3.corrupt"}
    kept = [line for line in labels if line.split(",")[0] in labelled_ids]
    csv_gz = tmp_path / "labels.csv.gz"
    body = "ImageId, EncodedPixels\n" + "\n".join(kept) + "\n1.2.3.corrupt,-1\n9.9.9.nofile,1 5\n"
    csv_gz.write_bytes(gzip.compress(body.encode()))

    out = tmp_path / "out"
    code = convert("--dicom-dir", dicom_dir, "--rle-csv", csv_gz, "--out", out, "--workers", "2")
    assert code == EXIT_PARTIAL
    index = read_index(out)
    assert index["1.2.3.corrupt"]["status"] == "failed"
    assert "truncated" in index["1.2.3.corrupt"]["error"]
    assert index[unlabeled_id]["status"] == "unlabeled"
    assert index[unlabeled_id]["has_pneumothorax"] == ""
    assert index[unlabeled_id]["source_path"] == str(unlabeled)
    assert (out / "png_images" / f"{unlabeled_id}.png").exists()
    assert not (out / "png_masks" / f"{unlabeled_id}.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels_without_image_ids"] == ["9.9.9.nofile"]
    assert list(summary["failed_files"]) == ["1.2.3.corrupt"]
    printed = capsys.readouterr().out
    assert "failed:                1" in printed and "CSV rows with no image: 1" in printed


def test_smaller_size_and_parallel_workers_give_the_same_result(
    siim_sample: Path, tmp_path: Path
) -> None:
    csv_path = siim_sample / "train-rle-sample.csv"
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        args = ["--rle-csv", csv_path, "--out", out, "--size", "256", "--workers", workers]
        assert convert("--dicom-dir", siim_sample / "dicom", *args) == EXIT_OK
        outs.append(out)
    for mask_path in (outs[0] / "png_masks").iterdir():
        a = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(outs[1] / "png_masks" / mask_path.name), cv2.IMREAD_UNCHANGED)
        assert a.shape == (256, 256) and np.array_equal(a, b)
        full = cv2.imread(str(siim_sample / "masks" / mask_path.name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(a, full[2::4, 2::4])  # nearest: the centre pixel of each 4x4 block


def test_several_label_rows_of_one_image_are_united(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    path = next(p for p in siim_sample_dicoms if p.stem.endswith("1314.1517875167.222290"))
    mask = cv2.imread(str(siim_sample / "masks" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
    top, bottom = mask.copy(), mask.copy()
    split = int(np.median(np.nonzero(mask)[0]))
    top[split:] = 0
    bottom[:split] = 0
    labels = tmp_path / "labels.csv"
    labels.write_text(
        f"{path.stem},{encode_siim_rle(top)}\n{path.stem},{encode_siim_rle(bottom)}\n"
    )
    dicom_dir = tmp_path / "d"
    dicom_dir.mkdir()
    shutil.copy(path, dicom_dir)
    out = tmp_path / "out"
    assert convert("--dicom-dir", dicom_dir, "--rle-csv", labels, "--out", out) == EXIT_OK
    written = cv2.imread(str(out / "png_masks" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(written, mask)
    assert read_index(out)[path.stem]["regions"] == "2"


def _positive_and_negative(siim_sample: Path, dicoms: list[Path]) -> tuple[Path, Path]:
    """A sample DICOM whose mask has pixels, and one whose mask is empty."""

    def positive(path: Path) -> bool:
        mask = cv2.imread(str(siim_sample / "masks" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        return bool(mask.any())

    return next(p for p in dicoms if positive(p)), next(p for p in dicoms if not positive(p))


def test_a_renamed_file_is_matched_to_its_labels_by_its_sop_instance_uid(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    positive, negative = _positive_and_negative(siim_sample, siim_sample_dicoms)
    dicom_dir = tmp_path / "renamed"
    (dicom_dir / "patient-7").mkdir(parents=True)
    shutil.copy(positive, dicom_dir / "patient-7" / "chest-pa.dcm")
    shutil.copy(negative, dicom_dir / "film 2.DCM")
    out = tmp_path / "out"
    labels = siim_sample / "train-rle-sample.csv"
    assert convert("--dicom-dir", dicom_dir, "--rle-csv", labels, "--out", out) == EXIT_OK

    index = read_index(out)
    assert set(index) == {positive.stem, negative.stem}
    for original, renamed in (
        (positive, dicom_dir / "patient-7" / "chest-pa.dcm"),
        (negative, dicom_dir / "film 2.DCM"),
    ):
        row = index[original.stem]
        assert row["status"] == "ok" and row["source_path"] == str(renamed)
        written = cv2.imread(str(out / "png_masks" / f"{original.stem}.png"), cv2.IMREAD_UNCHANGED)
        expected = cv2.imread(
            str(siim_sample / "masks" / f"{original.stem}.png"), cv2.IMREAD_UNCHANGED
        )
        assert np.array_equal(written, expected)
    assert index[positive.stem]["has_pneumothorax"] == "1"
    assert index[negative.stem]["has_pneumothorax"] == "0"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels_without_image"] == 8 and summary["unlabeled"] == 0


def test_a_file_whose_header_uid_has_no_labels_is_matched_by_its_file_name(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    positive, _ = _positive_and_negative(siim_sample, siim_sample_dicoms)
    dataset = pydicom.dcmread(positive)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dicom_dir = tmp_path / "reidentified"
    dicom_dir.mkdir()
    dataset.save_as(dicom_dir / positive.name, enforce_file_format=True)
    out = tmp_path / "out"
    labels = siim_sample / "train-rle-sample.csv"
    assert convert("--dicom-dir", dicom_dir, "--rle-csv", labels, "--out", out) == EXIT_OK
    assert read_index(out)[positive.stem]["has_pneumothorax"] == "1"
    written = cv2.imread(str(out / "png_masks" / f"{positive.stem}.png"), cv2.IMREAD_UNCHANGED)
    expected = cv2.imread(str(siim_sample / "masks" / f"{positive.stem}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(written, expected)


def test_two_files_of_one_image_under_different_names_are_a_duplicate(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    _, negative = _positive_and_negative(siim_sample, siim_sample_dicoms)
    dicom_dir = tmp_path / "twice"
    dicom_dir.mkdir()
    shutil.copy(negative, dicom_dir / negative.name)
    shutil.copy(negative, dicom_dir / "copy.dcm")
    out = tmp_path / "out"
    labels = siim_sample / "train-rle-sample.csv"
    assert convert("--dicom-dir", dicom_dir, "--rle-csv", labels, "--out", out) == EXIT_PARTIAL
    summary = json.loads((out / "summary.json").read_text())
    assert summary["converted"] == 1
    (failed,) = summary["failed_files"].items()
    assert failed[0].startswith(negative.stem) and "duplicate ImageId" in failed[1]


def test_unreadable_label_file_is_one_line_on_stderr(
    siim_sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = convert(
        "--dicom-dir", siim_sample / "dicom", "--rle-csv", tmp_path / "nope.csv", "--out", tmp_path
    )
    assert code == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot read --rle-csv")


def test_empty_dicom_dir_is_an_error(
    siim_sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    csv_path = siim_sample / "train-rle-sample.csv"
    assert (
        convert("--dicom-dir", tmp_path / "empty", "--rle-csv", csv_path, "--out", tmp_path / "o")
        == 1
    )
    assert "no .dcm files found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "years"),
    [("38", 38), ("038Y", 38), ("006M", 0), ("018M", 1), ("100W", 1), ("", None), ("old", None)],
)
def test_patient_age_parsing(value: str, years: int | None) -> None:
    assert parse_age_years(value) == years
