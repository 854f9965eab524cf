"""Read a DICOM radiograph and decode its stored pixel values.

Decoders are chosen per transfer syntax from a fixed preference list (permissively licensed
packages first; see ``DECODER_PREFERENCE``); when the first choice fails the next is tried.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import warnings
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pneumonode.conversion.errors import (
    MissingPixelDataError,
    NotDicomError,
    PixelDecodeError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)

__all__ = [
    "DECODER_PREFERENCE",
    "MAX_PIXELS",
    "NATIVE_SYNTAXES",
    "BoundedReader",
    "CodestreamHeader",
    "DecodedImage",
    "RedactQuotedValues",
    "codestream_header",
    "decode_stored_pixels",
    "decoder_table",
    "keep_dicom_values_out_of_logs",
    "read_dataset",
]

DatasetSource = str | PathLike[str] | bytes | BinaryIO | Dataset

log = logging.getLogger(__name__)

#: Plugins tried, in order, for each compressed transfer syntax. Uncompressed and deflated
#: syntaxes are decoded by pydicom itself. Pillow is the fastest JPEG Baseline decoder here.
DECODER_PREFERENCE: dict[UID, tuple[str, ...]] = {
    JPEGBaseline8Bit: ("pillow", "gdcm", "pylibjpeg"),
    JPEGExtended12Bit: ("gdcm", "pylibjpeg", "pillow"),
    JPEGLossless: ("gdcm", "pylibjpeg"),
    JPEGLosslessSV1: ("gdcm", "pylibjpeg"),
    JPEGLSLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEGLSNearLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEG2000Lossless: ("pylibjpeg", "gdcm", "pillow"),
    JPEG2000: ("pylibjpeg", "gdcm", "pillow"),
    RLELossless: ("pylibjpeg", "pydicom"),
}

NATIVE_SYNTAXES: tuple[UID, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)

#: Larger images are refused: no radiograph detector comes close (a 43x43 cm plate at 100 µm
#: is 18.5 megapixels), and a bogus Rows/Columns must not make us allocate gigabytes.
MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class DecodedImage:
    """Stored pixel values of a single-frame monochrome image, before any LUT.

    Attributes:
        stored: shape (Rows, Columns), an integer dtype as decoded (uint8/uint16/int16...).
        dataset: the dataset it came from (pixel data still attached).
        transfer_syntax: the transfer syntax UID of the encoded pixel data.
        decoder: the plugin that decoded it ("pydicom" for native syntaxes).
        label: the file name (or the caller's label) that errors about this image name.
    """

    stored: np.ndarray
    dataset: Dataset
    transfer_syntax: UID
    decoder: str
    label: str | None = None


def _label(source: DatasetSource, label: str | None) -> str | None:
    if label is not None:
        return label
    if isinstance(source, str | PathLike):
        return Path(source).name
    return None


class RedactQuotedValues(logging.Filter):
    """Removes what pydicom's warnings quote from log records.

    pydicom quotes element values in some warnings (``Unknown encoding '<value>'``), and a
    corrupt dataset can put any value there, a patient's name included: the quoted part
    becomes '…'. Records of Python warnings (``logging.captureWarnings``) are redacted when
    pydicom issued them.
    """

    _QUOTED = re.compile(r"""(['"]).*\1""", re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name != "py.warnings" or "pydicom" in message:
            record.msg, record.args = self._QUOTED.sub("'…'", message), None
        return True


def keep_dicom_values_out_of_logs() -> None:
    """Redact pydicom's warnings in the loggers they reach ('pydicom', 'py.warnings'); done
    once per process, before untrusted DICOM is read."""
    for name in ("pydicom", "py.warnings"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQuotedValues) for f in logger.filters):
            logger.addFilter(RedactQuotedValues())


def read_dataset(source: DatasetSource, label: str | None = None) -> Dataset:
    """Read a DICOM dataset from a path, bytes, a binary file or pass a Dataset through.

    Raises:
        NotDicomError: not DICOM, or the header is truncated/corrupt.
    """
    if isinstance(source, Dataset):
        return source
    name = _label(source, label)
    keep_dicom_values_out_of_logs()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if isinstance(source, str | PathLike):
                with BoundedReader(io.FileIO(os.fspath(source), "rb")) as handle:
                    ds = _read_all(handle)
            else:
                stream = io.BytesIO(source) if isinstance(source, bytes) else source
                ds = _read_all(cast(BinaryIO, stream))
    except InvalidDicomError:
        raise NotDicomError(
            "not a DICOM file (no 'DICM' marker after the preamble)", name
        ) from None
    except FileNotFoundError:
        raise NotDicomError("file not found", name) from None
    except IsADirectoryError:
        raise NotDicomError("is a directory, not a DICOM file", name) from None
    except OSError as exc:
        raise NotDicomError(
            f"cannot read file ({exc.strerror or type(exc).__name__})", name
        ) from None
    except MemoryError:
        raise  # not a property of the file: never reported as one
    except Exception as exc:  # pydicom raises many types on corrupt input (see _read_all)
        raise NotDicomError(f"unreadable DICOM header ({type(exc).__name__})", name) from None
    truncated = any("End of file reached" in str(w.message) for w in caught)
    if len(ds) == 0:
        # pydicom drops the whole dataset when the file ends inside it, and warns
        what = (
            "truncated file: it ends inside the dataset"
            if truncated
            else "no dataset after the file meta (empty or truncated file)"
        )
        raise NotDicomError(what, name)
    if caught:  # pydicom's warnings quote element values, which may be patient data
        log.debug("%d warning(s) while reading the DICOM header were suppressed", len(caught))
    return ds


def _read_all(stream: BinaryIO) -> Dataset:
    """``dcmread``, with every value decoded at once (see ``_decode_values``)."""
    ds = dcmread(stream)
    dropped = _decode_values(ds.file_meta) + _decode_values(ds)
    if dropped:
        log.debug("dropped %d element(s) whose value could not be decoded", dropped)
    return ds


def _decode_values(ds: Dataset) -> int:
    """Decode every element's value now, and drop the elements whose value cannot be decoded
    (a length that does not fit the VR, an unknown VR); returns how many were dropped.

    pydicom decodes a value when it is first used, and would raise then, from anywhere. A
    dropped element is missing: if the image needs it, a precise error says so later.
    """
    dropped = 0
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
        except MemoryError:
            raise
        except Exception:  # pydicom raises many types on a malformed value
            del ds[tag]
            dropped += 1
            continue
        if element.VR == "SQ":
            dropped += sum(_decode_values(item) for item in element.value)
    return dropped


class BoundedReader(io.BufferedReader):
    """A buffered file whose ``read(n)`` asks for no more than what is left of it.

    A corrupt value length makes pydicom read up to 4 GiB at once: a plain buffered file
    allocates that much before it reads, this one reads what is there.
    """

    def __init__(self, raw: io.FileIO) -> None:
        super().__init__(raw)
        self._size = os.fstat(raw.fileno()).st_size

    def read(self, size: int | None = -1, /) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self._size - self.tell()))
        return super().read(size)


