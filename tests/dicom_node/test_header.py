"""The listener's quick header read gives what pydicom gives, or hands the file to pydicom."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_factory import basic_text_sr, make_dx, save, synthetic_chest
from pneumonode.dicom_node.header import read_header
from pneumonode.dicom_node.receive import dataset_offset
from pneumonode.dicom_node.selection import SELECTION_KEYWORDS, skip_reason
from pneumonode.selection_rules import SelectionRules

KEYWORDS = (
    "StudyInstanceUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "AccessionNumber",
    "StudyDate",
    *SELECTION_KEYWORDS,
)
NUMBERS = ("NumberOfFrames", "SamplesPerPixel")


def _used(get: Callable[[str], Any]) -> dict[str, str]:
    """Each value as the listener uses it: its text (stripped), or the integer of a number,
    or the error that reading it raises."""
    used = {}
    for keyword in KEYWORDS:
        try:
            value = get(keyword)
            if keyword in NUMBERS:
                used[keyword] = repr(int(value or 1))
            else:
                used[keyword] = repr(None if value is None else str(value).strip())
        except Exception as exc:
            used[keyword] = f"raises {type(exc).__name__}"
    return used


def _pydicom(path: Path) -> tuple[dict[str, str], bool, int]:
    with path.open("rb") as handle:
        ds = dcmread(handle, stop_before_pixels=True)
        has_pixels = handle.read(4) == b"\xe0\x7f\x10\x00"
    return _used(ds.get), has_pixels, dataset_offset(path)


def _quick(path: Path) -> tuple[dict[str, str], bool, int] | None:
    """The quick read's answer, as ``_pydicom`` gives it; None: left to pydicom."""
    try:
        header = read_header(path, KEYWORDS)
    except Exception as exc:  # a value that cannot be converted: pydicom's error
        return {"raises": type(exc).__name__}, False, -1
    if header is None:
        return None
    return _used(header.values.__getitem__), header.has_pixel_data, header.offset


def assert_same_as_pydicom(path: Path) -> None:
    quick = _quick(path)
    assert quick is not None, f"{path.name} was left to pydicom"
    assert quick == _pydicom(path)


def test_real_files_read_as_pydicom_reads_them(
    siim_sample_dicoms: list[Path], format_refs: Path
) -> None:
    for path in [*siim_sample_dicoms, *sorted(format_refs.rglob("*.dcm"))]:
        assert_same_as_pydicom(path)


def _chest(**attributes: object) -> Dataset:
    ds = make_dx(synthetic_chest(32, 24, 12), 12)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _coded(value: str, nested: Sequence | None = None) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99TEST", value
    if nested is not None:
        item.ContentSequence = nested
    return item


def _sequence(undefined: bool) -> Sequence:
    """Two items, the second holding a nested sequence; undefined lengths throughout or not."""
    inner = Sequence([_coded("INNER")])
    outer = Sequence([_coded("A"), _coded("B", inner)])
    for seq in (inner, outer):
        for item in seq:
            item.is_undefined_length_sequence_item = undefined
    return outer


def _with_sequences(ds: Dataset, undefined: bool) -> Dataset:
    # before, between and after the attributes kept
    ds.ReferencedStudySequence = _sequence(undefined)  # (0008,1110)
    ds.ProcedureCodeSequence = _sequence(undefined)  # (0008,1032)
    ds.RequestAttributesSequence = _sequence(undefined)  # (0040,0275)
    for keyword in ("ReferencedStudySequence", "ProcedureCodeSequence"):
        ds[keyword].is_undefined_length = undefined
    ds.RequestAttributesSequence.is_undefined_length = undefined
    return ds


