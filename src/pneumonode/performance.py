"""Live performance and input drift, computed from the films of a period and their feedback.

Pure functions on plain records (:class:`Film`), apart from :func:`read_header_facts` and
:func:`read_training_data`, which read a spooled DICOM header and a model folder's
``training_data.json``. The API and the page show :func:`summarize`'s result as it is.

Definitions (over the films analysed in the period, the newest verdict of each counting):

- agreement: films whose verdict is ``agree`` / films reviewed;
- PPV: positive calls reviewed ``agree`` / positive calls reviewed (``agree`` or ``disagree``);
- sensitivity (estimate): agreed positives / (agreed positives + reported misses), where a miss
  is a film called negative that a reviewer marked ``missed``. Unreviewed negatives may hide
  more misses, so this is an upper bound that is only as good as the reviewing;
- drift: each film's manufacturer, view position, pixel spacing and size, and the statistics
  of the model's input (mean, standard deviation and near-black share of the
  windowed, resized film, 0..1: :class:`~pneumonode.conversion.prepare.InputStatistics`,
  recorded by the worker) against the training data's (``training_data.json`` in the model
  folder); a category never seen in training is flagged, and a number is flagged when more than
  ``OUTSIDE_SHARE`` of the films fall outside the training range. The input statistics' ranges
  come from :func:`input_statistic_ranges` over the training films (``python -m
  pneumonode.performance MODEL_FOLDER DATA_DIR`` prints them).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "INPUT_FEATURES",
    "NUMERIC_FEATURES",
    "OUTSIDE_SHARE",
    "TRAINING_DATA_FILE",
    "Film",
    "HeaderFacts",
    "TrainingData",
    "input_statistic_ranges",
    "read_header_facts",
    "read_training_data",
    "summarize",
]

#: The summary of the training data a model folder may carry (see :class:`TrainingData`).
TRAINING_DATA_FILE = "training_data.json"
#: A numeric feature is flagged when more than this share of the films is outside its range.
OUTSIDE_SHARE = 0.05
#: The statistics of the model's input compared (attributes of :class:`Film`).
INPUT_FEATURES = ("input_mean", "input_std", "input_dark_share")
#: The numeric features compared with the training data's ranges.
NUMERIC_FEATURES = ("pixel_spacing_mm", "rows", "columns", *INPUT_FEATURES)
#: The categorical ones.
CATEGORICAL_FEATURES = ("manufacturer", "view_position")
UNKNOWN = "(none)"


@dataclass(frozen=True)
class HeaderFacts:
    """What a film's header says about where it came from (None: the attribute is absent)."""

    manufacturer: str | None = None
    station: str | None = None
    view_position: str | None = None
    pixel_spacing_mm: float | None = None  # the row spacing (PixelSpacing, else Imager's)
    rows: int | None = None
    columns: int | None = None


@dataclass(frozen=True)
class Film:
    """One analysed film: when it came, the model's call, the newest verdict, its header, and
    the statistics of its model input (None: not recorded)."""

    received_at: datetime
    positive: bool
    verdict: str | None = None  # agree, disagree, missed or None (not reviewed)
    facts: HeaderFacts = field(default_factory=HeaderFacts)
    input_mean: float | None = None
    input_std: float | None = None
    input_dark_share: float | None = None

    def value(self, feature: str) -> Any:
        """A feature of the film: an input statistic, else a header fact."""
        return getattr(self, feature) if feature in INPUT_FEATURES else getattr(self.facts, feature)


