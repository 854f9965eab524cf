"""Decoding real files and every common transfer syntax; typed errors for bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from dicom_factory import basic_text_sr, make_dx, minimal_pdf, save, synthetic_chest
from pneumonode.conversion import (
    MissingPixelDataError,
    NotDicomError,
    PixelDecodeError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
    decode_stored_pixels,
    prepare_radiograph,
)


def dcmtk(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"dcmtk's {tool} is not installed (apt-get install dcmtk)")
    return path


def run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True, timeout=60)


# ---------------------------------------------------------------- real files


def test_siim_samples_decode_with_pillow_and_keep_their_values(
    siim_sample_dicoms: list[Path],
) -> None:
    for path in siim_sample_dicoms:
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID.name == "Secondary Capture Image Storage"
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        prepared = prepare_radiograph(path)
        assert prepared.decoder == "pillow"
        assert prepared.pixels.shape == (1024, 1024) and prepared.pixels.dtype == np.uint8
        assert prepared.lut.method == "full-range" and not prepared.lut.inverted
        # 8-bit presentation-ready: the model sees exactly the stored values
        assert np.array_equal(prepared.pixels, ds.pixel_array)
        tensor = prepared.tensor()
        assert tensor.shape == (1, 1024, 1024) and tensor.dtype == np.float32
        assert tensor.min() >= 0.0 and tensor.max() <= 1.0


def test_siim_patient_age_is_not_a_valid_as_value_and_is_tolerated(
    siim_sample_dicoms: list[Path],
) -> None:
    ages = [str(pydicom.dcmread(p, stop_before_pixels=True).PatientAge) for p in siim_sample_dicoms]
    assert any(age.isdigit() for age in ages)  # '38' instead of '038Y'
    for path in siim_sample_dicoms:
        prepare_radiograph(path)


def test_monochrome1_is_inverted_so_air_is_dark(format_refs: Path) -> None:
    path = format_refs / "siim_cr_monochrome1_variant.dcm"
    stored = pydicom.dcmread(path).pixel_array
    prepared = prepare_radiograph(path)
    assert prepared.lut.inverted
    assert np.array_equal(prepared.pixels, 255 - stored)


def test_dx_monochrome1_with_window(format_refs: Path) -> None:
    prepared = prepare_radiograph(format_refs / "dx_monochrome1.dcm")
    assert prepared.lut.method == "window" and prepared.lut.inverted
    box = prepared.letterbox
    assert (box.source_rows, box.source_cols) == (169, 211)
    inner = prepared.pixels[box.pad_top : box.pad_top + box.scaled_rows]
    # the background of this film (air around the body) is dark after inversion
    assert np.median(inner[:, :40]) < 80 or np.median(inner[:40, :]) < 80


def test_16bit_jpeg2000_monochrome1_cr(format_refs: Path) -> None:
    path = format_refs / "cr_jpeg2000_16bit_monochrome1.dcm"
    decoded = decode_stored_pixels(path)
    assert decoded.decoder == "pylibjpeg"
    assert decoded.stored.shape == (1955, 1841) and decoded.stored.dtype == np.uint16
    assert decoded.stored.max() < 2**15
    prepared = prepare_radiograph(path)
    assert prepared.lut.method == "window" and prepared.lut.inverted
    assert prepared.letterbox.scaled_rows == 1024 and prepared.letterbox.scaled_cols == 964
    assert prepared.pixels[:, :20].max() == 0  # left padding is black


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "flags"),
    [("dx_monochrome1.dcm", ["+Wi", "1"]), ("siim_cr_monochrome1_variant.dcm", [])],
)
def test_display_matches_dcmtk_rendering(
    format_refs: Path, tmp_path: Path, name: str, flags: list[str]
) -> None:
    """dcmtk's dcmj2pnm (first window, MONOCHROME1 handled) renders what we feed the model."""
    path = format_refs / name
    out = tmp_path / "dcmtk.png"
    run(dcmtk("dcmj2pnm"), "--write-png", *flags, path, out)
    reference = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    ds = pydicom.dcmread(path)
    prepared = prepare_radiograph(path, size=max(ds.Rows, ds.Columns))
    box = prepared.letterbox
    ours = prepared.pixels[
        box.pad_top : box.pad_top + box.scaled_rows, box.pad_left : box.pad_left + box.scaled_cols
    ]
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1


