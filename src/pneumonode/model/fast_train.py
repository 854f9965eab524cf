"""Training from a bundle with the films held on the device: the positives-and-negatives recipe.

Every film of the training split lives on the device as uint8 (1,300 films at 512 px: 340 MB),
batches are drawn there by a weighted sampler (``positive_share`` of the draws are positives, as
``torch.utils.data.WeightedRandomSampler`` draws) and augmented there, in batch, by tensor
operations: no worker processes, no per-film Python. The same code runs on the CPU (2 cores) and
on a GPU.

The network is the U-Net with an image-level head (``build_unet(..., classification_head=True)``):
    loss = BCE(pixels) + dice_weight * focal Dice (positive films only)
           + cls_weight * BCE(image label)
After each epoch the validation split is scored (image AUC from the head, Dice on positives, the
losses); ``best/`` keeps the epoch with the highest ``AUC + Dice``, ``last/`` the last one, and an
exponential moving average of the weights (``ema``) is what is scored and saved.

A time limit plans the cosine learning-rate decay over the time rather than over epochs, so that a
run of any pace ends at ``min_lr``. Outputs in ``out/``: ``metrics.csv``, ``curves.png``,
``best/``, ``last/``, ``log.txt``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from pneumonode.model.acceleration import (
    Fold,
    fold_batchnorm,
    freeze_depthwise,
    freeze_stages,
    hold_frozen_norms,
    unfold,
)
from pneumonode.model.bundle import Bundle, load_bundle, resize_bundle
from pneumonode.model.checkpoint import (
    Architecture,
    CheckpointConfig,
    InputSpec,
    PostProcessing,
    load_checkpoint,
    save_checkpoint,
)
from pneumonode.model.losses import soft_dice
from pneumonode.model.metrics import auc
from pneumonode.model.network import build_unet
from pneumonode.model.predictor import resolve_device
from pneumonode.model.train import _autocast_dtype
from pneumonode.model.train_config import Augment, FastTrainConfig

__all__ = ["Augment", "FastTrainConfig", "device_augment", "fast_train", "weighted_draws"]

log = logging.getLogger(__name__)


def weighted_draws(
    positive: torch.Tensor, count: int, share: float, generator: torch.Generator
) -> torch.Tensor:
    """``count`` indices drawn with replacement, a positive with probability ``share`` per draw
    (the weights of ``WeightedRandomSampler``); uniform when one class is absent."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        weights = torch.ones(len(positive), dtype=torch.float64)
    else:
        weights = torch.where(positive.cpu(), share / n_pos, (1 - share) / n_neg).double()
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def device_augment(
    images: torch.Tensor, masks: torch.Tensor, params: Augment, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch (N, 1, H, W) float images in [0, 1] and masks 0/1, on their device.

    Random flips; rotation, scale and shift (one affine warp, border pixels repeated: no black
    corners); brightness, contrast and gamma; Gaussian noise. The mask follows the geometry.
    """
    n, device = images.shape[0], images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * (high - low) + low).to(device)

    def chance(p: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < p).to(device)

    flip = chance(params.flip)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    masks = torch.where(flip[:, None, None, None], masks.flip(-1), masks)
    warp = chance(params.affine)
    if bool(warp.any()):
        angle = uniform(-params.rotate_degrees, params.rotate_degrees) * math.pi / 180
        scale = uniform(*params.scale)
        shift = torch.stack([uniform(-params.translate, params.translate) * 2 for _ in range(2)], 1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)],
            1,
        )
        identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=device).expand(n, 2, 3)
        theta = torch.where(warp[:, None, None], theta, identity)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, "bilinear", "border", align_corners=False)
        masks = (F.grid_sample(masks, grid, "bilinear", "zeros", align_corners=False) > 0.5).to(
            masks.dtype
        )
    shape = (n, 1, 1, 1)
    gamma = uniform(*params.gamma).view(shape)
    images = images.clamp(0, 1).pow(gamma)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(*params.contrast).view(shape)
    brightness = uniform(-params.brightness, params.brightness).view(shape)
    images = (images - mean) * contrast + mean + brightness
    noisy = chance(params.noise).view(shape)
    # drawn where the batch is (a CPU draw of a 512 px batch would cost more than the step)
    noise = torch.randn(images.shape, device=device, dtype=images.dtype) * params.noise_std
    images = images + noise * noisy
    return images.clamp(0, 1), masks


class _Ema:
    """An exponential moving average of a model's parameters (buffers copied as they are)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # a young average follows closely
        ours: list[torch.Tensor] = list(self.model.parameters())
        theirs: list[torch.Tensor] = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ours, theirs, 1 - decay)
        for mine, other in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(other)


