"""The structure check a received dataset passes before it is acknowledged (issue 22): whole
datasets in every transfer syntax we accept pass; damaged ones name the element and what is
wrong with it, never a value."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicom_factory import DAMAGE, damage, make_dx, save, split_file, synthetic_chest
from pneumonode.dicom_node import structure
from pneumonode.dicom_node.receive import dataset_offset
from pneumonode.dicom_node.structure import (
    DamagedDatasetError,
    TooLargeToCheckError,
    check_structure,
)


def _check(path: Path) -> None:
    check_structure(path, dataset_offset(path), _syntax(path))


def _syntax(path: Path) -> str:
    from pydicom.filereader import read_file_meta_info

    return str(read_file_meta_info(path).TransferSyntaxUID)


def _with_dataset(path: Path, dataset: bytes, out: Path) -> Path:
    meta, _ = split_file(path)
    out.write_bytes(meta + dataset)
    return out


def _damaged(path: Path) -> str:
    """The reason the check gives for the file at ``path``."""
    with pytest.raises(DamagedDatasetError) as raised:
        _check(path)
    return str(raised.value)


def _chest(syntax: UID = ExplicitVRLittleEndian, **attributes: object) -> Dataset:
    ds = make_dx(synthetic_chest(40, 30, 12, seed=1), 12, transfer_syntax=syntax)
    ds.ReferencedStudySequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedStudySequence[0].ReferencedSOPClassUID = "1.2.3"
    ds.ReferencedStudySequence[1].ReferencedSOPInstanceUID = "1.2.3.4"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


# ------------------------------------------------------------------ whole datasets pass


def test_the_shared_files_pass(siim_sample_dicoms: list[Path], format_refs: Path) -> None:
    """JPEG Baseline, JPEG 2000, a 1-bit SEG, an odd-length Pixel Data (dx_monochrome1)."""
    for path in [*siim_sample_dicoms, *sorted(format_refs.glob("*.dcm"))]:
        _check(path)


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
)
def test_native_datasets_in_each_syntax_pass(tmp_path: Path, syntax: UID) -> None:
    _check(save(_chest(syntax), tmp_path / "chest.dcm"))


def test_undefined_length_sequences_and_items_pass(tmp_path: Path) -> None:
    """pydicom writes sequences with defined lengths; the same dataset with undefined lengths
    (as dcmtk writes them by default), nested two deep, in explicit and implicit VR."""
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds = _chest(syntax)
        inner = Dataset()
        inner.CodeValue = "123"
        ds.ReferencedStudySequence[0].PurposeOfReferenceCodeSequence = Sequence([inner])
        ds["ReferencedStudySequence"].is_undefined_length = True
        ds.ReferencedStudySequence[0]["PurposeOfReferenceCodeSequence"].is_undefined_length = True
        for item in [*ds.ReferencedStudySequence, inner]:
            item.is_undefined_length_sequence_item = True
        path = save(ds, tmp_path / f"undefined-{syntax}.dcm")
        assert path.read_bytes().count(b"\xfe\xff\xdd\xe0") == 2  # sequence delimiters
        _check(path)


def test_an_undefined_length_un_element_is_read_as_implicit_vr(tmp_path: Path) -> None:
    """PS3.5 6.2.2: a sequence of unknown VR (UN) with undefined length holds implicit VR."""
    path = save(_chest(), tmp_path / "chest.dcm")
    _, dataset = split_file(path)
    item = b"\x08\x00\x50\x11" + (4).to_bytes(4, "little") + b"1.2\x00"  # (0008,1150) implicit
    un = (
        b"\x09\x00\x10\x10UN\x00\x00"
        + b"\xff\xff\xff\xff"  # (0009,1010) private, UN
        + b"\xfe\xff\x00\xe0"
        + len(item).to_bytes(4, "little")
        + item
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    at = dataset.index(b"\x10\x00\x10\x00")  # before (0010,0010)
    _check(_with_dataset(path, dataset[:at] + un + dataset[at:], tmp_path / "un.dcm"))


# ------------------------------------------------------------------ damaged datasets


@pytest.mark.parametrize("how", DAMAGE)
def test_the_damage_of_issue_22_is_found(
    siim_sample_dicoms: list[Path], tmp_path: Path, how: str
) -> None:
    for name, source in (
        ("siim", siim_sample_dicoms[0]),  # JPEG Baseline, encapsulated
        ("native", save(_chest(), tmp_path / "chest.dcm")),
    ):
        _, dataset = split_file(source)
        path = _with_dataset(source, damage(dataset, how), tmp_path / f"{name}.dcm")
        reason = _damaged(path)
        assert re.search(r"\([0-9A-F]{4},[0-9A-F]{4}\)", reason), reason  # names the element


def test_reasons_name_the_element(siim_sample_dicoms: list[Path], tmp_path: Path) -> None:
    source = save(_chest(), tmp_path / "chest.dcm")
    _, dataset = split_file(source)
    cases = {
        "a US element of 3 bytes": "Bits Stored (0028,0101) US of 3 bytes",
        "a Pixel Data length past the end": "(7FE0,0010)",
        "truncated inside the pixel data": "(7FE0,0010)",
    }
    for how, expected in cases.items():
        path = _with_dataset(source, damage(dataset, how), tmp_path / "damaged.dcm")
        assert expected in _damaged(path)


def test_native_pixel_data_shorter_than_the_image_is_damaged(tmp_path: Path) -> None:
    """Pixel Data whose own length fits the file but not Rows x Columns x Bits Allocated."""
    ds = _chest()
    ds.Rows = 41  # one row more than the pixels hold
    path = save(ds, tmp_path / "short.dcm")
    assert "(7FE0,0010)" in _damaged(path) and "shorter than the image" in _damaged(path)
    ds = _chest(NumberOfFrames="2")
    assert "(7FE0,0010)" in _damaged(save(ds, tmp_path / "frames.dcm"))


def test_pixel_data_longer_than_the_image_passes(tmp_path: Path) -> None:
    """Trailing padding after the last pixel is read (and dropped) by pydicom and dcmtk."""
    ds = _chest()
    ds.PixelData = ds.PixelData + b"\x00" * 4
    _check(save(ds, tmp_path / "padded.dcm"))


def test_a_sequence_or_item_left_open_is_damaged(tmp_path: Path) -> None:
    ds = _chest()
    ds["ReferencedStudySequence"].is_undefined_length = True
    for item in ds.ReferencedStudySequence:
        item.is_undefined_length_sequence_item = True
    path = save(ds, tmp_path / "undefined.dcm")
    _, dataset = split_file(path)
    end_of_sequence = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    unclosed = dataset.replace(end_of_sequence, b"")
    reason = _damaged(_with_dataset(path, unclosed, tmp_path / "open.dcm"))
    assert "(0008,1110)" in reason
    end_of_item = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    cut = dataset[: dataset.rindex(end_of_item)]
    reason = _damaged(_with_dataset(path, cut, tmp_path / "cut.dcm"))
    assert "(0008,1110)" in reason


def test_encapsulated_pixel_data_must_close(siim_sample_dicoms: list[Path], tmp_path: Path) -> None:
    source = siim_sample_dicoms[0]
    _, dataset = split_file(source)
    assert dataset.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    unclosed = _with_dataset(source, dataset[:-8], tmp_path / "unclosed.dcm")
    assert "(7FE0,0010)" in _damaged(unclosed)
    # a defined length in an encapsulated syntax (PS3.5 A.4: undefined length)
    pixels = dataset.index(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 8
    defined = dataset[:pixels] + (len(dataset) - pixels - 4).to_bytes(4, "little")
    defined += dataset[pixels + 4 :]
    path = _with_dataset(source, defined, tmp_path / "defined.dcm")
    assert "(7FE0,0010)" in _damaged(path)


def test_rle_fragments_pass_and_a_missing_fragment_is_damaged(tmp_path: Path) -> None:
    ds = _chest()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = 1
    path = save(ds, tmp_path / "rle.dcm")
    _check(path)
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # the offset table alone
    ds["PixelData"].is_undefined_length = True  # pydicom adds the sequence delimiter
    assert "(7FE0,0010)" in _damaged(save(ds, tmp_path / "empty.dcm"))


def test_implicit_vr_lengths_are_checked_against_the_dictionary(tmp_path: Path) -> None:
    path = save(_chest(ImplicitVRLittleEndian), tmp_path / "implicit.dcm")
    _, dataset = split_file(path)
    bits = dataset.index(b"\x28\x00\x01\x01\x02\x00\x00\x00")  # (0028,0101), 2 bytes
    three = dataset[: bits + 4] + b"\x03\x00\x00\x00" + dataset[bits + 8 : bits + 10] + b"\x00"
    three += dataset[bits + 10 :]
    reason = _damaged(_with_dataset(path, three, tmp_path / "three.dcm"))
    assert "(0028,0101)" in reason
    cut = _with_dataset(path, dataset[:-7], tmp_path / "cut.dcm")
    assert "(7FE0,0010)" in _damaged(cut)


def test_big_endian_lengths_are_read_big_endian(tmp_path: Path) -> None:
    path = save(_chest(ExplicitVRBigEndian), tmp_path / "big.dcm")
    _, dataset = split_file(path)
    assert "(7FE0,0010)" in _damaged(_with_dataset(path, dataset[:-3], tmp_path / "cut.dcm"))


def test_a_deflated_dataset_is_checked_after_inflating(tmp_path: Path) -> None:
    path = save(_chest(DeflatedExplicitVRLittleEndian), tmp_path / "deflated.dcm")
    _, dataset = split_file(path)
    assert "deflate" in _damaged(
        _with_dataset(path, dataset[: len(dataset) // 2], tmp_path / "cut.dcm")
    )
    inflated = zlib.decompress(dataset, -15)
    shortened = damage(inflated, "truncated inside the pixel data")
    compressor = zlib.compressobj(wbits=-15)
    deflated = compressor.compress(shortened) + compressor.flush()
    path = _with_dataset(path, deflated, tmp_path / "short.dcm")
    assert "(7FE0,0010)" in _damaged(path)


def test_image_attributes_without_pixel_data_are_damaged(tmp_path: Path) -> None:
    """A dataset cut exactly before its Pixel Data element reads as a whole dataset; its image
    attributes (Bits Allocated) say that pixels belonged to it."""
    path = save(_chest(), tmp_path / "chest.dcm")
    _, dataset = split_file(path)
    cut = dataset[: dataset.index(b"\xe0\x7f\x10\x00OW")]
    assert "Bits Allocated (0028,0100) but no Pixel Data (7FE0,0010)" in _damaged(
        _with_dataset(path, cut, tmp_path / "cut.dcm")
    )


def test_an_empty_dataset_is_damaged(tmp_path: Path) -> None:
    path = save(_chest(), tmp_path / "chest.dcm")
    assert "empty" in _damaged(_with_dataset(path, b"", tmp_path / "empty.dcm"))


def test_a_jpeg_file_with_the_siim_layout_passes(tmp_path: Path) -> None:
    ds = _chest()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    _check(save(ds, tmp_path / "jpeg.dcm"))


def test_a_deflate_bomb_is_not_inflated_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(structure, "MAX_INFLATED_BYTES", 1 << 20)  # a small limit, same code
    path = save(_chest(DeflatedExplicitVRLittleEndian), tmp_path / "deflated.dcm")
    compressor = zlib.compressobj(9, wbits=-15)
    bomb = compressor.compress(bytes((1 << 20) + 1)) + compressor.flush()
    assert len(bomb) < 2000
    with pytest.raises(TooLargeToCheckError, match="over 1 MiB"):
        _check(_with_dataset(path, bomb, tmp_path / "bomb.dcm"))
