"""Build small synthetic DICOM radiographs for tests (uncompressed, any bit depth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)


def synthetic_chest(rows: int, cols: int, bits_stored: int, seed: int = 0) -> np.ndarray:
    """A smooth chest-like image (dark lungs, bright mediastinum and borders) with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    y /= rows
    x /= cols
    body = 0.35 + 0.5 * (np.abs(x - 0.5) > 0.4) + 0.4 * np.exp(-(((x - 0.5) / 0.07) ** 2))
    lungs = np.exp(-(((x - 0.3) / 0.12) ** 2 + ((y - 0.45) / 0.25) ** 2))
    lungs += np.exp(-(((x - 0.7) / 0.12) ** 2 + ((y - 0.45) / 0.25) ** 2))
    image = np.clip(body - 0.3 * lungs + 0.02 * rng.standard_normal((rows, cols)), 0, 1)
    top = 2**bits_stored - 1
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    return np.rint(image * top * 0.9 + top * 0.05).astype(dtype)


def make_dx(
    pixels: np.ndarray,
    bits_stored: int,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[list[float], list[float]] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    signed: bool = False,
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> Dataset:
    """A DX For Presentation dataset around ``pixels`` (rows, cols)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "TEST-0001"
    ds.PatientName = "Test^Synthetic"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if window is not None:
        ds.WindowCenter = window[0] if len(window[0]) > 1 else window[0][0]
        ds.WindowWidth = window[1] if len(window[1]) > 1 else window[1][0]
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    ds.PixelData = pixels.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def minimal_pdf(path: Path) -> Path:
    """A one-page PDF (enough for dcmtk's pdf2dcm)."""
    path.write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    return path


def basic_text_sr(path: Path) -> Path:
    """A Basic Text SR without content: an object with no pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    return save(ds, path)


# ------------------------------------------------------------------ damaged datasets

#: The damaged datasets of issue 22, each acknowledged with Success before the structure check.
DAMAGE = (
    "truncated inside the pixel data",
    "cut after 500 bytes",
    "a US element of 3 bytes",
    "a Pixel Data length past the end",
)
_UNDEFINED = b"\xff\xff\xff\xff"


def split_file(path: Path) -> tuple[bytes, bytes]:
    """(preamble and File Meta Information, dataset) of a DICOM file, split where the meta's
    group length says."""
    data = path.read_bytes()
    end = 144 + int.from_bytes(data[140:144], "little")
    return data[:end], data[end:]


def damage(dataset: bytes, how: str) -> bytes:
    """``dataset`` (Explicit VR Little Endian, native or encapsulated) damaged as ``how`` (one
    of DAMAGE) says; the damage is where the issue found it, the rest as it was."""
    pixels = dataset.index(b"\xe0\x7f\x10\x00O")  # (7FE0,0010) OB or OW
    if how == "truncated inside the pixel data":
        return dataset[: pixels + 12 + (len(dataset) - pixels - 12) // 2]
    if how == "cut after 500 bytes":
        return dataset[:500]
    if how == "a US element of 3 bytes":
        bits_stored = dataset.index(b"\x28\x00\x01\x01US\x02\x00")  # (0028,0101) Bits Stored
        value = bits_stored + 8
        return (
            dataset[: bits_stored + 6]
            + b"\x03\x00"
            + dataset[value : value + 2]
            + b"\x00"
            + dataset[value + 2 :]
        )
    if how == "a Pixel Data length past the end":
        length_at = pixels + 8
        if dataset[length_at : length_at + 4] == _UNDEFINED:  # encapsulated: the first fragment
            basic_offset_table = length_at + 4
            table_length = int.from_bytes(
                dataset[basic_offset_table + 4 : basic_offset_table + 8], "little"
            )
            length_at = basic_offset_table + 8 + table_length + 4
        past_the_end = len(dataset) - length_at + 2
        return dataset[:length_at] + past_the_end.to_bytes(4, "little") + dataset[length_at + 4 :]
    raise ValueError(f"unknown damage {how!r}; one of {DAMAGE}")
