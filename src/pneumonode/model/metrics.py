"""Segmentation and detection metrics, per image and over a set.

``confusion`` counts true/false positives/negatives per image (``get_stats`` in smp's terms);
Dice and IoU follow from them, with the SIIM convention that an image whose truth and prediction
are both empty scores 1. The SIIM score is the mean per-image Dice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Confusion",
    "auc",
    "confusion",
    "dice",
    "iou",
    "presence_metrics",
    "siim_score",
]


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    fn: int
    tn: int


def confusion(prediction: np.ndarray, truth: np.ndarray) -> Confusion:
    """Pixel counts. Shape: prediction, truth (H, W) bool (or 0/1) -> Confusion."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ")
    p, t = prediction.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return Confusion(tp, fp, fn, p.size - tp - fp - fn)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|); 1.0 when both are empty."""
    c = confusion(prediction, truth)
    denominator = 2 * c.tp + c.fp + c.fn
    return 1.0 if denominator == 0 else 2 * c.tp / denominator


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """|P∩T| / |P∪T|; 1.0 when both are empty."""
    c = confusion(prediction, truth)
    union = c.tp + c.fp + c.fn
    return 1.0 if union == 0 else c.tp / union


def siim_score(dices: Sequence[float]) -> float:
    """The challenge's score: mean per-image Dice (empty/empty counting 1)."""
    return float(np.mean(dices)) if len(dices) else float("nan")


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    positives, negatives = s[y], s[~y]
    if positives.size == 0 or negatives.size == 0:
        return None
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


def presence_metrics(predicted: Sequence[bool], truth: Sequence[bool]) -> dict[str, float | None]:
    """Image-level sensitivity and specificity of 'pneumothorax present'."""
    p = np.asarray(predicted, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    sensitivity = float((p & t).sum() / t.sum()) if t.any() else None
    specificity = float((~p & ~t).sum() / (~t).sum()) if (~t).any() else None
    return {"sensitivity": sensitivity, "specificity": specificity}