_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def _shown_uid(value: object) -> str:
    """A UID as error messages show it: a known one by name, another well-formed one as it is.
    Other text is not shown: a corrupt dataset can put anything there, a patient's name too
    (a wrong length makes a value run into the elements that follow it)."""
    uid = UID(str(value).strip())
    return uid.name if uid.is_valid else "an invalid UID"


def _shown_code(value: str) -> str:
    """A code string (CS) value as error messages show it (see ``_shown_uid``)."""
    if not value:
        return "missing"
    return value if _CODE_STRING.fullmatch(value) else "an invalid value"


def _transfer_syntax(ds: Dataset, name: str | None) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if uid is None:
        raise UnsupportedTransferSyntaxError("no Transfer Syntax UID in the file meta", name)
    return UID(str(uid))


def check_single_frame_monochrome(ds: Dataset, name: str | None = None) -> None:
    """Raise a typed error unless ``ds`` is a single-frame monochrome image we can handle."""
    if "PixelData" not in ds:
        sop = _shown_uid(ds.SOPClassUID) if "SOPClassUID" in ds else "unknown SOP class"
        other = "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        what = "float pixel data is not supported" if other else "not an image"
        raise MissingPixelDataError(f"no Pixel Data ({sop}): {what}", name)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        rows = int(ds.get("Rows") or 0)
        cols = int(ds.get("Columns") or 0)
        bits_stored = int(ds.get("BitsStored") or 0)
        bits_allocated = int(ds.get("BitsAllocated") or 0)
    except (TypeError, ValueError):
        raise UnsupportedImageError("malformed image pixel module attributes", name) from None
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if frames != 1:
        raise UnsupportedImageError(
            f"multi-frame image ({frames} frames); only single-frame radiographs are supported",
            name,
        )
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(
            f"colour image (PhotometricInterpretation {_shown_code(photometric)}, "
            f"{samples} samples per pixel); only MONOCHROME1/MONOCHROME2 are supported",
            name,
        )
    if rows <= 0 or cols <= 0:
        raise UnsupportedImageError(f"invalid image size Rows={rows} Columns={cols}", name)
    if rows * cols > MAX_PIXELS:
        raise UnsupportedImageError(
            f"image too large ({rows}x{cols} = {rows * cols} pixels, limit {MAX_PIXELS})", name
        )
    if not 1 <= bits_stored <= 16 or bits_allocated not in (8, 16) or bits_stored > bits_allocated:
        raise UnsupportedImageError(
            f"unsupported bit depth (BitsAllocated={bits_allocated}, BitsStored={bits_stored}); "
            "1-16 bits stored in 8 or 16 bits allocated are supported",
            name,
        )


