"""The model card's measured tables, generated from the measured files so that they cannot drift.

``MODEL_CARD.md`` is prose written by people around tables written by this module. Each table
sits between two markers::

    <!-- measured: test -->
    | metric | value |
    ...
    <!-- /measured -->

and :func:`refresh` rewrites what is between them. The tables and where they come from:

``calibration``  the checkpoint's ``config.json`` (Platt scaling and the operating point,
                 fitted on validation by ``pneumonode calibrate``)
``test``         ``evaluation.json`` in the model folder: the ``summary`` of
                 ``pneumonode evaluate --subset test`` (no per-image rows: no patient data)
``siim``         ``siim-sample.json`` in the model folder: the 10 public SIIM sample DICOMs
                 decoded and predicted as the node does (:func:`siim_sample_rows`)

``pneumonode model-card --weights DIR [--evaluation EVAL_DIR] [--siim-sample DIR]`` copies the
measurements into the model folder and refreshes the card; a test holds the committed card to the
committed files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pneumonode.model.checkpoint import CheckpointConfig, read_checkpoint_config

__all__ = [
    "CARD_NAME",
    "EVALUATION_NAME",
    "SIIM_NAME",
    "CardError",
    "calibration_table",
    "card_limits",
    "card_summary",
    "held_out_table",
    "measured_blocks",
    "refresh",
    "siim_sample_rows",
    "siim_table",
]

CARD_NAME = "MODEL_CARD.md"
EVALUATION_NAME = "evaluation.json"
SIIM_NAME = "siim-sample.json"
_BLOCK = re.compile(r"(<!-- measured: ([a-z]+) -->\n)(.*?)(<!-- /measured -->)", re.S)


class CardError(ValueError):
    """A card without the marker a table needs, or a measurement file that does not fit."""


def _plain(markdown: str) -> str:
    """One paragraph or list item of the card as plain words: lines joined, no emphasis."""
    text = " ".join(line.strip() for line in markdown.splitlines())
    text = re.sub(
        r"\*\*(.+?)\*\*|\*(.+?)\*|`(.+?)`", lambda m: next(g for g in m.groups() if g), text
    )
    return re.sub(r"\[(.+?)\]\([^)]*\)", r"\1", text).strip()


def card_summary(card: str) -> str | None:
    """The card's first paragraph (what the model is and is for), as plain words."""
    for paragraph in re.split(r"\n\s*\n", card):
        if paragraph.strip() and not paragraph.lstrip().startswith(("#", "<!--", "|")):
            return _plain(paragraph)
    return None


def card_limits(card: str) -> list[str]:
    """The items of the card's "Known limits" section, as plain words (none: no section)."""
    section = re.search(r"^## Known limits[^\n]*\n(.*?)(?=^## |\Z)", card, re.S | re.M)
    if section is None:
        return []
    items = re.split(r"^- ", section.group(1), flags=re.M)[1:]
    return [_plain(item) for item in items if item.strip()]


def _ci(p: dict[str, Any]) -> str:
    low, high = p["ci95"]
    return f"{p['value']:.3f} (95 % CI {low:.3f}-{high:.3f}, n = {p['n']})"


def calibration_table(config: CheckpointConfig) -> str:
    if config.calibration is None or config.decision is None:
        raise CardError("the checkpoint has no calibration or operating point")
    cal, decision = config.calibration, config.decision
    fitted = cal.fitted_on or {}
    aucs = fitted.get("auc", {})
    rows = [
        ("validation films", f"{fitted.get('images')} ({fitted.get('positives')} positive)"),
        ("AUC of the head's score", f"{aucs['head']:.3f}" if "head" in aucs else "-"),
        (
            "AUC of the top pixel score (the SIIM winners' gate)",
            f"{aucs['max_pixel']:.3f}" if "max_pixel" in aucs else "-",
        ),
        ("score calibrated", cal.score),
        (
            "calibration",
            f"{cal.method}: p = sigmoid({cal.a:.4f} * logit(score) + ({cal.b:.4f}))",
        ),
        (
            "log loss before / after calibration",
            f"{fitted.get('log_loss_raw', float('nan')):.3f} / "
            f"{fitted.get('log_loss_calibrated', float('nan')):.3f}",
        ),
        ("operating point", f"probability >= {decision.threshold:.4f} ({decision.rule})"),
        (
            "validation sensitivity / specificity there",
            f"{decision.validation['sensitivity']:.3f} / {decision.validation['specificity']:.3f}",
        ),
        ("mirror-image averaging", _flip_row(config)),
        ("region shown on films called positive", config.postprocess.region_rule()),
    ]
    return _table(("", "value"), rows)


def _flip_row(config: CheckpointConfig) -> str:
    """Whether the film and its mirror image are averaged, and the validation figures that
    chose it (AUC of the calibrated score, Dice on the positives at model size)."""
    state = "on" if config.postprocess.flip_average else "off"
    compared = (config.calibration.fitted_on if config.calibration else {}).get("flip_average")
    if not compared:
        return state
    figures = "; ".join(
        f"{name}: AUC {v['auc']:.3f}, Dice {v['dice']:.3f}" for name, v in sorted(compared.items())
    )
    return f"{state} (validation {figures})"


