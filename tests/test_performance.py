"""pneumonode.performance: the rates, the groups, the trend and the drift flags, on small
hand-made periods whose answers are known."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from pneumonode.config import SHIPPED_MODEL
from pneumonode.conversion.prepare import input_statistics, prepare_8bit_image
from pneumonode.performance import (
    INPUT_FEATURES,
    Film,
    HeaderFacts,
    TrainingData,
    input_statistic_ranges,
    read_header_facts,
    read_training_data,
    summarize,
)

DAY = datetime(2026, 12, 1, 9, tzinfo=UTC)


def _film(positive: bool, verdict: str | None, day: int = 0, **facts: object) -> Film:
    return Film(DAY + timedelta(days=day), positive, verdict, HeaderFacts(**facts))  # type: ignore[arg-type]


def test_rates_follow_their_definitions() -> None:
    films = [
        _film(True, "agree"),
        _film(True, "agree"),
        _film(True, "disagree"),
        _film(True, None),
        _film(False, "agree"),
        _film(False, "missed"),
        _film(False, None),
    ]
    overall = summarize(films)["overall"]
    assert overall["films"] == 7 and overall["positives"] == 4 and overall["reviewed"] == 5
    assert overall["agreement"] == pytest.approx(3 / 5)
    assert overall["ppv"] == pytest.approx(2 / 3)  # agreed positives / reviewed positives
    assert overall["sensitivity_estimate"] == pytest.approx(2 / 3)  # 2 found, 1 reported missed


def test_nothing_reviewed_gives_no_rates() -> None:
    overall = summarize([_film(True, None)])["overall"]
    assert overall["agreement"] is overall["ppv"] is overall["sensitivity_estimate"] is None
    assert summarize([])["overall"]["films"] == 0


def test_groups_and_trend() -> None:
    films = [
        _film(True, "agree", 0, manufacturer="ACME", station="ER1", view_position="PA"),
        _film(False, None, 0, manufacturer="ACME", station="ER2", view_position="AP"),
        _film(False, "missed", 2, view_position="AP"),
    ]
    report = summarize(films)
    assert [(r["value"], r["films"]) for r in report["by_manufacturer"]] == [
        ("ACME", 2),
        ("(none)", 1),
    ]
    assert [(r["value"], r["films"]) for r in report["by_view"]] == [("AP", 2), ("PA", 1)]
    assert {r["value"] for r in report["by_station"]} == {"ER1", "ER2", "(none)"}
    assert [(d["day"], d["films"], d["missed"]) for d in report["trend"]] == [
        ("2026-12-01", 2, 0),
        ("2026-12-03", 1, 1),
    ]


def test_drift_is_flagged_outside_the_training_range() -> None:
    training = TrainingData.from_json(
        {"ranges": {"pixel_spacing_mm": [0.1, 0.2]}, "values": {"view_position": ["PA", "ap"]}}
    )
    inside = [_film(False, None, pixel_spacing_mm=0.15, view_position="AP") for _ in range(40)]
    report = summarize(inside, training)
    assert report["drift_flagged"] is False
    # 1 of 41 outside (2.4 %) is tolerated; 3 of 43 (7 %) is not
    assert not summarize([*inside, _film(False, None, pixel_spacing_mm=0.5)], training)[
        "drift_flagged"
    ]
    outside = [_film(False, None, pixel_spacing_mm=0.5) for _ in range(3)]
    drift = {d["feature"]: d for d in summarize([*inside, *outside], training)["drift"]}
    assert drift["pixel_spacing_mm"]["flagged"] and drift["pixel_spacing_mm"]["outside"] == 3
    assert drift["pixel_spacing_mm"]["max"] == 0.5
    lateral = {
        d["feature"]: d
        for d in summarize([_film(False, None, view_position="LL")], training)["drift"]
    }
    assert lateral["view_position"]["unseen"] == ["LL"] and lateral["view_position"]["flagged"]
    assert lateral["manufacturer"]["flagged"] is False  # no manufacturer in the training data


def test_an_input_statistic_outside_the_training_range_is_flagged() -> None:
    training = TrainingData.from_json(
        {"ranges": {"input_mean": [0.35, 0.7], "input_std": [0.12, 0.3]}}
    )
    usual = [Film(DAY, False, input_mean=0.5, input_std=0.2) for _ in range(20)]
    assert summarize(usual, training)["drift_flagged"] is False
    # a darker acquisition or another window: every new film's mean below the training's
    dark = [Film(DAY, False, input_mean=0.2, input_std=0.2) for _ in range(5)]
    drift = {d["feature"]: d for d in summarize([*usual, *dark], training)["drift"]}
    assert drift["input_mean"]["flagged"] and drift["input_mean"]["outside"] == 5
    assert drift["input_mean"]["min"] == 0.2 and drift["input_mean"]["films"] == 25
    assert not drift["input_std"]["flagged"]
    assert drift["input_dark_share"]["films"] == 0  # not recorded: nothing to compare
    assert not drift["input_dark_share"]["flagged"]
    # results from before the statistics were kept count as not recorded
    older = {d["feature"]: d for d in summarize([*usual, Film(DAY, False)], training)["drift"]}
    assert older["input_mean"]["films"] == 20


def test_input_statistics_are_those_of_the_film_inside_the_letterbox() -> None:
    image = np.full((100, 200), 255, dtype=np.uint8)
    image[:, :50] = 0  # a quarter black, the rest white
    prepared = prepare_8bit_image(image, 64)  # letterboxed: padding above and below
    assert prepared.pixels[0].max() == 0  # the padding, left out of the statistics
    stats = prepared.statistics()
    assert stats.mean == pytest.approx(0.75, abs=0.02)
    assert stats.std == pytest.approx(0.433, abs=0.02)
    assert stats.dark_share == pytest.approx(0.25, abs=0.02)
    whole = input_statistics(np.zeros((4, 4), dtype=np.uint8))
    assert (whole.mean, whole.std, whole.dark_share) == (0.0, 0.0, 1.0)


def test_input_statistic_ranges_are_percentiles_of_the_training_films(tmp_path: Path) -> None:
    paths = []
    for level in range(0, 101, 10):
        path = tmp_path / f"{level}.png"
        cv2.imwrite(str(path), np.full((32, 32), round(level * 2.55), dtype=np.uint8))
        paths.append(path)
    ranges = input_statistic_ranges(paths, 16, percentiles=(10.0, 90.0))
    assert ranges["input_mean"] == pytest.approx([0.1, 0.9], abs=0.005)
    assert ranges["input_std"] == [0.0, 0.0]
    assert set(ranges) == set(INPUT_FEATURES)
    with pytest.raises(ValueError, match="no training images"):
        input_statistic_ranges([], 16)


@pytest.mark.parametrize(
    "data", [{"ranges": {"rows": [3, 1]}}, {"ranges": {"rows": "x"}}, {"values": {"view": "PA"}}]
)
def test_a_malformed_summary_is_refused(data: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ranges\.|values\."):
        TrainingData.from_json(data)
    (tmp_path / "training_data.json").write_text(json.dumps(data))
    assert read_training_data(tmp_path) is None  # drift then shows no comparison


def test_the_shipped_model_carries_its_training_data() -> None:
    training = read_training_data(SHIPPED_MODEL)
    assert training is not None
    assert training.numeric["rows"] == (1024.0, 1024.0)
    assert set(training.categorical["view_position"]) == {"PA", "AP"}
    # the input statistics' ranges, from the training films (python -m pneumonode.performance)
    assert set(INPUT_FEATURES) <= set(training.numeric)
    low, high = training.numeric["input_mean"]
    assert 0.2 < low < 0.5 < high < 0.8
    low, high = training.numeric["input_std"]
    assert 0.05 < low < high < 0.4
    assert "python -m pneumonode.performance" in training.source


def test_header_facts_of_a_siim_film(siim_sample_dicoms: list[Path], tmp_path: Path) -> None:
    facts = read_header_facts(siim_sample_dicoms[0])
    assert facts is not None and facts.rows == facts.columns == 1024
    assert facts.view_position in ("PA", "AP") and 0.1 < (facts.pixel_spacing_mm or 0) < 0.2
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    assert read_header_facts(tmp_path / "junk.dcm") is None
    training = read_training_data(SHIPPED_MODEL)
    report = summarize([Film(DAY, False, None, facts)], training)
    assert report["drift_flagged"] is False  # a SIIM film is inside the shipped model's data
