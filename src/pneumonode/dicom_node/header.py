"""A fast read of the few attributes the listener needs from a file it has just received.

pydicom's reader builds every element of the header in Python: for a chest radiograph that is
about a millisecond, a quarter of the listener's time per image. Here the top-level elements are
walked with ``struct`` (PS3.5 section 7), sequences of undefined length are skipped item by
item, and only the values of the attributes asked for are kept. A plain value (one value of
printable ASCII in a text VR, in the default, Latin-1 or UTF-8 character set; digits in an IS; two
bytes of US) is converted here, to what pydicom's value gives as text (``str(value).strip()``);
every other value is converted by pydicom itself, so it means exactly what it would after
``dcmread``, and a malformed one raises the same way.

Anything this walk does not handle the way pydicom would gives ``None``, and the caller reads
the file with pydicom instead: a deflated or big-endian transfer syntax, a VR that is not in
the standard, a dataset whose encoding differs from its transfer syntax (pydicom guesses),
undefined lengths other than sequences (UN included, whose content is implicit VR), elements out
of order, a length past the end of the file, nesting deeper than 16 sequences, a kept value over
4 KiB.
"""

from __future__ import annotations

import functools
import os
import re
import struct
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.tag import BaseTag

__all__ = ["Header", "read_header"]

_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_EXPLICIT_LE = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})  # deflate, BE
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {
        *(b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO"),
        *(b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"),
    }
)
_PIXEL_DATA = 0x7FE00010
_STOP = frozenset({0x7FE00008, 0x7FE00009, _PIXEL_DATA})  # where pydicom's stop_before_pixels ends
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_SPECIFIC_CHARACTER_SET = 0x00080005
_MAX_DEPTH = 16
_MAX_KEPT = 4096
_WINDOW = 1 << 16

#: One value of printable ASCII (no backslash: that separates values), as read from the file.
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")
_DIGITS = re.compile(rb" *[0-9]{1,9} *")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_PLAIN_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UI"})
_CHARSET_TEXT_VRS = frozenset({"LO", "SH"})  # the VRs above that a character set changes
#: Character sets in which printable ASCII means itself.
_ASCII_CHARSETS = frozenset({b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192"})

_TAG_LENGTH = struct.Struct("<HHI")  # implicit VR, and items: group, element, 32-bit length
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_U32 = struct.Struct("<I")


class _UnusualError(Exception):
    """Something this walk leaves to pydicom."""


@dataclass(frozen=True, slots=True)
class Header:
    """What ``read_header`` found: the attributes' values (None when absent), whether pixel data
    follows them, where the dataset starts in the file."""

    values: dict[str, Any]
    has_pixel_data: bool
    offset: int


class _File:
    """Bytes of an open file by position, read through a 64 KiB window."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.start = 0
        self.data = b""

    def at(self, position: int, count: int) -> tuple[bytes, int]:
        """(buffer, offset in it) holding ``count`` bytes from ``position``."""
        if position + count > self.size:
            raise _UnusualError
        offset = position - self.start
        if offset < 0 or offset + count > len(self.data):
            self.start, offset = position, 0
            self.data = os.pread(self.fd, max(count, _WINDOW), position)
            if len(self.data) < count:
                raise _UnusualError  # the file shrank
        return self.data, offset


class _Walk:
    def __init__(self, file: _File, implicit: bool) -> None:
        self.file = file
        self.implicit = implicit

    def element(self, position: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None when implicit, length, value position) of the element there."""
        data, at = self.file.at(position, 8)
        if self.implicit:
            group, number, length = _TAG_LENGTH.unpack_from(data, at)
            return group << 16 | number, None, length, position + 8
        group, number, vr, length = _EXPLICIT.unpack_from(data, at)
        tag = group << 16 | number
        if group == 0xFFFE:  # item tags carry no VR
            return tag, None, _U32.unpack_from(data, at + 4)[0], position + 8
        if vr in _SHORT_VRS:
            return tag, vr, length, position + 8
        if vr in _LONG_VRS:
            data, at = self.file.at(position + 8, 4)
            return tag, vr, _U32.unpack_from(data, at)[0], position + 12
        raise _UnusualError

    def skip_sequence(self, position: int, depth: int) -> int:
        """Past the Sequence Delimitation Item of the undefined-length sequence whose first
        item (or delimiter) starts at ``position``."""
        if depth > _MAX_DEPTH:
            raise _UnusualError
        while True:
            data, at = self.file.at(position, 8)
            group, number, length = _TAG_LENGTH.unpack_from(data, at)
            tag = group << 16 | number
            if tag == _SEQUENCE_END:
                return position + 8
            if tag != _ITEM:
                raise _UnusualError
            if length == _UNDEFINED:
                position = self.skip_item(position + 8, depth)
            else:
                position += 8 + length

    def skip_item(self, position: int, depth: int) -> int:
        """Past the Item Delimitation Item of the undefined-length item starting there."""
        previous = -1
        while True:
            tag, vr, length, value = self.element(position)
            if tag == _ITEM_END:
                return value
            if tag <= previous or tag >> 16 == 0xFFFE:
                raise _UnusualError
            previous = tag
            position = self.skip_value(vr, length, value, depth + 1)

    def skip_value(self, vr: bytes | None, length: int, value: int, depth: int) -> int:
        if length != _UNDEFINED:
            if value + length > self.file.size:
                raise _UnusualError
            return value + length
        if vr == b"SQ" or (vr is None and self.implicit):
            return self.skip_sequence(value, depth)
        raise _UnusualError  # UN (implicit VR inside) or a value that ends at a delimiter


def _explicit(transfer_syntax_uid: str) -> bool:
    if transfer_syntax_uid == _IMPLICIT_LE:
        return False
    if transfer_syntax_uid in _NOT_EXPLICIT_LE or not transfer_syntax_uid.startswith(
        "1.2.840.10008.1.2"
    ):
        raise _UnusualError
    return True


def _file_meta(file: _File) -> tuple[int, str]:
    """(dataset offset, transfer syntax) from the File Meta Information (explicit VR LE)."""
    data, at = file.at(128, 16)
    if data[at : at + 12] != b"DICM\x02\x00\x00\x00UL\x04\x00":  # then the group's length
        raise _UnusualError
    end = 144 + _U32.unpack_from(data, at + 12)[0]
    walk = _Walk(file, implicit=False)
    position, syntax = 144, None
    while position < file.size:
        data, at = file.at(position, 2)
        if data[at : at + 2] != b"\x02\x00":  # the end of group 0002
            break
        tag, _, length, value = walk.element(position)
        if length == _UNDEFINED or length > _MAX_KEPT:
            raise _UnusualError
        if tag == 0x00020010:
            data, at = file.at(value, length)
            syntax = data[at : at + length].rstrip(b"\x00 ").decode("ascii", "replace")
        position = value + length
    if syntax is None or position != end or not _UID.fullmatch(syntax):
        raise _UnusualError
    return position, syntax


@functools.cache
def _tags(keywords: tuple[str, ...]) -> dict[int, str]:
    tags = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"not a DICOM keyword: {keyword}")
        tags[int(tag)] = keyword
    return tags


def read_header(path: Path, keywords: Sequence[str]) -> Header | None:
    """The values of the top-level attributes ``keywords`` of the DICOM file at ``path``,
    whether pixel data follows them, the dataset's offset; ``None`` where pydicom must read
    the file instead. A value pydicom cannot convert raises what pydicom raises."""
    keep = _tags(tuple(keywords))
    fd = os.open(path, os.O_RDONLY)
    try:
        file = _File(fd, os.fstat(fd).st_size)
        found = _read(file, keep)
    except (_UnusualError, struct.error, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    raws, charset, has_pixel_data, offset = found
    ascii_charset = charset is None or (charset.value or b"").rstrip(b" ") in _ASCII_CHARSETS
    encoding: str | list[str] | None = None if ascii_charset else _encoding(charset)
    values: dict[str, Any] = dict.fromkeys(keywords)
    for tag, raw in raws.items():
        plain = _plain_value(raw, ascii_charset)
        if plain is None:  # pydicom's conversion, in the dataset's character set
            if encoding is None:
                encoding = _encoding(charset)
            plain = (convert_raw_data_element(raw, encoding=encoding).value,)
        values[keep[tag]] = plain[0]
    return Header(values, has_pixel_data, offset)


def _encoding(charset: RawDataElement | None) -> str | list[str]:
    """The Python codecs of a Specific Character Set; raises as pydicom's reader does for a
    value it cannot use (the listener then refuses the dataset)."""
    if charset is None:
        return default_encoding
    encodings: list[str] = convert_encodings(convert_raw_data_element(charset).value)
    return encodings


def _plain_value(raw: RawDataElement, ascii_charset: bool) -> tuple[Any] | None:
    """(value,) for a plain value, converted here; None for any other."""
    vr = raw.VR or dictionary_VR(raw.tag)
    data = raw.value or b""
    if vr == "UI":
        data = data.rstrip(b"\x00")
    if vr in _PLAIN_TEXT_VRS and (ascii_charset or vr not in _CHARSET_TEXT_VRS):
        if _PLAIN.fullmatch(data):
            return (data.decode("ascii").strip(),)
    elif vr == "IS" and _DIGITS.fullmatch(data):
        return (int(data),)
    elif vr == "US" and len(data) == 2:
        return (int.from_bytes(data, "little"),)
    return None


def _read(
    file: _File, keep: Container[int]
) -> tuple[dict[int, RawDataElement], RawDataElement | None, bool, int]:
    offset, syntax = _file_meta(file)
    implicit = not _explicit(syntax)
    walk = _Walk(file, implicit)
    if file.size - offset >= 8:  # pydicom guesses the encoding from the first element
        data, at = file.at(offset + 4, 2)
        looks_explicit = 0x40 < data[at] < 0x5B and 0x40 < data[at + 1] < 0x5B
        if looks_explicit == implicit:
            raise _UnusualError
    kept: dict[int, RawDataElement] = {}
    charset: RawDataElement | None = None
    position, previous, has_pixel_data = offset, -1, False
    while position < file.size:
        tag, vr, length, value = walk.element(position)
        if tag in _STOP:
            has_pixel_data = tag == _PIXEL_DATA
            break
        if tag <= previous or tag >> 16 == 0xFFFE:
            raise _UnusualError
        previous = tag
        if tag in keep or tag == _SPECIFIC_CHARACTER_SET:
            if length == _UNDEFINED or length > _MAX_KEPT:
                raise _UnusualError
            data, at = file.at(value, length)
            raw = RawDataElement(
                BaseTag(tag),
                None if vr is None else vr.decode("ascii"),
                length,
                data[at : at + length],
                value,
                implicit,
                True,
            )
            if tag in keep:
                kept[tag] = raw
            if tag == _SPECIFIC_CHARACTER_SET:
                if vr not in (None, b"CS"):
                    raise _UnusualError  # pydicom would read it with that VR, and fail
                charset = raw
        position = walk.skip_value(vr, length, value, 0)
    return kept, charset, has_pixel_data, offset
