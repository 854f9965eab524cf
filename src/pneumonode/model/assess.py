"""Calibrate a model on the validation split, and evaluate it on the test split, as a triage tool.

``calibrate`` (``pneumonode calibrate``) runs the model on the validation films and chooses, in
this order: the image score (the image-level head, or the SIIM winners' top pixel score where a
model has no head or where it ranks the films better), a Platt scaling of that score to a
probability, the operating point (sensitivity >= 0.90 first, then the best specificity) and the
pixel threshold and minimum area that give the best mean Dice on the validation positives. It
writes them into the checkpoint's ``config.json``: nothing is chosen on the test split.

``evaluate_cohort`` (``pneumonode evaluate``) runs the node's own prediction (calibrated
probability, decision, mask reported only on films called positive) on films of both classes and
reports: ROC curve and AUC; sensitivity and specificity at the operating point with 95 % Wilson
intervals; specificity on normal films and on abnormal films without pneumothorax separately;
mean Dice on the positives at the source's resolution (all, and by lesion size); the SIIM score
(mean per-image Dice, 1 when both are empty) re-weighted to 22 % prevalence; a reliability
diagram; a grid of the worst false positives and false negatives.
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

from pneumonode.conversion.prepare import prepare_8bit_image
from pneumonode.model.calibration import (
    PlattScaling,
    fit_platt,
    log_loss,
    operating_point,
    reliability,
    roc_curve,
    wilson_interval,
)
from pneumonode.model.checkpoint import CONFIG_NAME, Calibration, Decision, PostProcessing
from pneumonode.model.data import DatasetLayoutError, Sample
from pneumonode.model.metrics import auc, dice
from pneumonode.model.plots import image_grid, xy_chart
from pneumonode.model.postprocess import grown_regions
from pneumonode.model.predictor import Predictor, mirror_average
from pneumonode.results.overlay import render_overlay

__all__ = [
    "SIIM_PREVALENCE",
    "calibrate",
    "evaluate_cohort",
    "siim_score_at_prevalence",
]

log = logging.getLogger(__name__)

SIIM_PREVALENCE = 0.22  # share of SIIM's stage-2 training films with a pneumothorax
PIXEL_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
GROW_FRACTIONS = (1.0, 0.7, 0.5)  # hysteresis: regions grown down to this share of the threshold
MIN_AREA_FRACTIONS = (0.0, 0.0002, 0.0005, 0.001)  # of the model input area
#: Lesion size, as a share of the film (SIIM's median is about 0.8 %).
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small (<0.5%)", 0.0, 0.005),
    ("medium (0.5-2%)", 0.005, 0.02),
    ("large (>=2%)", 0.02, 1.01),
)


@dataclass
class _Film:
    sample: Sample
    image: np.ndarray  # source pixels (8-bit)
    truth: np.ndarray  # source-sized bool mask


def _read(sample: Sample) -> _Film:
    image = cv2.imread(sample.image, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetLayoutError(f"{sample.image}: unreadable image")
    truth = np.zeros(image.shape, bool)
    if sample.mask is not None:
        mask = cv2.imread(sample.mask, cv2.IMREAD_GRAYSCALE)
        if mask is None or mask.shape != image.shape:
            raise DatasetLayoutError(f"{sample.mask}: unreadable or not the image's size")
        truth = mask > 127
    return _Film(sample, image, truth)


def _group(category: str | None, positive: bool) -> str:
    if positive:
        return "pneumothorax"
    text = (category or "").lower()
    if text.startswith("normal"):
        return "normal"
    if text.startswith("abnormal"):
        return "abnormal, no pneumothorax"
    return "negative (other)"


# -------------------------------------------------------------------------------- calibrate


@dataclass
class _Outputs:
    """The network's outputs on the validation films, for one way of running it."""

    heads: list[float | None]
    tops: list[float]
    labels: list[bool]
    probabilities: list[np.ndarray]  # pixel probabilities of the positives, model size
    truths: list[np.ndarray]  # their masks, model size


@dataclass
class _Fit:
    calibration: Calibration
    decision: Decision
    postprocess: PostProcessing
    dice: float  # mean Dice on the validation positives, model size, ungated

    @property
    def auc(self) -> float:
        return float(self.calibration.fitted_on["auc"][self.calibration.score])


