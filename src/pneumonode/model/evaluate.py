"""``pneumonode evaluate``: how good is a checkpoint on a labelled image set, and which
threshold and minimum area make it best.

Per image (at model resolution, padding excluded from nothing since padding is never lesion):
Dice, IoU and the SIIM score convention (both empty = 1); per set: mean Dice on positives, SIIM
score, and presence metrics (sensitivity, specificity, AUC of the maximum probability).
``tune`` searches threshold x minimum component area x top-score gate on the probabilities
computed once, maximising the SIIM score.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from pneumonode.model.checkpoint import CONFIG_NAME, PostProcessing
from pneumonode.model.data import Sample, SegmentationDataset, discover_samples
from pneumonode.model.metrics import auc, dice, iou, presence_metrics, siim_score
from pneumonode.model.plots import image_grid
from pneumonode.model.postprocess import binary_mask
from pneumonode.model.predictor import Predictor
from pneumonode.results.overlay import render_overlay

__all__ = ["Evaluation", "evaluate", "select_samples", "tune"]

log = logging.getLogger(__name__)

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: Lesion size buckets, as a share of the image (SIIM: median about 0.8%).
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small (<0.5%)", 0.0, 0.005),
    ("medium (0.5-2%)", 0.005, 0.02),
    ("large (>=2%)", 0.02, 1.01),
)
MIN_AREA_FRACTIONS = (0.0, 0.0001, 0.0002, 0.0005, 0.001, 0.002)  # of the model input area
TOP_SCORE_GATES: tuple[float | None, ...] = (None, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def select_samples(data: Path, split: Path | None, subset: str = "validation") -> list[Sample]:
    """Every sample under ``data``, or those of ``subset`` in a training run's split.json."""
    samples = discover_samples(data)
    if split is None:
        return samples
    chosen = set(json.loads(split.read_text())[subset])
    return [s for s in samples if s.image_id in chosen]


def _score(
    probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray], post: PostProcessing
) -> list[tuple[float, float, bool]]:
    out = []
    for probability, truth in zip(probabilities, truths, strict=True):
        predicted = binary_mask(
            probability, post.threshold, post.min_area_pixels, post.top_score_threshold
        )
        out.append((dice(predicted, truth), iou(predicted, truth), bool(predicted.any())))
    return out


def tune(
    probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray], size: int
) -> tuple[PostProcessing, float]:
    """The post-processing with the best SIIM score on this set (ties: the simplest)."""
    best, best_score = PostProcessing(), -1.0
    for threshold in THRESHOLDS:
        for fraction in MIN_AREA_FRACTIONS:
            for gate in TOP_SCORE_GATES:
                if gate is not None and gate < threshold:
                    continue
                post = PostProcessing(
                    threshold=threshold,
                    min_area_pixels=round(fraction * size * size),
                    top_score_threshold=gate,
                )
                score = siim_score([d for d, _, _ in _score(probabilities, truths, post)])
                if score > best_score + 1e-9:
                    best, best_score = post, score
    return best, best_score


def _by_size(positives: Sequence[dict[str, Any]], size: int) -> dict[str, dict[str, Any]]:
    """Mean Dice of the positives per lesion-size bucket (share of the model input)."""
    buckets = {}
    for name, low, high in SIZE_BUCKETS:
        dices = [r["dice"] for r in positives if low <= r["truth_pixels"] / (size * size) < high]
        buckets[name] = {
            "images": len(dices),
            "mean_dice": float(np.mean(dices)) if dices else None,
        }
    return buckets


def evaluate(
    predictor: Predictor,
    samples: Sequence[Sample],
    out: Path,
    *,
    do_tune: bool = False,
    weights: Path | None = None,
    progress: bool = True,
) -> Evaluation:
    """Evaluate on ``samples``; writes evaluation.json, evaluation.csv and worst_cases.png."""
    out.mkdir(parents=True, exist_ok=True)
    dataset = SegmentationDataset(samples, predictor.size)
    images, probabilities, truths = [], [], []
    for index in tqdm(range(len(dataset)), desc="evaluate", unit="img", disable=not progress):
        image, truth = dataset.load(index)
        probabilities.append(predictor.probabilities(image[None, None].astype(np.float32) / 255)[0])
        truths.append(truth.astype(bool))
        images.append(image)

    post = predictor.config.postprocess
    tuned_score = None
    if do_tune:
        post, tuned_score = tune(probabilities, truths, predictor.size)
        if weights is not None:
            folder = weights if weights.is_dir() else weights.parent
            config_path = folder / CONFIG_NAME
            if config_path.is_file():
                updated = predictor.config.model_copy(
                    update={
                        "postprocess": post,
                        "metrics": {
                            **predictor.config.metrics,
                            "tuned_on": len(samples),
                            "tuned_siim_score": tuned_score,
                        },
                    }
                )
                config_path.write_text(updated.model_dump_json(indent=2) + "\n")
                log.info("wrote tuned post-processing into %s", config_path)
    scores = _score(probabilities, truths, post)
    rows: list[dict[str, Any]] = []
    for sample, probability, truth, (d, i, present) in zip(
        samples, probabilities, truths, scores, strict=True
    ):
        rows.append(
            {
                "image_id": sample.image_id,
                "truth_positive": bool(truth.any()),
                "predicted_positive": present,
                "dice": d,
                "iou": i,
                "max_probability": float(probability.max()),
                "truth_pixels": int(truth.sum()),
            }
        )
    positives = [r for r in rows if r["truth_positive"]]
    summary = {
        "images": len(rows),
        "positives": len(positives),
        "negatives": len(rows) - len(positives),
        "mean_dice_positives": float(np.mean([r["dice"] for r in positives]))
        if positives
        else None,
        "median_dice_positives": float(np.median([r["dice"] for r in positives]))
        if positives
        else None,
        "mean_iou_positives": float(np.mean([r["iou"] for r in positives])) if positives else None,
        "dice_by_size": _by_size(positives, predictor.size),
        "siim_score": siim_score([r["dice"] for r in rows]),
        "auc_max_probability": auc(
            [r["max_probability"] for r in rows], [r["truth_positive"] for r in rows]
        ),
        **presence_metrics(
            [r["predicted_positive"] for r in rows], [r["truth_positive"] for r in rows]
        ),
        "postprocess": post.model_dump(),
        "tuned": do_tune,
        "model": {"name": predictor.config.name, "version": predictor.config.version},
    }
    (out / "evaluation.json").write_text(
        json.dumps({"summary": summary, "images": rows}, indent=2) + "\n"
    )
    with (out / "evaluation.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["image_id"])
        writer.writeheader()
        writer.writerows(rows)
    worst = sorted(range(len(rows)), key=lambda k: rows[k]["dice"])[:12]
    tiles = []
    for k in worst:
        predicted = binary_mask(
            probabilities[k], post.threshold, post.min_area_pixels, post.top_score_threshold
        )
        tile = render_overlay(images[k], predicted, outline=False)
        contours, _ = cv2.findContours(
            truths[k].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(tile, contours, -1, (0, 200, 0), max(1, predictor.size // 256))
        cv2.putText(
            tile,
            f"Dice {rows[k]['dice']:.2f}",
            (8, 24),
            cv2.FONT_HERSHEY_SIMPLEX,
            max(0.4, predictor.size / 1024),
            (255, 255, 0),
            1,
            cv2.LINE_AA,
        )
        tiles.append(tile)
    cv2.imwrite(str(out / "worst_cases.png"), cv2.cvtColor(image_grid(tiles), cv2.COLOR_RGB2BGR))
    return Evaluation(rows, summary)
