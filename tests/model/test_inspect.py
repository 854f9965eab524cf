"""`pneumonode inspect-dataset`: every kind of problem found exactly, real SIIM data, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pneumonode.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, main
from pneumonode.conversion.png import encode_png
from pneumonode.model.inspect import (
    DatasetLayout,
    DatasetLayoutError,
    inspect_dataset,
    inspect_mask,
    noise_sigma,
    render_bar_chart,
    write_inspection_report,
)

SIDE = 64


def _film(seed: int) -> np.ndarray:
    """A smooth random 'radiograph' with a little noise; different seeds look different."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(20, 235, (8, 8)).astype(np.float32)
    smooth = cv2.resize(coarse, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 2, smooth.shape), 0, 255).astype(np.uint8)


def _mask(*boxes: tuple[int, int, int, int], value: int = 255) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), np.uint8)
    for y, x, h, w in boxes:
        mask[y : y + h, x : x + w] = value
    return mask


def _write(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(pixels))


@pytest.fixture
def flawed_dataset(tmp_path: Path) -> Path:
    """convert-siim layout with one case of each problem (and clean pairs around them)."""
    root = tmp_path / "flawed"
    images, masks = root / "png_images", root / "png_masks"
    _write(images / "positive.png", _film(1))
    _write(masks / "positive.png", _mask((10, 10, 8, 8)))
    _write(images / "two_parts.png", _film(2))
    _write(masks / "two_parts.png", _mask((5, 5, 6, 6), (40, 40, 10, 5)))
    _write(images / "negative.png", _film(3))
    _write(masks / "negative.png", _mask())
    _write(images / "blank.png", np.full((SIDE, SIDE), 128, np.uint8))
    _write(masks / "blank.png", _mask((1, 1, 4, 4)))
    good_png = encode_png(_film(4))
    (images / "corrupt.png").write_bytes(good_png[: len(good_png) // 2])  # truncated
    _write(masks / "corrupt.png", _mask())
    _write(images / "non_binary.png", _film(5))
    _write(masks / "non_binary.png", _mask((10, 10, 8, 8)) // 2 + _mask((30, 30, 4, 4), value=1))
    _write(images / "no_mask.png", _film(6))
    _write(images / "declared_unlabeled.png", _film(7))
    _write(masks / "orphan.png", _mask((3, 3, 3, 3)))
    _write(images / "copy_a.png", _film(8))
    (images / "copy_b.png").write_bytes(encode_png(_film(8), level=3))  # same pixels, other bytes
    _write(masks / "copy_a.png", _mask())
    _write(masks / "copy_b.png", _mask())
    near = _film(1).astype(np.int16) + np.random.default_rng(9).integers(-1, 2, (SIDE, SIDE))
    _write(images / "near_positive.png", np.clip(near, 0, 255).astype(np.uint8))
    _write(masks / "near_positive.png", _mask((10, 10, 8, 8)))
    _write(images / "wrong_size.png", _film(10))
    _write(masks / "wrong_size.png", np.zeros((SIDE // 2, SIDE), np.uint8))
    (masks / "notes.txt").write_text("not a mask")
    with (root / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "PatientID", "status", "mask_pixels"])
        writer.writerow(["positive", "P1", "ok", "64"])
        writer.writerow(["near_positive", "P1", "ok", "64"])
        writer.writerow(["two_parts", "P2", "ok", "999"])  # disagrees with the mask (86)
        writer.writerow(["copy_a", "P3", "ok", "0"])
        writer.writerow(["copy_b", "P4", "ok", "0"])
        writer.writerow(["declared_unlabeled", "P5", "unlabeled", ""])
    return root


def test_each_problem_is_found_exactly(flawed_dataset: Path) -> None:
    inspection = inspect_dataset(flawed_dataset)
    report = inspection.to_json()
    assert report["layout"] == "png_images/ + png_masks/"
    assert report["counts"] == {
        "names": 13,
        "image_files": 12,
        "mask_files": 11,
        "pairs": 10,
        "images_without_mask": 2,
        "masks_without_image": 1,
        "unreadable_images": 1,
        "unreadable_masks": 0,
    }
    assert [u["file"] for u in report["unreadable"]] == ["png_images/corrupt.png"]
    assert "truncated PNG" in report["unreadable"][0]["reason"]
    assert report["images_without_mask"] == ["declared_unlabeled", "no_mask"]
    assert report["images_without_mask_not_declared_unlabeled"] == ["no_mask"]
    assert report["masks_without_image"] == ["orphan"]
    assert [b["name"] for b in report["blank_images"]] == ["blank"]
    assert report["mask_size_mismatches"] == [
        {"name": "wrong_size", "image_hxw": "64x64", "mask_hxw": "32x64"}
    ]
    masks = report["masks"]
    assert masks["non_binary"] == [
        {"name": "non_binary", "values": [0, 1, 127], "distinct_values": 3}
    ]
    # empty: negative, the corrupt image's mask, both copies, the wrong-size mask
    assert masks["empty"] == 5
    assert masks["area_differs_from_index_csv"] == [
        {"name": "two_parts", "index_csv": 999, "mask": 86}
    ]
    # labelled = image file + readable mask; the corrupt image's mask still labels it
    assert report["class_balance"] == {
        "positive": 5,
        "negative": 5,
        "unlabeled": 2,
        "positive_share": 0.5,
    }
    assert report["components_per_mask"] == {"0": 5, "1": 4, "2": 1}
    assert report["lesion_area"]["pixels"]["min"] == 16  # blank's 4x4 box
    assert report["lesion_area"]["pixels"]["max"] == 86
    assert report["duplicates"]["exact_groups"] == [{"names": ["copy_a", "copy_b"], "patients": 2}]
    near = report["duplicates"]["near_pairs"]
    assert [(p["a"], p["b"], p["patients"]) for p in near] == [("near_positive", "positive", 1)]
    assert near[0]["distance"] <= inspection.near_distance
    assert report["patients"] == {
        "patients": 5,
        "images_without_patient_id": 6,
        "images_per_patient": {"1": 4, "2": 1},
        "patients_with_a_positive": 2,
    }
    assert report["ignored_files"] == ["png_masks/notes.txt"]
    assert report["warnings"] == [
        "1 blank image(s) (grey-level std < 4)",
        "2 images in 1 exact-duplicate group(s)",
        "1 near-duplicate pair(s)",
        "1 mask(s) hold components under 10 px (1 in all)",  # the orphan's 3x3 box
        "1 mask(s) whose area differs from index.csv mask_pixels",
        "1 file(s) ignored: not .png/.jpg/.jpeg images or .png masks (the training Dataset "
        "skips them too)",
    ]
    assert not report["usable"]
    assert report["problems"] == [
        "1 unreadable file(s)",
        "1 non-binary mask(s)",
        "1 mask(s) without an image",
        "1 image(s) without a mask (not declared unlabeled)",
        "1 mask(s) of another size than their image",
    ]


def test_report_files(flawed_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    written = write_inspection_report(inspect_dataset(flawed_dataset), out)
    assert written[0] == out / "inspection.json"
    report = json.loads(written[0].read_text())
    plots = report["files"]["plots"]
    assert {"lesion_area_hist.png", "examples_grid.png", "problems_grid.png"} <= set(plots)
    for name in plots:
        picture = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert picture is not None and picture.ndim == 3, name
    with (out / "inspection_images.csv").open() as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 13
    assert rows["two_parts"]["components"] == "2" and rows["two_parts"]["label"] == "positive"
    assert rows["corrupt"]["label"] == "negative" and rows["corrupt"]["image_error"]
    assert rows["orphan"]["label"] == "no image"


def test_mask_values_and_noise() -> None:
    ones = inspect_mask(_mask((2, 2, 3, 3), value=1))
    assert ones.binary and ones.value_set == "0/1" and ones.area == 9
    rgb = inspect_mask(np.repeat(_mask((2, 2, 3, 3))[..., None], 3, axis=2))
    assert rgb.channels == 3 and rgb.binary and rgb.area == 9
    smooth = np.full((256, 256), 100.0)
    noisy = np.clip(smooth + np.random.default_rng(0).normal(0, 5, smooth.shape), 0, 255)
    assert noise_sigma(noisy.astype(np.uint8)) == pytest.approx(5.0, rel=0.1)
    assert noise_sigma(np.full((64, 64), 7, np.uint8)) == 0.0
    chart = render_bar_chart([1, 3, 2], ["0", "1", "2", "3"], title="t", xlabel="x")
    assert chart.shape == (450, 800, 3)
    with pytest.raises(ValueError, match="labels"):
        render_bar_chart([1, 2], ["a"], title="t", xlabel="x")


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="not a data set"):
        DatasetLayout.detect(tmp_path)
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        DatasetLayout.detect(tmp_path / "missing")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError, match="no image files"):
        inspect_dataset(tmp_path)


@pytest.fixture
def real_subset(shared_data: Path, tmp_path: Path) -> Path:
    """60 real pairs of siim-positives (images/*.jpg + masks/*.png), linked, with index.csv."""
    source = shared_data / "siim-positives"
    if not source.is_dir():
        pytest.skip(f"{source} is absent")
    root = tmp_path / "subset"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    images = sorted((source / "images").glob("*.jpg"))[::16][:60]
    for image in images:
        (root / "images" / image.name).symlink_to(image)
        (root / "masks" / f"{image.stem}.png").symlink_to(source / "masks" / f"{image.stem}.png")
    names = {p.stem for p in images}
    with (source / "index.csv").open() as src, (root / "index.csv").open("w") as dst:
        lines = src.read().splitlines()
        dst.write("\n".join([lines[0], *(x for x in lines[1:] if x.split(",")[0] in names)]))
    return root


def test_real_siim_positives(real_subset: Path) -> None:
    inspection = inspect_dataset(real_subset, workers=2)
    report = inspection.to_json()
    assert report["counts"]["pairs"] == report["counts"]["image_files"] == 60
    assert report["image_sizes_hxw"] == {"1024x1024": 60}
    assert report["masks"]["value_sets"] == {"0/255": 60}
    assert report["masks"]["area_differs_from_index_csv"] == []  # index.csv mask_pixels agree
    assert report["class_balance"]["positive"] == 60 and report["class_balance"]["negative"] == 0
    assert report["usable"] and report["problems"] == []
    assert any("no negatives" in w for w in report["warnings"])
    assert report["duplicates"] == {"exact_groups": [], "near_pairs": []}
    assert report["blank_images"] == [] and report["patients"] is None
    assert 200 <= report["lesion_area"]["pixels"]["min"] < report["lesion_area"]["pixels"]["max"]
    contrast = report["intensity"]["contrast_std"]
    assert contrast["min"] > 20  # real films are far from blank
    # the parallel pass gives the same report as the serial one
    assert inspect_dataset(real_subset, workers=1).to_json() == report


def test_cli(flawed_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-report"
    code = main(["inspect-dataset", str(flawed_dataset), "--out", str(out), "--no-progress"])
    assert code == EXIT_PARTIAL
    stdout = capsys.readouterr().out
    assert "problem: 1 non-binary mask(s)" in stdout
    assert "exit 3" in stdout
    assert (out / "inspection.json").is_file()

    clean = tmp_path / "clean"
    _write(clean / "images" / "a.png", _film(1))
    _write(clean / "masks" / "a.png", _mask((2, 2, 5, 5)))
    _write(clean / "images" / "b.png", _film(2))
    _write(clean / "masks" / "b.png", _mask())
    _write(clean / "images" / "c.png", _film(3))
    _write(clean / "masks" / "c.png", _mask((9, 9, 4, 4), value=1))
    assert main(["inspect-dataset", str(clean), "--no-progress"]) == EXIT_OK
    assert (clean / "inspection" / "inspection.json").is_file()  # the default --out
    stdout = capsys.readouterr().out
    assert "positive share 66.7%" in stdout
    assert "warning: 1 mask(s) are 0/1: the training Dataset binarises masks at 127" in stdout

    assert main(["inspect-dataset", str(tmp_path / "nothing-here")]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0]
