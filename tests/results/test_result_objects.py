"""SEG, SR and SC we send back: valid for dicom3tools' dciodvfy, faithful, and deterministic."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from dicom_factory import make_dx, synthetic_chest
from peers_harness import dciodvfy_errors
from pneumonode.dicom_node.selection import is_own_output
from pneumonode.model.postprocess import summarise
from pneumonode.results import (
    AlgorithmInfo,
    build_overlay_capture,
    build_report,
    build_segmentation,
    render_overlay,
    result_kind,
)
from result_checks import ALGORITHM


def _truth(siim_sample: Path, source: Path) -> np.ndarray:
    mask = cv2.imread(str(siim_sample / "masks" / f"{source.stem}.png"), cv2.IMREAD_GRAYSCALE)
    return mask > 127


def _codes(item: Dataset) -> list[tuple[str, str]]:
    """(concept name meaning, value) of every coded/numeric item in an SR content tree."""
    found = []
    for child in item.get("ContentSequence", []):
        name = child.ConceptNameCodeSequence[0].CodeMeaning
        if child.ValueType == "CODE":
            found.append((name, child.ConceptCodeSequence[0].CodeMeaning))
        elif child.ValueType == "NUM":
            measured = child.MeasuredValueSequence[0]
            unit = measured.MeasurementUnitsCodeSequence[0].CodeValue
            found.append((name, f"{float(measured.NumericValue):g} {unit}"))
        found.extend(_codes(child))
    return found


@pytest.mark.integration
def test_seg_of_every_siim_sample_is_valid_and_holds_the_mask(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    for path in siim_sample_dicoms:
        source = pydicom.dcmread(path)
        mask = _truth(siim_sample, path)
        seg = build_segmentation(source, mask, ALGORITHM)
        out = tmp_path / f"{path.stem}_seg.dcm"
        seg.save_as(out)
        assert dciodvfy_errors(out) == [], path.name

        # read with pydicom: highdicom 0.28's reader insists on a SliceThickness in the pixel
        # measures, which DICOM requires only with a frame of reference (projection images: none)
        back = pydicom.dcmread(out)
        assert back.StudyInstanceUID == source.StudyInstanceUID
        assert back.SeriesInstanceUID != source.SeriesInstanceUID
        assert back.SegmentationType == "BINARY"
        assert (back.Rows, back.Columns) == (source.Rows, source.Columns)
        assert np.array_equal(back.pixel_array.reshape(mask.shape).astype(bool), mask)
        segment = back.SegmentSequence[0]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "36118008"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (ALGORITHM.name, "1.2.3")
        assert "not for clinical use" in back.SeriesDescription
        assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert is_own_output(back)  # the loop guard knows it when it comes back


@pytest.mark.integration
@pytest.mark.parametrize("name", ["cr_jpeg2000_16bit_monochrome1.dcm", "dx_monochrome1.dcm"])
def test_seg_sr_sc_are_valid_over_other_radiographs(
    format_refs: Path, tmp_path: Path, name: str
) -> None:
    """Real CR/DX files with flaws of their own (a PixelSpacing of 0\\0) still give valid output."""
    source = pydicom.dcmread(format_refs / name)
    mask = np.zeros((source.Rows, source.Columns), dtype=bool)
    mask[source.Rows // 4 : source.Rows // 2, source.Columns // 8 : source.Columns // 3] = True
    seg = build_segmentation(source, mask, ALGORITHM)
    finding = summarise(mask, 0.9, source)
    sr = build_report(source, finding, ALGORITHM, segmentation=seg)
    grey = (np.arange(source.Rows * source.Columns) % 251).astype(np.uint8).reshape(mask.shape)
    sc = build_overlay_capture(source, render_overlay(grey, mask), ALGORITHM, finding=finding)
    for kind, dataset in (("seg", seg), ("sr", sr), ("sc", sc)):
        out = tmp_path / f"{kind}.dcm"
        dataset.save_as(out)
        assert dciodvfy_errors(out) == [], kind
    assert str(pydicom.dcmread(format_refs / name).get("PixelSpacing")) == str(
        source.get("PixelSpacing")
    )


def test_the_source_dataset_is_left_as_it_was(siim_sample_dicoms: list[Path]) -> None:
    source = pydicom.dcmread(siim_sample_dicoms[0])
    before = {element.keyword: str(element.value) for element in source if element.keyword}
    mask = np.zeros((source.Rows, source.Columns), dtype=bool)
    build_segmentation(source, mask, ALGORITHM)
    build_report(source, summarise(mask, 0.1, source), ALGORITHM)
    after = {element.keyword: str(element.value) for element in source if element.keyword}
    assert after == before


def test_result_uids_are_derived_from_source_and_model_version() -> None:
    source = make_dx(synthetic_chest(64, 48, 12), 12)
    mask = np.zeros((64, 48), dtype=bool)
    mask[10:20, 5:15] = True
    first = build_segmentation(source, mask, ALGORITHM)
    again = build_segmentation(source, mask, ALGORITHM)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    newer = build_segmentation(
        source, mask, AlgorithmInfo(**{**ALGORITHM.__dict__, "version": "1.2.4"})
    )
    assert newer.SOPInstanceUID != first.SOPInstanceUID
    other = make_dx(synthetic_chest(64, 48, 12), 12)
    assert build_segmentation(other, mask, ALGORITHM).SOPInstanceUID != first.SOPInstanceUID
    report = build_report(source, summarise(mask, 0.7, source), ALGORITHM, segmentation=first)
    assert len({first.SOPInstanceUID, report.SOPInstanceUID}) == 2
    assert report.SeriesInstanceUID != first.SeriesInstanceUID


def test_seg_refuses_a_mask_of_another_size() -> None:
    source = make_dx(synthetic_chest(64, 48, 12), 12)
    with pytest.raises(ValueError, match="64x48"):
        build_segmentation(source, np.zeros((32, 32), dtype=bool), ALGORITHM)


@pytest.mark.integration
def test_report_of_a_positive_image(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    path = next(p for p in siim_sample_dicoms if _truth(siim_sample, p).any())
    source = pydicom.dcmread(path)
    mask = _truth(siim_sample, path)
    seg = build_segmentation(source, mask, ALGORITHM)
    finding = summarise(mask, 0.87, source)
    report = build_report(source, finding, ALGORITHM, segmentation=seg)
    out = tmp_path / "sr.dcm"
    report.save_as(out)
    assert dciodvfy_errors(out) == []

    back = pydicom.dcmread(out)
    items = _codes(back)
    assert ("Pneumothorax", "Present") in items
    assert ("Probability", "0.87 1") in items
    area = next(value for name, value in items if name == "Area")
    spacing = float(source.PixelSpacing[0]) * float(source.PixelSpacing[1])
    assert area == f"{round(mask.sum() * spacing, 1):g} mm2"
    assert (
        "Laterality",
        {"left": "Left", "right": "Right", "bilateral": "Right and left"}[str(finding.side)],
    ) in items
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in back.CurrentRequestedProcedureEvidenceSequence
        for s in series.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert evidence == {source.SOPInstanceUID, seg.SOPInstanceUID}
    assert back.Manufacturer == "pneumonode" and back.VerificationFlag == "UNVERIFIED"


@pytest.mark.integration
def test_report_of_a_negative_image_says_absent(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    path = next(p for p in siim_sample_dicoms if not _truth(siim_sample, p).any())
    source = pydicom.dcmread(path)
    empty = np.zeros((source.Rows, source.Columns), dtype=bool)
    report = build_report(source, summarise(empty, 0.08, source), ALGORITHM)
    out = tmp_path / "sr.dcm"
    report.save_as(out)
    assert dciodvfy_errors(out) == []
    items = _codes(pydicom.dcmread(out))
    assert ("Pneumothorax", "Absent") in items
    assert ("Probability", "0.08 1") in items
    assert not any(name in ("Area", "Laterality") for name, _ in items)


def _without_times(dataset: Dataset) -> bytes:
    """The encoded dataset, with the times it was made at blanked."""
    from io import BytesIO

    copy = Dataset(dict(dataset.items()))
    copy.file_meta = dataset.file_meta
    for keyword in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"):
        setattr(copy, keyword, "")
    for item in copy.ContributingEquipmentSequence:
        item.ContributionDateTime = ""
    buffer = BytesIO()
    copy.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_report_is_the_one_highdicom_makes(
    siim_sample_dicoms: list[Path], format_refs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report is made around an empty tree, then given its tree (see results.sr._document):
    byte for byte what highdicom's ComprehensiveSR makes of the same tree, for positive reports
    (left, right, both sides, side unknown; area in mm² and in pixels) and negative ones."""
    import highdicom as hd

    import pneumonode.results.sr as sr_module

    dx = make_dx(synthetic_chest(64, 48, 12), 12)  # no spacing, few patient attributes
    sources = [pydicom.dcmread(p) for p in siim_sample_dicoms[:3]]
    radiographs = [p for p in sorted(format_refs.glob("*.dcm")) if not p.name.startswith("seg")]
    sources += [pydicom.dcmread(p) for p in radiographs] + [dx]
    cases = []
    for source in sources:
        rows, columns = int(source.Rows), int(source.Columns)
        regions = (
            (slice(0, rows // 3), slice(0, columns // 4)),
            (slice(0, rows // 3), slice(-2, None)),
        )
        for region in (*regions, None):
            mask = np.zeros((rows, columns), dtype=bool)
            if region is not None:
                mask[region] = True
            cases.append((source, mask))
        both = np.zeros((rows, columns), dtype=bool)
        both[: rows // 3, : columns // 5] = both[: rows // 3, -columns // 5 :] = True
        cases.append((source, both))

    def made(highdicom_itself: bool) -> list[bytes]:
        with monkeypatch.context() as patch:
            if highdicom_itself:
                patch.setattr(
                    sr_module,
                    "_document",
                    lambda evidence, content, **kw: hd.sr.ComprehensiveSR(
                        evidence=evidence, content=content, **kw
                    ),
                )
            out = []
            for source, mask in cases:
                seg = build_segmentation(source, mask, ALGORITHM)
                finding = summarise(mask, 0.9 if mask.any() else 0.1, source)
                out.append(
                    _without_times(build_report(source, finding, ALGORITHM, segmentation=seg))
                )
            return out

    sides = {summarise(m, 0.9, s).side for s, m in cases if m.any()}
    assert {"left", "right", "bilateral"} <= sides
    assert made(highdicom_itself=False) == made(highdicom_itself=True)


def test_a_present_finding_needs_its_segmentation() -> None:
    source = make_dx(synthetic_chest(64, 48, 12), 12)
    mask = np.ones((64, 48), dtype=bool)
    with pytest.raises(ValueError, match="SEG"):
        build_report(source, summarise(mask, 0.9, source), ALGORITHM)


def test_area_in_pixels_when_the_spacing_is_unknown() -> None:
    source = make_dx(synthetic_chest(64, 48, 12), 12)
    mask = np.zeros((64, 48), dtype=bool)
    mask[5:15, 30:40] = True
    seg = build_segmentation(source, mask, ALGORITHM)
    report = build_report(source, summarise(mask, 0.9, source), ALGORITHM, segmentation=seg)
    assert ("Area", "100 {pixels}") in _codes(report)


@pytest.mark.integration
def test_overlay_capture_of_a_siim_image(
    siim_sample: Path, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    path = next(p for p in siim_sample_dicoms if _truth(siim_sample, p).any())
    source = pydicom.dcmread(path)
    mask = _truth(siim_sample, path)
    overlay = render_overlay(source.pixel_array, mask)
    finding = summarise(mask, 0.9, source)
    capture = build_overlay_capture(source, overlay, ALGORITHM, finding=finding)
    out = tmp_path / "sc.dcm"
    capture.save_as(out)
    assert dciodvfy_errors(out) == []
    back = pydicom.dcmread(out)
    assert back.PhotometricInterpretation == "RGB"
    banner = back.Rows - source.Rows
    assert banner > 0 and back.Columns == source.Columns
    assert np.array_equal(back.pixel_array[banner:], overlay)  # the radiograph under the banner
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SOPClassUID == source.SOPClassUID  # Secondary Capture Image Storage
    assert back.SOPInstanceUID != source.SOPInstanceUID
    assert "not for clinical use" in back.SeriesDescription


def test_the_seg_is_referenced_by_its_frame_alone_in_every_report() -> None:
    """The ROI group's IMAGE item references frame 1 of our SEG, without the segment number
    the SOP Instance Reference Macro forbids beside a frame; the same in the next report made
    (the parts a model's reports share are never changed)."""
    source = make_dx(synthetic_chest(64, 48, 12), 12)
    mask = np.zeros((64, 48), dtype=bool)
    mask[5:15, 30:40] = True

    def references(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
        found = []
        for item in dataset.get("ContentSequence", []):
            found += list(item.get("ReferencedSOPSequence", []))
            found += references(item)
        return found

    for _ in range(2):
        seg = build_segmentation(source, mask, ALGORITHM)
        report = build_report(source, summarise(mask, 0.9, source), ALGORITHM, segmentation=seg)
        to_seg = [r for r in references(report) if r.ReferencedSOPInstanceUID == seg.SOPInstanceUID]
        assert [r.ReferencedFrameNumber for r in to_seg] == [1]
        assert all("ReferencedSegmentNumber" not in r for r in references(report))


def test_each_result_object_is_named_by_its_kind() -> None:
    """What `pneumonode deliveries` and the pages call our objects: SEG, SR, SC by SOP class."""
    source = make_dx(synthetic_chest(64, 48, 12), 12)
    mask = np.zeros((64, 48), dtype=bool)
    mask[5:15, 30:40] = True
    finding = summarise(mask, 0.9, source)
    seg = build_segmentation(source, mask, ALGORITHM)
    sr = build_report(source, finding, ALGORITHM, segmentation=seg)
    grey = synthetic_chest(64, 48, 8)
    sc = build_overlay_capture(source, render_overlay(grey, mask), ALGORITHM, finding=finding)
    assert [result_kind(ds.SOPClassUID) for ds in (seg, sr, sc)] == ["SEG", "SR", "SC"]
    assert result_kind(source.SOPClassUID) == "DigitalXRayImageStorageForPresentation"
    assert result_kind("1.2.3.4") == "1.2.3.4"
