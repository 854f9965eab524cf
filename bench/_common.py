"""Helpers of the benchmarks that run a whole node (end_to_end.py, soak.py): the model, SIIM
images with fresh UIDs, `pneumonode serve` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from peers_harness import free_port, wait_for_port  # noqa: E402

SIIM_DICOM = REPO.parent / "shared" / "data" / "siim-sample" / "dicom"


def bench_model(path: Path | None, folder: Path) -> Path:
    """``path``, else the shipped model, else a random-weight EfficientNet-B4 U-Net at 1024 px
    saved under ``folder`` (same cost per image)."""
    from pneumonode.config import SHIPPED_MODEL

    if path is not None:
        return path
    if (SHIPPED_MODEL / "config.json").is_file():
        return SHIPPED_MODEL
    return design_model(folder)


def design_model(folder: Path) -> Path:
    """The design's network, an EfficientNet-B4 U-Net taking 1024 px, with random weights (the
    cost per image of a trained one), saved under ``folder``."""
    import torch

    from pneumonode.model.checkpoint import CheckpointConfig, save_checkpoint
    from pneumonode.model.network import build_unet

    torch.manual_seed(0)
    target = folder / "random-b4-1024"
    save_checkpoint(build_unet("efficientnet-b4"), target, CheckpointConfig(version="random"))
    return target


def siim_sources() -> list[Path]:
    """The SIIM sample DICOM files, sorted; exits saying what is missing when there are none."""
    sources = sorted(SIIM_DICOM.glob("*.dcm"))
    if not sources:
        sys.exit("bench: ../shared/data/siim-sample/dicom is missing")
    return sources


def with_new_uids(ds: Dataset) -> Dataset:
    """``ds`` (changed in place) as a new image of a new study: new Study, Series, SOP UIDs."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values``; NaN when there are none."""
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Node:
    """A running `pneumonode serve`: its process (the group leader), DICOM port and database."""

    process: subprocess.Popen[bytes]
    port: int
    database_url: str


@contextmanager
def running_node(
    model: Path, work: Path, destination: str, env: Mapping[str, str] | None = None
) -> Iterator[Node]:
    """`pneumonode serve` with its data under ``work/data``, accepting STORESCU, sending results
    to ``destination`` (AE@host:port); ``env`` adds or overrides settings. Stderr goes to
    ``work/serve.log``. SIGTERM to its process group on the way out."""
    port = free_port()
    settings = {
        **os.environ,
        "PNEUMONODE_DATA_DIR": str(work / "data"),
        "PNEUMONODE_MODEL_PATH": str(model),
        "PNEUMONODE_DICOM_PORT": str(port),
        "PNEUMONODE_ALLOWED_PEERS": "STORESCU",
        "PNEUMONODE_DESTINATIONS": destination,
        "PNEUMONODE_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    database_url = settings.get("PNEUMONODE_DATABASE_URL") or (
        f"sqlite:///{work / 'data' / 'pneumonode.sqlite3'}"
    )
    node = subprocess.Popen(
        [str(Path(sys.executable).parent / "pneumonode"), "serve"],
        env=settings,
        stdout=subprocess.DEVNULL,
        stderr=(work / "serve.log").open("wb"),
        start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=60)
        yield Node(node, port, database_url)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=120)
