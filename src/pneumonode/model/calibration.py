"""From a network's image score to a probability a radiologist can read, and a decision.

``fit_platt`` fits ``p = sigmoid(a * logit(score) + b)`` to validation labels by Newton's method
on the log loss (Platt scaling; with ``b = 0`` it is temperature scaling, ``T = 1 / a``). The map
is monotone (``a > 0`` is enforced), so it changes no ranking: AUC is unchanged, only the numbers
mean what they say. ``operating_point`` chooses the decision threshold for a triage tool: the
highest threshold whose sensitivity reaches the target (default 0.90) on validation, which is the
best specificity at that sensitivity. ``wilson_interval`` gives 95 % confidence intervals for
such proportions; ``roc_curve`` and ``reliability`` the points of the pictures.

Pure numpy, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "OperatingPoint",
    "PlattScaling",
    "fit_platt",
    "log_loss",
    "operating_point",
    "reliability",
    "roc_curve",
    "wilson_interval",
]

EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    result: np.ndarray = np.log(p) - np.log1p(-p)
    return result


def _sigmoid(z: np.ndarray) -> np.ndarray:
    result: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))
    return result


@dataclass(frozen=True)
class PlattScaling:
    """``p = sigmoid(a * logit(score) + b)``, monotone increasing (a > 0)."""

    a: float = 1.0
    b: float = 0.0

    def __call__(self, score: np.ndarray | float) -> np.ndarray:
        return _sigmoid(self.a * _logit(np.asarray(score)) + self.b)


def log_loss(
    probability: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray
) -> float:
    """Mean negative log-likelihood of binary ``labels`` (probabilities clipped to 1e-6)."""
    p = np.clip(np.asarray(probability, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=bool)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def fit_platt(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    *,
    temperature_only: bool = False,
    l2: float = 1e-3,
    iterations: int = 100,
) -> PlattScaling:
    """Fit Platt scaling (or temperature scaling: ``b = 0``) to ``labels`` by Newton's method.

    ``scores`` are probabilities in [0, 1] (the network's sigmoid). A small L2 pull towards the
    identity map (a = 1, b = 0) keeps the fit finite on separable data.

    Raises ValueError without both classes.
    """
    z = _logit(np.asarray(scores))
    y = np.asarray(labels, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        raise ValueError("calibration needs validation images of both classes")
    features = np.stack([z, np.zeros_like(z) if temperature_only else np.ones_like(z)], 1)
    prior = np.array([1.0, 0.0])
    n = len(z)

    def objective(theta: np.ndarray) -> float:
        margin = features @ theta
        # log(1 + exp(-m)) for positives, log(1 + exp(m)) for negatives, overflow-free
        losses = np.logaddexp(0.0, np.where(y > 0.5, -margin, margin))
        return float(losses.mean() + 0.5 * l2 * np.sum((theta - prior) ** 2))

    theta = prior.copy()
    value = objective(theta)
    for _ in range(iterations):
        p = _sigmoid(features @ theta)
        gradient = features.T @ (p - y) / n + l2 * (theta - prior)
        weights = p * (1 - p)
        hessian = (features * weights[:, None]).T @ features / n + l2 * np.eye(2)
        if temperature_only:
            hessian[1, :], hessian[:, 1], hessian[1, 1], gradient[1] = 0.0, 0.0, 1.0, 0.0
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-6:  # damped Newton: halve the step until the loss goes down
            candidate = theta - scale * step
            candidate[0] = max(candidate[0], 1e-3)  # monotone: never flip or flatten the ranking
            candidate_value = objective(candidate)
            if candidate_value <= value:
                break
            scale /= 2
        else:
            break
        converged = abs(value - candidate_value) < 1e-12
        theta, value = candidate, candidate_value
        if converged:
            break
    return PlattScaling(float(theta[0]), float(theta[1]))


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: float
    specificity: float
    positives: int
    negatives: int


def operating_point(
    probability: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    min_sensitivity: float = 0.9,
) -> OperatingPoint:
    """The highest threshold (``probability >= threshold`` is positive) whose sensitivity is at
    least ``min_sensitivity``: the best specificity at that sensitivity.

    The threshold is placed halfway (on the logit scale) between the last positive kept and the
    next lower score, so that a film scored like the validation's borderline one is called the
    same way; it is rounded to 4 decimals, downwards.
    """
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if not y.any() or y.all():
        raise ValueError("an operating point needs images of both classes")
    positives = np.sort(p[y])[::-1]
    keep = int(np.ceil(min_sensitivity * len(positives) - 1e-9))
    keep = min(max(keep, 1), len(positives))
    lowest_kept = positives[keep - 1]
    below = p[p < lowest_kept]
    if below.size:
        middle = float(_sigmoid((_logit(lowest_kept) + _logit(below.max())) / 2))
    else:
        middle = float(lowest_kept)
    threshold = float(np.floor(min(middle, lowest_kept) * 10_000) / 10_000)
    called = p >= threshold
    return OperatingPoint(
        threshold=threshold,
        sensitivity=float(called[y].mean()),
        specificity=float((~called[~y]).mean()),
        positives=int(y.sum()),
        negatives=int((~y).sum()),
    )


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (``(nan, nan)`` for an empty total)."""
    if total <= 0:
        return float("nan"), float("nan")
    phat = successes / total
    denominator = 1 + z * z / total
    centre = (phat + z * z / (2 * total)) / denominator
    half = z * np.sqrt(phat * (1 - phat) / total + z * z / (4 * total * total)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def roc_curve(
    scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = np.cumsum(~y)[distinct]
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def reliability(
    probability: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, bins: int = 10
) -> list[tuple[float, float, int]]:
    """(mean predicted probability, observed positive share, count) per non-empty equal-width
    bin: the points of a reliability diagram."""
    p = np.asarray(probability, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [
        (float(p[which == b].mean()), float(y[which == b].mean()), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]
