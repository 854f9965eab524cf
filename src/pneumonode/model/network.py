"""The segmentation network: EfficientNet encoder, U-Net decoder (segmentation_models_pytorch).

``build_unet("efficientnet-b4")`` is the seed's model: one input channel (the windowed radiograph),
one output channel (pneumothorax logits), bilinear decoder upsampling. ImageNet weights cannot be
downloaded on air-gapped machines: random initialisation is the default, ``encoder_weights=
"imagenet"`` works where the hub (or its cache) is reachable, and a local weights file is the
way out everywhere else.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

import torch
from torch import nn

__all__ = ["ENCODERS", "NetworkConfigError", "WeightsUnavailableError", "build_unet"]

ENCODERS = tuple(f"efficientnet-b{i}" for i in range(8))
Interpolation = Literal["bilinear", "nearest"]


class NetworkConfigError(ValueError):
    """An unknown encoder or decoder option."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained encoder weights could not be obtained (no network, no cache)."""


def build_unet(
    encoder: str = "efficientnet-b4",
    *,
    encoder_weights: str | Path | None = None,
    decoder_interpolation: Interpolation = "bilinear",
) -> nn.Module:
    """A U-Net with one input and one output channel (logits).

    Args:
        encoder: ``efficientnet-b0`` .. ``efficientnet-b7`` (``b4`` is the seed's choice).
        encoder_weights: None (random), ``"imagenet"`` (downloaded or cached; the RGB stem is
            summed into one channel, as smp does), or a path to a saved encoder state_dict.
        decoder_interpolation: upsampling in the decoder (the seed used bilinear).
    """
    import segmentation_models_pytorch as smp

    if encoder not in ENCODERS:
        raise NetworkConfigError(
            f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}"
        )
    if decoder_interpolation not in ("bilinear", "nearest"):
        raise NetworkConfigError(
            f"decoder_interpolation must be 'bilinear' or 'nearest', not {decoder_interpolation!r}"
        )
    hub_weights = "imagenet" if encoder_weights == "imagenet" else None
    if hub_weights and not _imagenet_available(encoder):
        raise WeightsUnavailableError(
            f"ImageNet weights for {encoder} are not in the local cache and the hub "
            "(huggingface.co) cannot be reached. Train from random initialisation (the "
            "default), or pass the path of a saved encoder state_dict as encoder weights."
        )
    try:
        model: nn.Module = smp.Unet(
            encoder_name=encoder,
            encoder_weights=hub_weights,
            in_channels=1,
            classes=1,
            decoder_interpolation=decoder_interpolation,
        )
    except Exception as exc:
        if hub_weights is None:
            raise
        raise WeightsUnavailableError(
            f"ImageNet weights for {encoder} could not be downloaded or found in the cache "
            f"({type(exc).__name__}). Train from random initialisation (the default), or pass "
            "the path of a saved encoder state_dict as encoder weights."
        ) from None
    if encoder_weights is not None and hub_weights is None:
        _load_encoder_file(model, Path(encoder_weights))
    return model


def _imagenet_available(encoder: str) -> bool:
    """Cached already, or the hub answers within seconds (never hang on an air-gapped host)."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(f"smp-hub/{encoder}.imagenet", local_files_only=True)
        return True
    except Exception:
        pass
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _load_encoder_file(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise WeightsUnavailableError(f"encoder weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    stem = "_conv_stem.weight"
    if stem in state and state[stem].shape[1] == 3:  # RGB ImageNet stem -> one channel
        state[stem] = state[stem].sum(dim=1, keepdim=True)
    expected = encoder.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("_fc.", "classifier."))}
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{path} does not fit the {type(encoder).__name__} encoder: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    encoder.load_state_dict(state)
