"""Broken DICOM files through the converter (issue 8, bad DICOM input fuzzing).

Thousands of mutants of the SIIM samples (and of re-encodings of them in the other transfer
syntaxes) go through ``prepare_radiograph`` in child processes: each must give an image or a
``ConversionError``; never another exception, a crash of the process, a hang or an absurd
allocation. Below, each bug the fuzzing found has a regression test with the mutation that
found it.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEGLSLossless

from dicom_factory import make_dx, save, synthetic_chest
from peers_harness import tool
from pneumonode.conversion import (
    MissingPixelDataError,
    PixelDecodeError,
    UnsupportedImageError,
    prepare_radiograph,
)

#: pydicom warns about what it reads in the broken input, as it should; not news here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

WORKER = Path(__file__).with_name("fuzz_convert_worker.py")
#: A conversion takes about 10 ms here; an input that takes longer than this counts as a hang.
PER_INPUT_SECONDS = 5.0


def _records(report: Path) -> list[dict[str, object]]:
    if not report.exists():
        return []
    return [json.loads(line) for line in report.read_text().splitlines() if line.strip()]


def _problems(records: list[dict[str, object]], returncode: int | None, stderr: str) -> list[str]:
    """What went wrong in one child process: unexpected exceptions, slow inputs, a death."""
    problems: list[str] = []
    started = ""
    for record in records:
        if record["event"] == "start":
            started = str(record["mutant"])
            continue
        started_here, started = started, ""
        if record["outcome"] == "unexpected":
            problems.append(f"{started_here}: not a ConversionError: {record['message']}")
        elif float(str(record["seconds"])) > PER_INPUT_SECONDS:
            problems.append(f"{started_here}: took {float(str(record['seconds'])):.1f} s")
    if started:  # a start without its done: this input killed (or hung) the process
        how = "hung" if returncode is None else f"died with exit status {returncode}"
        problems.append(f"{started}: the converter process {how}; stderr: {stderr[-600:]}")
    elif returncode not in (0, None):
        problems.append(f"the converter process exited with {returncode}: {stderr[-600:]}")
    return problems


def fuzz_converter(
    bases: Path, seed: int, count: int, folder: Path, processes: int = 2, timeout: float = 300
) -> Counter[str]:
    """Mutants 0..count-1 through ``processes`` child processes; fails listing every problem
    (with the seed, index and mutation that reproduce it); returns the outcome counts."""
    bounds = [count * i // processes for i in range(processes + 1)]
    runs = []
    for number, (start, stop) in enumerate(itertools.pairwise(bounds)):
        report, errors = folder / f"report-{number}.jsonl", folder / f"stderr-{number}.txt"
        command = [sys.executable, str(WORKER), "--bases", str(bases), "--seed", str(seed)]
        command += ["--start", str(start), "--stop", str(stop), "--report", str(report)]
        with errors.open("wb") as stderr:
            runs.append((subprocess.Popen(command, stderr=stderr), report, errors))
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    outcomes: Counter[str] = Counter()
    for process, report, errors in runs:
        returncode: int | None
        try:
            returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncode = None
        records = _records(report)
        problems += _problems(records, returncode, errors.read_text(errors="replace"))
        outcomes.update(str(r["outcome"]) for r in records if r["event"] == "done")
    replay = (
        f"seed {seed}; replay one input with: python {WORKER} "
        f"--bases {bases} --seed {seed} --start INDEX --stop INDEX+1 --report r.jsonl"
    )
    assert not problems, f"{len(problems)} problem(s), {replay}:\n" + "\n".join(problems[:30])
    assert sum(outcomes.values()) == count, (outcomes, replay)
    return outcomes


def _assert_varied(outcomes: Counter[str], count: int) -> None:
    """The mutants exercise every kind of outcome, not one early refusal."""
    assert outcomes["converted"] >= count * 0.05, outcomes
    refusals = {"NotDicomError", "MissingPixelDataError", "PixelDecodeError"}
    refusals |= {"UnsupportedImageError", "UnsupportedTransferSyntaxError"}
    assert refusals <= set(outcomes), outcomes


def test_a_few_hundred_mutants_convert_or_are_refused(
    converter_base_dir: Path, fuzz_seed: int, tmp_path: Path
) -> None:
    outcomes = fuzz_converter(converter_base_dir, fuzz_seed, 300, tmp_path, processes=1)
    _assert_varied(outcomes, 300)


@pytest.mark.slow
def test_thousands_of_mutants_convert_or_are_refused(
    converter_base_dir: Path, fuzz_seed: int, tmp_path: Path
) -> None:
    count = 6000
    outcomes = fuzz_converter(converter_base_dir, fuzz_seed + 1, count, tmp_path)
    _assert_varied(outcomes, count)


# ------------------------------------------------- regressions: what the fuzzing found


def convert_isolated(path: Path, folder: Path) -> dict[str, object]:
    """Convert one file in a child process (address space capped); its ``done`` record, or
    an outcome 'crashed' with the process's stderr."""
    report = folder / f"{path.stem}.jsonl"
    done = subprocess.run(
        [sys.executable, str(WORKER), "--file", str(path), "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    records = [r for r in _records(report) if r["event"] == "done"]
    if done.returncode != 0 or not records:
        return {"outcome": "crashed", "message": done.stderr[-600:], "seconds": 0.0}
    return records[0]


def _jpeg_ls() -> pydicom.Dataset:
    """A 256x256 8-bit DX image, JPEG-LS lossless."""
    ds = make_dx(synthetic_chest(256, 256, 8), 8)
    ds.compress(JPEGLSLossless)
    return ds


def test_rows_columns_larger_than_the_codestream_are_refused_before_gdcm_aborts(
    tmp_path: Path,
) -> None:
    """Found by 'geometry Rows=512 Columns=512' on a 256x256 JPEG-LS image: pyjpegls failed,
    then GDCM threw an uncaught C++ exception ('len <= outbv->GetLength()') and the process
    aborted. Now the frame header is compared with Rows/Columns before any decoder runs."""
    ds = _jpeg_ls()
    ds.Rows = ds.Columns = 512
    path = save(ds, tmp_path / "jls-512.dcm")
    result = convert_isolated(path, tmp_path)
    assert result["outcome"] == "PixelDecodeError", result
    assert "256x256" in str(result["message"]) and "512x512" in str(result["message"])


def _jpeg_lossless(tmp_path: Path) -> pydicom.Dataset:
    """A 256x256 8-bit DX image, JPEG Lossless SV1 (by dcmtk's dcmcjpeg): GDCM decodes it."""
    source = save(make_dx(synthetic_chest(256, 256, 8), 8), tmp_path / "native.dcm")
    target = tmp_path / "lossless.dcm"
    subprocess.run([tool("dcmcjpeg"), "+e1", str(source), str(target)], check=True, timeout=60)
    return pydicom.dcmread(target)


@pytest.mark.parametrize("syntax", ["jpeg-baseline", "jpeg-lossless"])
def test_jpeg_header_with_bytes_between_markers_never_reaches_gdcm(
    siim_sample_dicoms: list[Path], tmp_path: Path, syntax: str
) -> None:
    """Found by 'flip 4 codestream byte(s)' in a SIIM JPEG's tables: Pillow refused the frame,
    then libjpeg inside GDCM warned 'extraneous bytes before marker' and GDCM aborted the
    process (assert(0) in gdcmJPEGBITSCodec.hxx, an uncaught gdcm::Exception). GDCM is the
    only decoder of JPEG Lossless, so there any such header aborted the process."""
    if syntax == "jpeg-baseline":
        ds = pydicom.dcmread(siim_sample_dicoms[0])
    else:
        ds = _jpeg_lossless(tmp_path)
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    del frame[len(frame) // 2 :]  # a scan cut short: Pillow refuses it
    frame[frame.index(b"\xff\xc4") : frame.index(b"\xff\xc4")] = b"\x00\x01\x02\x03"
    ds.PixelData = encapsulate([bytes(frame)])
    path = tmp_path / "extraneous.dcm"
    ds.save_as(path)
    result = convert_isolated(path, tmp_path)
    assert result["outcome"] == "PixelDecodeError", result
    assert "gdcm: not tried on a JPEG header with bytes between its markers" in str(
        result["message"]
    )


def test_huge_value_length_in_a_file_allocates_nothing_absurd(
    siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    """Found by 'length of (0002,0010) UI 0x12 -> 0x3f6' and other wrong lengths, on files:
    pydicom reads a value of the length it is told, and a buffered file allocates that many
    bytes first (up to 4 GiB), a MemoryError under a memory limit. Now reads are capped at
    what is left of the file."""
    data = bytearray(siim_sample_dicoms[0].read_bytes())
    at = data.index(b"\x08\x00\x50\x00SH")  # Accession Number, empty
    data[at + 4 : at + 12] = b"UN\x00\x00" + (0xFFFFFFF0).to_bytes(4, "little")
    path = tmp_path / "huge-length.dcm"
    path.write_bytes(bytes(data))
    result = convert_isolated(path, tmp_path)
    assert result["outcome"] in ("NotDicomError", "MissingPixelDataError"), result


@pytest.mark.parametrize("vr", [b"UL", b"ZZ"])
def test_elements_whose_value_cannot_be_decoded_are_dropped(
    siim_sample_dicoms: list[Path], tmp_path: Path, vr: bytes
) -> None:
    """Found by 'VR of (0028,0011) US -> UL' and 'VR of (0008,0016) UI -> ZZ': pydicom decodes
    values lazily, so a 2-byte value with VR UL (BytesLengthException) or an unknown VR
    (NotImplementedError) raised later, from wherever Columns was first used. Now values are
    decoded while reading and such elements dropped: a broken Columns is a missing one, and a
    broken element the image does not need is no reason to refuse it."""
    data = siim_sample_dicoms[0].read_bytes()
    columns, age = data.index(b"\x28\x00\x11\x00US"), data.index(b"\x10\x00\x10\x10AS")
    broken_columns = data[: columns + 4] + vr + data[columns + 6 :]
    broken_age = data[: age + 4] + vr + data[age + 6 :]
    path = tmp_path / "bad-vr.dcm"
    path.write_bytes(broken_columns)
    for source in (path, broken_columns):
        with pytest.raises(UnsupportedImageError, match="invalid image size Rows=1024 Columns=0"):
            prepare_radiograph(source)
    assert prepare_radiograph(broken_age).pixels.shape == (1024, 1024)


def test_text_in_a_numeric_lut_attribute_is_an_unsupported_image(tmp_path: Path) -> None:
    """Found by 'flip 8 header byte(s)' on a 16-bit image with Rescale Intercept: its VR became
    a text VR, so pydicom's apply_modality_lut added a string to an array (UFuncTypeError)."""
    ds = make_dx(synthetic_chest(64, 64, 12), 12, rescale=(1.0, -1024.0))
    ds.add_new(0x00281052, "LO", "-1024")
    path = save(ds, tmp_path / "text-intercept.dcm")
    with pytest.raises(UnsupportedImageError, match=r"text-intercept\.dcm: unusable Modality LUT"):
        prepare_radiograph(path)


def test_signed_8bit_images_convert(tmp_path: Path) -> None:
    """Found by 'pixel module PixelRepresentation=1' on an 8-bit image: OpenCV cannot resize
    int8 arrays (cv2.error), so no signed 8-bit image could be converted. It converts like the
    same image stored unsigned."""
    unsigned = synthetic_chest(300, 200, 8)
    signed = (unsigned.astype(np.int16) - 128).astype(np.int8)
    as_signed = prepare_radiograph(save(make_dx(signed, 8, signed=True), tmp_path / "s.dcm"), 256)
    as_unsigned = prepare_radiograph(save(make_dx(unsigned, 8), tmp_path / "u.dcm"), 256)
    difference = as_signed.pixels.astype(np.int16) - as_unsigned.pixels
    assert as_signed.lut.offset == -128 and np.abs(difference).max() <= 1


def test_truncated_jpeg_ls_scan_fails_fast(tmp_path: Path) -> None:
    """Found by 'codestream cut to 700 of 26694 bytes' on a JPEG-LS image: CharLS spent 5 to
    10 s of CPU before failing on a scan cut short (any image size)."""
    ds = _jpeg_ls()
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) - 10]])
    path = save(ds, tmp_path / "jls-cut.dcm")
    started = time.monotonic()
    with pytest.raises(PixelDecodeError, match="truncated"):
        prepare_radiograph(path)
    assert time.monotonic() - started < 1.0


def test_error_messages_show_no_value_that_ran_into_patient_data(
    siim_sample_dicoms: list[Path],
) -> None:
    """Found by 'flip byte 6 of the (0008,0016) header' (its length): the SOP Class UID's value
    ran on over Patient's Name and ID, and the MissingPixelDataError quoted it as the 'name' of
    the SOP class. Error messages go to logs, job records and API answers."""
    data = siim_sample_dicoms[0].read_bytes()
    ds = pydicom.dcmread(siim_sample_dicoms[0], stop_before_pixels=True)
    sop_class = data.index(b"\x08\x00\x16\x00UI")
    patient_id = data.index(b"\x10\x00\x20\x00LO")
    end = patient_id + 8 + len(ds.PatientID)  # the value now ends where Patient ID ends
    broken = bytearray(data[: data.index(b"\xe0\x7f\x10\x00")])  # and there is no pixel data
    broken[sop_class + 6 : sop_class + 8] = (end - sop_class - 8).to_bytes(2, "little")
    with pytest.raises(MissingPixelDataError, match=r"no Pixel Data \(an invalid UID\)") as caught:
        prepare_radiograph(bytes(broken))
    assert ds.PatientID not in str(caught.value) and str(ds.PatientName) not in str(caught.value)
