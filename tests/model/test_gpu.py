"""The CUDA path: inference against the CPU's float32, batching, training with mixed precision.

Marked ``gpu``: CI has no GPU and deselects them (``make unit`` runs ``-m "not gpu"``). Run them
on a machine with one: ``pytest -m gpu tests/model/test_gpu.py -s`` (``-s`` prints the table).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_checks import assert_the_loop_learns, compare
from pneumonode.config import SHIPPED_MODEL
from pneumonode.conversion import prepare_radiograph
from pneumonode.model.predictor import Predictor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


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
    _, flips, dice = compare(f"cuda {precision}", gpu.probabilities(inputs), reference)
    assert flips < max_flips and dice > min_dice


def test_fp16_runs_on_cuda_and_agrees(inputs: np.ndarray, reference: np.ndarray) -> None:
    gpu = Predictor.load(SHIPPED_MODEL, device="cuda:0", precision="fp16")
    _, flips, dice = compare("cuda:0 fp16", gpu.probabilities(inputs), reference)
    assert flips < 0.01 and dice > 0.98


def test_auto_picks_the_gpu_and_a_batch_equals_one_at_a_time(inputs: np.ndarray) -> None:
    gpu = Predictor.load(SHIPPED_MODEL)
    assert (gpu.backend, gpu.device) == ("torch", "cuda")
    batched = gpu.probabilities(inputs)
    single = np.concatenate([gpu.probabilities(image[None]) for image in inputs])
    _, flips, _ = compare("batch of 10 vs 1 by 1", batched, single)
    assert flips < 0.001


def test_the_real_loop_learns_on_the_gpu_with_mixed_precision(
    shared_data: Path, tmp_path: Path
) -> None:
    """The overfit check of the training tests, on cuda with autocast and channels-last."""
    assert_the_loop_learns(
        shared_data, tmp_path, device="cuda", amp=True, channels_last=True, workers=2
    )
    assert torch.backends.cudnn.benchmark
    reloaded = Predictor.load(tmp_path / "run" / "best", device="cuda")
    assert reloaded.device == "cuda"
