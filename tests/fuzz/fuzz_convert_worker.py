"""A child process that feeds mutated DICOM files to ``prepare_radiograph``, one at a time.

The converter runs in its own process so that a native crash (a decoder aborting), a hang or
an absurd allocation is seen and attributed instead of taking the test session down. The
address space is capped at what the process uses after a first conversion plus a headroom:
an allocation beyond it fails with MemoryError, which is reported like any other exception
that is not a ``ConversionError``.

Each input gets two JSON lines in the report, flushed at once: ``start`` (which mutant) before
the conversion and ``done`` (outcome, message, seconds) after it. A ``start`` without its
``done`` is the input that killed the process.

    python tests/fuzz/fuzz_convert_worker.py --bases DIR --seed S --start 0 --stop 1000 --report R
    python tests/fuzz/fuzz_convert_worker.py --file broken.dcm --report R
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import IO

import numpy as np
import pydicom
import pydicom.config
import pydicom.dataset
from dicom_mutations import Base, mutate, parse_base
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pneumonode.conversion import ConversionError, prepare_radiograph

#: What the converter may allocate beyond its steady state: an image at the size limit
#: (10^8 16-bit pixels) and its resized copies fit; a 4 GiB buffer does not.
HEADROOM_BYTES = 1536 << 20


def _limit_address_space(headroom: int) -> None:
    status = Path("/proc/self/status").read_text()
    vm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmSize"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_kb * 1024 + headroom, hard))


class _Records(logging.Handler):
    """Every log record's message, to look for patient data in."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.getMessage()} {record.exc_text or ''}")


RECORDS = _Records()


def _convert(source: bytes | Path, label: str, size: int, patients: set[str]) -> dict[str, object]:
    RECORDS.messages.clear()
    started = time.perf_counter()
    try:
        prepared = prepare_radiograph(source, size=size, label=label)
        good = prepared.pixels.shape == (size, size) and prepared.pixels.dtype == np.uint8
        outcome, message = ("converted", "") if good else ("unexpected", "wrong output shape")
    except ConversionError as exc:
        outcome, message = type(exc).__name__, str(exc)
    except (Exception, MemoryError) as exc:
        outcome = "unexpected"
        message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-6)}"
    seconds = time.perf_counter() - started
    for text in (*RECORDS.messages, message):
        if any(patient in text.upper() for patient in patients):
            outcome, message = "unexpected", "a patient name or ID in a log record or message"
    return {"outcome": outcome, "message": message, "seconds": seconds}


def _patients(data: bytes) -> set[str]:
    """Patient name and ID of a base file, upper case (what must never be logged)."""
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    return {str(ds.get("PatientID", "")).upper(), str(ds.get("PatientName", "")).upper()} - {""}


def _small_image() -> bytes:
    """A valid 16 x 16 image, to warm up with when there are no bases."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(256))
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _emit(report: IO[str], record: dict[str, object]) -> None:
    report.write(json.dumps(record) + "\n")
    report.flush()


def _prepare_process(warm_up: bytes, size: int) -> None:
    # as the node's processes do: no value validation, warnings as log records, INFO
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.captureWarnings(True)
    logging.getLogger().addHandler(RECORDS)
    logging.getLogger().setLevel(logging.INFO)
    with contextlib.suppress(ConversionError):  # imports decoders, sizes the steady state
        prepare_radiograph(warm_up, size=size)
    _limit_address_space(HEADROOM_BYTES)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=Path, help="folder of well-formed DICOM files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=0)
    parser.add_argument("--file", type=Path, help="convert this one file instead")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)

    with args.report.open("w") as report:
        if args.file is not None:
            _prepare_process(_small_image(), args.size)
            _emit(report, {"event": "start", "mutant": args.file.name})
            result = _convert(args.file, args.file.name, args.size, set())
            _emit(report, {"event": "done", **result})
            return 0
        bases = [parse_base(p.stem, p.read_bytes()) for p in sorted(args.bases.glob("*.dcm"))]
        patients = set().union(*(_patients(base.data) for base in bases))
        _prepare_process(bases[0].data, args.size)
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "mutant.dcm"
            for index in range(args.start, args.stop):
                base: Base = bases[index % len(bases)]
                mutant = mutate(base, args.seed, index)
                # half the inputs are files (as the worker reads the spool), half bytes
                source: bytes | Path = mutant.data
                if index % 2:
                    path.write_bytes(mutant.data)
                    source = path
                kind = "file" if index % 2 else "bytes"
                _emit(report, {"event": "start", "index": index, "mutant": f"{mutant} ({kind})"})
                result = _convert(source, f"mutant-{index}", args.size, patients)
                _emit(report, {"event": "done", "index": index, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