# ----------------------------------------------------- synthetic 16-bit DX


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 15, 16])
@pytest.mark.parametrize("windowed", [True, False], ids=["window", "no-window"])
def test_uncompressed_dx_of_any_bit_depth(tmp_path: Path, bits: int, windowed: bool) -> None:
    stored = synthetic_chest(600, 500, bits, seed=bits)
    top = 2**bits
    window = ([top * 0.45], [top * 0.7]) if windowed else None
    path = save(make_dx(stored, bits, window=window), tmp_path / "dx.dcm")
    prepared = prepare_radiograph(path, size=256)
    expected = "window" if windowed else ("full-range" if bits <= 8 else "percentile")
    assert prepared.lut.method == expected
    assert prepared.pixels.shape == (256, 256)
    inner = prepared.pixels[:, prepared.letterbox.pad_left + 2 : -prepared.letterbox.pad_left - 2]
    assert inner.max() - inner.min() > 150  # real contrast, not a flat or clipped image
    # lungs (dark on the film) stay darker than the mediastinum
    assert inner[128, 64] < inner[128, 128 - prepared.letterbox.pad_left]


# ------------------------------------------------------ transfer syntaxes


def _base_file(tmp_path: Path, bits: int = 12) -> tuple[Path, np.ndarray]:
    stored = synthetic_chest(320, 256, bits, seed=11)
    return save(make_dx(stored, bits, window=([2048.0], [3500.0])), tmp_path / "plain.dcm"), stored


@pytest.mark.integration
@pytest.mark.parametrize(
    ("tool", "flags", "syntax"),
    [
        ("dcmcjpeg", ["+el"], JPEGLossless),
        ("dcmcjpeg", ["+e1"], JPEGLosslessSV1),
        ("dcmcjpls", ["+el"], JPEGLSLossless),
        ("dcmcrle", [], RLELossless),
    ],
    ids=["jpeg-lossless-p14", "jpeg-lossless-sv1", "jpeg-ls", "rle"],
)
def test_lossless_syntaxes_encoded_by_dcmtk_decode_exactly(
    tmp_path: Path, tool: str, flags: list[str], syntax: UID
) -> None:
    source, stored = _base_file(tmp_path)
    encoded = tmp_path / "encoded.dcm"
    run(dcmtk(tool), *flags, source, encoded)
    assert pydicom.dcmread(encoded).file_meta.TransferSyntaxUID == syntax
    decoded = decode_stored_pixels(encoded)
    assert np.array_equal(decoded.stored, stored)
    assert np.array_equal(prepare_radiograph(encoded).pixels, prepare_radiograph(source).pixels)


@pytest.mark.integration
def test_jpeg_baseline_encoded_by_dcmtk(tmp_path: Path) -> None:
    """Pillow decodes baseline JPEG like dcmtk's own decompressor (IDCTs may differ by a level)."""
    source, _ = _base_file(tmp_path, bits=8)
    encoded, decompressed = tmp_path / "baseline.dcm", tmp_path / "decompressed.dcm"
    run(dcmtk("dcmcjpeg"), "+eb", "+q", "95", source, encoded)
    run(dcmtk("dcmdjpeg"), encoded, decompressed)
    decoded = decode_stored_pixels(encoded)
    assert decoded.decoder == "pillow"
    reference = pydicom.dcmread(decompressed).pixel_array.astype(int)
    assert np.abs(decoded.stored.astype(int) - reference).max() <= 2


def test_jpeg2000_and_deflate_written_by_pydicom(tmp_path: Path) -> None:
    source, stored = _base_file(tmp_path)
    ds = pydicom.dcmread(source)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    j2k = tmp_path / "j2k.dcm"
    ds.save_as(j2k, enforce_file_format=True)
    assert np.array_equal(decode_stored_pixels(j2k).stored, stored)

    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = tmp_path / "deflated.dcm"
    ds.save_as(deflated, enforce_file_format=True)
    assert pydicom.dcmread(deflated).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert np.array_equal(decode_stored_pixels(deflated).stored, stored)


# ------------------------------------------------------------- bad input


