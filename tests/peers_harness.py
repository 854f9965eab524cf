"""Real DICOM peers for tests: dcmtk tools, dcmtk storescp and Orthanc on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

#: storescu's option that proposes each transfer syntax (uncompressed ones need none)
STORESCU_SYNTAX_FLAG = {
    JPEGBaseline8Bit: "-xy",
    JPEGExtended12Bit: "-xx",
    JPEGLossless: "-xs",
    JPEGLosslessSV1: "-xs",
    JPEGLSLossless: "-xt",
    JPEGLSNearLossless: "-xu",
    JPEG2000Lossless: "-xv",
    JPEG2000: "-xw",
    RLELossless: "-xr",
    DeflatedExplicitVRLittleEndian: "-xd",
}


def tool(name: str) -> str:
    """Path of a Debian-packaged DICOM tool, or skip the test saying how to install it."""
    path = shutil.which(name)
    if path is None:
        package = {"Orthanc": "orthanc", "dciodvfy": "dicom3tools"}.get(name, "dcmtk")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu_args(files: Sequence[Path]) -> list[str]:
    """storescu options proposing exactly the transfer syntaxes of ``files`` (with -R)."""
    flags = {"-R"}
    for path in files:
        syntax = read_file_meta_info(path).TransferSyntaxUID
        if syntax in STORESCU_SYNTAX_FLAG:
            flags.add(STORESCU_SYNTAX_FLAG[syntax])
    return sorted(flags)


def storescu_command(
    files: Sequence[Path], port: int, *, calling: str = "STORESCU", called: str = "PNEUMONODE"
) -> list[str]:
    """The storescu command line sending ``files`` in one association."""
    args = [tool("storescu"), "-aet", calling, "-aec", called, *storescu_args(files)]
    return [*args, "127.0.0.1", str(port), *map(str, files)]


def storescu(
    files: Sequence[Path],
    port: int,
    *,
    calling: str = "STORESCU",
    called: str = "PNEUMONODE",
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` in one association with dcmtk's storescu; returns the finished process."""
    args = storescu_command(files, port, calling=calling, called=called)
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout)


def echoscu(
    port: int, *, calling: str = "STORESCU", called: str = "PNEUMONODE"
) -> subprocess.CompletedProcess[str]:
    args = [tool("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)


@dataclass
class StoreSCP:
    """dcmtk's storescp receiving into ``folder``."""

    ae_title: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"


@contextmanager
def run_storescp(
    folder: Path,
    ae_title: str = "STORESCP",
    port: int | None = None,
    options: Sequence[str] = ("+xa",),
) -> Iterator[StoreSCP]:
    """dcmtk's storescp; ``options`` e.g. ``("+xa", "+B")`` to keep the bytes as received."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    args = [tool("storescp"), "-aet", ae_title, "--output-directory", str(folder), *options]
    args.append(str(port))
    process = subprocess.Popen(
        args, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield StoreSCP(ae_title, port, folder, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Orthanc:
    """A real Orthanc PACS: DICOM on ``dicom_port``, REST on ``http_port`` (loopback only)."""

    ae_title: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen[bytes]

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def rest(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as rsp:
            return json.loads(rsp.read())

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> object:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=body,
            headers={"Content-Type": content_type},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as rsp:
            return json.loads(rsp.read())

    def file(self, orthanc_id: str) -> bytes:
        """The DICOM file of one instance, as Orthanc stored it."""
        url = f"http://127.0.0.1:{self.http_port}/instances/{orthanc_id}/file"
        with urllib.request.urlopen(url, timeout=30) as rsp:
            return bytes(rsp.read())

    def instance_uids(self) -> set[str]:
        """SOP Instance UIDs Orthanc holds."""
        uids = set()
        for orthanc_id in self.rest("/instances"):  # type: ignore[union-attr]
            tags = self.rest(f"/instances/{orthanc_id}/simplified-tags")
            uids.add(str(tags["SOPInstanceUID"]))  # type: ignore[index]
        return uids


@contextmanager
def run_orthanc(
    folder: Path,
    ae_title: str = "ORTHANC",
    modalities: dict[str, list[object]] | None = None,
    ports: tuple[int, int] | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc with a JSON config in ``folder``; stopped by PID at the end.

    ``ports`` (DICOM, HTTP) restarts an Orthanc where an earlier one was (same folder: same data).
    """
    binary = tool("Orthanc")
    dicom_port, http_port = ports or (free_port(), free_port())
    config = {
        "Name": "pneumonode-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": modalities or {},
        "HttpServerEnabled": True,
        "StableAge": 1,
    }
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=folder
    )
    try:
        wait_for_port(http_port, timeout=60)
        wait_for_port(dicom_port, timeout=60)
        yield Orthanc(ae_title, dicom_port, http_port, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dicom3tools' dciodvfy reports for ``path`` (warnings left out)."""
    done = subprocess.run(
        [tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