@dataclass(frozen=True)
class CodestreamHeader:
    """What a compressed frame says about itself (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ).

    ``clean``: libjpeg reads the header without a warning (no bytes between its markers, JFIF
    version 1); GDCM aborts the process on such warnings, so it only gets clean headers.
    """

    rows: int
    columns: int
    components: int
    precision: int
    clean: bool = True


#: JPEG start-of-frame markers SOF0-SOF15 (not DHT, JPG, DAC) and JPEG-LS SOF55.
_JPEG_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)})
_JPEG_SOF |= {*range(0xCD, 0xD0), 0xF7}
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})


def codestream_header(frame: bytes) -> CodestreamHeader | None:
    """The frame header of a JPEG, JPEG-LS or JPEG 2000 codestream (JP2 boxes skipped), or
    None when there is none (RLE, or a codestream damaged before or in its frame header)."""
    try:
        if frame[4:8] == b"jP  ":  # a JP2 file: the codestream is in the 'jp2c' box
            offset = 0
            while frame[offset + 4 : offset + 8] != b"jp2c":
                (length,) = struct.unpack_from(">I", frame, offset)
                if length < 8:
                    return None
                offset += length
            frame = frame[offset + 8 :]
        if frame[:4] == b"\xff\x4f\xff\x51":  # SOC, SIZ
            width, height, x0, y0 = struct.unpack_from(">4I", frame, 8)
            (components,) = struct.unpack_from(">H", frame, 40)
            return CodestreamHeader(height - y0, width - x0, components, (frame[42] & 0x7F) + 1)
        return _jpeg_header(frame)
    except (IndexError, ValueError, struct.error):  # ran off the end
        return None


