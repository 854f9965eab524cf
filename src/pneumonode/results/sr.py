"""The Structured Report we send back: a TID 1500 Measurement Report of the finding.

Content (DICOM PS3.16 TID 1500):

- Observer: the device (our model: name, version, manufacturer).
- Procedure reported: SNOMED CT 399208008 "Plain X-ray of chest".
- Always one TID 1501 group "pneumothorax assessment": the qualitative evaluation
  Pneumothorax = Present / Absent, the maximum pixel probability, the algorithm with its thresholds,
  the source image, and (when present) the finding site Lung with the patient's side.
- When present, one TID 1410 planar ROI group referencing segment 1 of our SEG, with its area in
  mm² (from PixelSpacing / ImagerPixelSpacing) or in pixels when the spacing is unknown.

A negative image gets the same report with "Absent": the PACS shows that the image was looked at.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, cast

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from pneumonode.findings import AlgorithmInfo, Finding
from pneumonode.results.common import (
    SERIES_NUMBERS,
    derived_uid,
    result_source,
    series_description,
)
from pneumonode.results.seg import PNEUMOTHORAX

__all__ = ["MAX_PROBABILITY", "build_report"]

#: The highest pixel probability is DCM 122157 "Probability" with derivation SCT "Maximum".
MAX_PROBABILITY = codes.DCM.Probability
PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain X-ray of chest")
_TEMPLATE = "1500"  # TID 1500 Measurement Report
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
_SIDES = {
    "right": codes.SCT.Right,
    "left": codes.SCT.Left,
    "bilateral": hd.sr.CodedConcept("51440002", "SCT", "Right and left"),
}


@lru_cache(maxsize=16)
def _algorithm(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """The algorithm's TID 4019 items, made once per model: a report lists them four times, and
    nothing changes an item once it is in a tree (content items keep no link to their parents),
    so every report shares them."""
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, parameters=algorithm.parameters()
    )


@lru_cache(maxsize=16)
def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    """The observer (our model as a device), made once per model like ``_algorithm``."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=derived_uid(algorithm.name, algorithm.version, "device"),
                name=algorithm.name,
                manufacturer_name=algorithm.manufacturer,
                model_name=f"{algorithm.name} {algorithm.version}"[:64],
            ),
        )
    )


@lru_cache(maxsize=8)
def _finding_sites(side: str) -> tuple[hd.sr.FindingSite, ...]:
    """The lung on ``side`` (none for an unknown side), made once per side."""
    if side not in _SIDES:
        return ()
    return (hd.sr.FindingSite(codes.SCT.Lung, laterality=_SIDES[side]),)


@lru_cache(maxsize=2)
def _evaluation(present: bool) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(PNEUMOTHORAX, PRESENT if present else ABSENT)


def _probabilities(finding: Finding, algorithm: AlgorithmInfo) -> list[hd.sr.Measurement]:
    """The calibrated probability of a pneumothorax on the image (where the model has one),
    then the highest pixel probability (derivation: Maximum): the first is the finding's
    probability, the second where on the image the model was most certain."""
    measurements = []
    if finding.probability is not None:
        measurements.append(
            hd.sr.Measurement(
                name=MAX_PROBABILITY,
                value=round(finding.probability, 4),
                unit=codes.UCUM.NoUnits,
                algorithm_id=_algorithm(algorithm),
            )
        )
    measurements.append(
        hd.sr.Measurement(
            name=MAX_PROBABILITY,
            value=round(finding.max_probability, 4),
            unit=codes.UCUM.NoUnits,
            derivation=codes.SCT.Maximum,
            algorithm_id=_algorithm(algorithm),
        )
    )
    return measurements


