"""What every result object shares: the algorithm's identity, derived UIDs, labels, clean sources.

Result UIDs are derived from the source's SOP Instance UID, the model version and the kind of
object (a name-based UUID as ``2.25.<integer>``, DICOM PS3.5 B.2), so a re-run of the same model
on the same image replaces its earlier results in the PACS instead of adding copies.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

from pydicom import Dataset
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from pneumonode.identity import MANUFACTURER, SOFTWARE_VERSION
from pneumonode.model.checkpoint import CheckpointConfig

__all__ = [
    "SERIES_NUMBERS",
    "AlgorithmInfo",
    "ResultKind",
    "derived_uid",
    "result_kind",
    "result_source",
    "series_description",
]

ResultKind = Literal["SEG", "SR", "SC"]

#: Series numbers of our result series (one series per source series, model version and kind).
SERIES_NUMBERS: dict[ResultKind, int] = {"SEG": 9901, "SR": 9902, "SC": 9903}

_WHAT = {"SEG": "segmentation", "SR": "report", "SC": "overlay"}
_KINDS: dict[str, ResultKind] = {
    SegmentationStorage: "SEG",
    ComprehensiveSRStorage: "SR",
    SecondaryCaptureImageStorage: "SC",
}
_UID_NAMESPACE = uuid.UUID("6f1c2a4e-8d0b-5b7e-9a51-3c2f1d7e0b64")
_AGE = re.compile(r"^\d{3}[DWMY]$")
#: Type 2 attributes of the Patient and General Study modules: our objects must carry them (empty
#: when unknown), and real sources sometimes leave them out.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model as our result objects name it (from the checkpoint's config.json)."""

    name: str
    version: str
    threshold: float
    min_area_pixels: int
    top_score_threshold: float | None
    intended_use: str
    manufacturer: str = MANUFACTURER
    software_version: str = SOFTWARE_VERSION
    operating_point: float | None = None  # on the calibrated image-level probability

    @classmethod
    def from_checkpoint(cls, config: CheckpointConfig) -> AlgorithmInfo:
        post = config.postprocess
        return cls(
            name=config.name,
            version=config.version,
            threshold=post.threshold,
            min_area_pixels=post.min_area_pixels,
            top_score_threshold=post.top_score_threshold,
            intended_use=config.intended_use,
            operating_point=None if config.decision is None else config.decision.threshold,
        )

    def parameters(self) -> list[str]:
        """Algorithm parameters as DICOM's AlgorithmParameters lists them (LT strings)."""
        values = [f"threshold={self.threshold:g}", f"min_area_pixels={self.min_area_pixels}"]
        if self.top_score_threshold is not None:
            values.append(f"top_score_threshold={self.top_score_threshold:g}")
        if self.operating_point is not None:
            values.append(f"operating_point={self.operating_point:g}")
        return values


def derived_uid(source_uid: str, version: str, what: str) -> UID:
    """A UID that is the same for every run of model ``version`` on ``source_uid``.

    ``2.25.`` + the integer of a name-based (SHA-1, version 5) UUID: PS3.5 B.2's UUID-derived
    form, at most 44 characters.
    """
    name = "\x1f".join(("pneumonode", source_uid, version, what))
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def result_kind(sop_class_uid: str) -> str:
    """What a sent object is, for people: SEG, SR or SC for the SOP classes of our results,
    another class by its keyword (``DigitalXRayImageStorageForPresentation``), else its UID."""
    if sop_class_uid in _KINDS:
        return _KINDS[sop_class_uid]
    return UID(sop_class_uid).keyword or sop_class_uid


def series_description(kind: ResultKind, label: str) -> str:
    """SeriesDescription (LO, 64 characters at most) that says the series is AI output."""
    return f"AI pneumothorax {_WHAT[kind]} - {label}"[:64]


def result_source(source: Dataset) -> Dataset:
    """A copy of ``source`` that is safe to derive result objects from.

    Our results copy the patient and study modules (and the pixel spacing) from the source; values
    the source carries in an invalid form would make our objects invalid too. An invalid
    PatientAge (Type 3) and a pixel spacing that is not positive are left out, missing Type 2
    patient/study attributes are added empty; everything else is kept as it is.
    """
    clean = Dataset(dict(source.items()))  # a new element dict: the source stays as it is
    if hasattr(source, "file_meta"):
        clean.file_meta = source.file_meta
    age = str(clean.get("PatientAge", "") or "")
    if age and not _AGE.match(age):
        del clean.PatientAge
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in clean:
            setattr(clean, keyword, "")
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        # a zero spacing (seen in real CR files) would be copied into our pixel measures
        if keyword in clean and not _positive_pair(clean.get(keyword)):
            delattr(clean, keyword)
    return clean


def _positive_pair(value: object) -> bool:
    try:
        row, column = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False
    return row > 0 and column > 0
