"""Helpers the model tests share (CPU and GPU): real positives, the overfit check, comparisons."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pneumonode.model.train import train
from pneumonode.model.train_config import TrainConfig


def positives_subset(shared_data: Path, folder: Path, count: int) -> Path:
    """``count`` real SIIM positives (images/ + masks/)."""
    source = shared_data / "siim-positives"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for image in sorted((source / "images").glob("*.jpg"))[:count]:
        shutil.copy(image, folder / "images")
        shutil.copy(source / "masks" / f"{image.stem}.png", folder / "masks")
    return folder


def assert_the_loop_learns(shared_data: Path, tmp_path: Path, **options: Any) -> None:
    """Overfit check: a few hundred steps of the real training loop on 8 real positives at
    128 px must lift the training Dice far above where it starts (catches a broken loss, a
    label flip or a transposed mask). ``options`` override the configuration (device, amp)."""
    data = positives_subset(shared_data, tmp_path / "pos", 9)  # 8 to train, 1 to validate
    settings: dict[str, Any] = {
        "encoder": "efficientnet-b0",
        "size": 128,
        "epochs": 4,
        "batch_size": 8,
        "samples_per_epoch": 8 * 40,  # 40 steps per epoch, 160 in all
        "augment": False,
        "lr": 3e-3,
        "warmup_epochs": 0,
        "pos_weight": 5.0,
        "focal_gamma": 1.0,
        "val_fraction": 0.1,
        "patience": 10,
        "workers": 0,
        "amp": False,
    }
    config = TrainConfig(data=data, out=tmp_path / "run", **(settings | options))
    history = train(config, progress=False).history
    start, end = history[0]["train_dice"], history[-1]["train_dice"]
    assert end > 0.5 and end > start + 0.3, [round(h["train_dice"], 3) for h in history]


def compare(name: str, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Max |Δp|, share of pixels on the other side of 0.5, Dice of the masks; printed."""
    diff = float(np.abs(a - b).max())
    ma, mb = a >= 0.5, b >= 0.5
    flips = float((ma != mb).mean())
    dice = 2 * float((ma & mb).sum()) / max(int(ma.sum() + mb.sum()), 1)
    print(f"\n{name:34} max|Δp| {diff:.2e}  flipped {flips:.4%}  Dice {dice:.5f}  ", end="")
    return diff, flips, dice