def _run_validation(
    predictor: Predictor, samples: Sequence[Sample], progress: bool, mirror: bool
) -> tuple[_Outputs, _Outputs | None]:
    """The outputs on the film as it is and, with ``mirror``, averaged with its mirror image
    (what ``flip_average`` does at inference): one pass over the films for both."""
    plain = _Outputs([], [], [], [], [])
    mirrored = _Outputs([], [], [], [], []) if mirror else None
    keep_tta, predictor.tta = predictor.tta, False
    try:
        for sample in tqdm(samples, desc="calibrate", unit="img", disable=not progress):
            film = _read(sample)
            prepared = prepare_8bit_image(film.image, predictor.size)
            x = prepared.tensor()[np.newaxis]
            alone = predictor.forward(x)
            runs = [(plain, alone)]
            if mirrored is not None:
                flipped = predictor.forward(np.ascontiguousarray(x[..., ::-1]))
                runs.append((mirrored, mirror_average(alone, flipped)))
            truth = (
                prepared.letterbox.mask_to_model(film.truth.astype(np.uint8)).astype(bool)
                if sample.positive
                else None
            )
            for outputs, (p, i) in runs:
                outputs.heads.append(None if i is None else float(i[0]))
                outputs.tops.append(float(p[0].max()))
                outputs.labels.append(sample.positive)
                if truth is not None:
                    outputs.probabilities.append(p[0])
                    outputs.truths.append(truth)
    finally:
        predictor.tta = keep_tta
    return plain, mirrored


def _best_postprocessing(
    outputs: _Outputs, size: int, flip_average: bool
) -> tuple[PostProcessing, float]:
    """The pixel threshold, growing (hysteresis) and minimum area with the best mean Dice on
    the validation positives (model size, ungated); on a tie the first found stays (the lower
    threshold, then no growing, then the smaller area)."""
    areas = [round(fraction * size**2) for fraction in MIN_AREA_FRACTIONS]
    best_post, best_dice = PostProcessing(flip_average=flip_average), -1.0
    for threshold in PIXEL_THRESHOLDS:
        for fraction in GROW_FRACTIONS:
            grow = round(threshold * fraction, 4)
            dices = np.zeros((max(1, len(outputs.truths)), len(areas)))
            for k, (p, t) in enumerate(zip(outputs.probabilities, outputs.truths, strict=True)):
                dices[k] = [dice(mask, t) for mask in grown_regions(p, threshold, grow, areas)]
            for area, mean in zip(areas, dices.mean(axis=0), strict=True):
                if mean > best_dice + 1e-9:
                    best_dice = float(mean)
                    best_post = PostProcessing(
                        threshold=threshold,
                        grow_threshold=None if fraction == 1.0 else grow,
                        min_area_pixels=area,
                        flip_average=flip_average,
                    )
    return best_post, best_dice


def _fit(
    outputs: _Outputs,
    size: int,
    min_sensitivity: float,
    score: str,
    method: str,
    flip_average: bool,
) -> _Fit:
    """Score, Platt scaling, operating point and pixel post-processing for one way of running
    the network."""
    y = np.array(outputs.labels, bool)
    if y.all() or not y.any():
        raise ValueError("calibration needs validation films of both classes")
    candidates: dict[str, np.ndarray] = {"max_pixel": np.array(outputs.tops)}
    if all(h is not None for h in outputs.heads):
        candidates["head"] = np.array(outputs.heads, dtype=np.float64)
    aucs = {name: auc(values, y) or 0.5 for name, values in candidates.items()}
    chosen = max(aucs, key=lambda k: (aucs[k], k == "head")) if score == "auto" else score
    if chosen not in candidates:
        raise ValueError(f"this model has no {chosen} score")
    raw = candidates[chosen]
    platt = fit_platt(raw, y, temperature_only=method == "temperature")
    calibrated = platt(raw)
    point = operating_point(calibrated, y, min_sensitivity)

    best_post, best_dice = _best_postprocessing(outputs, size, flip_average)

    figures = {
        "images": len(y),
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
        "auc": {k: float(v) for k, v in aucs.items()},
        "log_loss_raw": log_loss(raw, y),
        "log_loss_calibrated": log_loss(calibrated, y),
    }
    calibration = Calibration(
        score=chosen,  # type: ignore[arg-type]
        method="temperature" if method == "temperature" else "platt",
        a=platt.a,
        b=platt.b,
        fitted_on=figures,
    )
    decision = Decision(
        threshold=point.threshold,
        rule=f"sensitivity >= {min_sensitivity:.2f} on validation, then the best specificity",
        validation={
            "sensitivity": point.sensitivity,
            "specificity": point.specificity,
            "positives": point.positives,
            "negatives": point.negatives,
        },
    )
    return _Fit(calibration, decision, best_post, best_dice)


