"""The DICOM Segmentation we send back: one BINARY segment "Pneumothorax" over the source image."""

from __future__ import annotations

import warnings

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from pneumonode.findings import AlgorithmInfo
from pneumonode.results.common import (
    SERIES_NUMBERS,
    derived_uid,
    result_source,
    series_description,
)

__all__ = [
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "PNEUMOTHORAX",
    "algorithm_identification",
    "build_segmentation",
]

#: SNOMED CT 36118008 |Pneumothorax (disorder)|, the segmented property type.
PNEUMOTHORAX = hd.sr.CodedConcept("36118008", "SCT", "Pneumothorax")
#: SNOMED CT 49755003, the category DICOM CID 7150 offers for a pathological finding's region.
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = hd.sr.CodedConcept(
    "49755003", "SCT", "Morphologically Altered Structure"
)


def algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification (name, version, AI family, parameters) of our model."""
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        version=algorithm.version,
        family=codes.cid7162.ArtificialIntelligence,
        source=algorithm.manufacturer,
        parameters={
            key: value for key, _, value in (p.partition("=") for p in algorithm.parameters())
        },
    )


def build_segmentation(
    source: Dataset,
    mask: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    label: str = "not for clinical use",
) -> hd.seg.Segmentation:
    """A BINARY SEG of ``mask`` over ``source``, in a new series of the source's study.

    Args:
        source: the received image (with its pixel data's attributes: Rows, Columns, ...).
        mask: (Rows, Columns) bool, the finding at the source's exact size. An empty mask gives
            a SEG with an empty segment (the explicit negative).
        algorithm: the model's name, version and thresholds.
        label: what the SeriesDescription says about the result's use.

    SOP Instance UID and Series Instance UID are derived from the source and the model version.
    """
    rows, columns = int(source.Rows), int(source.Columns)
    if mask.shape != (rows, columns):
        raise ValueError(
            f"the mask is {mask.shape[0]}x{mask.shape[1]} but the source image is "
            f"{rows}x{columns}: map the mask back to the source's size first"
        )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Pneumothorax",
        segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=PNEUMOTHORAX,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(algorithm),
        tracking_id="pneumothorax",
        tracking_uid=derived_uid(source.SOPInstanceUID, algorithm.version, "SEG tracking"),
    )
    clean = result_source(source)
    with warnings.catch_warnings():
        # highdicom warns about the source's own person-name style; the values are not ours
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=[clean],
            pixel_array=mask.astype(np.uint8)[None],
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=derived_uid(
                str(source.SeriesInstanceUID), algorithm.version, "SEG series"
            ),
            series_number=SERIES_NUMBERS["SEG"],
            sop_instance_uid=derived_uid(source.SOPInstanceUID, algorithm.version, "SEG"),
            instance_number=int(source.get("InstanceNumber") or 1),
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=f"{algorithm.software_version} (model {algorithm.version})",
            device_serial_number=algorithm.version,
            content_label="PNEUMOTHORAX",
            content_description=f"AI pneumothorax segmentation, {label}"[:64],
            content_creator_name="pneumonode^AI",
            omit_empty_frames=False,
            series_description=series_description("SEG", label),
        )
    # Type 2C in the General Image module for images without a patient coordinate system:
    # copied from the source (possibly empty), so that the SEG states it just as the source does.
    seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    for keyword in ("StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if keyword in source and keyword not in seg:
            setattr(seg, keyword, source[keyword].value)
    return seg
