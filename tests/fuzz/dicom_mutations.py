"""Seeded mutations of real DICOM files, for fuzzing the converter and the Storage SCP.

A base file is parsed once into the positions of its element headers (file meta, dataset,
sequence items, pixel data fragments); ``mutate(base, seed, index)`` then breaks it in one of the
ways real bad input is broken: truncated anywhere, header bytes flipped, wrong value lengths,
absurd Rows/Columns or pixel module values, a bogus transfer syntax in the file meta, changed
VRs and tags, damaged pixel data fragments, deleted or duplicated elements, several at once.

The same (base, seed, index) always gives the same bytes, and each mutant carries a description
made of tags, offsets and numbers only (never element values): a failure is reproduced from the
seed and index it prints.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

__all__ = [
    "Base",
    "Field",
    "Mutant",
    "converter_bases",
    "file_meta_bytes",
    "mutate",
    "parse_base",
    "scp_base",
    "unique_uid",
    "with_uid",
]

ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
ROWS, COLUMNS = 0x00280010, 0x00280011
SOP_INSTANCE_UID = 0x00080018
MEDIA_SOP_INSTANCE_UID = 0x00020003
TRANSFER_SYNTAX = 0x00020010
META_GROUP_LENGTH = 0x00020000
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
PIXEL_MODULE_US = {
    0x00280002: ("SamplesPerPixel", (0, 2, 3, 4, 255, 65535)),
    0x00280100: ("BitsAllocated", (0, 1, 7, 12, 24, 32, 64, 255, 65535)),
    0x00280101: ("BitsStored", (0, 1, 9, 12, 16, 17, 32, 65535)),
    0x00280102: ("HighBit", (0, 15, 16, 31, 65535)),
    0x00280103: ("PixelRepresentation", (1, 2, 65535)),
}
PHOTOMETRIC = 0x00280004
PHOTOMETRIC_VALUES = (b"MONOCHROME1 ", b"RGB         ", b"YBR_FULL_422", b"PALETTE COLO", b" " * 12)
OTHER_VRS = (b"SQ", b"OB", b"UN", b"UL", b"US", b"UT", b"FD", b"AT", b"ZZ", b"\x00\x00", b"ox")
ABSURD_GEOMETRY = (
    (65535, 65535),
    (0, 0),
    (0, 1024),
    (1024, 0),
    (1, 1),
    (1, 65535),
    (65535, 1),
    (10000, 10000),
    (10001, 10000),
    (32768, 32768),
    (4096, 4096),
    (2048, 1024),
    (1024, 1025),
    (1023, 1024),
    (512, 512),
    (3, 5),
)
COMPRESSED_VARIANTS = ((RLELossless, "rle"), (JPEG2000Lossless, "j2k"), (JPEGLSLossless, "jls"))
BOGUS_SYNTAXES: tuple[bytes, ...] = (
    ImplicitVRLittleEndian.encode(),
    ExplicitVRBigEndian.encode(),
    ExplicitVRLittleEndian.encode(),
    DeflatedExplicitVRLittleEndian.encode(),
    JPEGBaseline8Bit.encode(),
    JPEGLosslessSV1.encode(),
    JPEGLSLossless.encode(),
    JPEG2000Lossless.encode(),
    RLELossless.encode(),
    b"1.2.840.10008.1.2.4.100",  # MPEG2: a real syntax nobody here decodes
    b"1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    b"1.2.3.4.5.6.7.8.9",
    b"1.2.840.10008.1.2.1.99.9",
    b"",
    b"\x00" * 20,
    b"not a uid at all \xff\xfe",
    b"9" * 64,
    b"1.2.840.10008.1.2.4.50" * 40,
)


@dataclass(frozen=True)
class Field:
    """One element, item or delimiter header in a DICOM file.

    ``vr`` is "" for items and delimiters; ``length`` is the value length as encoded
    (UNDEFINED for undefined length); ``length_size`` is 2 or 4 bytes.
    """

    tag: int
    vr: str
    offset: int
    length_at: int
    length_size: int
    length: int
    value_at: int
    in_meta: bool = False
    fragment: bool = False

    @property
    def label(self) -> str:
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"

    @property
    def header_size(self) -> int:
        return self.value_at - self.offset


@dataclass(frozen=True)
class Base:
    """A well-formed DICOM file and the positions of its headers."""

    name: str
    data: bytes
    fields: tuple[Field, ...]
    dataset_at: int  # first byte after the file meta
    explicit: bool

    def top_level(self, tag: int) -> Field | None:
        return next((f for f in self.fields if f.tag == tag and not f.fragment), None)

    @property
    def header_end(self) -> int:
        """Where the pixel data's value starts (the end of the 'header'), else the end."""
        pixels = self.top_level(PIXEL_DATA)
        return pixels.value_at if pixels is not None else len(self.data)


