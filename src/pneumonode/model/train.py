"""The training loop behind ``pneumonode train``: reproducible, resumable, with its pictures.

Outputs in ``out/``: ``split.json`` (which image is in which set), ``metrics.csv`` (one row per
epoch), ``curves.png`` (losses and validation Dice), ``val_samples.png`` (validation overlays of
the best model), ``best/`` (the best checkpoint by validation loss, our format) and ``last.pt``
(model, optimiser and scheduler state for ``--resume``).

With a time limit (``time_limit``, minutes) the run ends after the last epoch that fits: after
each epoch the pace so far (the first epoch, which pays for start-up, left out once there are
others) says how many more fit, and the cosine schedule is planned over that many epochs instead
of ``epochs`` (which stays the upper bound).
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler
from tqdm import tqdm

from pneumonode.model.checkpoint import (
    Architecture,
    CheckpointConfig,
    InputSpec,
    PostProcessing,
    load_checkpoint,
    save_checkpoint,
)
from pneumonode.model.data import (
    SegmentationDataset,
    balanced_sampler,
    describe,
    discover_samples,
    split_samples,
    write_split,
)
from pneumonode.model.losses import BceFocalDiceLoss
from pneumonode.model.metrics import dice, siim_score
from pneumonode.model.network import build_unet
from pneumonode.model.plots import image_grid, line_chart
from pneumonode.model.predictor import cpu_supports_bf16, resolve_device
from pneumonode.model.train_config import TrainConfig
from pneumonode.results.overlay import render_overlay

__all__ = ["TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_dice",
    "val_loss",
    "val_dice_positives",
    "val_siim_score",
    "seconds",
)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped_early: bool = False
    stopped_for_time: bool = False
    planned_epochs: int | None = None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(False)


def _autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def _scheduled_lr(
    config: TrainConfig,
    step: int,
    warmup_steps: int,
    steps_per_epoch: int,
    planned_epochs: int | None = None,
) -> float | None:
    """The learning rate for ``step`` (0-based), or None where the plateau scheduler decides.

    Linear warm-up over ``warmup_steps``; then either ReduceLROnPlateau (stepped per epoch) or a
    cosine decay from ``lr`` to ``min_lr`` that ends with the last planned epoch
    (``planned_epochs``, default ``config.epochs``).
    """
    if step < warmup_steps:
        return config.lr * (step + 1) / warmup_steps
    if config.schedule != "cosine":
        return None
    epochs = planned_epochs or config.epochs
    total = max(epochs * steps_per_epoch - warmup_steps, 1)
    progress = min((step - warmup_steps) / total, 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def _epochs_that_fit(
    time_limit_s: float, elapsed_s: float, epoch_seconds: Sequence[float], done: int, most: int
) -> int:
    """How many epochs the run can have in all: the ``done`` ones plus as many more as fit in
    the time left at the pace so far (the mean of the last five epochs, the first one left out
    once there are others: it pays for start-up), at most ``most``."""
    steady = list(epoch_seconds[1:] or epoch_seconds)[-5:]
    pace = max(sum(steady) / len(steady), 1e-9)
    more = max(0, math.floor((time_limit_s - elapsed_s) / pace))
    return min(most, done + more)


def _loader(
    dataset: SegmentationDataset, batch: int, workers: int, sampler: Any, shuffle: bool, seed: int
) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=workers,
        generator=generator,
        drop_last=False,
        persistent_workers=workers > 0,
    )


def _validate(
    model: torch.nn.Module,
    loader: DataLoader[Any],
    loss_fn: BceFocalDiceLoss,
    device: torch.device,
    dtype: torch.dtype | None,
    threshold: float,
    limit: int | None,
) -> tuple[float, float, float]:
    """(mean loss, mean Dice on positive images, SIIM score over all)."""
    model.eval()
    losses: list[float] = []
    dices_pos: list[float] = []
    dices_all: list[float] = []
    with torch.inference_mode():
        for batch_index, (x, y) in enumerate(loader):
            if limit is not None and batch_index >= limit:
                break
            x, y = x.to(device), y.to(device)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                logits = model(x)
            losses.append(float(loss_fn(logits.float(), y)))
            predictions = (torch.sigmoid(logits.float()) >= threshold).cpu().numpy()[:, 0]
            truths = y.cpu().numpy()[:, 0] > 0.5
            for p, t in zip(predictions, truths, strict=True):
                d = dice(p, t)
                dices_all.append(d)
                if t.any():
                    dices_pos.append(d)
    mean_pos = float(np.mean(dices_pos)) if dices_pos else float("nan")
    return float(np.mean(losses)), mean_pos, siim_score(dices_all)


def _batch_dice(logits: torch.Tensor, truth: torch.Tensor, threshold: float) -> float:
    """Mean per-image Dice of one training batch (as the network saw it, in train mode)."""
    predicted = (torch.sigmoid(logits.float()) >= threshold).cpu().numpy()[:, 0]
    truths = truth.cpu().numpy()[:, 0] > 0.5
    return float(np.mean([dice(p, t) for p, t in zip(predicted, truths, strict=True)]))


def _write_metrics(out: Path, history: Sequence[dict[str, float]]) -> None:
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(history)
    losses = line_chart(
        {
            "train loss": [h["train_loss"] for h in history],
            "val loss": [h["val_loss"] for h in history],
        },
        "loss (BCE + focal Dice)",
    )
    scores = line_chart(
        {
            "train Dice": [h.get("train_dice", float("nan")) for h in history],
            "val Dice (positives)": [h["val_dice_positives"] for h in history],
            "val SIIM score": [h["val_siim_score"] for h in history],
        },
        "Dice",
    )
    cv2.imwrite(
        str(out / "curves.png"), cv2.cvtColor(np.vstack([losses, scores]), cv2.COLOR_RGB2BGR)
    )


def _sample_overlays(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    device: torch.device,
    threshold: float,
    path: Path,
    count: int = 8,
) -> None:
    """Validation images with the prediction (orange) and the truth outline (green)."""
    model.eval()
    tiles = []
    picks = [i for i, s in enumerate(dataset.samples) if s.positive][:count] or list(
        range(min(count, len(dataset)))
    )
    with torch.inference_mode():
        for index in picks:
            image, truth = dataset.load(index)
            x = torch.from_numpy(image.astype(np.float32) / 255)[None, None].to(device)
            predicted = (torch.sigmoid(model(x).float())[0, 0] >= threshold).cpu().numpy()
            tile = render_overlay(image, predicted, outline=False)
            contours, _ = cv2.findContours(
                truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(tile, contours, -1, (0, 200, 0), max(1, image.shape[0] // 256))
            tiles.append(tile)
    cv2.imwrite(str(path), cv2.cvtColor(image_grid(tiles), cv2.COLOR_RGB2BGR))


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume training) as ``config`` says; see the module docstring for outputs."""
    run_started = time.monotonic()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(config.seed)
    device = resolve_device(config.device)
    dtype = _autocast_dtype(device, config.amp)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size: let cuDNN time its kernels
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format

    samples = discover_samples(config.data)
    train_samples, val_samples = split_samples(samples, config.val_fraction, config.seed)
    write_split(
        out / "split.json", train_samples, val_samples, seed=config.seed, data=str(config.data)
    )
    train_set = SegmentationDataset(
        train_samples,
        config.size,
        augment=config.augment,
        seed=config.seed,
        cache=config.cache,
        crop=config.crop,
        crop_lesion_share=config.crop_lesion_share,
    )
    val_set = SegmentationDataset(val_samples, config.size, augment=False, cache=config.cache)
    draws = config.samples_per_epoch or len(train_samples)
    sampler: Sampler[int] | None = balanced_sampler(
        train_samples, config.positive_share, config.seed, num_samples=draws
    )
    if sampler is None and config.samples_per_epoch is not None:
        generator = torch.Generator().manual_seed(config.seed)
        sampler = RandomSampler(train_set, replacement=True, num_samples=draws, generator=generator)
    train_loader = _loader(train_set, config.batch_size, config.workers, sampler, True, config.seed)
    val_loader = _loader(val_set, config.batch_size, config.workers, None, False, config.seed)

    model = build_unet(
        config.encoder,
        encoder_weights=config.encoder_weights,
        decoder_interpolation=config.decoder_interpolation,
    )
    if config.init_weights is not None:
        initial, _ = load_checkpoint(
            config.init_weights,
            architecture=Architecture(
                encoder=config.encoder, decoder_interpolation=config.decoder_interpolation
            ),
        )
        model.load_state_dict(initial.state_dict())
        log.info("starting from the weights of %s", config.init_weights)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = BceFocalDiceLoss(
        config.bce_weight, config.dice_weight, config.focal_gamma, config.pos_weight
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.plateau_factor, patience=config.plateau_patience
    )
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda" and dtype == torch.float16)

    history: list[dict[str, float]] = []
    start_epoch, best_loss, best_epoch, stale = 0, math.inf, -1, 0
    planned = config.epochs  # fewer when a time limit says so
    last_path = out / "last.pt"
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        plateau.load_state_dict(state["plateau"])
        history = state["history"]
        start_epoch, best_loss, best_epoch, stale = (
            state["epoch"] + 1,
            state["best_loss"],
            state["best_epoch"],
            state["stale"],
        )
        # a time-limited run's plan goes on; once it is done, --epochs says how far to go
        if start_epoch < state.get("planned_epochs", config.epochs) <= config.epochs:
            planned = state["planned_epochs"]
        log.info("resumed after epoch %d", state["epoch"])

    steps_per_epoch = min(len(train_loader), config.max_batches_per_epoch or len(train_loader))
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    result = TrainResult(best_epoch, best_loss, history)
    epoch_seconds: list[float] = []  # whole epochs of this call, saving included
    lap = time.monotonic()
    for epoch in range(start_epoch, config.epochs):
        if epoch >= planned:
            break
        started = time.monotonic()
        train_set.epoch = epoch
        model.train()
        losses: list[float] = []
        train_dices: list[float] = []
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{planned}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for step, (x, y) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            global_step = epoch * steps_per_epoch + step
            lr = _scheduled_lr(config, global_step, warmup_steps, steps_per_epoch, planned)
            if lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            x, y = x.to(device, memory_format=memory_format), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            train_dices.append(_batch_dice(logits.detach(), y, config.threshold))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        bar.close()
        val_loss, val_dice, val_siim = _validate(
            model,
            val_loader,
            loss_fn,
            device,
            dtype,
            config.threshold,
            config.max_batches_per_epoch,
        )
        if config.schedule == "plateau" and (epoch + 1) * steps_per_epoch > warmup_steps:
            plateau.step(val_loss)
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "train_dice": float(np.mean(train_dices)) if train_dices else float("nan"),
            "val_loss": val_loss,
            "val_dice_positives": val_dice,
            "val_siim_score": val_siim,
            "seconds": time.monotonic() - started,
        }
        history.append(row)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, "
                f"val loss {val_loss:.4f}, val Dice (positives) {val_dice:.3f}"
            )
        if config.time_limit is not None:
            now = time.monotonic()
            epoch_seconds.append(now - lap)  # with the last epoch's saving
            lap = now
            fit = _epochs_that_fit(
                config.time_limit * 60, now - run_started, epoch_seconds, epoch + 1, config.epochs
            )
            if len(epoch_seconds) > 1 or fit <= epoch + 1:  # one epoch's pace includes start-up
                planned = fit
            if planned <= epoch + 1 < config.epochs:
                result.stopped_for_time = True
                log.info("time limit: stopping after epoch %d", epoch + 1)
            elif planned != config.epochs:
                log.info("time limit: %d epochs fit", planned)
        improved = val_loss < best_loss
        if improved:
            best_loss, best_epoch, stale = val_loss, epoch + 1, 0
            checkpoint = CheckpointConfig(
                version=config.version,
                architecture=Architecture(
                    encoder=config.encoder, decoder_interpolation=config.decoder_interpolation
                ),
                input=InputSpec(size=config.size),
                postprocess=PostProcessing(threshold=config.threshold),
                training={
                    "config": config.model_dump(mode="json"),
                    "train": describe(train_samples),
                    "validation": describe(val_samples),
                    "epoch": epoch + 1,
                    "planned_epochs": planned,
                },
                metrics={
                    "val_loss": val_loss,
                    "val_dice_positives": val_dice,
                    "val_siim_score": val_siim,
                },
            )
            save_checkpoint(model, out / "best", checkpoint)
            _sample_overlays(model, val_set, device, config.threshold, out / "val_samples.png")
        else:
            stale += 1
        _write_metrics(out, history)
        tmp = last_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "plateau": plateau.state_dict(),
                "history": history,
                "epoch": epoch,
                "best_loss": best_loss,
                "best_epoch": best_epoch,
                "stale": stale,
                "planned_epochs": planned,
            },
            tmp,
        )
        tmp.replace(last_path)
        if stale >= config.patience:
            result.stopped_early = True
            break
    result.best_epoch, result.best_val_loss, result.history = best_epoch, best_loss, history
    result.planned_epochs = planned
    result.checkpoint = out / "best" if best_epoch > 0 else None
    return result
