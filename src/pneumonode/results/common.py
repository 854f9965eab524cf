"""What every result object shares: derived UIDs, labels, clean sources (and the algorithm's
identity, :class:`~pneumonode.findings.AlgorithmInfo`, which lives with the finding).

Result UIDs are derived from the source's SOP Instance UID, the model version and the kind of
object (a name-based UUID as ``2.25.<integer>``, DICOM PS3.5 B.2), so a re-run of the same model
on the same image replaces its earlier results in the PACS instead of adding copies.
"""

from __future__ import annotations

import re
import uuid
from functools import lru_cache
from typing import Literal

from highdicom.valuerep import _check_specific_character_set
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from pneumonode.findings import AlgorithmInfo

__all__ = [
    "SERIES_NUMBERS",
    "AlgorithmInfo",  # defined in pneumonode.findings
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
#: Specific Character Set values that name the default repertoire (PS3.3 C.12.1.1.2): alone, or
#: as value 1 before code extensions, where an empty value means "ISO 2022 IR 6" (PS3.5 6.1.2.5.3)
_DEFAULT_REPERTOIRE = frozenset(("", "ISO_IR 6", "ISO 2022 IR 6"))
#: What our results carry where the source's character set has no form highdicom accepts
_UTF8 = "ISO_IR 192"
#: VRs whose values are text in the dataset's character set (PS3.5 6.1.2.3)
_TEXT_VRS = frozenset(("SH", "LO", "ST", "LT", "UC", "UT", "PN"))


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
    patient/study attributes are added empty, the Specific Character Set is given a form
    highdicom accepts (see :func:`_writable_character_set`); everything else is kept as it is.
    """
    clean = Dataset(dict(source.items()))  # a new element dict: the source stays as it is
    if hasattr(source, "file_meta"):
        clean.file_meta = source.file_meta
    _writable_character_set(clean)
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


def _writable_character_set(clean: Dataset) -> None:
    """Give ``clean`` a Specific Character Set that highdicom writes, for the same text.

    highdicom takes our results' character set from the source and refuses forms DICOM allows:
    ``ISO_IR 6``, an empty value, an empty value 1 before code extensions (``\\ISO 2022 IR 87``,
    the usual Japanese form), terms it lacks (``ISO 2022 IR 149``). A set it accepts is kept;
    otherwise its text is first decoded with the source's own set, then ``clean`` gets:

    - the same set in a form highdicom accepts: ``ISO 2022 IR 6`` for an empty value 1
      (PS3.5 6.1.2.5.3), ``ISO_IR n`` for a lone ``ISO 2022 IR n``;
    - else no Specific Character Set (the default repertoire) where all its text is ASCII;
    - else ``ISO_IR 192`` (UTF-8), which encodes any text.

    Text elements already decoded keep their text whatever set the result is written in (pydicom
    encodes them, person names included, in the result's set).
    """
    value = clean.get("SpecificCharacterSet")
    if value is None:
        return
    values = tuple(
        str(v).strip() for v in (value if isinstance(value, MultiValue | list) else [value])
    )
    if _accepted_by_highdicom(values):
        return
    ascii_only = _decode_text(clean)  # before the set changes: decoded with the source's own
    equivalent = _equivalent_character_set(values)
    if equivalent is None or not _accepted_by_highdicom(equivalent):
        equivalent = None if ascii_only else (_UTF8,)
    del clean.SpecificCharacterSet  # a new element, not a new value: the source shares this one
    if equivalent is not None:
        clean.SpecificCharacterSet = equivalent[0] if len(equivalent) == 1 else list(equivalent)


def _equivalent_character_set(values: tuple[str, ...]) -> tuple[str, ...] | None:
    """The same character sets, written as highdicom may accept them; None: default repertoire."""
    if all(v in _DEFAULT_REPERTOIRE for v in values):
        return None
    if len(values) > 1 and values[0] in _DEFAULT_REPERTOIRE:
        return ("ISO 2022 IR 6", *values[1:])
    if len(values) == 1 and values[0].startswith("ISO 2022 IR "):
        return (values[0].replace("ISO 2022 IR ", "ISO_IR ", 1),)
    return values


@lru_cache(maxsize=64)
def _accepted_by_highdicom(values: tuple[str, ...]) -> bool:
    """Whether highdicom's SOP classes take ``values`` as their Specific Character Set.

    highdicom's own check (what its constructors call), so that its rules and gaps are exactly
    those it applies: an enumeration of DICOM's terms and PS3.3's rules on code extensions.
    """
    try:
        _check_specific_character_set(values[0] if len(values) == 1 else list(values))
    except ValueError:
        return False
    return True


def _decode_text(dataset: Dataset) -> bool:
    """Decode every element of ``dataset`` and its sequences' items with the character set each
    was read in; whether all their text is ASCII.

    pydicom decodes a received element when it is first read, with the character set its dataset
    has then: this makes every text element's value final before that set changes.
    """
    ascii_only = True
    for element in dataset:  # iterating converts raw elements
        if element.VR == "SQ":
            for item in element.value:
                ascii_only = _decode_text(item) and ascii_only
        elif element.VR in _TEXT_VRS and not element.is_empty:
            values = element.value if isinstance(element.value, MultiValue) else [element.value]
            ascii_only = ascii_only and all(str(v).isascii() for v in values)
    return ascii_only


def _positive_pair(value: object) -> bool:
    try:
        row, column = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False
    return row > 0 and column > 0
