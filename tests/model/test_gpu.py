"""The CUDA path: inference against the CPU's float32, batching, training with mixed precision.

Marked ``gpu``: CI has no GPU and deselects them (``make unit`` runs ``-m "not gpu"``). Run them
on a machine with one: ``pytest -m gpu tests/model/test_gpu.py -s`` (``-s`` prints the table).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pneumonode.config import SHIPPED_MODEL
from pneumonode.conversion import prepare_radiograph
from pneumonode.model.predictor import Predictor
from pneumonode.model.train import train
from pneumonode.model.train_config import TrainConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _compare(name: str, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Max |Δp|, share of pixels on the other side of 0.5, Dice of the masks; printed."""
    diff = float(np.abs(a - b).max())
    ma, mb = a >= 0.5, b >= 0.5
    flips = float((ma != mb).mean())
    dice = 2 * float((ma & mb).sum()) / max(int(ma.sum() + mb.sum()), 1)
    print(f"\n{name:24} max|Δp| {diff:.2e}  flipped {flips:.4%}  Dice {dice:.5f}", end="")
    return diff, flips, dice


@pytest.fixture(scope="module")
def inputs(siim_sample_dicoms: list[Path]) -> np.ndarray:
    """The 10 SIIM sample radiographs, prepared for the shipped model: (10, 1, S, S)."""
    size = Predictor.load(SHIPPED_MODEL, device="cpu", backend="torch").size
    return np.stack([prepare_radiograph(path, size).tensor() for path in siim_sample_dicoms])


@pytest.fixture(scope="module")
def reference(inputs: np.ndarray) -> np.ndarray:
    cpu = Predictor.load(SHIPPED_MODEL, device="cpu", backend="torch", precision="fp32")
    return np.concatenate([cpu.probabilities(image[None]) for image in inputs])


@pytest.mark.parametrize(
    ("precision", "max_flips", "min_dice"), [("fp32", 0.002, 0.995), ("bf16", 0.01, 0.98)]
)
def test_cuda_agrees_with_cpu_fp32_on_real_radiographs(
    inputs: np.ndarray, reference: np.ndarray, precision: str, max_flips: float, min_dice: float
) -> None:
    gpu = Predictor.load(SHIPPED_MODEL, device="cuda", precision=precision)  # type: ignore[arg-type]
    assert (gpu.backend, gpu.precision, gpu.device) == ("torch", precision, "cuda")
    _, flips, dice = _compare(f"cuda {precision}", gpu.probabilities(inputs), reference)
    assert flips < max_flips and dice > min_dice


def test_fp16_runs_on_cuda_and_agrees(inputs: np.ndarray, reference: np.ndarray) -> None:
    gpu = Predictor.load(SHIPPED_MODEL, device="cuda:0", precision="fp16")
    _, flips, dice = _compare("cuda:0 fp16", gpu.probabilities(inputs), reference)
    assert flips < 0.01 and dice > 0.98


def test_auto_picks_the_gpu_and_a_batch_equals_one_at_a_time(inputs: np.ndarray) -> None:
    gpu = Predictor.load(SHIPPED_MODEL)
    assert (gpu.backend, gpu.device) == ("torch", "cuda")
    batched = gpu.probabilities(inputs)
    single = np.concatenate([gpu.probabilities(image[None]) for image in inputs])
    _, flips, _ = _compare("batch of 10 vs 1 by 1", batched, single)
    assert flips < 0.001


def test_the_real_loop_learns_on_the_gpu_with_mixed_precision(
    shared_data: Path, tmp_path: Path
) -> None:
    """The overfit check of the training tests, on cuda with autocast (bf16 or fp16)."""
    from model.test_training import positives_subset

    data = positives_subset(shared_data, tmp_path / "pos", 9)
    config = TrainConfig(
        data=data,
        out=tmp_path / "run",
        encoder="efficientnet-b0",
        size=128,
        epochs=4,
        batch_size=8,
        samples_per_epoch=8 * 40,
        augment=False,
        lr=3e-3,
        warmup_epochs=0,
        pos_weight=5.0,
        focal_gamma=1.0,
        val_fraction=0.1,
        patience=10,
        workers=2,
        amp=True,
        channels_last=True,
        device="cuda",
    )
    history = train(config, progress=False).history
    assert torch.backends.cudnn.benchmark
    start, end = history[0]["train_dice"], history[-1]["train_dice"]
    assert end > 0.5 and end > start + 0.3, [round(h["train_dice"], 3) for h in history]
    reloaded = Predictor.load(tmp_path / "run" / "best", device="cuda")
    assert reloaded.device == "cuda"
