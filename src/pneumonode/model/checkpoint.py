"""Checkpoints: weights plus a self-describing ``config.json``; and the seed notebook's ``.pth``.

Our format is a folder::

    model.safetensors   the U-Net's state_dict (float32 or float16)
    config.json         architecture, input preprocessing, post-processing (threshold, minimum
                        area), training data summary, metrics, version, sha256 of the weights

A plain ``best_model.pth`` as the seed notebook saved it (a state_dict of the smp U-Net, possibly
wrapped in ``{"model_state_dict": ...}`` or with ``module.`` prefixes from DataParallel) loads too,
with default settings, and fails with the missing/unexpected keys named when it does not fit.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pneumonode.findings import AlgorithmInfo

if TYPE_CHECKING:  # torch is imported where it is used: reading a config needs none of it
    import torch
    from torch import nn

__all__ = [
    "Architecture",
    "Calibration",
    "CheckpointConfig",
    "CheckpointError",
    "Decision",
    "InputSpec",
    "PostProcessing",
    "file_sha256",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or does not fit the network."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Architecture(_Strict):
    type: Literal["unet"] = "unet"
    encoder: str = "efficientnet-b4"
    decoder_interpolation: Literal["bilinear", "nearest"] = "bilinear"
    in_channels: Literal[1] = 1
    classes: Literal[1] = 1
    classification_head: bool = Field(
        default=False, description="image-level head: the network returns (mask, image logit)"
    )


class InputSpec(_Strict):
    """How images are prepared: ``pneumonode.conversion.prepare_radiograph`` at ``size``."""

    size: int = Field(default=1024, ge=32, le=4096)
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    scaling: Literal["pixels/255"] = "pixels/255"


class PostProcessing(_Strict):
    """From probabilities to a finding: pixel threshold (with hysteresis, grown down to
    ``grow_threshold``), then minimum component area."""

    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    grow_threshold: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="hysteresis: a region reaching threshold takes in its connected pixels "
        "down to this probability; chosen on validation; None: no growing",
    )
    min_area_pixels: int = Field(default=0, ge=0, description="at model input size")
    top_score_threshold: float | None = Field(
        default=None, description="SIIM winners' gate: no finding unless max probability >= this"
    )
    flip_average: bool = Field(
        default=False,
        description="average the network's outputs on the film and on its mirror image "
        "(test-time augmentation; twice the inference time); chosen on validation",
    )

    def region_rule(self) -> str:
        """The rule for the region shown, in words (the card, calibrate's output)."""
        grown = (
            ""
            if self.grow_threshold is None
            else f", grown to its connected pixels >= {self.grow_threshold}"
        )
        return (
            f"pixel probability >= {self.threshold}{grown}, "
            f"minimum area {self.min_area_pixels} pixels"
        )

    @model_validator(mode="after")
    def _grows_downwards(self) -> PostProcessing:
        if self.grow_threshold is not None and self.grow_threshold > self.threshold:
            raise ValueError(
                f"grow_threshold ({self.grow_threshold}) must not exceed threshold "
                f"({self.threshold})"
            )
        return self


class Calibration(_Strict):
    """How the image score becomes a calibrated probability (fitted on validation).

    ``score``: ``head`` (the image-level head's probability) or ``max_pixel`` (the highest pixel
    probability: the SIIM winners' top score). ``p = sigmoid(a * logit(score) + b)``: Platt
    scaling, temperature scaling when ``b = 0``; monotone (``a > 0``).
    """

    score: Literal["head", "max_pixel"] = "head"
    method: Literal["platt", "temperature"] = "platt"
    a: float = Field(default=1.0, gt=0)
    b: float = 0.0
    fitted_on: dict[str, Any] = Field(default_factory=dict)


class Decision(_Strict):
    """The operating point: a film is called positive when its calibrated probability is at
    least ``threshold``; the mask is reported only then."""

    threshold: float = Field(gt=0.0, lt=1.0)
    rule: str = "sensitivity >= 0.90 on validation, then the best specificity"
    validation: dict[str, Any] = Field(default_factory=dict)


class CheckpointConfig(_Strict):
    format: Literal["pneumonode-checkpoint"] = "pneumonode-checkpoint"
    format_version: Literal[1] = 1
    name: str = "pneumonode-pneumothorax-unet"
    version: str = "0.0.0"
    architecture: Architecture = Architecture()
    input: InputSpec = InputSpec()
    postprocess: PostProcessing = PostProcessing()
    calibration: Calibration | None = None
    decision: Decision | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    weights_file: str = WEIGHTS_NAME
    weights_dtype: Literal["float32", "float16"] = "float32"
    weights_sha256: str | None = None
    intended_use: str = "Research only. AI result, not for clinical use."

    def algorithm_info(self) -> AlgorithmInfo:
        """The model as our result objects name it: name, version, post-processing and
        operating point."""
        post = self.postprocess
        return AlgorithmInfo(
            name=self.name,
            version=self.version,
            threshold=post.threshold,
            min_area_pixels=post.min_area_pixels,
            top_score_threshold=post.top_score_threshold,
            grow_threshold=post.grow_threshold,
            intended_use=self.intended_use,
            operating_point=None if self.decision is None else self.decision.threshold,
        )

    def build(self) -> nn.Module:
        from pneumonode.model.network import build_unet

        return build_unet(
            self.architecture.encoder,
            decoder_interpolation=self.architecture.decoder_interpolation,
            classification_head=self.architecture.classification_head,
        )


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    model: nn.Module, folder: Path, config: CheckpointConfig, *, dtype: str = "float32"
) -> CheckpointConfig:
    """Write ``model`` and ``config`` (with the weights' sha256) to ``folder``; returns it."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    state = {  # integer buffers (BatchNorm's batch counters) keep their type
        k: v.detach().to("cpu", torch_dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    weights = folder / config.weights_file
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(weights)
    final = config.model_copy(
        update={"weights_dtype": dtype, "weights_sha256": file_sha256(weights)}
    )
    (folder / CONFIG_NAME).write_text(final.model_dump_json(indent=2) + "\n")
    return final


def _read_config(folder: Path) -> CheckpointConfig:
    try:
        return CheckpointConfig.model_validate_json((folder / CONFIG_NAME).read_text())
    except (OSError, ValidationError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{folder / CONFIG_NAME}: invalid checkpoint config ({exc})"
        ) from None


def read_checkpoint_config(path: Path) -> CheckpointConfig:
    """The config of a checkpoint without loading its weights (a quick check before serving).

    A seed ``.pth`` gets the seed's default config. Raises CheckpointError when ``path`` is not a
    checkpoint.
    """
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.suffix in (".pth", ".pt", ".bin"):
        return CheckpointConfig(name=path.stem)
    folder = path if path.is_dir() else path.parent
    config = _read_config(folder)
    if not (folder / config.weights_file).is_file():
        raise CheckpointError(f"{folder / config.weights_file}: weights file missing")
    return config


def _fit(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

        problems = [
            f"{label}: {show(keys)}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatch", wrong),
            )
            if keys
        ]
        raise CheckpointError(f"{source} does not fit this network: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _load_seed_pth(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds a whole pickled model (torch.save(model)), which a current "
            "segmentation_models_pytorch cannot load. With the library version that made it, "
            "re-save its weights: torch.save(model.state_dict(), 'best_model.pth')"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch file ({type(exc).__name__})"
        ) from None
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state_dict (name -> tensor)")
    return obj


def load_checkpoint(
    path: Path, *, architecture: Architecture | None = None
) -> tuple[nn.Module, CheckpointConfig]:
    """Load a checkpoint folder (or its config.json / weights file) or a seed ``.pth``.

    For a ``.pth`` the architecture defaults to the seed's (efficientnet-b4, bilinear) unless
    ``architecture`` says otherwise. Returns the model in eval mode, float32, on the CPU.
    """
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.suffix in (".pth", ".pt", ".bin"):
        config = CheckpointConfig(architecture=architecture or Architecture(), name=path.stem)
        model = config.build()
        _fit(model, _load_seed_pth(path), path)
        return model.eval(), config

    folder = path if path.is_dir() else path.parent
    config = _read_config(folder)
    if architecture is not None:
        config = config.model_copy(update={"architecture": architecture})
    weights = folder / config.weights_file
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file missing")
    if config.weights_sha256 and file_sha256(weights) != config.weights_sha256:
        raise CheckpointError(f"{weights}: sha256 differs from config.json (damaged or replaced)")
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(
            f"{weights}: unreadable safetensors file ({type(exc).__name__})"
        ) from None
    model = config.build()
    _fit(model, state, weights)
    return model.eval(), config
