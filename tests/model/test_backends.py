"""Inference backends against torch fp32, and the ONNX export cache beside the checkpoint.

A tiny b0 U-Net at 64 px on real SIIM radiographs and on random inputs. Its segmentation head is
rescaled so that the logits spread like a trained model's (10th..90th percentile about -4..4,
half the pixels positive): a random network's logits all sit within 0.2 of zero, where any
rounding flips pixels and the numbers would say nothing. Run with ``-s`` to see the table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model_checks import compare
from pneumonode.cli import EXIT_OK, main
from pneumonode.conversion import prepare_radiograph
from pneumonode.model.checkpoint import Architecture, CheckpointConfig, InputSpec, save_checkpoint
from pneumonode.model.network import build_unet
from pneumonode.model.predictor import (
    BackendUnavailableError,
    Predictor,
    available_backends,
    cpu_supports_bf16,
)

SIZE = 64
CONFIG = CheckpointConfig(
    architecture=Architecture(encoder="efficientnet-b0"), input=InputSpec(size=SIZE), version="t"
)


def _model(seed: int, calibration: np.ndarray) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_unet("efficientnet-b0").eval()
    head: torch.nn.Conv2d = model.segmentation_head[0]  # type: ignore[index]
    with torch.no_grad():
        logits = model(torch.from_numpy(calibration))
        lo, mid, hi = torch.quantile(logits.flatten(), torch.tensor([0.1, 0.5, 0.9])).tolist()
        scale = 8.0 / (hi - lo)
        head.weight.mul_(scale)
        head.bias.sub_(mid).mul_(scale)
    return model


@pytest.fixture(scope="module")
def inputs(siim_sample_dicoms: list[Path]) -> np.ndarray:
    """(6, 1, 64, 64) float32: four real radiographs, then two uniform-noise images."""
    real = [prepare_radiograph(path, SIZE).tensor() for path in siim_sample_dicoms[:4]]
    noise = np.random.default_rng(7).random((2, 1, SIZE, SIZE), dtype=np.float32)
    return np.concatenate([np.stack(real), noise])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, inputs: np.ndarray) -> Path:
    folder = tmp_path_factory.mktemp("b0")
    save_checkpoint(_model(3, inputs[:4]), folder, CONFIG)
    return folder


@pytest.fixture(scope="module")
def reference(checkpoint: Path, inputs: np.ndarray) -> np.ndarray:
    return Predictor.load(checkpoint, backend="torch", precision="fp32").probabilities(inputs)


CASES = [
    ("onnxruntime", "fp32", 1e-4, 0.0005, 0.9995),
    ("openvino", "fp32", 1e-4, 0.0005, 0.9995),
    # bfloat16 keeps 8 bits of mantissa: ~0.5 % relative error per layer
    ("openvino", "bf16", 0.08, 0.01, 0.985),
    ("torch", "bf16", 0.08, 0.01, 0.985),
]


@pytest.mark.parametrize(("backend", "precision", "max_diff", "max_flips", "min_dice"), CASES)
def test_backend_matches_torch_fp32(
    backend: str,
    precision: str,
    max_diff: float,
    max_flips: float,
    min_dice: float,
    checkpoint: Path,
    inputs: np.ndarray,
    reference: np.ndarray,
) -> None:
    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    if precision == "bf16" and not cpu_supports_bf16():
        pytest.skip("this CPU has no native bfloat16")
    predictor = Predictor.load(checkpoint, backend=backend, precision=precision)  # type: ignore[arg-type]
    assert (predictor.backend, predictor.precision) == (backend, precision)
    probability = predictor.probabilities(inputs)
    assert probability.shape == reference.shape and probability.dtype == np.float32
    for label, rows in (("SIIM", slice(0, 4)), ("noise", slice(4, None))):
        diff, flips, dice = compare(
            f"{backend} {precision} ({label})", probability[rows], reference[rows]
        )
        assert diff < max_diff and flips < max_flips and dice > min_dice


def test_tta_and_full_pipeline_agree(checkpoint: Path, siim_sample_dicoms: list[Path]) -> None:
    exact = Predictor.load(checkpoint, backend="torch", precision="fp32", tta=True)
    onnx = Predictor.load(checkpoint, backend="onnxruntime", tta=True)
    a, b = exact.predict_dicom(siim_sample_dicoms[5]), onnx.predict_dicom(siim_sample_dicoms[5])
    assert np.abs(a.probability - b.probability).max() < 1e-4
    assert (a.mask != b.mask).mean() < 0.0005
    with pytest.raises(ValueError, match="takes 64x64"):
        onnx.probabilities(np.zeros((1, 1, 32, 32), np.float32))


def test_auto_picks_the_fastest_cpu_backend(checkpoint: Path) -> None:
    predictor = Predictor.load(checkpoint, device="cpu")
    expected = "openvino" if "openvino" in available_backends() else "onnxruntime"
    assert predictor.backend == expected
    if expected == "openvino":
        assert predictor.precision == ("bf16" if cpu_supports_bf16() else "fp32")
    assert Predictor.load(checkpoint, device="cpu", precision="fp32").precision == "fp32"


def test_unavailable_backends_fail_clearly(checkpoint: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="choose one of auto, torch"):
        Predictor.load(checkpoint, backend="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailableError, match="onnxruntime runs float32"):
        Predictor.load(checkpoint, backend="onnxruntime", precision="bf16")
    with pytest.raises(BackendUnavailableError, match="runs on the CPU here"):
        Predictor.load(checkpoint, backend="openvino", device="cuda")


# ------------------------------------------------------------------------ export cache


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_ino


def test_export_is_reused_and_keyed_by_sha256(
    checkpoint: Path, inputs: np.ndarray, tmp_path: Path
) -> None:
    Predictor.load(checkpoint, backend="onnxruntime")
    export = checkpoint / "model.onnx"
    before = _stamp(export)
    Predictor.load(checkpoint, backend="openvino", precision="fp32")
    assert _stamp(export) == before, "a second load exported again"

    folder = tmp_path / "copy"
    shutil.copytree(checkpoint, folder)
    assert Predictor.load(folder, backend="onnxruntime").backend == "onnxruntime"
    copied = _stamp(folder / "model.onnx")
    assert not list(tmp_path.glob("copy/.*")), "temporary files left behind"

    save_checkpoint(_model(11, inputs[:4]), folder, CONFIG)  # new weights, new sha256
    renewed = Predictor.load(folder, backend="onnxruntime").probabilities(inputs)
    assert _stamp(folder / "model.onnx") != copied
    exact = Predictor.load(folder, backend="torch", precision="fp32").probabilities(inputs)
    assert np.abs(renewed - exact).max() < 1e-4


@contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """No new files in ``folder``, even for root (immutable attribute), else by mode bits."""
    immutable = (
        shutil.which("chattr") is not None
        and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    )
    if not immutable:
        if os.geteuid() == 0:
            pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
        folder.chmod(0o555)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_read_only_checkpoint_exports_to_the_cache_dir(
    checkpoint: Path, inputs: np.ndarray, reference: np.ndarray, tmp_path: Path
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(checkpoint / name, folder / name)
    cache = tmp_path / "cache"
    with _read_only(folder):
        probability = Predictor.load(folder, backend="onnxruntime", cache_dir=cache).probabilities(
            inputs
        )
        (export,) = cache.glob("*/model.onnx")
        before = _stamp(export)
        Predictor.load(folder, backend="openvino", precision="fp32", cache_dir=cache)
        assert _stamp(export) == before
    assert not (folder / "model.onnx").exists()
    assert np.abs(probability - reference).max() < 1e-4


def test_predict_cli_backend(
    checkpoint: Path,
    siim_sample_dicoms: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["predict", str(siim_sample_dicoms[0]), "--weights", str(checkpoint)]
    masks = []
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / backend
        code = main([*args, "--out", str(out), "--backend", backend, "--precision", "fp32"])
        assert code == EXIT_OK
        masks.append(cv2.imread(str(out / f"{siim_sample_dicoms[0].stem}_mask.png"), 0))
    assert (masks[0] != masks[1]).mean() < 0.0005
    out = ["--out", str(tmp_path / "c")]
    assert main([*args, *out, "--backend", "onnxruntime", "--precision", "bf16"]) != EXIT_OK
    assert "onnxruntime runs float32" in capsys.readouterr().err