def build_report(
    source: Dataset,
    finding: Finding,
    algorithm: AlgorithmInfo,
    *,
    segmentation: Dataset | None = None,
    label: str = "not for clinical use",
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR (TID 1500) stating ``finding`` on ``source``.

    Args:
        source: the received image.
        finding: what the model found (present, probability, area, side).
        algorithm: the model's name, version and thresholds.
        segmentation: our SEG of the same image; referenced by the ROI group when the finding is
            present (required then).
        label: what the SeriesDescription says about the result's use.
    """
    if finding.present and segmentation is None:
        raise ValueError("a present finding needs the SEG it is measured on")
    clean = result_source(source)
    version = algorithm.version
    sop_uid = str(source.SOPInstanceUID)
    sites = list(_finding_sites(finding.side)) if finding.present else []
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid(sop_uid, version, "SR assessment"),
                identifier="pneumothorax assessment",
            ),
            finding_type=PNEUMOTHORAX,
            algorithm_id=_algorithm(algorithm),
            finding_sites=sites or None,
            qualitative_evaluations=[_evaluation(finding.present)],
            measurements=_probabilities(finding, algorithm),
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(clean)],
        )
    ]
    evidence = [clean]
    frame_reference: hd.sr.ReferencedSegmentationFrame | None = None
    if finding.present and segmentation is not None:
        if finding.area_mm2 is not None:
            area, unit = round(finding.area_mm2, 1), codes.UCUM.SquareMillimeter
        else:
            area, unit = (
                float(finding.area_pixels),
                hd.sr.CodedConcept("{pixels}", "UCUM", "pixels"),
            )
        frame_reference = hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            frame_number=1,
            segment_number=1,
            source_image=hd.sr.SourceImageForSegmentation.from_source_image(clean),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(sop_uid, version, "SR region"), identifier="pneumothorax region"
                ),
                referenced_segment=frame_reference,
                finding_type=PNEUMOTHORAX,
                algorithm_id=_algorithm(algorithm),
                finding_sites=sites or None,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.SCT.Area,
                        value=area,
                        unit=unit,
                        algorithm_id=_algorithm(algorithm),
                    )
                ],
            )
        )
        evidence.append(segmentation)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=groups,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the source's person-name style
        sr = _document(
            evidence,
            cast(hd.sr.ContainerContentItem, report[0]),
            series_instance_uid=derived_uid(str(source.SeriesInstanceUID), version, "SR series"),
            series_number=SERIES_NUMBERS["SR"],
            sop_instance_uid=derived_uid(sop_uid, version, "SR"),
            instance_number=int(source.get("InstanceNumber") or 1),
            manufacturer=algorithm.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=series_description("SR", label),
        )
    if frame_reference is not None:
        _frame_references_only(frame_reference)
    return sr


def _document(
    evidence: list[Dataset], content: hd.sr.ContainerContentItem, **arguments: Any
) -> hd.sr.ComprehensiveSR:
    """``hd.sr.ComprehensiveSR(evidence=evidence, content=content, **arguments)``, the same
    dataset, made without highdicom's passes over the content tree.

    highdicom deep-copies the tree, parses the copy back into content items and searches it for
    references three times: two thirds of the report's cost, the largest cost of a job after the
    network. Nothing of the document around the tree depends on it (the evidence is listed
    whether the tree references it or not), so the document is made around an empty root
    container, which is then replaced by the tree the way highdicom puts it in (its root's
    attributes copied into the dataset). ``tests/results`` compares the two on every kind of
    report.
    """
    empty = hd.sr.ContainerContentItem(name=content.name, template_id=_TEMPLATE)
    empty.ContentSequence = hd.sr.ContentSequence([])
    sr = hd.sr.ComprehensiveSR(evidence=evidence, content=empty, **arguments)
    for tag in list(empty.keys()):
        del sr[tag]
    for tag, value in content.items():
        sr[tag] = value
    sr._content = hd.sr.ContentSequence([content], is_root=True)
    return sr


def _frame_references_only(items: Iterable[Dataset]) -> None:
    """Keep ReferencedFrameNumber, drop ReferencedSegmentNumber, where an item has both.

    highdicom writes both into the "Referenced Segmentation Frame" IMAGE item; the SOP Instance
    Reference Macro (PS3.3 C.17.3.4) forbids the segment number once a frame is referenced. The
    frame (frame 1 of our one-segment SEG) names the segment unambiguously. ``items``: the
    items of the reference, which the report's tree holds themselves (not copies).
    """
    for item in items:
        for reference in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                del reference.ReferencedSegmentNumber
