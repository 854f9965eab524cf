"""SEG, SR and SC over sources in every form of Specific Character Set (0008,0005) hospitals send:
built, and their text decodes to the source's own.

highdicom accepts only some of DICOM's forms (not ``ISO_IR 6``, an empty value, an empty value 1
before code extensions, ``ISO 2022 IR 149``); ``results.result_source`` gives it an equivalent
or, failing that, UTF-8, after decoding the text with the source's own character set.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

from dicom_factory import make_dx, synthetic_chest
from pneumonode.model.postprocess import summarise
from pneumonode.results import (
    build_overlay_capture,
    build_report,
    build_segmentation,
    render_overlay,
)
from pneumonode.results.encode import part10_bytes
from result_checks import ALGORITHM

#: PS3.5 H.3.1 (pydicom's chrH31.dcm): "Yamada^Tarou=山田^太郎=やまだ^たろう" in ISO 2022 IR 87,
#: JIS X 0208 between ESC $ B and ESC ( B
_YAMADA = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"


@dataclass(frozen=True)
class Case:
    """A source's character set, its text, and the character set our results should carry."""

    id: str
    charset: str | list[str]
    patient_name: str | bytes  # bytes: written as they are
    study_description: str
    procedure: str  # CodeMeaning of the ProcedureCodeSequence item (text in a sequence)
    expected: str | list[str] | None  # our results' SpecificCharacterSet; None: absent
    name_text: str  # what the patient name decodes to


CASES = [
    Case(
        "ISO_IR 6", "ISO_IR 6", "Test^Synthetic", "CHEST PA", "Chest X-ray", None, "Test^Synthetic"
    ),
    Case("empty", "", "Test^Synthetic", "CHEST PA", "Chest X-ray", None, "Test^Synthetic"),
    # the default repertoire declared, Latin-1 bytes sent (read as ISO 8859-1, as pydicom does)
    Case(
        "empty, Latin-1 text",
        "",
        "Müller^Jürgen",
        "Thorax p.a.",
        "Röntgen Thorax",
        "ISO_IR 192",
        "Müller^Jürgen",
    ),
    Case(
        "\\ISO 2022 IR 87",
        ["", "ISO 2022 IR 87"],
        _YAMADA,
        "胸部単純X線",
        "胸部X線撮影",
        ["ISO 2022 IR 6", "ISO 2022 IR 87"],
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
    ),
    # highdicom 0.28 has no ISO 2022 IR 149 (its KOREAN member is IR 159): UTF-8 instead
    Case(
        "\\ISO 2022 IR 149",
        ["", "ISO 2022 IR 149"],
        "Hong^Gildong=洪^吉洞=홍^길동",
        "흉부 X선",
        "흉부 촬영",
        "ISO_IR 192",
        "Hong^Gildong=洪^吉洞=홍^길동",
    ),
    Case(
        "ISO_IR 100",
        "ISO_IR 100",
        "Buc^Jérôme",
        "Thorax de face",
        "Radiographie du thorax",
        "ISO_IR 100",
        "Buc^Jérôme",
    ),
    Case(
        "ISO_IR 192",
        "ISO_IR 192",
        "Wang^XiaoDong=王^小東",
        "胸部 X 光",
        "胸部平片",
        "ISO_IR 192",
        "Wang^XiaoDong=王^小東",
    ),
]


def _received(case: Case) -> Dataset:
    """A DX in ``case``'s character set, as the listener hands it on: read from its bytes."""
    ds = make_dx(synthetic_chest(64, 48, 12), 12)
    ds.SpecificCharacterSet = case.charset
    if isinstance(case.patient_name, bytes):
        ds[0x00100010] = DataElement(0x00100010, "PN", case.patient_name)
    else:
        ds.PatientName = case.patient_name
    ds.StudyDescription = case.study_description
    procedure = Dataset()
    procedure.CodeValue, procedure.CodingSchemeDesignator = "399208008", "SCT"
    procedure.CodeMeaning = case.procedure
    ds.ProcedureCodeSequence = [procedure]
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def _texts(dataset: Dataset) -> tuple[str, ...]:
    """PatientName, StudyDescription and the procedure's CodeMeaning, those ``dataset`` has
    (highdicom's SC copies the Patient module and the study's identifiers, not the others)."""
    texts = [str(dataset.PatientName)]
    if "StudyDescription" in dataset:
        texts.append(str(dataset.StudyDescription))
    if "ProcedureCodeSequence" in dataset:
        texts.append(str(dataset.ProcedureCodeSequence[0].CodeMeaning))
    return tuple(texts)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_results_of_a_source_in_any_character_set_keep_its_text(case: Case) -> None:
    texts = _texts(_received(case))  # read from a copy: the source's elements stay undecoded
    assert texts == (case.name_text, case.study_description, case.procedure)
    source = _received(case)
    mask = np.zeros((64, 48), dtype=bool)
    mask[10:30, 5:20] = True
    finding = summarise(mask, 0.9, source)
    seg = build_segmentation(source, mask, ALGORITHM)
    sr = build_report(source, finding, ALGORITHM, segmentation=seg)
    grey = (np.arange(mask.size) % 251).astype(np.uint8).reshape(mask.shape)
    sc = build_overlay_capture(source, render_overlay(grey, mask), ALGORITHM, finding=finding)
    for kind, result, copied in (("SEG", seg, 3), ("SR", sr, 3), ("SC", sc, 1)):
        back = pydicom.dcmread(BytesIO(part10_bytes(result)))  # the bytes the worker sends
        charset = back.get("SpecificCharacterSet")
        assert (list(charset) if isinstance(charset, MultiValue) else charset) == case.expected, (
            kind
        )
        assert _texts(back) == texts[:copied], kind
    assert source.SpecificCharacterSet == _received(case).SpecificCharacterSet  # left as it was
    assert _texts(source) == texts


def test_a_japanese_name_keeps_its_iso_2022_bytes() -> None:
    """``\\ISO 2022 IR 87`` becomes its equivalent ``ISO 2022 IR 6\\ISO 2022 IR 87``: the SEG
    carries the source's own bytes, in the form Japanese systems expect."""
    source = _received(next(case for case in CASES if case.id == "\\ISO 2022 IR 87"))
    seg = build_segmentation(source, np.zeros((64, 48), dtype=bool), ALGORITHM)
    back = pydicom.dcmread(BytesIO(part10_bytes(seg)))
    assert back.get_item(0x00100010).value.rstrip(b" ") == _YAMADA