@dataclass(frozen=True)
class TrainingData:
    """The training data's ranges: ``numeric`` {feature: (low, high)}, ``categorical``
    {feature: values seen}; a feature absent is not compared."""

    source: str = ""
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingData:
        """From ``training_data.json``: ``{"source": ..., "ranges": {"pixel_spacing_mm":
        [0.139, 0.194], ...}, "values": {"view_position": ["AP", "PA"], ...}}``.

        Raises:
            ValueError: a range that is not two ordered numbers, values that are not a list.
        """
        numeric = {}
        for name, bounds in (data.get("ranges") or {}).items():
            if (
                not isinstance(bounds, list | tuple)
                or len(bounds) != 2
                or not all(isinstance(b, int | float) for b in bounds)
                or bounds[0] > bounds[1]
            ):
                raise ValueError(f"ranges.{name}: expected [low, high], got {bounds!r}")
            numeric[str(name)] = (float(bounds[0]), float(bounds[1]))
        categorical = {}
        for name, values in (data.get("values") or {}).items():
            if not isinstance(values, list):
                raise ValueError(f"values.{name}: expected a list, got {values!r}")
            categorical[str(name)] = tuple(str(v).upper() for v in values)
        return cls(str(data.get("source", "")), numeric, categorical)


def read_training_data(model_folder: Path) -> TrainingData | None:
    """The model folder's ``training_data.json``, or None without one (or when unreadable:
    drift is then shown without a comparison)."""
    path = model_folder / TRAINING_DATA_FILE if model_folder.is_dir() else None
    if path is None or not path.is_file():
        return None
    try:
        return TrainingData.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError):
        return None


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text.upper() if text else None


def read_header_facts(path: Path) -> HeaderFacts | None:
    """The :class:`HeaderFacts` of a DICOM file (None when it cannot be read)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    keywords = [
        "Manufacturer", "StationName", "ViewPosition", "PixelSpacing",
        "ImagerPixelSpacing", "Rows", "Columns",
    ]  # fmt: skip
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=keywords)
    except (OSError, InvalidDicomError, ValueError, TypeError, AttributeError):
        return None
    spacing = None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            values = ds.get(keyword)
            if values:
                spacing = float(values[0])
                break
        except (TypeError, ValueError, IndexError):
            continue
    try:
        rows, columns = int(ds.get("Rows") or 0) or None, int(ds.get("Columns") or 0) or None
    except (TypeError, ValueError):
        rows = columns = None
    return HeaderFacts(
        manufacturer=_text(ds, "Manufacturer"),
        station=_text(ds, "StationName"),
        view_position=_text(ds, "ViewPosition"),
        pixel_spacing_mm=spacing if spacing and spacing > 0 else None,
        rows=rows,
        columns=columns,
    )


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _tally(films: Sequence[Film]) -> dict[str, Any]:
    """Counts and rates of a group of films."""
    reviewed = [f for f in films if f.verdict]
    agreed_positive = sum(f.positive and f.verdict == "agree" for f in films)
    reviewed_positive = sum(f.positive and f.verdict in ("agree", "disagree") for f in films)
    misses = sum(not f.positive and f.verdict == "missed" for f in films)
    return {
        "films": len(films),
        "positives": sum(f.positive for f in films),
        "reviewed": len(reviewed),
        "agreed": sum(f.verdict == "agree" for f in films),
        "disagreed": sum(f.verdict == "disagree" for f in films),
        "missed": sum(f.verdict == "missed" for f in films),
        "agreement": _rate(sum(f.verdict == "agree" for f in films), len(reviewed)),
        "ppv": _rate(agreed_positive, reviewed_positive),
        "sensitivity_estimate": _rate(agreed_positive, agreed_positive + misses),
    }


def _groups(films: Sequence[Film], key: str) -> list[dict[str, Any]]:
    grouped: dict[str, list[Film]] = {}
    for film in films:
        grouped.setdefault(getattr(film.facts, key) or UNKNOWN, []).append(film)
    rows = [{"value": value, **_tally(group)} for value, group in grouped.items()]
    return sorted(rows, key=lambda r: (-r["films"], r["value"]))


def _trend(films: Sequence[Film]) -> list[dict[str, Any]]:
    days: dict[date, list[Film]] = {}
    for film in films:
        days.setdefault(film.received_at.date(), []).append(film)
    return [{"day": day.isoformat(), **_tally(days[day])} for day in sorted(days)]


def _numeric_drift(
    name: str, values: list[float], bounds: tuple[float, float] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "feature": name,
        "films": len(values),
        "min": min(values) if values else None,
        "median": statistics.median(values) if values else None,
        "max": max(values) if values else None,
        "training_range": list(bounds) if bounds else None,
        "outside": None,
        "outside_share": None,
        "flagged": False,
    }
    if bounds and values:
        low, high = bounds
        tolerance = 1e-6 * max(abs(low), abs(high), 1.0)
        outside = sum(not low - tolerance <= v <= high + tolerance for v in values)
        out.update(outside=outside, outside_share=outside / len(values))
        out["flagged"] = outside / len(values) > OUTSIDE_SHARE
    return out


def _categorical_drift(
    name: str, values: list[str | None], seen: tuple[str, ...] | None
) -> dict[str, Any]:
    counts = Counter(v or UNKNOWN for v in values)
    unseen = sorted(v for v in counts if seen is not None and v != UNKNOWN and v not in seen)
    return {
        "feature": name,
        "distribution": [{"value": v, "films": n} for v, n in counts.most_common()],
        "training_values": list(seen) if seen is not None else None,
        "unseen": unseen,
        "flagged": bool(unseen),
    }


def summarize(
    films: Iterable[Film],
    training: TrainingData | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The performance of the period and its input drift, as JSON-ready data."""
    films = sorted(films, key=lambda f: f.received_at)
    numeric = training.numeric if training else {}
    categorical = training.categorical if training else {}
    drift: list[dict[str, Any]] = [
        _categorical_drift(name, [getattr(f.facts, name) for f in films], categorical.get(name))
        for name in CATEGORICAL_FEATURES
    ]
    for name in NUMERIC_FEATURES:
        values = [float(v) for f in films if (v := f.value(name)) is not None]
        drift.append(_numeric_drift(name, values, numeric.get(name)))
    return {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "overall": _tally(films),
        "by_manufacturer": _groups(films, "manufacturer"),
        "by_station": _groups(films, "station"),
        "by_view": _groups(films, "view_position"),
        "trend": _trend(films),
        "drift": drift,
        "drift_flagged": any(d["flagged"] for d in drift),
        "training_data": training.source if training else None,
    }


