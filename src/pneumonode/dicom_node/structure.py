"""Is a received dataset whole? One walk over its bytes before the listener answers Success.

A peer that sends a damaged dataset (cut short, a length that runs past the end, a value that is
no whole number of its VR's values) believes it delivered the image once we answer 0x0000, and
never sends it again; so ``check_structure`` must pass first (issue 22). It reads the element
headers of the whole dataset (PS3.5 section 7) and skips every value by its length, so its cost
is a few microseconds per element whatever the size of the pixel data:

* every element's header and value fit in what holds them (the dataset, an item, a sequence of
  defined length); a value of a VR with fixed-size values (US, UL, FD, OW, ...) is a whole
  number of them (in implicit VR, by the data dictionary's VR);
* sequences and items of undefined length end with their delimitation items; a sequence of
  defined length is filled exactly by its items; a UN of undefined length is read as implicit
  VR little endian (PS3.5 6.2.2);
* Pixel Data (7FE0,0010) at the top level: in a native transfer syntax it has a defined length
  no shorter than Rows x Columns x Samples per Pixel x Number of Frames x Bits Allocated / 8; in
  an encapsulated one an undefined length, a Basic Offset Table item and at least one fragment,
  closed by a Sequence Delimitation Item (PS3.5 A.4); image attributes (Bits Allocated) without
  any pixel data mean the dataset ended before its pixels;
* a deflated dataset (1.2.840.10008.1.2.1.99) is inflated first: the deflate stream must end.

What readers tolerate is tolerated here too, as pydicom and dcmtk read it: elements out of order,
odd value lengths, a VR that is not two capital letters read as implicit VR (pydicom's
``assume_implicit_vr_switch``), an unknown VR with a 16-bit length, Pixel Data longer than the
image (trailing padding). The reasons name elements by keyword and tag, and numbers; never a
value, which may be patient data.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_description, dictionary_VR, keyword_dict

__all__ = [
    "MAX_INFLATED_BYTES",
    "DamagedDatasetError",
    "TooLargeToCheckError",
    "check_structure",
    "prepare_structure_check",
]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: Transfer syntaxes whose Pixel Data is native (PS3.5 A.1-A.3, A.5): all others of the standard
#: (1.2.840.10008.1.2.x) encapsulate it.
NATIVE_SYNTAXES = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)
_STANDARD_SYNTAX_ROOT = "1.2.840.10008.1.2."
#: Largest dataset a deflated one may inflate to: it is inflated in memory to be checked (a
#: deflated chest radiograph inflates to tens of MB; a deflate bomb to whatever it likes).
MAX_INFLATED_BYTES = 256 << 20
#: Datasets up to this size are read at once; larger ones are mapped (which costs more than
#: reading a chest radiograph of a few hundred kB).
_READ_WHOLE = 1 << 20
#: Deepest nesting of sequences walked (real datasets nest a few levels).
MAX_DEPTH = 64

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA, _DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00008, 0x7FE00009
_PIXEL_DATA_PROVIDER_URL = 0x00287FE0  # JPIP: the pixels are elsewhere
_SAMPLES_PER_PIXEL, _PHOTOMETRIC = 0x00280002, 0x00280004
_NUMBER_OF_FRAMES, _ROWS, _COLUMNS = 0x00280008, 0x00280010, 0x00280011
_BITS_ALLOCATED = 0x00280100
#: Top-level elements the pixel checks use.
_NOTED = frozenset(
    {
        _SAMPLES_PER_PIXEL,
        _PHOTOMETRIC,
        _NUMBER_OF_FRAMES,
        _ROWS,
        _COLUMNS,
        _BITS_ALLOCATED,
        _PIXEL_DATA_PROVIDER_URL,
        _FLOAT_PIXEL_DATA,
        _DOUBLE_FLOAT_PIXEL_DATA,
        _PIXEL_DATA,
    }
)

#: Explicit VRs with a 32-bit length after two reserved bytes (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: Size of one value of the VRs whose values have a fixed size (PS3.5 Table 6.2-1).
_VALUE_SIZE = {
    b"AT": 4,
    b"FD": 8,
    b"FL": 4,
    b"OD": 8,
    b"OF": 4,
    b"OL": 4,
    b"OV": 8,
    b"OW": 2,
    b"SL": 4,
    b"SS": 2,
    b"SV": 8,
    b"UL": 4,
    b"US": 2,
    b"UV": 8,
}


class DamagedDatasetError(ValueError):
    """The dataset cannot be read whole: the message says which element (its name and tag) and
    what is wrong with it, never a value."""


class TooLargeToCheckError(Exception):
    """A deflated dataset inflates to more than MAX_INFLATED_BYTES: not checked."""


@dataclass(frozen=True, slots=True)
class _Encoding:
    implicit: bool
    tag: struct.Struct  # group, element
    u16: struct.Struct
    u32: struct.Struct


_IMPLICIT_LE = _Encoding(True, struct.Struct("<HH"), struct.Struct("<H"), struct.Struct("<I"))
_EXPLICIT_LE = _Encoding(False, struct.Struct("<HH"), struct.Struct("<H"), struct.Struct("<I"))
_EXPLICIT_BE = _Encoding(False, struct.Struct(">HH"), struct.Struct(">H"), struct.Struct(">I"))


@functools.cache
def _dictionary() -> tuple[dict[int, int], frozenset[int]]:
    """For implicit VR: tag -> value size of the tags whose dictionary VR has fixed-size values
    (all of a 'US or SS' kind alike), and the tags whose VR is SQ."""
    sizes: dict[int, int] = {}
    sequences = set()
    for tag in keyword_dict.values():
        vrs = {vr.strip().encode("ascii") for vr in dictionary_VR(tag).split(" or ")}
        if vrs == {b"SQ"}:
            sequences.add(tag)
        kinds = {_VALUE_SIZE.get(vr) for vr in vrs}
        if len(kinds) == 1 and None not in kinds:
            sizes[tag] = kinds.pop() or 0
    return sizes, frozenset(sequences)


def prepare_structure_check() -> None:
    """Build the data dictionary's table for implicit VR now (a few milliseconds), not during
    the first C-STORE."""
    _dictionary()


def _name(tag: int) -> str:
    """'Name (gggg,eeee)' (the data dictionary's name), or the tag alone for an element the
    dictionary does not know."""
    where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    try:
        return f"{dictionary_description(tag)} {where}" if tag >> 16 != 0xFFFE else where
    except KeyError:
        return where


def _vr(vr: bytes | None) -> str:
    return "" if vr is None else " " + vr.decode("latin-1")


class _Walk:
    """One walk of a dataset in ``data`` (top level in ``encoding``); notes the top-level image
    attributes."""

    def __init__(self, data: bytes | mmap.mmap, encoding: _Encoding) -> None:
        self.data = data
        self.encoding = encoding
        self.sizes, self.sequences = _dictionary()
        #: top-level tag -> (value position, length) of the elements in _NOTED
        self.noted: dict[int, tuple[int, int]] = {}
        self.fragments = 0  # items of the top-level encapsulated Pixel Data, offset table included

    def dataset(
        self,
        position: int,
        end: int,
        encoding: _Encoding,
        depth: int,
        parent: int | None,
        *,
        delimited: bool = False,
    ) -> int:
        """Walk the elements from ``position`` up to ``end`` exactly (the top level, an item of
        defined length) or, ``delimited``, to the Item Delimitation Item of an item of
        undefined length of sequence ``parent`` (before ``end``). Returns where it ended."""
        data = self.data
        unpack_tag = encoding.tag.unpack_from
        u16, u32 = encoding.u16.unpack_from, encoding.u32.unpack_from
        implicit = encoding.implicit
        sizes, sequences, noted = self.sizes, self.sequences, self.noted
        while position < end:
            if position + 8 > end:
                raise self.cut_short(position, end, encoding, parent)
            group, element = unpack_tag(data, position)
            tag = group << 16 | element
            if group == 0xFFFE:
                if delimited and tag == _ITEM_END:
                    return position + 8
                where = "the dataset" if parent is None else f"an item of {_name(parent)}"
                raise DamagedDatasetError(f"{_name(tag)} where an element of {where} should be")
            vr: bytes | None
            if implicit:
                vr, length, value = None, u32(data, position + 4)[0], position + 8
            else:
                vr = data[position + 4 : position + 6]
                if vr in _LONG_VRS:
                    if position + 12 > end:
                        raise self.cut_short(position, end, encoding, parent)
                    length, value = u32(data, position + 8)[0], position + 12
                elif 0x41 <= vr[0] <= 0x5A and 0x41 <= vr[1] <= 0x5A:
                    length, value = u16(data, position + 6)[0], position + 8
                else:  # not a VR: implicit VR here, as pydicom reads it
                    vr, length, value = None, u32(data, position + 4)[0], position + 8
            if length == _UNDEFINED:
                position = self.undefined(tag, vr, value, end, encoding, depth)
            else:
                position = value + length
                if position > end:
                    where = "the dataset" if parent is None else f"its item of {_name(parent)}"
                    raise DamagedDatasetError(
                        f"{_name(tag)}{_vr(vr)} of {length} bytes runs past the end of {where}"
                    )
                size = sizes.get(tag, 0) if vr is None else _VALUE_SIZE.get(vr, 0)
                if size and length % size:
                    raise DamagedDatasetError(
                        f"{_name(tag)}{_vr(vr)} of {length} bytes is no whole number of "
                        f"{size}-byte values"
                    )
                if vr == b"SQ" or (vr is None and tag in sequences):
                    self.items(tag, value, position, encoding, depth + 1, delimited=False)
            if parent is None and tag in _NOTED:
                noted[tag] = (value, length)
        if delimited:
            raise DamagedDatasetError(
                f"an item of {_name(parent or 0)} is not closed (no Item Delimitation Item)"
            )
        return position

    def cut_short(
        self, position: int, end: int, encoding: _Encoding, parent: int | None
    ) -> DamagedDatasetError:
        where = "the dataset" if parent is None else f"an item of {_name(parent)}"
        if end - position >= 4:
            group, element = encoding.tag.unpack_from(self.data, position)
            return DamagedDatasetError(
                f"{_name(group << 16 | element)}: {where} ends inside its header"
            )
        return DamagedDatasetError(f"{where} ends {end - position} bytes into an element header")

    def undefined(
        self, tag: int, vr: bytes | None, value: int, end: int, encoding: _Encoding, depth: int
    ) -> int:
        """Past the value of undefined length of element ``tag`` starting at ``value``."""
        if tag == _PIXEL_DATA and vr in (None, b"OB", b"OW", b"UN"):
            return self.pixel_fragments(value, end, encoding, top=depth == 0)
        if vr is None or vr == b"SQ":
            return self.items(tag, value, end, encoding, depth + 1, delimited=True)
        if vr == b"UN":  # a sequence whose VR the sender did not know (PS3.5 6.2.2)
            return self.items(tag, value, end, _IMPLICIT_LE, depth + 1, delimited=True)
        raise DamagedDatasetError(
            f"{_name(tag)}{_vr(vr)} has an undefined length (only sequences and encapsulated "
            "Pixel Data may)"
        )

    def items(
        self,
        tag: int,
        position: int,
        end: int,
        encoding: _Encoding,
        depth: int,
        *,
        delimited: bool,
    ) -> int:
        """Past the items of sequence ``tag``: those filling [position, end) exactly, or (of
        undefined length) up to its Sequence Delimitation Item."""
        if depth > MAX_DEPTH:
            raise DamagedDatasetError(f"{_name(tag)} nests sequences over {MAX_DEPTH} deep")
        data, unpack_tag, u32 = self.data, encoding.tag.unpack_from, encoding.u32.unpack_from
        while True:
            if not delimited and position == end:
                return position
            if position + 8 > end:
                if delimited:
                    raise DamagedDatasetError(
                        f"{_name(tag)} is not closed (no Sequence Delimitation Item)"
                    )
                raise DamagedDatasetError(f"the items of {_name(tag)} overrun its length")
            group, element = unpack_tag(data, position)
            item = group << 16 | element
            length = u32(data, position + 4)[0]
            if item == _SEQUENCE_END and delimited:
                return position + 8
            if item != _ITEM:
                raise DamagedDatasetError(
                    f"{_name(tag)} holds {_name(item)} where an item should be"
                )
            if length == _UNDEFINED:
                position = self.dataset(position + 8, end, encoding, depth, tag, delimited=True)
            else:
                stop = position + 8 + length
                if stop > end:
                    raise DamagedDatasetError(
                        f"an item of {_name(tag)} ({length} bytes) runs past the end of "
                        + ("the sequence" if not delimited else "what holds it")
                    )
                self.dataset(position + 8, stop, encoding, depth, tag)
                position = stop

    def pixel_fragments(self, position: int, end: int, encoding: _Encoding, *, top: bool) -> int:
        """Past the items of encapsulated Pixel Data (offset table, fragments) and its
        Sequence Delimitation Item."""
        data, unpack_tag, u32 = self.data, encoding.tag.unpack_from, encoding.u32.unpack_from
        count = 0
        while True:
            if position + 8 > end:
                raise DamagedDatasetError(
                    f"{_name(_PIXEL_DATA)} (encapsulated) is not closed (no Sequence "
                    "Delimitation Item)"
                )
            group, element = unpack_tag(data, position)
            item = group << 16 | element
            length = u32(data, position + 4)[0]
            if item == _SEQUENCE_END:
                if top:
                    self.fragments = count
                return position + 8
            if item != _ITEM or length == _UNDEFINED:
                raise DamagedDatasetError(
                    f"{_name(_PIXEL_DATA)} (encapsulated) holds {_name(item)}"
                    + (" of undefined length" if item == _ITEM else "")
                    + " where a fragment should be"
                )
            position += 8 + length
            if position > end:
                raise DamagedDatasetError(
                    f"{_name(_PIXEL_DATA)} (encapsulated): item {count} of {length} bytes runs "
                    "past the end of the dataset"
                )
            count += 1

    # -- the pixel data of the image

    def us(self, tag: int) -> int | None:
        position, length = self.noted.get(tag, (0, 0))
        if length < 2:
            return None
        return int(self.encoding.u16.unpack_from(self.data, position)[0])

    def text(self, tag: int) -> bytes:
        position, length = self.noted.get(tag, (0, 0))
        if length == _UNDEFINED:
            return b""
        return bytes(self.data[position : position + length]).strip(b" \x00")

    def check_pixels(self, transfer_syntax_uid: str) -> None:
        pixels = self.noted.get(_PIXEL_DATA)
        if pixels is None:
            others = (_FLOAT_PIXEL_DATA, _DOUBLE_FLOAT_PIXEL_DATA, _PIXEL_DATA_PROVIDER_URL)
            if _BITS_ALLOCATED in self.noted and not any(tag in self.noted for tag in others):
                raise DamagedDatasetError(
                    f"{_name(_BITS_ALLOCATED)} but no {_name(_PIXEL_DATA)}: the dataset ends "
                    "before its pixels"
                )
            return
        length = pixels[1]
        if transfer_syntax_uid in NATIVE_SYNTAXES:
            if length == _UNDEFINED:
                raise DamagedDatasetError(
                    f"{_name(_PIXEL_DATA)} has an undefined length in a native transfer syntax"
                )
            self.check_native_length(length)
        elif transfer_syntax_uid.startswith(_STANDARD_SYNTAX_ROOT):
            if length != _UNDEFINED:
                raise DamagedDatasetError(
                    f"{_name(_PIXEL_DATA)} has a defined length in an encapsulated transfer "
                    "syntax (PS3.5 A.4: undefined)"
                )
            if self.fragments < 2:
                raise DamagedDatasetError(
                    f"{_name(_PIXEL_DATA)} (encapsulated) holds no fragment after its Basic "
                    "Offset Table"
                )

    def check_native_length(self, length: int) -> None:
        rows, columns, bits = (self.us(t) for t in (_ROWS, _COLUMNS, _BITS_ALLOCATED))
        if not rows or not columns or not bits:
            raise DamagedDatasetError(
                f"{_name(_PIXEL_DATA)} without {_name(_ROWS)}, {_name(_COLUMNS)} or "
                f"{_name(_BITS_ALLOCATED)}"
            )
        samples = self.us(_SAMPLES_PER_PIXEL) or 1
        frames_text = self.text(_NUMBER_OF_FRAMES)
        try:
            frames = max(int(frames_text or b"1"), 1)
        except ValueError:
            raise DamagedDatasetError(f"{_name(_NUMBER_OF_FRAMES)} is not a number") from None
        image_bits = rows * columns * samples * frames * bits
        if samples == 3 and self.text(_PHOTOMETRIC) == b"YBR_FULL_422":
            image_bits = image_bits * 2 // 3  # two chroma samples for each two pixels
        expected = (image_bits + 7) // 8
        if length < expected:
            raise DamagedDatasetError(
                f"{_name(_PIXEL_DATA)} of {length} bytes is shorter than the image it "
                f"describes: {rows} x {columns} pixels x {samples} samples x {frames} frames x "
                f"{bits} bits = {expected} bytes"
            )


def _inflate(deflated: bytes) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(deflated, MAX_INFLATED_BYTES + 1)
    except zlib.error:
        raise DamagedDatasetError("the deflated dataset is not a deflate stream") from None
    if len(data) > MAX_INFLATED_BYTES:
        raise TooLargeToCheckError(
            f"the deflated dataset inflates to over {MAX_INFLATED_BYTES >> 20} MiB"
        )
    if not inflater.eof:
        raise DamagedDatasetError(
            "the deflated dataset is cut short (the deflate stream does not end)"
        )
    if inflater.unused_data.strip(b"\x00"):
        raise DamagedDatasetError("bytes follow the end of the deflate stream")
    return data


def _check(data: bytes | mmap.mmap, start: int, size: int, transfer_syntax_uid: str) -> None:
    """Walk the dataset in ``data[start:size]``."""
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        data = _inflate(data[start:size])
        start, size = 0, len(data)
    if size <= start:
        raise DamagedDatasetError("the dataset is empty")
    if transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN:
        encoding = _IMPLICIT_LE
    elif transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN:
        encoding = _EXPLICIT_BE
    else:
        encoding = _EXPLICIT_LE
    walk = _Walk(data, encoding)
    walk.dataset(start, size, encoding, 0, None)
    walk.check_pixels(transfer_syntax_uid)


def check_structure(path: Path, offset: int, transfer_syntax_uid: str) -> None:
    """Raise ``DamagedDatasetError`` unless the dataset of the DICOM file at ``path``, from byte
    ``offset`` (after the File Meta Information) to the end, reads whole in
    ``transfer_syntax_uid``: see the module's description. ``TooLargeToCheckError`` for a
    deflated dataset that inflates to more than MAX_INFLATED_BYTES."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size <= offset:
            raise DamagedDatasetError("the dataset is empty")
        if size - offset <= _READ_WHOLE:  # one read costs less than mapping the file
            dataset = os.pread(fd, size - offset, offset)
            _check(dataset, 0, len(dataset), transfer_syntax_uid)
            return
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as data:
            _check(data, offset, size, transfer_syntax_uid)
    finally:
        os.close(fd)
