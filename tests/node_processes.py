"""pneumonode as real processes for the end-to-end, load and fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, select, text

from peers_harness import Orthanc, wait_for_port
from pneumonode.db.models import Job
from pneumonode.db.session import Database

PNEUMONODE = str(Path(sys.executable).parent / "pneumonode")


@contextmanager
def running(
    args: list[str], env: dict[str, str], log: Path, port: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A pneumonode process; SIGTERM (graceful stop) at the end, SIGKILL if that hangs."""
    process = start(args, env, log)
    try:
        if port is not None:
            wait_for_port(port, timeout=60)
        yield process
    finally:
        stop(process)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A pneumonode process in its own session (so that its children stop with it)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [PNEUMONODE, *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def jobs_in(database: Database, state: str) -> int:
    with database.session() as session:
        return int(
            session.scalar(select(func.count()).select_from(Job).where(Job.state == state)) or 0
        )


def node_env(data_dir: Path, model: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "PNEUMONODE_DATA_DIR": str(data_dir),
        "PNEUMONODE_MODEL_PATH": str(model),
        "PNEUMONODE_DICOM_PORT": str(port),
        "PNEUMONODE_INFERENCE_BACKEND": "torch",
        "PNEUMONODE_INFERENCE_PRECISION": "fp32",
        "PNEUMONODE_DISPATCH_INTERVAL": "0.2",
        **extra,
    }


def orthanc_series(pacs: Orthanc) -> dict[str, list[dict[str, object]]]:
    """Modality -> instances' simplified tags, for everything Orthanc holds."""
    found: dict[str, list[dict[str, object]]] = {}
    for orthanc_id in pacs.rest("/instances"):  # type: ignore[union-attr]
        tags = pacs.rest(f"/instances/{orthanc_id}/simplified-tags")
        assert isinstance(tags, dict)
        tags["_id"] = orthanc_id
        found.setdefault(str(tags["Modality"]), []).append(tags)
    return found


def copies(sources: list[Path], count: int, folder: Path, pad_bytes: int = 0) -> list[Path]:
    """``count`` distinct instances (new study/series/SOP UIDs) made from real SIIM files;
    ``pad_bytes``: that much more in a private element (a bigger transfer, the same image)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index in range(count):
        ds = pydicom.dcmread(sources[index % len(sources)])
        if pad_bytes:
            ds.add_new((0x0009, 0x0010), "LO", "PNEUMONODE TEST")
            ds.add_new((0x0009, 0x1001), "OB", bytes(pad_bytes + pad_bytes % 2))
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"copy{index:04d}.dcm"
        ds.save_as(path)
        made.append(path)
    return made


def empty_postgres(url: str) -> Database:
    """The PostgreSQL test database emptied for one run, opened (migrations applied)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return Database.open(url)