def _to_batch(
    images: torch.Tensor, masks: torch.Tensor, index: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    x = images[index.to(images.device)].to(device, non_blocking=True)
    y = masks[index.to(masks.device)].to(device, non_blocking=True)
    return x[:, None].float().div_(255), y[:, None].float()


@torch.inference_mode()
def score(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    batch_size: int,
    threshold: float = 0.5,
    memory_format: torch.memory_format = torch.preserve_format,
) -> dict[str, np.ndarray]:
    """Per film: the head's probability, the maximum pixel probability, the Dice at
    ``threshold`` (model size) and the losses' parts, for a set held as uint8 tensors."""
    model.eval()
    head, top, dices, pixel_bce = [], [], [], []
    for start in range(0, len(images), batch_size):
        index = torch.arange(start, min(start + batch_size, len(images)))
        x, y = _to_batch(images, masks, index, device)
        x = x.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, label = model(x)
        logits = logits.float()
        probability = torch.sigmoid(logits)
        head.append(torch.sigmoid(label.float())[:, 0].cpu())
        top.append(probability.amax(dim=(1, 2, 3)).cpu())
        predicted = (probability >= threshold).float()
        inter = (predicted * y).sum(dim=(1, 2, 3))
        total = predicted.sum(dim=(1, 2, 3)) + y.sum(dim=(1, 2, 3))
        dices.append(torch.where(total > 0, 2 * inter / total.clamp_min(1), 1.0).cpu())
        pixel_bce.append(
            F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean((1, 2, 3)).cpu()
        )
    return {
        "probability": torch.cat(head).numpy(),
        "max_probability": torch.cat(top).numpy(),
        "dice": torch.cat(dices).numpy(),
        "pixel_bce": torch.cat(pixel_bce).numpy(),
    }


def _summary(scores: dict[str, np.ndarray], positive: np.ndarray) -> dict[str, float]:
    p = np.clip(scores["probability"], 1e-6, 1 - 1e-6)
    label_bce = -np.mean(np.where(positive, np.log(p), np.log(1 - p)))
    dice_pos = float(np.mean(scores["dice"][positive])) if positive.any() else float("nan")
    head_auc = auc(scores["probability"], positive)
    pixel_auc = auc(scores["max_probability"], positive)
    head_auc = float("nan") if head_auc is None else head_auc
    return {
        "val_auc": head_auc,
        "val_auc_max_probability": float("nan") if pixel_auc is None else pixel_auc,
        "val_dice_positives": dice_pos,
        "val_label_bce": float(label_bce),
        "val_pixel_bce": float(np.mean(scores["pixel_bce"])),
        "val_score": head_auc + dice_pos,
    }


def _lr(config: FastTrainConfig, progress: float) -> float:
    """Linear warm-up over ``warmup_fraction``, then cosine to ``min_lr`` at progress 1."""
    if progress < config.warmup_fraction:
        return config.lr * max(progress / config.warmup_fraction, 0.01)
    rest = (progress - config.warmup_fraction) / max(1 - config.warmup_fraction, 1e-9)
    cosine = 0.5 * (1 + math.cos(math.pi * min(rest, 1.0)))
    return config.min_lr + (config.lr - config.min_lr) * cosine


COLUMNS = (
    "epoch",
    "step",
    "images",
    "seconds",
    "lr",
    "train_loss",
    "train_seg_loss",
    "train_cls_loss",
    "val_auc",
    "val_auc_max_probability",
    "val_dice_positives",
    "val_label_bce",
    "val_pixel_bce",
    "val_score",
)


def _write_history(out: Path, history: Sequence[dict[str, float]]) -> None:
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    try:
        import cv2

        from pneumonode.model.plots import line_chart

        losses = line_chart(
            {
                "train loss": [h["train_loss"] for h in history],
                "val pixel BCE x10": [10 * h["val_pixel_bce"] for h in history],
                "val label BCE": [h["val_label_bce"] for h in history],
            },
            "loss",
        )
        scores = line_chart(
            {
                "val AUC (head)": [h["val_auc"] for h in history],
                "val AUC (max pixel)": [h["val_auc_max_probability"] for h in history],
                "val Dice (positives)": [h["val_dice_positives"] for h in history],
            },
            "validation",
        )
        cv2.imwrite(
            str(out / "curves.png"), cv2.cvtColor(np.vstack([losses, scores]), cv2.COLOR_RGB2BGR)
        )
    except Exception as exc:  # a picture is never worth a failed run
        log.warning("curves.png not drawn: %s", exc)


def _checkpoint_config(
    config: FastTrainConfig, bundle: Bundle, summary: dict[str, Any], epoch: int
) -> CheckpointConfig:
    def counts(split: str) -> dict[str, Any]:
        index = bundle.select(split)
        return {
            "images": len(index),
            "positives": int(bundle.positive[index].sum()),
            "negatives": int((~bundle.positive[index]).sum()),
            "patients": len({bundle.patients[i] for i in index}),
        }

    return CheckpointConfig(
        version=config.version,
        architecture=Architecture(encoder=config.encoder, classification_head=True),
        input=InputSpec(size=bundle.size),
        postprocess=PostProcessing(threshold=config.threshold),
        training={
            "config": config.model_dump(mode="json"),
            "augment": Augment().model_dump(mode="json"),
            "train": counts("train"),
            "validation": counts("validation"),
            "epoch": epoch,
        },
        metrics=summary,
    )


def fast_train(
    config: FastTrainConfig, *, augment: Augment | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train as ``config`` says; returns the best epoch's summary (see the module docstring)."""
    started = time.monotonic()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    logfile = (out / "log.txt").open("a")

    def say(text: str) -> None:
        line = f"[{time.monotonic() - started:7.1f}s] {text}"
        logfile.write(line + "\n")
        logfile.flush()
        if progress:
            print(line, flush=True)

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = resolve_device(config.device)
    dtype = _autocast_dtype(device, config.amp)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    params = augment or Augment()

    bundle = load_bundle(config.bundle, ("train", "validation"))
    if config.size is not None and config.size != bundle.size:
        bundle = resize_bundle(bundle, config.size)
    train_index, val_index = bundle.select("train"), bundle.select("validation")
    if len(train_index) == 0 or len(val_index) == 0:
        raise ValueError(f"{config.bundle}: the bundle needs train and validation films")
    holder = device if device.type == "cuda" else torch.device("cpu")
    train_images = torch.from_numpy(bundle.images[train_index]).to(holder)
    train_masks = torch.from_numpy(bundle.masks[train_index]).to(holder)
    train_positive = torch.from_numpy(bundle.positive[train_index])
    val_images = torch.from_numpy(bundle.images[val_index]).to(holder)
    val_masks = torch.from_numpy(bundle.masks[val_index]).to(holder)
    val_positive = bundle.positive[val_index]
    say(
        f"{len(train_index)} training films ({int(train_positive.sum())} positive), "
        f"{len(val_index)} validation films ({int(val_positive.sum())} positive), "
        f"{bundle.size} px, device {device}, autocast {dtype}"
    )

    if config.init_weights is not None:
        model, _ = load_checkpoint(config.init_weights)
        say(f"starting from the weights of {config.init_weights}")
    else:
        model = build_unet(
            config.encoder, encoder_weights=config.encoder_weights, classification_head=True
        )
    folds: list[Fold] = []
    if config.freeze_depthwise:
        say(f"{freeze_depthwise(model)} depthwise kernels frozen")
    if config.freeze_stages:
        frozen = freeze_stages(model, config.freeze_stages)
        say(f"the encoder's stem and first {config.freeze_stages} stages frozen ({frozen} tensors)")
    if config.fold_batchnorm:
        folds = fold_batchnorm(model)
        say(f"{len(folds)} BatchNorm layers of the encoder frozen and folded")
    model = model.to(device).to(memory_format=memory_format)
    ema = _Ema(model, config.ema) if config.ema > 0 else None
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    pos_weight = torch.tensor([config.pos_weight], device=device)

    per_epoch = config.samples_per_epoch or len(train_index)
    steps_per_epoch = max(1, per_epoch // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    budget = config.time_limit * 60 if config.time_limit else None
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"val_score": -math.inf}
    step, seen, train_seconds = 0, 0, 0.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        hold_frozen_norms(model)
        epoch_started = time.monotonic()
        draws = weighted_draws(
            train_positive, steps_per_epoch * config.batch_size, config.positive_share, generator
        )
        totals = torch.zeros(3, device=device)
        done = 0
        for batch in draws.view(steps_per_epoch, config.batch_size):
            progress_now = (
                step / total_steps
                if budget is None
                else max(
                    step / total_steps, (train_seconds + time.monotonic() - epoch_started) / budget
                )
            )
            if progress_now >= 1:
                break
            lr = _lr(config, progress_now)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = _to_batch(train_images, train_masks, batch, device)
            if config.augment:
                x, y = device_augment(x, y, params, generator)
            x = x.contiguous(memory_format=memory_format)
            label = (y.amax(dim=(1, 2, 3)) > 0).float()
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                logits, label_logits = model(x)
            logits, label_logits = logits.float(), label_logits.float()[:, 0]
            bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            dice = soft_dice(torch.sigmoid(logits), y)
            focal = (
                (1 - dice).clamp_min(0).pow(config.focal_gamma) * label
            ).sum() / label.sum().clamp_min(1)
            seg = config.bce_weight * bce + config.dice_weight * focal
            cls = F.binary_cross_entropy_with_logits(label_logits, label)
            loss = seg + config.cls_weight * cls
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if ema is not None:
                ema.update(model, step)
            totals += torch.stack([loss.detach(), seg.detach(), cls.detach()])
            step, done, seen = step + 1, done + 1, seen + len(batch)
            if progress and done % max(1, steps_per_epoch // 4) == 0:
                say(
                    f"epoch {epoch} step {done}/{steps_per_epoch}: loss "
                    f"{float(totals[0]) / done:.4f}, lr {lr:.2e}"
                )
        train_seconds += time.monotonic() - epoch_started
        if done == 0:
            break
        scored = ema.model if ema is not None else model
        scores = score(
            scored,
            val_images,
            val_masks,
            device,
            dtype,
            config.batch_size * 2,
            config.threshold,
            memory_format,
        )
        summary = _summary(scores, val_positive)
        mean = (totals / done).tolist()
        row = {
            "epoch": epoch,
            "step": step,
            "images": seen,
            "seconds": round(time.monotonic() - started, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": mean[0],
            "train_seg_loss": mean[1],
            "train_cls_loss": mean[2],
            **summary,
        }
        history.append(row)
        _write_history(out, history)
        say(
            f"epoch {epoch}: {seen / train_seconds:.1f} images/s; train loss {mean[0]:.4f}; "
            f"val AUC {summary['val_auc']:.3f} "
            f"(max pixel {summary['val_auc_max_probability']:.3f}), "
            f"Dice {summary['val_dice_positives']:.3f}, label BCE {summary['val_label_bce']:.3f}"
        )
        checkpoint = _checkpoint_config(config, bundle, summary, epoch)
        saved = unfold(scored, folds) if folds else scored
        save_checkpoint(saved, out / "last", checkpoint, dtype="float16")
        if summary["val_score"] > best["val_score"]:
            best = {**summary, "epoch": epoch}
            save_checkpoint(saved, out / "best", checkpoint, dtype="float16")
        if done < steps_per_epoch:  # the time is up
            break
    best["train_images_per_second"] = seen / max(train_seconds, 1e-9)
    best["steps"] = step
    best["seconds"] = time.monotonic() - started
    (out / "result.json").write_text(json.dumps(best, indent=1) + "\n")
    say(f"best epoch {best.get('epoch')}: {json.dumps(best)}")
    logfile.close()
    return best
