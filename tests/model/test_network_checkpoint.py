"""The network and its checkpoints: our format, the seed notebook's .pth, and clear failures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pneumonode.model.checkpoint import (
    Architecture,
    CheckpointConfig,
    CheckpointError,
    InputSpec,
    load_checkpoint,
    save_checkpoint,
)
from pneumonode.model.network import NetworkConfigError, WeightsUnavailableError, build_unet

B0 = Architecture(encoder="efficientnet-b0")


def tiny_config() -> CheckpointConfig:
    return CheckpointConfig(architecture=B0, input=InputSpec(size=64), version="test")


@pytest.fixture(scope="module")
def b0() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet("efficientnet-b0").eval()


def outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        return model(x)


def test_one_channel_in_one_channel_out(b0: torch.nn.Module) -> None:
    assert outputs(b0).shape == (2, 1, 64, 64)
    assert b0.encoder._conv_stem.weight.shape[1] == 1  # type: ignore[union-attr,index]


def test_unknown_encoder_lists_the_valid_ones() -> None:
    with pytest.raises(NetworkConfigError, match="efficientnet-b0, efficientnet-b1"):
        build_unet("resnet9000")


def test_imagenet_weights_fail_at_once_offline() -> None:
    """No hub here (nor in CI): a clear error with the way out, not a hang or a traceback."""
    with pytest.raises(WeightsUnavailableError, match=r"random initialisation .*path of a saved"):
        build_unet("efficientnet-b0", encoder_weights="imagenet")


def test_local_rgb_encoder_weights_are_summed_into_one_channel(
    tmp_path: Path, b0: torch.nn.Module
) -> None:
    state = {k: v.clone() for k, v in b0.encoder.state_dict().items()}  # type: ignore[union-attr]
    stem = state["_conv_stem.weight"]
    state["_conv_stem.weight"] = torch.cat([stem, stem * 2, stem * 3], dim=1)  # as if RGB
    path = tmp_path / "encoder.pth"
    torch.save(state, path)
    model = build_unet("efficientnet-b0", encoder_weights=path)
    assert torch.allclose(model.encoder._conv_stem.weight, stem * 6)  # type: ignore[union-attr]


def test_round_trip_float32_and_float16(tmp_path: Path, b0: torch.nn.Module) -> None:
    expected = outputs(b0)
    saved = save_checkpoint(b0, tmp_path / "fp32", tiny_config())
    assert saved.weights_sha256 and (tmp_path / "fp32" / "config.json").is_file()
    model, config = load_checkpoint(tmp_path / "fp32")
    assert config.architecture.encoder == "efficientnet-b0" and config.input.size == 64
    assert torch.equal(outputs(model), expected)

    save_checkpoint(b0, tmp_path / "fp16", tiny_config(), dtype="float16")
    size32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert (tmp_path / "fp16" / "model.safetensors").stat().st_size < 0.55 * size32
    model16, config16 = load_checkpoint(tmp_path / "fp16" / "config.json")
    assert config16.weights_dtype == "float16"
    assert torch.allclose(outputs(model16), expected, atol=0.05)


def test_damaged_weights_and_bad_config_are_refused(tmp_path: Path, b0: torch.nn.Module) -> None:
    folder = tmp_path / "ck"
    save_checkpoint(b0, folder, tiny_config())
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(folder)
    config = json.loads((folder / "config.json").read_text())
    config["postprocess"]["threshold"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="invalid checkpoint config"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("wrapping", ["plain", "model_state_dict", "module-prefix"])
def test_seed_notebook_pth(tmp_path: Path, b0: torch.nn.Module, wrapping: str) -> None:
    state = b0.state_dict()
    if wrapping == "model_state_dict":
        payload: object = {"model_state_dict": state, "epoch": 12, "val_loss": 0.3}
    elif wrapping == "module-prefix":
        payload = {f"module.{k}": v for k, v in state.items()}
    else:
        payload = state
    path = tmp_path / "best_model.pth"
    torch.save(payload, path)
    model, config = load_checkpoint(path, architecture=B0)
    assert config.name == "best_model"
    assert torch.equal(outputs(model), outputs(b0))


def test_seed_pth_for_another_architecture_names_the_keys(
    tmp_path: Path, b0: torch.nn.Module
) -> None:
    path = tmp_path / "best_model.pth"
    torch.save(b0.state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"does not fit this network: .*(missing keys|shape mismatch)"
    ):
        load_checkpoint(path)  # defaults to the seed's efficientnet-b4


def test_whole_pickled_model_gets_advice(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # torch.save(model): a pickled module
    with pytest.raises(CheckpointError, match=r"whole pickled model .*model.state_dict\(\)"):
        load_checkpoint(path)


def test_package_model_writes_fp16_weights_that_predict_the_same(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from pneumonode.cli import EXIT_OK, main
    from pneumonode.model.checkpoint import load_checkpoint
    from pneumonode.model.predictor import Predictor

    source = tiny_checkpoint(size=128)
    out = tmp_path / "shipped"
    args = ["package-model", "--weights", str(source), "--out", str(out), "--version", "9.9"]
    assert main(args) == EXIT_OK
    assert "float16" in capsys.readouterr().out
    _, config = load_checkpoint(out)
    assert config.weights_dtype == "float16" and config.version == "9.9"
    assert (out / "model.safetensors").stat().st_size < 0.6 * (
        source / "model.safetensors"
    ).stat().st_size
    batch = np.random.default_rng(0).random((1, 1, 128, 128), dtype=np.float32)
    full = Predictor.load(source, backend="torch", precision="fp32").probabilities(batch)
    half = Predictor.load(out, backend="torch", precision="fp32").probabilities(batch)
    assert np.abs(full - half).max() < 0.01


def test_package_model_averages_with_another_checkpoint_and_asks_for_recalibration(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pneumonode.cli import EXIT_ERROR, EXIT_OK, main
    from pneumonode.model.checkpoint import load_checkpoint

    low, high = tiny_checkpoint(bias=-2.0, size=64), tiny_checkpoint(bias=4.0, size=64)
    out = tmp_path / "soup"
    args = ["package-model", "--weights", str(low), "--average-with", str(high), "--out", str(out)]
    assert main([*args, "--dtype", "float32"]) == EXIT_OK
    model, config = load_checkpoint(out)
    assert model.segmentation_head[0].bias.item() == pytest.approx(1.0)  # (-2 + 4) / 2
    record = config.training["weight_average"]
    assert record["of"] == [str(low), str(high)] and len(record["sha256"]) == 2
    assert config.calibration is None and config.decision is None and config.metrics == {}
    missing = ["package-model", "--weights", str(low), "--average-with", str(tmp_path / "none")]
    assert main([*missing, "--out", str(tmp_path / "x")]) == EXIT_ERROR
    other = tmp_path / "lite0"
    save_checkpoint(
        build_unet("timm-tf_efficientnet_lite0"),
        other,
        CheckpointConfig(architecture=Architecture(encoder="timm-tf_efficientnet_lite0")),
    )
    mixed = ["package-model", "--weights", str(low), "--average-with", str(other)]
    assert main([*mixed, "--out", str(tmp_path / "y")]) == EXIT_ERROR
    assert "architectures differ" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # nothing written