VARIANTS = {
    "explicit VR": lambda: _chest(),
    "implicit VR": lambda: _chest(),
    "undefined-length sequences": lambda: _with_sequences(_chest(), undefined=True),
    "defined-length sequences": lambda: _with_sequences(_chest(), undefined=False),
    "UTF-8 patient ID": lambda: _chest(SpecificCharacterSet="ISO_IR 192", PatientID="MÜLLER-Ø7"),
    "Latin-1 patient ID": lambda: _chest(SpecificCharacterSet="ISO_IR 100", PatientID="Åsa-ß"),
    "lateral, knee, multi-frame": lambda: _chest(
        ViewPosition="LL", BodyPartExamined="KNEE", NumberOfFrames="2"
    ),
    "values padded and empty": lambda: _chest(Modality="DX ", ViewPosition="", StudyDate=""),
    "several values, zero-padded number": lambda: _chest(
        BodyPartExamined=["CHEST", "ABDOMEN"], ViewPosition=["PA", "AP"], NumberOfFrames="0001"
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_encodings_and_structures_read_as_pydicom_reads_them(variant: str, tmp_path: Path) -> None:
    ds = VARIANTS[variant]()
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")  # a private block among the elements
    ds.add_new(0x00091011, "OB", b"\x00\x01" * 300)
    if variant == "implicit VR":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = save(ds, tmp_path / "in.dcm")
    assert_same_as_pydicom(path)


def test_no_pixel_data_is_told(tmp_path: Path) -> None:
    path = basic_text_sr(tmp_path / "sr.dcm")
    header = read_header(path, KEYWORDS)
    assert header is not None and not header.has_pixel_data
    assert_same_as_pydicom(path)


def test_a_deflated_dataset_is_left_to_pydicom(tmp_path: Path) -> None:
    ds = _chest()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = save(ds, tmp_path / "deflated.dcm")
    assert read_header(path, KEYWORDS) is None
    assert dcmread(path).PatientID == "TEST-0001"  # a file pydicom reads: the fallback works


def test_the_selection_reads_only_its_keywords() -> None:
    """``receive`` keeps only SELECTION_KEYWORDS for ``skip_reason``: it must decide the same."""
    cases = [
        _chest(),
        _chest(ViewPosition="LL"),
        _chest(BodyPartExamined="KNEE"),
        _chest(NumberOfFrames="3"),
        _chest(PhotometricInterpretation="RGB", SamplesPerPixel=3),
        _chest(Manufacturer="pneumonode"),
        _chest(Modality="MR"),
    ]
    for ds in cases:
        kept = {keyword: ds.get(keyword) for keyword in SELECTION_KEYWORDS}
        for sop_class in (ds.SOPClassUID, "1.2.840.10008.5.1.4.1.1.7"):
            assert skip_reason(
                kept, sop_class, has_pixel_data=True, rules=SelectionRules()
            ) == skip_reason(ds, sop_class, has_pixel_data=True, rules=SelectionRules())


def test_damaged_headers_never_disagree_with_pydicom(
    siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    """Bytes flipped in the header and truncations: where the quick read gives an answer, it is
    pydicom's answer; where it cannot tell, it leaves the file to pydicom."""
    rng = random.Random(7)
    original = siim_sample_dicoms[0].read_bytes()
    pixels = original.find(b"\xe0\x7f\x10\x00")
    answered = 0
    for trial in range(300):
        data = bytearray(original)
        if trial % 10 == 0:
            data = data[: rng.randrange(132, pixels + 16)]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(132, pixels + 12)] = rng.randrange(256)
        path = tmp_path / f"damaged-{trial}.dcm"
        path.write_bytes(bytes(data))
        quick = _quick(path)
        if quick is None:
            continue
        answered += 1
        try:
            expected = _pydicom(path)
        except Exception as exc:  # pydicom refuses the file: the quick read must refuse it too
            assert "raises" in quick[0], f"trial {trial}: pydicom refuses ({exc!r}), quick reads"
            continue
        if "raises" in quick[0]:  # pydicom raises too, reading one of the values
            assert any(value.startswith("raises") for value in expected[0].values()), trial
        else:
            assert quick == expected, trial
    assert answered > 100  # most damage lands in values: those files still get the quick read