@dataclass(frozen=True)
class Mutant:
    """Mutated bytes and what was done to them (tags, offsets and numbers only)."""

    data: bytes
    description: str
    base: str
    index: int
    seed: int

    def __str__(self) -> str:
        return f"seed={self.seed} index={self.index} base={self.base}: {self.description}"


# ---------------------------------------------------------------------------- parsing


class _Parser:
    def __init__(self, data: bytes, explicit: bool) -> None:
        self.data = data
        self.explicit = explicit
        self.fields: list[Field] = []

    def u16(self, at: int) -> int:
        return int(struct.unpack_from("<H", self.data, at)[0])

    def u32(self, at: int) -> int:
        return int(struct.unpack_from("<I", self.data, at)[0])

    def elements(self, pos: int, end: int, in_meta: bool = False) -> int:
        """Parse elements from ``pos`` up to ``end`` or an item delimiter; returns the end."""
        while pos + 8 <= end:
            group, element = struct.unpack_from("<HH", self.data, pos)
            tag = group << 16 | element
            if in_meta and group != 2:
                return pos
            if tag == ITEM_END:
                self.fields.append(Field(tag, "", pos, pos + 4, 4, 0, pos + 8, in_meta))
                return pos + 8
            explicit = self.explicit or in_meta
            if explicit:
                vr = self.data[pos + 4 : pos + 6].decode("ascii")
                if vr in LONG_VRS:
                    length_at, size, value_at = pos + 8, 4, pos + 12
                else:
                    length_at, size, value_at = pos + 6, 2, pos + 8
            else:
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    vr = "UN"
                length_at, size, value_at = pos + 4, 4, pos + 8
            length = self.u32(length_at) if size == 4 else self.u16(length_at)
            self.fields.append(Field(tag, vr, pos, length_at, size, length, value_at, in_meta))
            if length == UNDEFINED:
                pos = self.items(value_at, fragments=vr != "SQ")
            elif vr == "SQ":
                self.items(value_at, end=value_at + length)
                pos = value_at + length
            else:
                pos = value_at + length
        return pos

    def items(self, pos: int, end: int | None = None, fragments: bool = False) -> int:
        """Parse sequence items (or pixel data fragments) until ``end`` or the delimiter."""
        while end is None or pos < end:
            group, element = struct.unpack_from("<HH", self.data, pos)
            tag = group << 16 | element
            length = self.u32(pos + 4)
            self.fields.append(Field(tag, "", pos, pos + 4, 4, length, pos + 8, False, fragments))
            if tag == SEQUENCE_END:
                return pos + 8
            if fragments:
                pos += 8 + length
            elif length == UNDEFINED:
                pos = self.elements(pos + 8, len(self.data))
            else:
                self.elements(pos + 8, pos + 8 + length)
                pos += 8 + length
        return pos


def parse_base(name: str, data: bytes) -> Base:
    """Positions of every header in a well-formed DICOM file (not deflated, not big endian)."""
    if data[128:132] != b"DICM":
        raise ValueError(f"{name}: not a DICOM file with a preamble")
    meta = _Parser(data, explicit=True)
    dataset_at = meta.elements(132, len(data), in_meta=True)
    syntax = next(
        data[f.value_at : f.value_at + f.length].rstrip(b"\x00").decode()
        for f in meta.fields
        if f.tag == TRANSFER_SYNTAX
    )
    fields = list(meta.fields)
    explicit = syntax != ImplicitVRLittleEndian
    if syntax not in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        body = _Parser(data, explicit=explicit)
        body.elements(dataset_at, len(data))
        fields += body.fields
    return Base(name, data, tuple(fields), dataset_at, explicit)