def input_statistic_ranges(
    images: Iterable[Path], size: int, percentiles: tuple[float, float] = (1.0, 99.0)
) -> dict[str, list[float]]:
    """The ``percentiles`` of the training films' input statistics, as ``training_data.json``'s
    ranges of :data:`INPUT_FEATURES`: each film (an 8-bit PNG or JPEG, already windowed, as
    training reads it) letterboxed to ``size`` the way training and inference do, then
    :meth:`~pneumonode.conversion.prepare.PreparedImage.statistics`.

    Raises:
        ValueError: an image that cannot be read, or no images.
    """
    import cv2
    import numpy as np

    from pneumonode.conversion.prepare import prepare_8bit_image

    rows = []
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"{path}: not a readable image")
        stats = prepare_8bit_image(image, size).statistics()
        rows.append((stats.mean, stats.std, stats.dark_share))
    if not rows:
        raise ValueError("no training images")
    low, high = np.percentile(np.array(rows), percentiles, axis=0)
    return {
        name: [round(float(a), 4), round(float(b), 4)]
        for name, a, b in zip(INPUT_FEATURES, low, high, strict=True)
    }


def _main(argv: Sequence[str] | None = None) -> None:
    """``python -m pneumonode.performance MODEL_FOLDER DATA_DIR...``: print the input
    statistics' ranges of the model's training films (its ``split.json``'s train side, found
    among the data folders, e.g. siim-positives and negatives) as JSON."""
    import argparse

    from pneumonode.model.data import discover_cohort, read_split

    parser = argparse.ArgumentParser(prog="python -m pneumonode.performance")
    parser.add_argument("model", type=Path, help="the model folder (config.json, split.json)")
    parser.add_argument("data", type=Path, nargs="+", help="the training data folders")
    args = parser.parse_args(argv)
    size = int(json.loads((args.model / "config.json").read_text())["input"]["size"])
    train = read_split(args.model / "split.json", discover_cohort(args.data))["train"]
    ranges = input_statistic_ranges((Path(s.image) for s in train), size)
    print(json.dumps({"films": len(train), "size": size, "ranges": ranges}, indent=2))


if __name__ == "__main__":
    _main()