def held_out_table(summary: dict[str, Any]) -> str:
    groups = summary.get("specificity_by_group", {})
    rows = [
        ("films", f"{summary['images']} ({summary['positives']} positive)"),
        ("AUC", f"**{summary['auc']:.3f}**"),
        ("operating point", f"probability >= {summary['operating_point']:.4f}"),
        ("sensitivity at the operating point", f"**{_ci(summary['sensitivity'])}**"),
        ("specificity at the operating point", f"**{_ci(summary['specificity'])}**"),
    ]
    if "normal" in groups:
        rows.append(('specificity on normal films ("No Finding")', _ci(groups["normal"])))
    if "abnormal, no pneumothorax" in groups:
        rows.append(
            (
                "specificity on abnormal films without pneumothorax",
                _ci(groups["abnormal, no pneumothorax"]),
            )
        )
    if summary.get("false_positive_rate_normal") is not None:
        rows.append(
            (
                "**false-positive rate on normal films**",
                f"**{summary['false_positive_rate_normal']:.3f}**",
            )
        )
    rows.append(
        (
            "mean Dice on positives (a missed film scores 0)",
            f"**{summary['mean_dice_positives']:.3f}**",
        )
    )
    if summary.get("mean_dice_positives_called") is not None:
        rows.append(
            (
                "mean Dice on the positives called positive",
                f"{summary['mean_dice_positives_called']:.3f}",
            )
        )
    for name, bucket in summary.get("dice_by_size", {}).items():
        if bucket["mean_dice"] is not None:
            rows.append((f"Dice, {name}", f"{bucket['mean_dice']:.3f} ({bucket['images']} films)"))
    rows.append(
        (
            f"SIIM score at {summary['prevalence']:.0%} prevalence",
            f"{summary['siim_score_at_prevalence']:.3f}",
        )
    )
    rows.append(("log loss of the calibrated probability", f"{summary['log_loss']:.3f}"))
    return _table(("metric", "value"), rows)


def siim_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ("image", "truth", "probability", "model says", "Dice"),
        [
            (
                f"`{r['image_id']}`",
                "positive" if r["truth_positive"] else "negative",
                f"{r['probability']:.3f}",
                "present" if r["called_positive"] else "absent",
                f"{r['dice']:.3f}",
            )
            for r in rows
        ],
    )


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def siim_sample_rows(weights: Path, sample: Path) -> list[dict[str, Any]]:
    """Predict the SIIM sample DICOMs (``sample/dicom/*.dcm``, masks in ``sample/masks``) as the
    node does, with torch fp32 on the CPU (the reference engine)."""
    import cv2

    from pneumonode.model.metrics import dice
    from pneumonode.model.predictor import Predictor

    predictor = Predictor.load(weights, backend="torch", precision="fp32", device="cpu")
    rows = []
    for path in sorted((sample / "dicom").glob("*.dcm")):
        truth = cv2.imread(str(sample / "masks" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        if truth is None:
            raise CardError(f"{sample / 'masks'}: no mask for {path.stem}")
        prediction = predictor.predict_dicom(path)
        rows.append(
            {
                "image_id": path.stem,
                "truth_positive": bool((truth > 127).any()),
                "probability": prediction.finding.probability,
                "called_positive": prediction.finding.present,
                "dice": dice(prediction.mask, truth > 127),
            }
        )
    return rows


def measured_blocks(folder: Path) -> dict[str, str]:
    """Every table the files in the model ``folder`` can give, by marker name."""
    blocks = {"calibration": calibration_table(read_checkpoint_config(folder))}
    if (folder / EVALUATION_NAME).is_file():
        blocks["test"] = held_out_table(
            json.loads((folder / EVALUATION_NAME).read_text())["summary"]
        )
    if (folder / SIIM_NAME).is_file():
        blocks["siim"] = siim_table(json.loads((folder / SIIM_NAME).read_text())["images"])
    return blocks


def refresh(card: str, blocks: dict[str, str]) -> str:
    """``card`` with each marked table replaced by ``blocks``'; every block needs its marker."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in blocks:
            return match.group(0)
        seen.add(name)
        return match.group(1) + blocks[name] + match.group(4)

    updated = _BLOCK.sub(replace, card)
    missing = set(blocks) - seen
    if missing:
        raise CardError(f"the card has no marker for {', '.join(sorted(missing))}")
    return updated


def write_card(
    folder: Path,
    *,
    evaluation: Path | None = None,
    siim_sample: Path | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Copy the measurements into ``folder`` and refresh its card's tables; returns the card."""
    if evaluation is not None:
        source = evaluation / EVALUATION_NAME if evaluation.is_dir() else evaluation
        summary = json.loads(source.read_text())["summary"]
        (folder / EVALUATION_NAME).write_text(json.dumps({"summary": summary}, indent=1) + "\n")
        say(f"{folder / EVALUATION_NAME}: from {source}")
    if siim_sample is not None:
        rows = siim_sample_rows(folder, siim_sample)
        (folder / SIIM_NAME).write_text(json.dumps({"images": rows}, indent=1) + "\n")
        say(f"{folder / SIIM_NAME}: {len(rows)} films")
    card = folder / CARD_NAME
    card.write_text(refresh(card.read_text(), measured_blocks(folder)))
    say(f"{card}: tables refreshed")
    return card
