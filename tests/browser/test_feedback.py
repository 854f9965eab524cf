"""Feedback round-trips through the page: given on the study page in a real browser (Debian's
Chromium driven by Playwright), it shows on the performance page and in export-feedback, on a
node (`pneumonode serve`) that received SIIM films from dcmtk's storescu and signs a named
token's user in."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers_harness import free_port, storescu, wait_for_port
from pneumonode.api.app import WEB_DIST

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CAROL = "carol-radiologist-token-7f3a9c"
ARTIFACTS = Path(os.environ.get("PNEUMONODE_TEST_ARTIFACTS", "test-artifacts"))
PNEUMONODE = str(Path(sys.executable).parent / "pneumonode")


@dataclass
class Node:
    url: str
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
    work = tmp_path_factory.mktemp("feedback")
    dicom_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "PNEUMONODE_DATA_DIR": str(work / "data"),
        "PNEUMONODE_MODEL_PATH": str(tiny_checkpoint(bias=20.0)),  # every film positive
        "PNEUMONODE_DICOM_PORT": str(dicom_port),
        "PNEUMONODE_API_PORT": str(api_port),
        "PNEUMONODE_API_TOKENS": f"carol:{CAROL}",
        "PNEUMONODE_ALLOWED_PEERS": "STORESCU",
        "PNEUMONODE_INFERENCE_BACKEND": "torch",
    }
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(
        [PNEUMONODE, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_port(api_port, timeout=60)
        wait_for_port(dicom_port, timeout=60)
        storescu(siim_sample_dicoms[:2], dicom_port)
        yield Node(f"http://127.0.0.1:{api_port}/", env)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def page() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        yield context.new_page()
        context.close()
        browser.close()


def _shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def _review(page: object, study: int, verdict: str, comment: str) -> None:
    page.goto(page.url.split("#")[0] + "#/")  # type: ignore[attr-defined]
    rows = page.locator("tr[data-study]")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 90
    while rows.count() < 2 or page.locator('[data-badge="pending"]').count():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the worklist did not show 2 finished studies"
        page.wait_for_timeout(500)  # type: ignore[attr-defined]
    rows.nth(study).get_by_role("link").first.click()
    form = page.locator("form[data-feedback]").first  # type: ignore[attr-defined]
    form.wait_for(timeout=60_000)
    form.get_by_role("radio", name=verdict).check()
    form.get_by_label("Comment (optional)").fill(comment)
    form.get_by_role("button", name="Save feedback").click()
    form.get_by_role("status").filter(has_text="Feedback saved").wait_for()
    assert (
        form.locator("[data-verdict]")
        .inner_text()
        .startswith(f"Newest verdict: {verdict.split()[0].lower()} by carol")
    )


def test_feedback_reaches_the_performance_page_and_the_export(
    page: object, node: Node, tmp_path: Path
) -> None:
    page.goto(node.url)  # type: ignore[attr-defined]
    page.get_by_label("API token").fill(CAROL)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]
    _review(page, 0, "Agree (the model's call is right)", "clear apical pneumothorax")
    _shot(page, "feedback")
    _review(page, 1, "Disagree (no pneumothorax)", "skin fold")

    page.get_by_role("link", name="Performance").click()  # type: ignore[attr-defined]
    reviewed = page.locator('[data-stat="Reviewed"]')  # type: ignore[attr-defined]
    reviewed.wait_for()
    assert reviewed.inner_text() == "2"
    assert page.locator('[data-stat="Films"]').inner_text() == "2"  # type: ignore[attr-defined]
    assert page.locator('[data-stat="Agreement"]').inner_text() == "50 %"  # type: ignore[attr-defined]
    assert page.locator('[data-stat="PPV"]').inner_text() == "50 %"  # type: ignore[attr-defined]
    assert page.get_by_role("img", name="Films and agreement per day").is_visible()  # type: ignore[attr-defined]
    assert page.locator('[data-drift="rows"]').is_visible()  # type: ignore[attr-defined]
    _shot(page, "performance")

    out = tmp_path / "export"
    done = subprocess.run(
        [PNEUMONODE, "export-feedback", "--out", str(out), "--size", "128"],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with (out / "index.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["has_pneumothorax"] for row in rows) == ["0", "1"]
    for row in rows:
        assert (out / "png_images" / f"{row['ImageId']}.png").is_file()
        assert (out / "png_masks" / f"{row['ImageId']}.png").is_file()
