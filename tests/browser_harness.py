"""What the browser tests share: a node (`pneumonode serve`) that received films from dcmtk's
storescu, signing in to its page and screenshots (their fixtures are in browser/conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers_harness import free_port, storescu, wait_for_port
from pneumonode.api.app import WEB_DIST
from pneumonode.db.session import Database

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("PNEUMONODE_TEST_ARTIFACTS", "test-artifacts"))
PNEUMONODE = str(Path(sys.executable).parent / "pneumonode")


@dataclass
class Node:
    url: str
    port: int  # DICOM
    env: dict[str, str]
    database_url: str

    def database(self) -> Database:
        """The node's database, as the test reads and arranges it (no migrations run)."""
        return Database(self.database_url)


def require_browser() -> None:
    """Skip where the page is not built or Chromium is not installed."""
    if not (WEB_DIST / "index.html").is_file():
        pytest.skip("the web page is not built: run `make web` (npm ci + vite build)")
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")


@contextmanager
def serving(work: Path, dicoms: list[Path], settings: dict[str, str]) -> Iterator[Node]:
    """`pneumonode serve` with its data in ``work`` and ``settings`` on top of free ports, the
    STORESCU peer and the torch backend, once it received ``dicoms``; stopped at the end."""
    dicom_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "PNEUMONODE_DATA_DIR": str(work / "data"),
        "PNEUMONODE_DICOM_PORT": str(dicom_port),
        "PNEUMONODE_API_PORT": str(api_port),
        "PNEUMONODE_ALLOWED_PEERS": "STORESCU",
        "PNEUMONODE_INFERENCE_BACKEND": "torch",
        **settings,
    }
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(
        [PNEUMONODE, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_port(api_port, timeout=60)
        wait_for_port(dicom_port, timeout=60)
        storescu(dicoms, dicom_port)
        database_url = f"sqlite:///{work / 'data' / 'pneumonode.sqlite3'}"
        yield Node(f"http://127.0.0.1:{api_port}/", dicom_port, env, database_url)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def sign_in(page: object, url: str, token: str) -> None:
    page.goto(url)  # type: ignore[attr-defined]
    page.get_by_label("API token").fill(token)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]


def shot(page: object, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)  # type: ignore[attr-defined]
    return path
