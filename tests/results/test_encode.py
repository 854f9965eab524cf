"""results.encode writes exactly the bytes pydicom writes, without its writer for our objects."""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

import pneumonode.results.encode as encode
from dicom_factory import make_dx, synthetic_chest
from pneumonode import results
from pneumonode.model.postprocess import summarise
from result_checks import ALGORITHM


def _pydicom(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _same_as_pydicom(dataset: Dataset) -> bytes:
    """part10_bytes of ``dataset``, checked against pydicom's writer on a copy of it."""
    expected = _pydicom(copy.deepcopy(dataset))
    ours = encode.part10_bytes(dataset)
    assert ours == expected
    return ours


def _results(source: Dataset, region: tuple[slice, slice] | None) -> list[Dataset]:
    mask = np.zeros((int(source.Rows), int(source.Columns)), dtype=bool)
    if region is not None:
        mask[region] = True
    seg = results.build_segmentation(source, mask, ALGORITHM)
    finding = summarise(mask, 0.9 if mask.any() else 0.2, source)
    report = results.build_report(source, finding, ALGORITHM, segmentation=seg)
    grey = (np.arange(mask.size) % 251).astype(np.uint8).reshape(mask.shape)
    overlay = results.render_overlay(grey, mask)
    capture = results.build_overlay_capture(source, overlay, ALGORITHM, finding=finding)
    return [seg, report, capture]


def test_result_objects_are_written_as_pydicom_writes_them_without_its_writer(
    siim_sample_dicoms: list[Path], format_refs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEG, SR (and SC, Implicit VR, left to dcmwrite) over the SIIM samples, other radiographs
    and a sparse synthetic image; positive (one side, both) and negative: the same bytes, and no
    SEG or SR needed dcmwrite."""
    radiographs = [p for p in sorted(format_refs.glob("*.dcm")) if not p.name.startswith("seg")]
    sources = [pydicom.dcmread(p) for p in [*siim_sample_dicoms[:4], *radiographs]]
    sources.append(make_dx(synthetic_chest(64, 48, 12), 12))  # no spacing, few attributes
    objects = []
    for source in sources:
        rows, columns = int(source.Rows), int(source.Columns)
        for region in (
            (slice(0, rows // 3), slice(0, columns // 4)),
            (slice(rows // 4, rows // 2), slice(None)),
            None,
        ):
            objects += _results(source, region)
    captures = objects[2::3]
    for capture in captures:
        _same_as_pydicom(capture)
    objects = [o for o in objects if o not in captures]
    expected = [_pydicom(copy.deepcopy(o)) for o in objects]

    def refused(dataset: Dataset) -> bytes:
        raise AssertionError(f"dcmwrite was needed for {dataset.SOPClassUID.name}")

    monkeypatch.setattr(encode, "_pydicom_bytes", refused)
    assert [encode.part10_bytes(o) for o in objects] == expected
    back = pydicom.dcmread(BytesIO(encode.part10_bytes(objects[1])))
    assert back.SOPInstanceUID == objects[1].SOPInstanceUID


def _odd_dataset() -> Dataset:
    """Elements the fast path leaves to pydicom: person names and text outside ASCII, date
    objects, numpy numbers, LUT descriptors, undefined lengths, values past 64 kB."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen=ミュラー"
    ds.InstitutionName = "Hôpital Saint-Louis"
    ds.StudyDescription = "CHEST PA"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.add(DataElement(0x00080020, "DA", pydicom.valuerep.DA("20240131")))
    ds.Rows = np.uint16(4)
    ds.Columns = 4
    ds.BitsAllocated = 8
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.139, "0.139"]
    ds.WindowCenter = pydicom.valuerep.DSfloat("40.0", auto_format=False)
    ds.add(DataElement(0x00281101, "US", [256, 0, 16]))  # a LUT descriptor
    ds.LargestImagePixelValue = 4095  # an ambiguous VR: US or SS
    ds.add(DataElement(0x00091010, "LO", "private text"))
    ds.add(DataElement(0x00091011, "UT", "x" * 70_001))
    ds.add(DataElement(0x00091012, "LT", "y" * 70_001))  # too long for a 2-byte length
    ds.add(DataElement(0x00091013, "FD", [1.5, 2.25]))
    ds.add(DataElement(0x00091014, "SS", -3))
    ds.add(DataElement(0x00091015, "OW", b"\x01\x02\x03"))
    ds.add(DataElement(0x00091016, "AT", [0x00100010, 0x00100020]))
    ds.ReferencedImageSequence = Sequence()
    ds["ReferencedImageSequence"].is_undefined_length = True
    item = Dataset()
    item.ReferencedSOPInstanceUID = generate_uid()
    item.is_undefined_length_sequence_item = True
    ds.SourceImageSequence = [item, Dataset()]
    ds.PixelData = bytes(range(16))
    return ds


@pytest.mark.filterwarnings("ignore:.*(cannot be assigned|exceeds the):UserWarning")
def test_what_the_fast_path_does_not_know_is_left_to_pydicom() -> None:
    dataset = _odd_dataset()
    del dataset.LargestImagePixelValue  # ambiguous: the whole dataset goes to dcmwrite
    _same_as_pydicom(dataset)


@pytest.mark.filterwarnings("ignore:.*(cannot be assigned|exceeds the):UserWarning")
def test_an_ambiguous_vr_or_another_transfer_syntax_goes_to_dcmwrite(
    siim_sample_dicoms: list[Path],
) -> None:
    _same_as_pydicom(_odd_dataset())
    implicit = _odd_dataset()
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    _same_as_pydicom(implicit)
    # a received image: raw elements (written as read), JPEG pixel data
    for path in siim_sample_dicoms[:2]:
        _same_as_pydicom(pydicom.dcmread(path))


def test_highdicom_asks_the_iod_memo_which_answers_as_highdicom_does() -> None:
    import highdicom.base
    import highdicom.sr.content

    from pneumonode.results import iod_lookup

    iod_lookup.install()  # what a process that makes result objects does at its start
    assert highdicom.base.is_attribute_in_iod is iod_lookup.is_attribute_in_iod
    assert highdicom.sr.content.is_attribute_in_iod is iod_lookup.is_attribute_in_iod
    classes = (
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography
    )
    keywords = ("ContentDate", "ContentTime", "NumberOfFrames", "PixelSpacing", "PatientName")
    for uid in classes:
        for keyword in keywords:
            for excluded in (None, ["SharedFunctionalGroupsSequence"]):
                asked = iod_lookup.is_attribute_in_iod(keyword, uid, excluded)
                assert asked == iod_lookup._ORIGINAL(keyword, uid, excluded), (uid, keyword)
    assert iod_lookup.is_attribute_in_iod("NumberOfFrames", classes[0]) is True
    assert iod_lookup.is_attribute_in_iod("NumberOfFrames", classes[4]) is False


def test_a_worker_loads_the_standard_before_its_first_job_and_freezes_it() -> None:
    import gc

    from pneumonode.results import iod_lookup
    from pneumonode.worker.pipeline import settle_heap

    iod_lookup._lookup.cache_clear()
    try:
        settle_heap()
        assert iod_lookup._lookup.cache_info().currsize == 1  # the tables are loaded
        assert gc.get_freeze_count() > 100_000  # they, and the rest, are out of the collector's way
    finally:
        gc.unfreeze()
