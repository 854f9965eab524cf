"""Read a DICOM radiograph and decode its stored pixel values.

Decoders are chosen per transfer syntax from a fixed preference list (permissively licensed
packages first; see ``DECODER_PREFERENCE``); when the first choice fails the next is tried.
"""

from __future__ import annotations

import logging
import struct
import warnings
from dataclasses import dataclass
from io import BytesIO
from os import PathLike
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import Dataset, dcmread
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
    "DecodedImage",
    "decode_stored_pixels",
    "decoder_table",
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
    """

    stored: np.ndarray
    dataset: Dataset
    transfer_syntax: UID
    decoder: str


def _label(source: DatasetSource, label: str | None) -> str | None:
    if label is not None:
        return label
    if isinstance(source, str | PathLike):
        return Path(source).name
    return None


def read_dataset(source: DatasetSource, label: str | None = None) -> Dataset:
    """Read a DICOM dataset from a path, bytes, a binary file or pass a Dataset through.

    Raises:
        NotDicomError: not DICOM, or the header is truncated/corrupt.
    """
    if isinstance(source, Dataset):
        return source
    name = _label(source, label)
    stream: str | PathLike[str] | BinaryIO = (
        BytesIO(source) if isinstance(source, bytes) else source
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = dcmread(stream)
    except InvalidDicomError:
        raise NotDicomError(
            "not a DICOM file (no 'DICM' marker after the preamble)", name
        ) from None
    except FileNotFoundError:
        raise NotDicomError("file not found", name) from None
    except IsADirectoryError:
        raise NotDicomError("is a directory, not a DICOM file", name) from None
    except (EOFError, struct.error, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise NotDicomError(f"unreadable DICOM header ({type(exc).__name__})", name) from None
    except OSError as exc:
        raise NotDicomError(
            f"cannot read file ({exc.strerror or type(exc).__name__})", name
        ) from None
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


def _transfer_syntax(ds: Dataset, name: str | None) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if uid is None:
        raise UnsupportedTransferSyntaxError("no Transfer Syntax UID in the file meta", name)
    return UID(str(uid))


def check_single_frame_monochrome(ds: Dataset, name: str | None = None) -> None:
    """Raise a typed error unless ``ds`` is a single-frame monochrome image we can handle."""
    if "PixelData" not in ds:
        sop = getattr(ds.get("SOPClassUID"), "name", None) or "unknown SOP class"
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
            f"colour image (PhotometricInterpretation {photometric or 'missing'}, "
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
            f"no decoder for transfer syntax {syntax} ({syntax.name or 'unknown'})", name
        ) from None
    plugins = _plugins_for(decoder, syntax)
    if not plugins:
        raise UnsupportedTransferSyntaxError(
            f"no installed decoder for {syntax.name} ({syntax}); "
            "reinstall pneumonode's dependencies (pylibjpeg-openjpeg, python-gdcm, pyjpegls)",
            name,
        )
    failures: list[str] = []
    for plugin in plugins:
        try:
            arr, _meta = decoder.as_array(ds, index=0, decoding_plugin=plugin)
        except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
            failures.append(f"{plugin or 'pydicom'}: {type(exc).__name__}")
            continue
        rows, cols = int(ds.Rows), int(ds.Columns)
        if arr.shape != (rows, cols):
            failures.append(f"{plugin or 'pydicom'}: decoded shape {arr.shape} != ({rows}, {cols})")
            continue
        return DecodedImage(arr, ds, syntax, plugin or "pydicom")
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
