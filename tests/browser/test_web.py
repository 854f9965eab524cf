"""The web page in a real browser (Debian's Chromium driven by Playwright) against a running node
that received the 10 SIIM samples from dcmtk's storescu."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from peers_harness import free_port, storescu, wait_for_port
from pneumonode.api.app import WEB_DIST

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-test-token-4c1d9a7e5b2f"
ARTIFACTS = Path(os.environ.get("PNEUMONODE_TEST_ARTIFACTS", "test-artifacts"))


@dataclass
class Node:
    url: str
    port: int
    env: dict[str, str]


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory,
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
) -> Iterator[Node]:
    if not (WEB_DIST / "index.html").is_file():
        pytest.skip("the web page is not built: run `make web` (npm ci + vite build)")
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    work = tmp_path_factory.mktemp("browser")
    dicom_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "PNEUMONODE_DATA_DIR": str(work / "data"),
        "PNEUMONODE_MODEL_PATH": str(tiny_checkpoint(bias=20.0)),
        "PNEUMONODE_DICOM_PORT": str(dicom_port),
        "PNEUMONODE_API_PORT": str(api_port),
        "PNEUMONODE_API_TOKEN": TOKEN,
        "PNEUMONODE_ALLOWED_PEERS": "STORESCU",
        "PNEUMONODE_INFERENCE_BACKEND": "torch",
    }
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "pneumonode"), "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(api_port, timeout=60)
        wait_for_port(dicom_port, timeout=60)
        storescu(siim_sample_dicoms, dicom_port)
        yield Node(f"http://127.0.0.1:{api_port}/", dicom_port, env)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    yield page
    context.close()


def _sign_in(page: object, node: Node, token: str = TOKEN) -> None:
    page.goto(node.url)  # type: ignore[attr-defined]
    page.get_by_label("API token").fill(token)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]


def _shot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)  # type: ignore[attr-defined]
    return path


def test_a_wrong_token_is_refused(page: object, node: Node) -> None:
    _sign_in(page, node, token="not-the-token")
    alert = page.get_by_role("alert")  # type: ignore[attr-defined]
    alert.wait_for()
    assert "Token refused" in alert.inner_text()
    assert page.locator("tr[data-study]").count() == 0  # type: ignore[attr-defined]
    _shot(page, "wrong-token")


def test_the_worklist_lists_the_studies(page: object, node: Node) -> None:
    _sign_in(page, node)
    rows = page.locator("tr[data-study]")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while rows.count() < 10 or page.locator('[data-badge="pending"]').count():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the worklist did not show 10 finished studies"
        page.wait_for_timeout(500)  # type: ignore[attr-defined]
    assert page.locator('tr[data-study] [data-badge="positive"]').count() == 10  # type: ignore[attr-defined]
    assert page.get_by_text("AI result — not for clinical use").is_visible()  # type: ignore[attr-defined]
    _shot(page, "worklist")


def _image(page: object) -> np.ndarray:
    png = page.locator("img[data-sop]").first.screenshot()  # type: ignore[attr-defined]
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_a_positive_study_shows_its_overlay(page: object, node: Node) -> None:
    _sign_in(page, node)
    page.locator("tr[data-study]").first.get_by_role("link").click()  # type: ignore[attr-defined]
    page.locator("img[data-sop]").wait_for()  # type: ignore[attr-defined]
    page.wait_for_timeout(800)  # type: ignore[attr-defined]
    with_overlay = _image(page)
    _shot(page, "study")
    page.locator('[data-control="overlay"]').uncheck()  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => document.querySelector('img[data-sop]').alt === 'Radiograph'"
    )
    page.wait_for_timeout(800)  # type: ignore[attr-defined]
    plain = _image(page)
    h, w, _ = plain.shape
    inside = (slice(h // 3, 2 * h // 3), slice(w // 3, 2 * w // 3))  # the mask covers it all
    difference = np.abs(with_overlay[inside] - plain[inside]).mean()
    assert difference > 15, difference
    assert page.get_by_text("present").first.is_visible()  # type: ignore[attr-defined]
    docs = Path(__file__).resolve().parents[2] / "docs" / "screenshot-study.png"
    if not docs.exists():  # the README's picture: made by this test, committed once
        docs.parent.mkdir(exist_ok=True)
        shutil.copy(ARTIFACTS / "study.png", docs)


def test_re_run_from_the_study_page(page: object, node: Node) -> None:
    _sign_in(page, node)
    page.locator("tr[data-study]").first.get_by_role("link").click()  # type: ignore[attr-defined]
    page.get_by_role("button", name="Re-run").click()  # type: ignore[attr-defined]
    status = page.get_by_role("status")  # type: ignore[attr-defined]
    status.wait_for()
    assert "queued to run again" in status.inner_text()
    _shot(page, "re-run")


def test_upload_a_dicom_file(
    page: object, node: Node, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    ds = pydicom.dcmread(siim_sample_dicoms[0])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in "abc")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    new = tmp_path / "new.dcm"
    ds.save_as(new)
    _sign_in(page, node)
    page.get_by_role("link", name="Upload").click()  # type: ignore[attr-defined]
    page.locator("#files").set_input_files(str(new))  # type: ignore[attr-defined]
    page.locator('[data-upload="stored"]').wait_for()  # type: ignore[attr-defined]
    assert "1 stored, 0 refused" in page.get_by_role("status").inner_text()  # type: ignore[attr-defined]
    _shot(page, "upload")
    page.get_by_role("link", name="Worklist").first.click()  # type: ignore[attr-defined]
    page.locator(f'tr[data-study="{ds.StudyInstanceUID}"]').wait_for(timeout=30_000)  # type: ignore[attr-defined]


def test_the_system_view(page: object, node: Node) -> None:
    _sign_in(page, node)
    page.get_by_role("link", name="System").click()  # type: ignore[attr-defined]
    page.locator('[data-component="workers"]').wait_for()  # type: ignore[attr-defined]
    assert "ok" in page.locator('[data-component="database"]').inner_text()  # type: ignore[attr-defined]
    page.get_by_text("Latency per stage").wait_for()  # type: ignore[attr-defined]
    _shot(page, "system")
