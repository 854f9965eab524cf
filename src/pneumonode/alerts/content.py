"""What an alert says: one plain value made from the received image and the model's finding.

The HL7 message and the webhook body are both rendered from an :class:`AlertContent`, so the two
channels never disagree. Built without I/O from the source dataset (its patient and study
modules), the :class:`~pneumonode.model.postprocess.Finding` and the model's identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydicom import Dataset
from pydicom.valuerep import PersonName

from pneumonode.model.postprocess import Finding
from pneumonode.results.common import AlgorithmInfo

__all__ = ["AlertContent", "Notify", "Patient", "alert_content", "wants_alert"]

Notify = Literal["positive", "all"]

_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(?:\d{2}(?:\d{2})?)?")


@dataclass(frozen=True)
class Patient:
    """The DICOM patient module, as far as an HL7 PID needs it (empty strings when absent)."""

    patient_id: str
    issuer: str  # Issuer of Patient ID (0010,0021)
    family_name: str
    given_name: str
    middle_name: str
    name_prefix: str
    name_suffix: str
    birth_date: str  # YYYYMMDD, or empty when absent or malformed
    sex: str  # DICOM M, F, O, or empty


@dataclass(frozen=True)
class AlertContent:
    """One result, as an alert tells it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    accession_number: str
    study_datetime: str  # YYYYMMDD[HH[MM[SS]]], or empty
    modality: str
    view_position: str
    patient: Patient
    present: bool
    side: str | None  # right, left, bilateral (the patient's); None when absent
    area_mm2: float | None  # None: the image has no pixel spacing
    area_pixels: int
    probability: float | None  # calibrated; None for a model without calibration
    operating_point: float | None
    max_probability: float
    model_name: str
    model_version: str
    label: str  # what the result's use is, e.g. "not for clinical use"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _patient(ds: Dataset) -> Patient:
    name = PersonName(_text(ds, "PatientName"))
    birth = _text(ds, "PatientBirthDate")
    sex = _text(ds, "PatientSex").upper()
    return Patient(
        patient_id=_text(ds, "PatientID"),
        issuer=_text(ds, "IssuerOfPatientID"),
        family_name=name.family_name.strip(),
        given_name=name.given_name.strip(),
        middle_name=name.middle_name.strip(),
        name_prefix=name.name_prefix.strip(),
        name_suffix=name.name_suffix.strip(),
        birth_date=birth if _DATE.fullmatch(birth) else "",
        sex=sex if sex in ("M", "F", "O") else "",
    )


def _study_datetime(ds: Dataset) -> str:
    date = _text(ds, "StudyDate")
    if not _DATE.fullmatch(date):
        return ""
    time = _TIME.match(_text(ds, "StudyTime"))
    return date + (time.group(0) if time else "")


def alert_content(
    source: Dataset, finding: Finding, algorithm: AlgorithmInfo, label: str
) -> AlertContent:
    """The alert for ``finding`` on ``source`` (the received image) by ``algorithm``."""
    return AlertContent(
        study_uid=_text(source, "StudyInstanceUID"),
        series_uid=_text(source, "SeriesInstanceUID"),
        sop_uid=_text(source, "SOPInstanceUID"),
        accession_number=_text(source, "AccessionNumber"),
        study_datetime=_study_datetime(source),
        modality=_text(source, "Modality"),
        view_position=_text(source, "ViewPosition"),
        patient=_patient(source),
        present=finding.present,
        side=finding.side if finding.present else None,
        area_mm2=finding.area_mm2,
        area_pixels=finding.area_pixels,
        probability=finding.probability,
        operating_point=finding.threshold,
        max_probability=finding.max_probability,
        model_name=algorithm.name,
        model_version=algorithm.version,
        label=label,
    )


def wants_alert(notify: Notify, present: bool, *, alerted_before: bool = False) -> bool:
    """Whether a result is alerted: every one with ``notify='all'``, else the positive ones.
    A result that was alerted before is always sent again (a re-run that no longer finds a
    pneumothorax goes out as a correction, so that nobody acts on the old alert)."""
    return notify == "all" or present or alerted_before
