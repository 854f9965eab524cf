"""The Secondary Capture overlay says what it is: a burned-in banner and its own attributes."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from pydicom import Dataset

from dicom_factory import make_dx, synthetic_chest
from pneumonode.findings import Finding
from pneumonode.model.postprocess import summarise
from pneumonode.results import add_banner, banner_lines, build_overlay_capture, render_overlay
from pneumonode.results.overlay import (
    BANNER_BACKGROUND_RGB,
    BANNER_HIGHLIGHT_RGB,
    BANNER_TEXT_RGB,
)
from result_checks import ALGORITHM

PRESENT = Finding(
    present=True,
    max_probability=0.97,
    area_pixels=6000,
    area_mm2=1234.0,
    side="left",
    orientation_assumed=False,
    probability=0.93,
    threshold=0.35,
)


def _film(rows: int, columns: int) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """A synthetic chest film with a pixel spacing, its 8-bit picture and a mask in its right
    upper zone."""
    source = make_dx(synthetic_chest(rows, columns, 12), 12)
    source.PixelSpacing = [0.14, 0.14]
    source.PatientOrientation = ["L", "F"]
    grey = synthetic_chest(rows, columns, 8)
    mask = np.zeros((rows, columns), dtype=bool)
    mask[rows // 5 : rows // 2, columns // 8 : columns // 3] = True
    return source, grey, mask


def _text_rows(
    band: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40
) -> list[tuple[int, int]]:
    """(first, last) row of each run of rows of ``band`` with pixels near ``colour``."""
    distance = np.abs(band.astype(np.int16) - np.array(colour, dtype=np.int16)).max(axis=2)
    near = distance < tolerance
    rows = np.flatnonzero(near.any(axis=1))
    runs: list[tuple[int, int]] = []
    for row in rows:
        if runs and row == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], int(row))
        else:
            runs.append((int(row), int(row)))
    return runs


def test_the_banner_says_ai_result_the_finding_and_the_model() -> None:
    warning, finding, model = banner_lines(PRESENT, ALGORITHM)
    assert warning == "AI result - not for clinical use"
    assert finding == (
        "Pneumothorax present: left, area 12.3 cm2, probability 0.93 (threshold 0.35)"
    )
    assert model.startswith(f"Model {ALGORITHM.name} {ALGORITHM.version} - pneumonode ")


def test_the_banner_says_absent_and_how_sure() -> None:
    absent = dataclasses.replace(
        PRESENT, present=False, area_pixels=0, area_mm2=0.0, side=None, probability=0.04
    )
    assert (
        banner_lines(absent, ALGORITHM)[1]
        == "No pneumothorax found: probability 0.04 (threshold 0.35)"
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"area_mm2": 42.4}, "area 42 mm2"),
        ({"area_mm2": None}, "area 6000 pixels"),
        ({"orientation_assumed": True}, "left (orientation assumed)"),
        ({"side": "bilateral", "orientation_assumed": True}, "present: bilateral, area"),
        ({"threshold": None}, "probability 0.93"),
        ({"probability": None}, "top pixel score 0.97 (not a calibrated probability)"),
        ({"area_pixels": 0, "area_mm2": 0.0, "side": None}, "present: probability 0.93"),
    ],
)
def test_the_finding_line_names_what_is_known(changes: dict[str, object], expected: str) -> None:
    line = banner_lines(dataclasses.replace(PRESENT, **changes), ALGORITHM)[1]  # type: ignore[arg-type]
    assert expected in line
    assert "probability 0.97" not in line  # the top pixel score is never called a probability


def test_the_banner_carries_the_configured_label() -> None:
    assert banner_lines(PRESENT, ALGORITHM, label="research use only")[0] == (
        "AI result - research use only"
    )


@pytest.mark.parametrize(("rows", "columns"), [(1024, 1024), (3000, 2500)])
def test_the_banner_is_legible_at_film_sizes_and_covers_nothing(rows: int, columns: int) -> None:
    """Capitals at least 1.5% of the film's larger side (15 px on a 1024 px film, 45 px on a
    3000 px one: each about 15 px on a screen showing the whole film), kept clear of the
    edges, in a band of at most a sixth of the film's height above it."""
    _, grey, mask = _film(rows, columns)
    overlay = render_overlay(grey, mask)
    lines = banner_lines(PRESENT, ALGORITHM)
    pictured = add_banner(overlay, lines)
    band = pictured.shape[0] - rows
    assert 0 < band <= rows // 6
    assert pictured.shape[1:] == (columns, 3)
    assert np.array_equal(pictured[band:], overlay)
    top = pictured[:band]
    warning = _text_rows(top, BANNER_HIGHLIGHT_RGB)
    assert len(warning) == 1  # the first line, in amber, on one line
    assert warning[0][1] - warning[0][0] + 1 >= 0.015 * max(rows, columns)
    assert len(_text_rows(top, BANNER_TEXT_RGB)) >= 2  # the finding and the model below it
    edge = max(2, columns // 200)
    for strip in (top[:, :edge], top[:, -edge:], top[:2], top[-2:]):
        assert (strip == np.array(BANNER_BACKGROUND_RGB, dtype=np.uint8)).all()


def test_a_word_wider_than_a_narrow_film_is_drawn_smaller_not_cut() -> None:
    overlay = np.zeros((300, 120, 3), dtype=np.uint8)
    pictured = add_banner(overlay, ["AI result", "an-unbroken-model-name-of-many-letters-2.0.0"])
    top = pictured[: pictured.shape[0] - 300]
    assert (top[:, :2] == np.array(BANNER_BACKGROUND_RGB, dtype=np.uint8)).all()
    assert (top[:, -2:] == np.array(BANNER_BACKGROUND_RGB, dtype=np.uint8)).all()
    assert len(_text_rows(top, BANNER_TEXT_RGB, tolerance=200)) == 1


def test_a_banner_is_drawn_for_text_the_font_lacks() -> None:
    plain = add_banner(np.zeros((200, 400, 3), dtype=np.uint8), ["Resultat IA - reserve"])
    accented = add_banner(np.zeros((200, 400, 3), dtype=np.uint8), ["Résultat IA - réservé"])
    assert np.array_equal(plain, accented)


def test_a_banner_needs_text_and_an_rgb_picture() -> None:
    with pytest.raises(ValueError, match="at least one line"):
        add_banner(np.zeros((10, 10, 3), dtype=np.uint8), [])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        add_banner(np.zeros((10, 10), dtype=np.uint8), ["AI result"])


def test_the_capture_is_the_overlay_under_its_banner() -> None:
    """The banner rows are new; below them the overlay, and the lungs as they were wherever
    there is no mask."""
    source, grey, mask = _film(1024, 1024)
    finding = summarise(mask, 0.97, source, probability=0.93, threshold=0.35)
    overlay = render_overlay(grey, mask)
    capture = build_overlay_capture(source, overlay, ALGORITHM, finding=finding)
    pixels = capture.pixel_array
    band = int(capture.Rows) - 1024
    assert band > 0 and int(capture.Columns) == 1024
    assert np.array_equal(pixels[band:], overlay)
    reach = 2 * max(1, round(1024 / 400)) + 3  # the region and its drawn outline
    clear = cv2.dilate(mask.astype(np.uint8), np.ones((reach, reach), np.uint8)) == 0
    assert clear.mean() > 0.8
    for channel in range(3):
        assert np.array_equal(pixels[band:, :, channel][clear], grey[clear])
    assert np.array_equal(
        pixels[:band], add_banner(overlay, banner_lines(finding, ALGORITHM))[:band]
    )
    assert pixels[:band].mean() < 60  # a dark band, unlike the film's top rows
    assert not np.array_equal(pixels[:band], overlay[:band])


def test_the_capture_says_it_is_a_derived_ai_image() -> None:
    source, grey, mask = _film(128, 96)
    finding = summarise(mask, 0.97, source, probability=0.93, threshold=0.35)
    capture = build_overlay_capture(source, render_overlay(grey, mask), ALGORITHM, finding=finding)
    assert list(capture.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert capture.ConversionType == "WSD"
    assert capture.Manufacturer == "pneumonode"
    assert capture.ManufacturerModelName == ALGORITHM.name
    assert f"model {ALGORITHM.version}" in capture.SoftwareVersions
    assert "not for clinical use" in capture.SeriesDescription
    for line in banner_lines(finding, ALGORITHM):
        assert line in capture.ImageComments
    assert "banner" in capture.DerivationDescription
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # the banner names neither patient nor date (PS3.3 C.7.6.1): the source's answer stands
    assert "BurnedInAnnotation" not in capture


@pytest.mark.parametrize("answer", ["YES", "NO"])
def test_the_capture_keeps_the_sources_burned_in_annotation(answer: str) -> None:
    source, grey, mask = _film(128, 96)
    source.BurnedInAnnotation = answer
    finding = summarise(mask, 0.97, source)
    capture = build_overlay_capture(source, render_overlay(grey, mask), ALGORITHM, finding=finding)
    assert capture.BurnedInAnnotation == answer