def _jpeg_header(frame: bytes) -> CodestreamHeader | None:
    """Read a JPEG / JPEG-LS header from SOI to the first SOS as libjpeg does: bytes that are
    not a marker where one should start are skipped (libjpeg warns: 'extraneous bytes before
    marker'), and make the header unclean, as does a JFIF APP0 of another major version."""
    if frame[:2] != b"\xff\xd8":
        return None
    header: CodestreamHeader | None = None
    clean = True
    offset = 2
    while True:
        if frame[offset] != 0xFF:
            clean = False
            offset = frame.index(b"\xff", offset)
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0xDA:  # start of scan: the header is complete
            return None if header is None else replace(header, clean=clean)
        if marker == 0xD9:  # end of image before any scan
            return None
        if marker in _JPEG_STANDALONE:
            offset += 2
            continue
        (length,) = struct.unpack_from(">H", frame, offset + 2)
        segment = frame[offset + 4 : offset + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker in _JPEG_SOF and header is None:
            rows, columns = struct.unpack_from(">HH", segment, 1)
            header = CodestreamHeader(rows, columns, segment[5], segment[0])
        elif marker == 0xE0 and segment[:5] == b"JFIF\x00" and segment[5:6] != b"\x01":
            clean = False
        offset += 2 + length


def _check_codestream(ds: Dataset, syntax: UID, name: str | None) -> CodestreamHeader:
    """The header of a JPEG / JPEG-LS / JPEG 2000 frame, after refusing frames that no decoder
    should see: no readable header, a size, components or precision that disagree with the
    Image Pixel module, a truncated JPEG-LS scan.

    GDCM, a decoder here, aborts the whole process (an uncaught C++ exception) when a frame
    decodes to more bytes than Rows x Columns x BitsAllocated; pyjpegls allocates the frame
    header's size; CharLS takes seconds over a truncated JPEG-LS scan.
    """
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception as exc:  # pydicom raises several types on broken encapsulation
        raise PixelDecodeError(
            f"malformed encapsulated pixel data ({type(exc).__name__})", name
        ) from None
    header = codestream_header(frame)
    if header is None:
        kind = "JPEG 2000" if syntax in (JPEG2000, JPEG2000Lossless) else "JPEG"
        raise PixelDecodeError(
            f"the compressed frame has no readable {kind} header (damaged, or not {syntax.name})",
            name,
        )
    ends = frame.rstrip(b"\x00").endswith(b"\xff\xd9")  # EOI, then at most padding
    if syntax in (JPEGLSLossless, JPEGLSNearLossless) and not ends:
        raise PixelDecodeError("the JPEG-LS frame is truncated (no end-of-image marker)", name)
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    if (header.rows, header.columns, header.components) != (rows, columns, 1) or (
        header.precision > bits
    ):
        raise PixelDecodeError(
            f"the compressed frame is {header.rows}x{header.columns} with "
            f"{header.components} component(s) of {header.precision} bits, but the dataset "
            f"says {rows}x{columns}, 1 sample, {bits} bits allocated",
            name,
        )
    return header


def _plugins_for(decoder: Decoder, syntax: UID) -> list[str]:
    if syntax in NATIVE_SYNTAXES:
        return [""]
    available = set(decoder.available_plugins)
    return [p for p in DECODER_PREFERENCE.get(syntax, ()) if p in available] or sorted(available)


def decode_stored_pixels(source: DatasetSource, label: str | None = None) -> DecodedImage:
    """Read ``source`` and decode its stored pixel values (no modality or VOI LUT applied).

    Raises:
        NotDicomError, MissingPixelDataError, UnsupportedImageError,
        UnsupportedTransferSyntaxError, PixelDecodeError: each with the file name and the reason.
    """
    name = _label(source, label)
    ds = read_dataset(source, name)
    check_single_frame_monochrome(ds, name)
    syntax = _transfer_syntax(ds, name)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise UnsupportedTransferSyntaxError(
            f"no decoder for transfer syntax {_shown_uid(syntax)}", name
        ) from None
    plugins = _plugins_for(decoder, syntax)
    if not plugins:
        raise UnsupportedTransferSyntaxError(
            f"no installed decoder for {syntax.name} ({syntax}); "
            "reinstall pneumonode's dependencies (pylibjpeg-openjpeg, python-gdcm, pyjpegls)",
            name,
        )
    header = None
    if syntax in DECODER_PREFERENCE and syntax != RLELossless:
        header = _check_codestream(ds, syntax, name)
    failures: list[str] = []
    for plugin in plugins:
        if plugin == "gdcm" and header is not None and not header.clean:
            failures.append("gdcm: not tried on a JPEG header with bytes between its markers")
            continue
        try:
            arr, _meta = decoder.as_array(ds, index=0, decoding_plugin=plugin)
        except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
            failures.append(f"{plugin or 'pydicom'}: {type(exc).__name__}")
            continue
        rows, cols = int(ds.Rows), int(ds.Columns)
        if arr.shape != (rows, cols):
            failures.append(f"{plugin or 'pydicom'}: decoded shape {arr.shape} != ({rows}, {cols})")
            continue
        return DecodedImage(arr, ds, syntax, plugin or "pydicom", name)
    raise PixelDecodeError(
        f"pixel data ({syntax.name}) could not be decoded, truncated or corrupt "
        f"[{'; '.join(failures)}]",
        name,
    )


def decoder_table() -> list[tuple[str, str, str]]:
    """(transfer syntax name, UID, decoders in order of preference that are installed)."""
    table: list[tuple[str, str, str]] = []
    for syntax in (*NATIVE_SYNTAXES, *DECODER_PREFERENCE):
        decoder = get_decoder(syntax)
        plugins = [p or "pydicom" for p in _plugins_for(decoder, syntax)]
        table.append((syntax.name, str(syntax), ", ".join(plugins) or "none installed"))
    return table