def test_truncated_pixel_data(siim_sample_dicoms: list[Path], tmp_path: Path) -> None:
    data = siim_sample_dicoms[0].read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(NotDicomError, match=r"truncated\.dcm: truncated file"):
        prepare_radiograph(path)


def test_truncated_inside_a_fragment_of_pixel_data(
    siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    """The file ends cleanly but the JPEG stream inside it is cut: a decode error."""
    ds = pydicom.dcmread(siim_sample_dicoms[0])
    from pydicom.encaps import encapsulate, generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    path = tmp_path / "cut-jpeg.dcm"
    ds.save_as(path)
    with pytest.raises(PixelDecodeError, match=r"cut-jpeg\.dcm: pixel data .*could not be decoded"):
        prepare_radiograph(path)


def test_truncated_header(siim_sample_dicoms: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "header.dcm"
    path.write_bytes(siim_sample_dicoms[0].read_bytes()[:300])
    with pytest.raises(NotDicomError, match=r"header\.dcm: .*truncated"):
        prepare_radiograph(path)


def test_not_dicom_at_all(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("this is not a DICOM file\n" * 20)
    with pytest.raises(NotDicomError, match=r"notes\.txt: not a DICOM file"):
        prepare_radiograph(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotDicomError, match="file not found"):
        prepare_radiograph(tmp_path / "nowhere.dcm")


def test_pixel_data_missing(siim_sample_dicoms: list[Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(siim_sample_dicoms[0])
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path)
    with pytest.raises(MissingPixelDataError, match=r"nopixels\.dcm: no Pixel Data"):
        prepare_radiograph(path)


def test_undecodable_transfer_syntax(siim_sample_dicoms: list[Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(siim_sample_dicoms[0])
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 video
    path = tmp_path / "mpeg.dcm"
    ds.save_as(path)
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"mpeg\.dcm: no decoder"):
        prepare_radiograph(path)


def test_multiframe_image(tmp_path: Path) -> None:
    stored = np.concatenate([synthetic_chest(64, 64, 12)] * 2)
    ds = make_dx(stored, 12)
    ds.Rows = 64
    ds.NumberOfFrames = 2
    path = save(ds, tmp_path / "multi.dcm")
    with pytest.raises(UnsupportedImageError, match=r"multi-frame image \(2 frames\)"):
        prepare_radiograph(path)


def test_colour_image(tmp_path: Path) -> None:
    ds = make_dx(np.zeros((32, 32 * 3), np.uint8), 8)
    ds.Columns = 32
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "RGB"
    path = save(ds, tmp_path / "rgb.dcm")
    with pytest.raises(
        UnsupportedImageError, match=r"colour image \(PhotometricInterpretation RGB"
    ):
        prepare_radiograph(path)


def test_absurd_rows_and_columns(siim_sample_dicoms: list[Path], tmp_path: Path) -> None:
    ds = pydicom.dcmread(siim_sample_dicoms[0])
    ds.Rows = ds.Columns = 65535
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    with pytest.raises(UnsupportedImageError, match="too large"):
        prepare_radiograph(path)


def test_structured_report(tmp_path: Path) -> None:
    path = basic_text_sr(tmp_path / "report.dcm")
    with pytest.raises(MissingPixelDataError, match=r"Basic Text SR Storage\): not an image"):
        prepare_radiograph(path)


@pytest.mark.integration
def test_encapsulated_pdf_made_by_dcmtk(tmp_path: Path) -> None:
    pdf = minimal_pdf(tmp_path / "report.pdf")
    path = tmp_path / "pdf.dcm"
    run(dcmtk("pdf2dcm"), pdf, path)
    with pytest.raises(MissingPixelDataError, match=r"Encapsulated PDF Storage\): not an image"):
        prepare_radiograph(path)


def test_segmentation_object_is_refused(format_refs: Path) -> None:
    with pytest.raises(
        UnsupportedImageError, match=r"seg_cr_binary_reference\.dcm: unsupported bit depth"
    ):
        prepare_radiograph(format_refs / "seg_cr_binary_reference.dcm")


def test_errors_carry_a_label_for_in_memory_data(siim_sample_dicoms: list[Path]) -> None:
    data = siim_sample_dicoms[0].read_bytes()[:200]
    with pytest.raises(NotDicomError, match="upload-7: "):
        prepare_radiograph(data, label="upload-7")