def calibrate(
    predictor: Predictor,
    samples: Sequence[Sample],
    weights: Path,
    *,
    min_sensitivity: float = 0.9,
    score: str = "auto",
    method: str = "platt",
    flip_average: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Fit the image score's calibration, the operating point and the pixel post-processing on
    ``samples`` (the validation split) and write them into ``weights``' config.json.

    ``flip_average``: ``on`` or ``off``, or ``auto``: on when averaging with the mirror image
    gives a higher validation AUC + Dice (the training loop's criterion) than the film alone.
    Everything else is then fitted on the outputs of the way chosen.

    Returns what was chosen and the validation figures behind it.
    """
    if flip_average not in ("auto", "on", "off"):
        raise ValueError(f"flip_average must be auto, on or off, not {flip_average!r}")
    plain, mirrored = _run_validation(predictor, samples, progress, flip_average != "off")
    candidates: dict[bool, _Fit] = {}
    if flip_average != "on":
        candidates[False] = _fit(plain, predictor.size, min_sensitivity, score, method, False)
    if mirrored is not None:
        candidates[True] = _fit(mirrored, predictor.size, min_sensitivity, score, method, True)
    chosen = max(candidates, key=lambda k: (candidates[k].auc + candidates[k].dice, not k))
    fit = candidates[chosen]
    compared = {
        ("on" if k else "off"): {"auc": v.auc, "dice": v.dice} for k, v in candidates.items()
    }
    fit.calibration.fitted_on["flip_average"] = compared

    folder = weights if weights.is_dir() else weights.parent
    config = predictor.config.model_copy(
        update={
            "calibration": fit.calibration,
            "decision": fit.decision,
            "postprocess": fit.postprocess,
            "metrics": {
                **predictor.config.metrics,
                "validation_mean_dice_positives_model_size": fit.dice,
            },
        }
    )
    (folder / CONFIG_NAME).write_text(config.model_dump_json(indent=2) + "\n")
    predictor.config = config
    predictor.tta = fit.postprocess.flip_average
    return {
        "calibration": fit.calibration.model_dump(),
        "decision": fit.decision.model_dump(),
        "postprocess": fit.postprocess.model_dump(),
        "validation_mean_dice_positives": fit.dice,
        "flip_average": compared,
    }


# --------------------------------------------------------------------------------- evaluate


def siim_score_at_prevalence(
    dices_positive: Sequence[float], empty_on_negatives: Sequence[bool], prevalence: float
) -> float:
    """The SIIM score (mean per-image Dice; a negative film scores 1 when nothing is marked, 0
    otherwise) of a set re-weighted to ``prevalence`` positives."""
    if not len(dices_positive) or not len(empty_on_negatives):
        return float("nan")
    negative = float(np.mean(np.asarray(empty_on_negatives, dtype=np.float64)))
    return prevalence * float(np.mean(dices_positive)) + (1 - prevalence) * negative


def _proportion(successes: int, total: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, total)
    return {
        "value": successes / total if total else None,
        "ci95": [low, high],
        "n": total,
    }


def _tile(film: _Film, mask: np.ndarray, caption: str) -> np.ndarray:
    tile = render_overlay(film.image, mask, outline=False)
    contours, _ = cv2.findContours(
        film.truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    cv2.drawContours(tile, contours, -1, (0, 200, 0), max(2, film.image.shape[0] // 256))
    scale = max(0.5, film.image.shape[0] / 700)
    cv2.putText(
        tile, caption, (10, int(40 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0),
        max(1, int(scale * 2)), cv2.LINE_AA,
    )  # fmt: skip
    return tile


def evaluate_cohort(
    predictor: Predictor,
    samples: Sequence[Sample],
    out: Path,
    *,
    prevalence: float = SIIM_PREVALENCE,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate the node's prediction on ``samples`` (see the module docstring).

    Writes ``evaluation.json``, ``evaluation.csv``, ``roc.png``, ``reliability.png`` and
    ``worst_cases.png`` to ``out``; returns the summary.
    """
    if predictor.config.decision is None:
        raise ValueError(
            "the model has no operating point: run pneumonode calibrate on the validation split"
        )
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    keep: list[tuple[_Film, np.ndarray]] = []
    for sample in tqdm(samples, desc="evaluate", unit="img", disable=not progress):
        film = _read(sample)
        prediction = predictor.predict_prepared(prepare_8bit_image(film.image, predictor.size))
        finding = prediction.finding
        probability = (
            finding.probability if finding.probability is not None else finding.max_probability
        )
        rows.append(
            {
                "image_id": sample.image_id,
                "group": _group(sample.category, sample.positive),
                "truth_positive": sample.positive,
                "probability": probability,
                "max_probability": finding.max_probability,
                "called_positive": finding.present,
                "dice": dice(prediction.mask, film.truth),
                "truth_share": float(film.truth.mean()),
                "predicted_pixels": int(prediction.mask.sum()),
            }
        )
        keep.append((film, prediction.mask))
    y = np.array([r["truth_positive"] for r in rows], bool)
    p = np.array([r["probability"] for r in rows])
    called = np.array([r["called_positive"] for r in rows], bool)
    positives = [r for r in rows if r["truth_positive"]]
    negatives = [r for r in rows if not r["truth_positive"]]
    threshold = predictor.config.decision.threshold
    by_group = {}
    for group in ("normal", "abnormal, no pneumothorax", "negative (other)"):
        members = [r for r in negatives if r["group"] == group]
        if members:
            by_group[group] = _proportion(
                sum(not r["called_positive"] for r in members), len(members)
            )
    by_size = {}
    for name, low, high in SIZE_BUCKETS:
        dices = [r["dice"] for r in positives if low <= r["truth_share"] < high]
        by_size[name] = {
            "images": len(dices),
            "mean_dice": float(np.mean(dices)) if dices else None,
        }
    summary: dict[str, Any] = {
        "images": len(rows),
        "positives": len(positives),
        "negatives": len(negatives),
        "auc": auc(p, y),
        "operating_point": threshold,
        "sensitivity": _proportion(int((called & y).sum()), int(y.sum())),
        "specificity": _proportion(int((~called & ~y).sum()), int((~y).sum())),
        "specificity_by_group": by_group,
        "false_positive_rate_normal": (
            1 - by_group["normal"]["value"] if "normal" in by_group else None
        ),
        "mean_dice_positives": float(np.mean([r["dice"] for r in positives]))
        if positives
        else None,
        "mean_dice_positives_called": float(
            np.mean([r["dice"] for r in positives if r["called_positive"]])
        )
        if any(r["called_positive"] for r in positives)
        else None,
        "dice_by_size": by_size,
        "siim_score_at_prevalence": siim_score_at_prevalence(
            [r["dice"] for r in positives],
            [r["predicted_pixels"] == 0 for r in negatives],
            prevalence,
        ),
        "prevalence": prevalence,
        "log_loss": log_loss(p, y),
        "reliability": reliability(p, y),
        "resolution": "source (masks compared at the film's own size)",
        "model": {"name": predictor.config.name, "version": predictor.config.version},
    }
    (out / "evaluation.json").write_text(
        json.dumps({"summary": summary, "images": rows}, indent=2) + "\n"
    )
    with (out / "evaluation.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    fpr, tpr, _ = roc_curve(p, y)
    sens, spec = summary["sensitivity"]["value"], summary["specificity"]["value"]
    roc = xy_chart(
        {f"ROC, AUC {summary['auc']:.3f} (n={len(rows)})": (fpr.tolist(), tpr.tolist())},
        "ROC curve: calibrated probability",
        "1 - specificity",
        "sensitivity",
        markers={f"operating point {threshold:.3f}": (1 - spec, sens)},
    )
    cv2.imwrite(str(out / "roc.png"), cv2.cvtColor(roc, cv2.COLOR_RGB2BGR))
    bins = summary["reliability"]
    diagram = xy_chart(
        {"observed share of positives": ([b[0] for b in bins], [b[1] for b in bins])},
        "Reliability diagram (10 bins)",
        "predicted probability",
        "observed",
    )
    cv2.imwrite(str(out / "reliability.png"), cv2.cvtColor(diagram, cv2.COLOR_RGB2BGR))

    false_pos = sorted((k for k in range(len(rows)) if called[k] and not y[k]), key=lambda k: -p[k])
    false_neg = sorted((k for k in range(len(rows)) if y[k] and not called[k]), key=lambda k: p[k])
    tiles = [
        _tile(keep[k][0], keep[k][1], f"FP p={p[k]:.2f} {rows[k]['group'][:8]}")
        for k in false_pos[:8]
    ] + [_tile(keep[k][0], keep[k][1], f"FN p={p[k]:.2f}") for k in false_neg[:8]]
    cv2.imwrite(str(out / "worst_cases.png"), cv2.cvtColor(image_grid(tiles), cv2.COLOR_RGB2BGR))
    return summary


def apply_platt(calibration: Calibration, score: np.ndarray) -> np.ndarray:
    """The calibrated probability of raw scores (for tables and tests)."""
    return PlattScaling(calibration.a, calibration.b)(score)