# ---------------------------------------------------------------------------- mutations


@dataclass
class _Work:
    base: Base
    rng: random.Random
    protect_meta: bool
    data: bytearray = field(init=False)

    def __post_init__(self) -> None:
        self.data = bytearray(self.base.data)

    @property
    def first_mutable(self) -> int:
        return self.base.dataset_at if self.protect_meta else 0

    def candidates(self, headers_only: bool = False) -> list[Field]:
        fields = [f for f in self.base.fields if not (self.protect_meta and f.in_meta)]
        if headers_only:
            fields = [f for f in fields if not f.fragment or f.offset < self.base.header_end + 64]
        return fields

    def pick(self, headers_only: bool = False) -> Field:
        return self.rng.choice(self.candidates(headers_only))

    def set_length(self, f: Field, value: int) -> None:
        fmt, mask = ("<H", 0xFFFF) if f.length_size == 2 else ("<I", UNDEFINED)
        struct.pack_into(fmt, self.data, f.length_at, value & mask)


def _truncate(w: _Work) -> str:
    where = w.rng.random()
    if where < 0.5:  # inside or just around a header: mid-tag, mid-VR, mid-length, mid-value
        f = w.pick(headers_only=True)
        cut = f.offset + w.rng.randrange(0, f.header_size + min(f.length, 16) + 1)
        kind = f"at {f.label}+{cut - f.offset}"
    elif where < 0.8:
        cut = w.rng.randrange(w.first_mutable, w.base.header_end + 1)
        kind = "in the header"
    else:
        cut = w.rng.randrange(w.first_mutable, len(w.data) + 1)
        kind = "anywhere"
    del w.data[cut:]
    return f"truncate {kind}: {cut} of {len(w.base.data)} bytes kept"


def _flip_header_bytes(w: _Work) -> str:
    count = w.rng.choice((1, 1, 2, 3, 5, 8, 16))
    low = max(w.first_mutable, 128)  # the preamble means nothing
    high = max(low + 1, w.base.header_end + 16)
    offsets = sorted(w.rng.randrange(low, min(high, len(w.data))) for _ in range(count))
    for at in offsets:
        w.data[at] ^= w.rng.choice((1 << w.rng.randrange(8), w.rng.randrange(1, 256)))
    return f"flip {count} header byte(s) at {offsets}"


def _flip_field_header(w: _Work) -> str:
    f = w.pick(headers_only=True)
    at = f.offset + w.rng.randrange(f.header_size)
    w.data[at] ^= w.rng.randrange(1, 256)
    return f"flip byte {at - f.offset} of the {f.label} header"


def _wrong_length(w: _Work) -> str:
    f = w.pick()
    remaining = len(w.data) - f.value_at
    length = 0 if f.length == UNDEFINED else f.length
    value = w.rng.choice(
        (
            0,
            1,
            3,
            max(0, length - 1),
            length + 1,
            length + 2,
            length * 2 + 2,
            length + w.rng.randrange(1, 4096),
            remaining + 2,
            0xFFFF,
            0xFFFE,
            0x7FFFFFFF,
            0xFFFFFFF0,
            0xFFFFFFFE,
            UNDEFINED,
        )
    )
    w.set_length(f, value)
    return f"length of {f.label} {f.vr or 'item'} {f.length:#x} -> {value:#x}"


def _us_value(w: _Work, tag: int) -> Field | None:
    f = w.base.top_level(tag)
    if f is None or (w.protect_meta and f.in_meta) or f.length < 2:
        return None
    return f


