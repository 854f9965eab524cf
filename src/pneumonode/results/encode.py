"""Our result objects as DICOM Part 10 bytes, the same bytes pydicom writes, in a fraction of
its time.

pydicom's writer is general: for every element it makes a buffer, looks the writer up, checks
for ambiguous VRs and re-reads the character set; an SR of 430 elements in 120 items took 8 ms
there, more than everything else the worker does to it but build it. Our SEG, SR and Secondary
Capture are Explicit VR Little Endian and made of plain elements, which this module writes
directly; any element it does not know how to write exactly as pydicom would (a person name,
a date object, an ambiguous or unknown VR, a value too long for its length field, LUT
descriptors, an element never decoded) is written by pydicom's own element writer, and any
dataset in another transfer syntax, or with an ambiguous VR anywhere, by ``dcmwrite`` itself.
``tests/results/test_encode.py`` checks the bytes are pydicom's on every kind of result object
and on received images.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian

__all__ = ["part10_bytes"]

#: Explicit VR with a 4-byte length (and two reserved bytes before it), PS3.5 7.1.2.
_LONG_LENGTH = frozenset(
    ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)
_STRING = frozenset(("AE", "AS", "CS", "DA", "DT", "TM", "UR"))  # ASCII, no character set
_TEXT = frozenset(("LO", "LT", "SH", "ST", "UC", "UT"))  # in the dataset's character set
_NUMBER_STRING = frozenset(("DS", "IS"))
_BINARY = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_BYTES = frozenset(("OB", "OD", "OF", "OL", "OV", "OW"))
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF
#: Red/Green/Blue Palette Color and LUT Descriptors: pydicom writes their first value as US
_LUT_DESCRIPTOR_TAGS = frozenset((0x00281101, 0x00281102, 0x00281103, 0x00283002))
_EXPLICIT_LITTLE = (False, True)


class _NeedsPydicomError(Exception):
    """Something only ``dcmwrite`` writes exactly as ``dcmwrite`` does."""


def part10_bytes(dataset: Dataset) -> bytes:
    """``dataset`` as a DICOM file (preamble, File Meta Information, data set): the bytes of
    ``dataset.save_as(buffer, enforce_file_format=True)``, with the same changes to its File
    Meta Information (Media Storage UIDs, group length, implementation identity)."""
    meta = getattr(dataset, "file_meta", None)
    if (
        meta is None
        or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian
        or getattr(dataset, "preamble", None) not in (None, b"\x00" * 128)
    ):
        return _pydicom_bytes(dataset)
    if "PixelData" in dataset:
        dataset["PixelData"].is_undefined_length = False  # as dcmwrite sets it: not compressed
    try:
        body = BytesIO()
        _write_dataset(body, dataset, None)
    except _NeedsPydicomError:
        return _pydicom_bytes(dataset)
    # the File Meta Information as dcmwrite(enforce_file_format=True) makes it (a few elements)
    if meta.get("MediaStorageSOPClassUID") is None or (
        dataset.get("SOPClassUID") and dataset.SOPClassUID != meta.MediaStorageSOPClassUID
    ):
        meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID")
    if meta.get("MediaStorageSOPInstanceUID") is None or (
        dataset.get("SOPInstanceUID") and dataset.SOPInstanceUID != meta.MediaStorageSOPInstanceUID
    ):
        meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID")
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue() + body.getvalue()


def _pydicom_bytes(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _write_dataset(out: BytesIO, dataset: Dataset, parent_charset: Any) -> None:
    """The elements of ``dataset`` in tag order, as pydicom's ``write_dataset`` writes them to
    an Explicit VR Little Endian file."""
    if isinstance(dataset, FileMetaDataset):
        raise _NeedsPydicomError
    # pydicom reads elements raw (undecoded) when the dataset was read in this very encoding
    # and character set, and decodes them (correcting ambiguous VRs) otherwise
    raw_allowed = (
        dataset.original_encoding == _EXPLICIT_LITTLE
        and dataset.original_character_set == dataset._character_set
    )
    charset = dataset.get("SpecificCharacterSet", parent_charset)
    for tag in sorted(dataset.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # group lengths: pydicom leaves them out
        element = dataset.get_item(tag) if raw_allowed else dataset[tag]
        if isinstance(element, RawDataElement):
            raise _NeedsPydicomError  # written as read
        if not raw_allowed and len(element.VR) != 2:
            _correct_pixel_data_vr(dataset, element)  # as pydicom's correct_ambiguous_vr
        _write_element(out, element, charset)


def _correct_pixel_data_vr(dataset: Dataset, element: DataElement) -> None:
    """Pixel Data "OB or OW", not encapsulated, as pydicom settles it for Explicit VR: OW from an
    Implicit VR original or past 8 bits allocated, else OB. Other ambiguous VRs: dcmwrite."""
    if element.tag != 0x7FE00010 or element.is_undefined_length:
        raise _NeedsPydicomError
    implicit_original = dataset.original_encoding[0]
    element.VR = "OW" if implicit_original or int(dataset.BitsAllocated) > 8 else "OB"


def _write_element(out: BytesIO, element: DataElement, charset: Any) -> None:
    vr = element.VR
    value = element.value
    if vr == "SQ":
        _write_sequence(out, element, charset)
        return
    plain = not element.is_buffered and not element.is_undefined_length
    encoded = _encode_value(vr, value, element) if plain else None
    if encoded is None:
        _pydicom_element(out, element, charset)
        return
    if len(encoded) % 2:
        encoded += b"\x00" if vr in ("UI", "OB", "OD", "OF", "OL", "OV", "OW") else b" "
    tag = element.tag
    header = struct.pack("<HH", tag.group, tag.element) + vr.encode("ascii")
    if vr in _LONG_LENGTH:
        out.write(header + struct.pack("<HL", 0, len(encoded)))
    elif len(encoded) > 0xFFFF:
        _pydicom_element(out, element, charset)  # pydicom turns it into UN, with a warning
        return
    else:
        out.write(header + struct.pack("<H", len(encoded)))
    out.write(encoded)


def _encode_value(vr: str, value: Any, element: DataElement) -> bytes | None:
    """The value's bytes (unpadded), or None where pydicom's own writer must do it."""
    if element.is_empty:
        return b""
    if vr == "UI" or vr in _STRING or vr in _TEXT:
        text = _joined(value)
        # plain ASCII is the same bytes in every character set DICOM allows (ISO 2022
        # starts in ASCII too); anything else is left to pydicom's encoder
        return text.encode("ascii") if text is not None and text.isascii() else None
    if vr in _NUMBER_STRING:
        values = value if _is_multi(value) else [value]
        parts = [v.original_string if hasattr(v, "original_string") else str(v) for v in values]
        return "\\".join(parts).encode("ascii")
    form = _BINARY.get(vr)
    if form is not None:
        if element.tag in _LUT_DESCRIPTOR_TAGS:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return struct.pack("<" + form, value)
        if isinstance(value, MultiValue | list):  # pydicom packs what has .append as a list
            return struct.pack(f"<{len(value)}{form}", *value)
        return None
    if vr in _BYTES and isinstance(value, bytes):
        return value
    return None


def _joined(value: Any) -> str | None:
    """A string element's text as pydicom joins it; None for values that are not plain str
    (date and time objects, bytes)."""
    if isinstance(value, str):
        return value
    if _is_multi(value) and all(isinstance(v, str) for v in value):
        return "\\".join(value)
    return None


def _is_multi(value: Any) -> bool:
    return isinstance(value, MultiValue | list | tuple)


def _write_sequence(out: BytesIO, element: DataElement, charset: Any) -> None:
    tag = element.tag
    out.write(struct.pack("<HH", tag.group, tag.element) + b"SQ\x00\x00")
    items = BytesIO()
    for item in element.value:
        content = BytesIO()
        _write_dataset(content, item, charset)
        if getattr(item, "is_undefined_length_sequence_item", False):
            items.write(_ITEM + struct.pack("<L", _UNDEFINED))
            items.write(content.getvalue() + _ITEM_DELIMITER)
        else:
            items.write(_ITEM + struct.pack("<L", content.tell()))
            items.write(content.getvalue())
    if element.is_undefined_length:
        out.write(struct.pack("<L", _UNDEFINED) + items.getvalue() + _SEQUENCE_DELIMITER)
    else:
        out.write(struct.pack("<L", items.tell()) + items.getvalue())


def _pydicom_element(out: BytesIO, element: DataElement, charset: Any) -> None:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, element, charset)  # pydicom converts the character set names
    out.write(buffer.getvalue())
