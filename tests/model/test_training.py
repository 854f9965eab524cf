"""Data discovery, the split, augmentation, the training loop (resumable), evaluation, CLIs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model_checks import assert_the_loop_learns, positives_subset
from pneumonode.cli import main
from pneumonode.model.checkpoint import load_checkpoint
from pneumonode.model.data import (
    DatasetLayoutError,
    Sample,
    SegmentationDataset,
    balanced_sampler,
    crop_window,
    discover_samples,
    split_samples,
)
from pneumonode.model.evaluate import evaluate, select_samples
from pneumonode.model.predictor import Predictor
from pneumonode.model.train import _epochs_that_fit, _scheduled_lr, train
from pneumonode.model.train_config import TrainConfig


def converted_layout(folder: Path, patients: dict[str, str]) -> Path:
    """A tiny png_images/ + png_masks/ set with an index.csv naming patients."""
    (folder / "png_images").mkdir(parents=True)
    (folder / "png_masks").mkdir()
    rng = np.random.default_rng(0)
    for n, image_id in enumerate(patients):
        cv2.imwrite(
            str(folder / "png_images" / f"{image_id}.png"), rng.integers(0, 255, (64, 96), np.uint8)
        )
        mask = np.zeros((64, 96), np.uint8)
        if n % 2:
            mask[10:20, 30:50] = 255
        cv2.imwrite(str(folder / "png_masks" / f"{image_id}.png"), mask)
    with (folder / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "PatientID"])
        writer.writerows(patients.items())
    return folder


def test_discovery_and_patient_split(tmp_path: Path) -> None:
    patients = {f"img{i}": f"P{i // 2}" for i in range(20)}  # two images per patient
    samples = discover_samples(converted_layout(tmp_path / "set", patients))
    assert len(samples) == 20 and sum(s.positive for s in samples) == 10
    train_set, val_set = split_samples(samples, 0.3, seed=7)
    assert {s.patient_id for s in train_set}.isdisjoint({s.patient_id for s in val_set})
    assert len(val_set) == 6
    again = split_samples(samples, 0.3, seed=7)
    assert [s.image_id for s in again[1]] == [s.image_id for s in val_set]
    with pytest.raises(DatasetLayoutError, match="expected png_images"):
        discover_samples(tmp_path)


def test_dataset_letterboxes_non_square_images_and_masks(tmp_path: Path) -> None:
    samples = discover_samples(converted_layout(tmp_path / "set", {"a": "1", "b": "2"}))
    x, y = SegmentationDataset(samples, 64)[1]
    assert x.shape == (1, 64, 64) and y.shape == (1, 64, 64)
    assert set(torch.unique(y).tolist()) == {0.0, 1.0}
    assert y[0, :10].sum() == 0  # top padding (64x96 -> 43 rows, centred)


def test_augmentation_is_reproducible(shared_data: Path, tmp_path: Path) -> None:
    samples = discover_samples(positives_subset(shared_data, tmp_path / "pos", 2))
    a = SegmentationDataset(samples, 128, augment=True, seed=3)
    b = SegmentationDataset(samples, 128, augment=True, seed=3)
    xa, ya = a[0]
    xb, yb = b[0]
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.epoch = 1
    assert not torch.equal(a[0][0], xa)  # another epoch, another draw


def test_crop_windows_stay_inside_and_find_small_lesions() -> None:
    mask = np.zeros((384, 384), np.uint8)
    mask[300:306, 20:26] = 1  # 36 pixels: 0.02 % of the image
    rng = np.random.default_rng(0)
    windows = [crop_window(mask, 256, 1.0, rng) for _ in range(200)]
    assert all(0 <= top <= 128 and 0 <= left <= 128 for top, left in windows)
    assert all(mask[t : t + 256, c : c + 256].any() for t, c in windows)
    assert len(set(windows)) > 50  # the lesion lands anywhere in the window, not always centred
    uniform = [crop_window(mask, 256, 0.0, rng) for _ in range(400)]
    hit = np.mean([mask[t : t + 256, c : c + 256].any() for t, c in uniform])
    assert 0.05 < hit < 0.6  # lesion_share 0: windows ignore where the lesion is
    assert crop_window(np.zeros((64, 64), np.uint8), 64, 1.0, rng) == (0, 0)
    with pytest.raises(ValueError, match="larger than the image"):
        crop_window(mask, 400, 0.5, rng)


def test_cropped_training_items_are_reproducible_windows(shared_data: Path, tmp_path: Path) -> None:
    samples = discover_samples(positives_subset(shared_data, tmp_path / "pos", 2))
    whole = SegmentationDataset(samples, 128)
    cropped = SegmentationDataset(samples, 128, seed=5, crop=64, crop_lesion_share=1.0)
    x, y = cropped[0]
    assert x.shape == (1, 64, 64) and y.shape == (1, 64, 64) and y.sum() > 0
    full_x, _ = whole[0]
    positions = [
        (t, c)
        for t in range(65)
        for c in range(65)
        if torch.equal(full_x[:, t : t + 64, c : c + 64], x)
    ]
    assert positions  # a window of the whole image, not a resized copy
    again = SegmentationDataset(samples, 128, seed=5, crop=64, crop_lesion_share=1.0)
    assert torch.equal(again[0][0], x)
    with pytest.raises(ValueError, match="crop must be within"):
        SegmentationDataset(samples, 128, crop=256)
    with pytest.raises(ValueError, match="must not exceed size"):
        TrainConfig(data=tmp_path, out=tmp_path, size=128, crop=256)


def test_balanced_sampler_draws_the_positive_share() -> None:
    samples = [Sample(str(i), "", None, None, i < 10) for i in range(100)]
    sampler = balanced_sampler(samples, 0.5, seed=0, num_samples=4000)
    assert sampler is not None
    drawn = [samples[i].positive for i in sampler]
    assert 0.45 < np.mean(drawn) < 0.55
    assert balanced_sampler(samples[:10], 0.5, seed=0) is None  # one class only


def test_train_resume_and_evaluate(shared_data: Path, tmp_path: Path) -> None:
    data = positives_subset(shared_data, tmp_path / "pos", 12)
    out = tmp_path / "run"
    config = TrainConfig(
        data=data,
        out=out,
        encoder="efficientnet-b0",
        size=64,
        epochs=2,
        batch_size=4,
        workers=0,
        val_fraction=0.25,
        patience=5,
    )
    first = train(config.model_copy(update={"epochs": 1}), progress=False)
    assert [h["epoch"] for h in first.history] == [1]
    resumed = train(config, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for name in (
        "metrics.csv",
        "curves.png",
        "val_samples.png",
        "split.json",
        "last.pt",
        "best/config.json",
    ):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    split = json.loads((out / "split.json").read_text())
    assert len(split["validation"]) == 3 and not set(split["train"]) & set(split["validation"])
    _, checkpoint = load_checkpoint(out / "best")
    assert checkpoint.training["train"]["images"] == 9 and checkpoint.input.size == 64

    predictor = Predictor.load(out / "best", device="cpu", precision="fp32")
    samples = select_samples(data, out / "split.json")
    result = evaluate(
        predictor, samples, out / "eval", do_tune=True, weights=out / "best", progress=False
    )
    assert result.summary["images"] == 3 and result.summary["positives"] == 3
    assert (out / "eval" / "worst_cases.png").is_file() and (
        out / "eval" / "evaluation.csv"
    ).is_file()
    tuned = json.loads((out / "best" / "config.json").read_text())
    assert tuned["postprocess"] == result.summary["postprocess"]


def test_train_and_evaluate_cli(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = positives_subset(shared_data, tmp_path / "pos", 8)
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--encoder",
        "efficientnet-b0",
        "--size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--val-fraction",
        "0.25",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "best epoch 1" in capsys.readouterr().out
    assert (
        main(
            [
                "evaluate",
                "--weights",
                str(out / "best"),
                "--data",
                str(data),
                "--split",
                str(out / "split.json"),
                "--no-progress",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert "siim_score" in capsys.readouterr().out
    assert main(["train", "--data", str(data), "--out", str(out), "--size", "8"]) == 1
    assert "invalid training option: size" in capsys.readouterr().err
    crop = ["--size", "128", "--crop", "256"]
    assert main(["train", "--data", str(data), "--out", str(out), *crop]) == 1
    assert "invalid training option: crop (256) must not exceed" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(out)]) == 1


@pytest.mark.slow
def test_the_real_loop_learns_real_lesions(shared_data: Path, tmp_path: Path) -> None:
    """The overfit check on the CPU (``model_checks.assert_the_loop_learns``)."""
    assert_the_loop_learns(shared_data, tmp_path)


def test_training_can_start_from_a_checkpoints_weights(
    shared_data: Path, tmp_path: Path, tiny_checkpoint: Callable[..., Path]
) -> None:
    """--init-weights: continue from a shipped model (here one whose head says "nothing")."""
    from pneumonode.model.checkpoint import load_checkpoint

    data = positives_subset(shared_data, tmp_path / "pos", 8)
    config = TrainConfig(
        data=data,
        out=tmp_path / "run",
        encoder="efficientnet-b0",
        size=64,
        epochs=1,
        batch_size=4,
        workers=0,
        val_fraction=0.25,
        lr=1e-9,  # the weights barely move: what comes out is what went in
        init_weights=tiny_checkpoint(bias=-20.0),
    )
    result = train(config, progress=False)
    assert result.checkpoint is not None
    model, _ = load_checkpoint(result.checkpoint)
    bias = model.segmentation_head[0].bias.detach()
    assert float(bias.mean()) == pytest.approx(-20.0, abs=0.01)


def test_a_time_limit_plans_the_epochs_that_fit() -> None:
    """The pace leaves out the first epoch (start-up) once there are others; never more than
    --epochs, never fewer than those done; the cosine ends at min_lr with the planned epochs."""
    assert _epochs_that_fit(600, 100, [40, 10, 10], done=3, most=200) == 53  # 500 s at 10 s
    assert _epochs_that_fit(600, 40, [40], done=1, most=200) == 15  # 560 s at 40 s
    assert _epochs_that_fit(600, 100, [40, 10, 10], done=3, most=20) == 20
    assert _epochs_that_fit(600, 595, [40, 10, 10], done=3, most=200) == 3  # no room left
    assert _epochs_that_fit(600, 700, [40, 10, 10], done=3, most=200) == 3  # past the limit
    config = TrainConfig(data=Path("d"), out=Path("o"), epochs=100, schedule="cosine", min_lr=0)
    last_step = 10 * 10 - 1  # 10 planned epochs of 10 steps, 10 warm-up steps
    assert _scheduled_lr(config, last_step, 10, 10, planned_epochs=10) == pytest.approx(
        0.0, abs=1e-6
    )
    assert _scheduled_lr(config, 55, 10, 10, planned_epochs=10) == pytest.approx(config.lr / 2)
    assert _scheduled_lr(config, 55, 10, 10) == pytest.approx(config.lr, rel=0.01)  # of 100


def test_training_stops_at_the_time_limit_and_resumes(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--time-limit ends the run after the epoch that used it up (the best one is kept);
    --resume without a limit then goes on to --epochs. --channels-last trains in that format."""
    data = positives_subset(shared_data, tmp_path / "pos", 8)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--encoder", "efficientnet-b0"]
    args += ["--size", "64", "--epochs", "3", "--batch-size", "4", "--workers", "0"]
    args += ["--val-fraction", "0.25", "--schedule", "cosine", "--no-progress"]
    assert main([*args, "--time-limit", "0.00001", "--channels-last"]) == 0
    assert "best epoch 1" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1]
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["planned_epochs"] == 1
    weight = state["model"]["decoder.blocks.0.conv1.0.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    _, checkpoint = load_checkpoint(out / "best")  # saved contiguous, loads as usual
    assert checkpoint.training["config"]["channels_last"] is True
    assert checkpoint.training["planned_epochs"] == 1

    config = TrainConfig(
        data=data, out=out, encoder="efficientnet-b0", size=64, epochs=3, batch_size=4,
        workers=0, val_fraction=0.25, schedule="cosine",
    )  # fmt: skip
    resumed = train(config, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert not resumed.stopped_for_time and resumed.planned_epochs == 3

    roomy = train(
        config.model_copy(update={"out": tmp_path / "roomy", "epochs": 2, "time_limit": 60.0}),
        progress=False,
    )
    assert [h["epoch"] for h in roomy.history] == [1, 2] and not roomy.stopped_for_time


def test_the_training_data_module_makes_no_network_connection_on_import() -> None:
    """albumentations asks pypi.org for its latest version when imported, unless told not to;
    a hospital machine has no way out, and the training CLIs must not try."""
    probe = (
        "import socket, sys\n"
        "def refuse(*args, **kwargs):\n"
        "    raise SystemExit('a network connection was attempted')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import pneumonode.model.data\n"
        "pneumonode.model.data.augmentations(0)  # albumentations is imported where it is used\n"
        "assert 'albumentations' in sys.modules\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