def _absurd_geometry(w: _Work) -> str:
    rows, columns = w.rng.choice(ABSURD_GEOMETRY)
    if w.rng.random() < 0.3:
        rows, columns = w.rng.randrange(65536), w.rng.randrange(65536)
    done = []
    for tag, value, name in ((ROWS, rows, "Rows"), (COLUMNS, columns, "Columns")):
        f = _us_value(w, tag)
        if f is not None:
            struct.pack_into("<H", w.data, f.value_at, value)
            done.append(f"{name}={value}")
    return "geometry " + " ".join(done)


def _pixel_module(w: _Work) -> str:
    tag, (name, values) = w.rng.choice(sorted(PIXEL_MODULE_US.items()))
    f = _us_value(w, tag)
    if f is None:
        return _absurd_geometry(w)
    value = w.rng.choice(values)
    struct.pack_into("<H", w.data, f.value_at, value)
    changed = [f"{name}={value}"]
    photometric = w.base.top_level(PHOTOMETRIC)
    if photometric is not None and w.rng.random() < 0.4:
        text = w.rng.choice(PHOTOMETRIC_VALUES)
        text = text.ljust(photometric.length)[: photometric.length]
        w.data[photometric.value_at : photometric.value_at + photometric.length] = text
        changed.append(f"PhotometricInterpretation={text.decode('latin-1').strip()!r}")
    return "pixel module " + " ".join(changed)


def _bogus_transfer_syntax(w: _Work) -> str:
    if w.protect_meta:
        return _flip_field_header(w)
    f = w.base.top_level(TRANSFER_SYNTAX)
    assert f is not None
    uid = w.rng.choice(BOGUS_SYNTAXES)
    value = uid + b"\x00" * (len(uid) % 2)
    consistent = w.rng.random() < 0.7  # else the group length is left stale
    header = bytearray(w.data[f.offset : f.value_at])
    struct.pack_into("<H", header, 6, len(value) & 0xFFFF)
    w.data[f.offset : f.value_at + f.length] = bytes(header) + value
    group = w.base.top_level(META_GROUP_LENGTH)
    if consistent and group is not None:
        old = struct.unpack_from("<I", w.data, group.value_at)[0]
        struct.pack_into("<I", w.data, group.value_at, old + len(value) - f.length)
    shown = uid.decode("latin-1") if uid[:1].isdigit() and len(uid) < 80 else f"<{len(uid)} bytes>"
    group_length = "group length fixed" if consistent else "stale group length"
    return f"transfer syntax -> {shown!r} ({group_length})"


def _wrong_vr(w: _Work) -> str:
    candidates = [f for f in w.candidates() if f.vr and (w.base.explicit or f.in_meta)]
    f = w.rng.choice(candidates)
    vr = w.rng.choice(OTHER_VRS)
    w.data[f.offset + 4 : f.offset + 6] = vr
    return f"VR of {f.label} {f.vr} -> {vr!r}"


def _wrong_tag(w: _Work) -> str:
    f = w.pick(headers_only=True)
    tag = w.rng.choice(
        (
            PIXEL_DATA,
            ITEM,
            ITEM_END,
            SEQUENCE_END,
            TRANSFER_SYNTAX,
            0x00080005,
            ROWS,
            0x00000000,
            0xFFFFFFFF,
            0x7FE00008,
            0x00091010,  # private
            0x00080060,  # Modality, Body Part Examined, View Position: what the selection
            0x00180015,  # reads (and a patient's name moved there must not reach the log)
            0x00185101,
            w.rng.randrange(1 << 32),
        )
    )
    struct.pack_into("<HH", w.data, f.offset, tag >> 16, tag & 0xFFFF)
    return f"tag {f.label} -> ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _pixel_data(w: _Work) -> str:
    pixels = w.base.top_level(PIXEL_DATA)
    if pixels is None:
        return _truncate(w)
    fragments = [f for f in w.base.fields if f.fragment and f.tag == ITEM]
    if not fragments:  # native pixel data: shorter or longer than Rows x Columns says
        keep = w.rng.choice((0, 1, 2, 100, pixels.length // 2, pixels.length - 2))
        del w.data[pixels.value_at + keep :]
        w.set_length(pixels, keep)
        return f"native pixel data cut to {keep} of {pixels.length} bytes, length consistent"
    frame = fragments[-1]
    choice = w.rng.randrange(5)
    if choice == 0:  # a shorter codestream, consistently encapsulated
        keep = w.rng.choice((0, 1, 2, 16, 200, 700, frame.length // 2, frame.length - 2))
        keep -= keep % 2
        rest = bytes(w.data[frame.value_at + frame.length :])
        codestream = w.base.data[frame.value_at : frame.value_at + keep]
        w.data[frame.value_at :] = codestream + rest
        w.set_length(frame, keep)
        return f"codestream cut to {keep} of {frame.length} bytes, encapsulation consistent"
    if choice == 1:  # bytes of the codestream changed (markers, tables, entropy-coded data)
        count = w.rng.choice((1, 4, 32))
        span = min(frame.length, w.rng.choice((64, 700, frame.length)))
        offsets = sorted(frame.value_at + w.rng.randrange(max(1, span)) for _ in range(count))
        for at in offsets:
            w.data[at] ^= w.rng.randrange(1, 256)
        return f"flip {count} codestream byte(s) at {offsets}"
    if choice == 2:  # no sequence delimiter
        end = next(f for f in w.base.fields if f.fragment and f.tag == SEQUENCE_END)
        del w.data[end.offset :]
        return "pixel data without its sequence delimiter"
    if choice == 3:  # the basic offset table claims offsets that do not exist
        table = fragments[0]
        offsets = struct.pack("<2I", w.rng.randrange(1 << 32), 0xFFFFFFF0)
        w.data[table.value_at : table.value_at + table.length] = offsets
        w.set_length(table, len(offsets))
        return "basic offset table with absurd offsets"
    f = w.rng.choice(fragments)
    value = w.rng.choice((0, 1, f.length + 2, f.length - 2, 0xFFFFFFF0, UNDEFINED))
    w.set_length(f, value)
    return f"fragment {fragments.index(f)} length {f.length:#x} -> {value:#x}"


def _splice(w: _Work) -> str:
    elements = [f for f in w.candidates() if f.vr and f.length != UNDEFINED]
    f = w.rng.choice(elements)
    end = f.value_at + f.length
    choice = w.rng.randrange(3)
    if choice == 0:
        del w.data[f.offset : end]
        return f"delete {f.label}"
    if choice == 1:
        w.data[end:end] = w.data[f.offset : end]
        return f"duplicate {f.label}"
    junk = bytes(w.rng.randrange(256) for _ in range(w.rng.choice((1, 2, 7, 8, 64))))
    w.data[f.offset : f.offset] = junk
    return f"insert {len(junk)} random byte(s) before {f.label}"


def _junk(w: _Work) -> str:
    choice = w.rng.randrange(5)
    if choice == 0:
        w.data[:] = b""
        return "empty"
    if choice == 1:
        w.data[:] = w.base.data[: w.base.dataset_at]
        return "file meta only"
    if choice == 2:
        w.data[:] = bytes(w.rng.randrange(256) for _ in range(w.rng.choice((4, 132, 1000))))
        return f"{len(w.data)} random bytes"
    if choice == 3:
        w.data[w.base.dataset_at :] = bytes(w.rng.randrange(256) for _ in range(2000))
        return "2000 random bytes after the file meta"
    w.data[w.base.dataset_at :] = w.base.data[w.base.dataset_at :] * 2
    return "the dataset twice"


IN_PLACE: tuple[Callable[[_Work], str], ...] = (
    _flip_header_bytes,
    _flip_field_header,
    _wrong_length,
    _absurd_geometry,
    _pixel_module,
    _wrong_vr,
    _wrong_tag,
)
MUTATIONS: tuple[tuple[Callable[[_Work], str], int], ...] = (
    (_truncate, 15),
    (_flip_header_bytes, 12),
    (_flip_field_header, 8),
    (_wrong_length, 15),
    (_absurd_geometry, 12),
    (_pixel_module, 6),
    (_bogus_transfer_syntax, 6),
    (_wrong_vr, 5),
    (_wrong_tag, 5),
    (_pixel_data, 10),
    (_splice, 4),
    (_junk, 1),
)


def mutate(base: Base, seed: int, index: int, protect_meta: bool = False) -> Mutant:
    """The ``index``-th mutant of ``base`` for ``seed``. ``protect_meta`` leaves the file meta
    as it is (the SCP test sends the dataset only; a peer never sends a file meta)."""
    rng = random.Random(f"{seed}:{index}:{base.name}")
    work = _Work(base, rng, protect_meta)
    if rng.random() < 0.1:  # several at once; in-place changes keep the offsets valid
        steps = [rng.choice(IN_PLACE)(work) for _ in range(rng.randrange(2, 4))]
        if rng.random() < 0.5:
            steps.append(_truncate(work))
        description = "stacked: " + "; ".join(steps)
    else:
        operations, weights = zip(*MUTATIONS, strict=True)
        description = rng.choices(operations, weights)[0](work)
    return Mutant(bytes(work.data), description, base.name, index, seed)


# ---------------------------------------------------------------------------- bases


def unique_uid(seed: int, index: int, length: int) -> str:
    """A valid UID (2.25.<integer>) of exactly ``length`` characters, distinct per index."""
    digits = length - len("2.25.")
    number = f"1{seed % 10**8:08d}{index:0{digits - 9}d}"
    if len(number) != digits:
        raise ValueError(f"cannot make a {length}-character UID for index {index}")
    return f"2.25.{number}"


def with_uid(base: Base, uid: str) -> Base:
    """``base`` with another SOP Instance UID of the same length (dataset and file meta), so
    that every mutant is a new instance and the header positions stay valid."""
    data = bytearray(base.data)
    for f in base.fields:
        if f.tag in (SOP_INSTANCE_UID, MEDIA_SOP_INSTANCE_UID) and not f.fragment:
            if len(uid) > f.length:
                raise ValueError(f"a UID of {len(uid)} characters does not fit in {f.length}")
            data[f.value_at : f.value_at + f.length] = uid.encode().ljust(f.length, b"\x00")
    return replace(base, data=bytes(data))


def file_meta_bytes(sop_class: str, sop_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, 'DICM' and a valid file meta, as a peer's file would start."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1447.99")
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def scp_base(path: Path, codestream_bytes: int = 2048) -> Base:
    """A SIIM file with its JPEG codestream cut to ``codestream_bytes`` (still encapsulated
    consistently): the SCP never decodes pixels, and small datasets keep the fuzzing fast."""
    ds = pydicom.dcmread(path)
    frame = next(generate_fragmented_frames(ds.PixelData))
    codestream = b"".join(frame)[:codestream_bytes]
    ds.PixelData = encapsulate([codestream])
    return parse_base(f"{path.stem[-12:]}-jpeg", _encode(ds))


def converter_bases(paths: list[Path]) -> list[Base]:
    """The SIIM files as they are (JPEG Baseline), and three of them re-encoded so that every
    decoder gets broken input: native explicit and implicit VR (8-bit, 1024 x 1024), native
    16-bit with window and rescale, RLE, JPEG 2000 and JPEG-LS (256 x 256: fast to decode)."""
    bases = [parse_base(f"{p.stem[-12:]}-jpeg", p.read_bytes()) for p in paths]
    for number, path in enumerate(paths[:3]):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        del ds["LossyImageCompressionMethod"]
        stem = path.stem[-12:]
        if number == 0:
            bases.append(parse_base(f"{stem}-explicit8", _encode(ds)))
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            bases.append(parse_base(f"{stem}-implicit8", _encode(ds)))
            continue
        small = pixels[::4, ::4].copy()
        ds.Rows, ds.Columns = small.shape
        if number == 1:
            wide = (small.astype(np.uint16) << 4) | 0x5
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
            ds.WindowCenter, ds.WindowWidth = 2048, 4000
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.PixelData = wide.tobytes()
            bases.append(parse_base(f"{stem}-explicit16", _encode(ds)))
            continue
        for syntax, tag in COMPRESSED_VARIANTS:
            ds.PixelData = small.tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.compress(syntax, small)
            bases.append(parse_base(f"{stem}-{tag}", _encode(ds)))
    return bases
