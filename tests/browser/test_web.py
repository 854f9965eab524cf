"""The web page in a real browser (Debian's Chromium driven by Playwright) against a running node
that received the 10 SIIM samples from dcmtk's storescu, and sends its results (SEG, SR and SC)
to a PACS that is down, once: they are dead-lettered."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select

from browser_harness import ARTIFACTS, Node, require_browser, serving, shot, sign_in
from peers_harness import free_port, storescu
from pneumonode.config import SHIPPED_MODEL
from pneumonode.db.models import Delivery, Instance, Result
from pneumonode.identity import OWN_OUTPUT_REASON
from pneumonode.results import result_kind

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

TOKEN = "browser-test-token-4c1d9a7e5b2f"
GROWN = 0.25  # the model's grow_threshold in these tests


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory,
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
) -> Iterator[Node]:
    require_browser()
    work = tmp_path_factory.mktemp("browser")
    model = work / "model"  # the tiny model with the shipped card: the page shows its limits
    shutil.copytree(tiny_checkpoint(bias=20.0), model)
    shutil.copy(SHIPPED_MODEL / "MODEL_CARD.md", model / "MODEL_CARD.md")
    config = json.loads((model / "config.json").read_text())
    assert config["postprocess"]["threshold"] > GROWN
    config["postprocess"]["grow_threshold"] = GROWN  # a model that grows its regions (as 2.1.2 did)
    (model / "config.json").write_text(json.dumps(config))
    pacs = f"PACS@127.0.0.1:{free_port()}"  # nothing listens there
    settings = {
        "PNEUMONODE_MODEL_PATH": str(model),
        "PNEUMONODE_API_TOKEN": TOKEN,
        "PNEUMONODE_DESTINATIONS": pacs,
        "PNEUMONODE_SC_DESTINATIONS": pacs,
        "PNEUMONODE_SEND_MAX_ATTEMPTS": "1",
    }
    with serving(work, siim_sample_dicoms, settings) as node:
        yield node


@pytest.fixture(scope="module")
def viewport() -> dict[str, int]:
    return {"width": 1280, "height": 900}


def _sign_in(page: object, node: Node, token: str = TOKEN) -> None:
    sign_in(page, node.url, token)


def _shot(page: object, name: str) -> Path:
    return shot(page, name, full_page=False)


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
    page.get_by_role("link", name="System", exact=True).click()  # type: ignore[attr-defined]
    page.locator('[data-component="workers"]').wait_for()  # type: ignore[attr-defined]
    assert "ok" in page.locator('[data-component="database"]').inner_text()  # type: ignore[attr-defined]
    page.get_by_text("Latency per stage").wait_for()  # type: ignore[attr-defined]
    # the model's post-processing, growing included
    page.get_by_text(f"(regions grown to {GROWN})").wait_for()  # type: ignore[attr-defined]
    _shot(page, "system")


def _finished_worklist(page: object, node: Node, own: bool = False) -> object:
    """Signed in, on the worklist, every study finished; the rows."""
    _sign_in(page, node)
    rows = page.locator("tr[data-study]")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while rows.count() < 10 or page.locator('[data-badge="pending"]').count():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the worklist did not show 10 finished studies"
        page.wait_for_timeout(500)  # type: ignore[attr-defined]
    return rows


def test_worklist_columns_in_urgency_order(page: object, node: Node) -> None:
    _finished_worklist(page, node)
    # the tiny model has no calibrated probability: give the results the ones a calibrated
    # model would have, all different, in an order unrelated to their arrival
    database = node.database()
    try:
        with database.session() as session:
            results = list(session.scalars(select(Result).order_by(Result.id)))
            for index, result in enumerate(results):
                result.probability = round(0.35 + ((index * 7) % len(results)) / 20, 2)
    finally:
        database.dispose()
    page.reload()  # type: ignore[attr-defined]
    page.locator("tr[data-study] [data-probability]").first.wait_for()  # type: ignore[attr-defined]
    headers = page.locator("thead th").all_inner_texts()  # type: ignore[attr-defined]
    assert any("Probability" in h and "calibrated, of pneumothorax" in h for h in headers)
    assert {"Side", "Area"} <= {h.strip() for h in headers}
    assert "Most urgent first" in page.locator('[data-control="sort"]').inner_text()  # type: ignore[attr-defined]
    shown = page.locator("tr[data-study] td[data-probability]").all_inner_texts()  # type: ignore[attr-defined]
    values = [float(v) for v in shown]
    assert values == sorted(values, reverse=True) and len(set(values)) > 5, values
    sides = page.locator("tr[data-study] td[data-side]").all_inner_texts()  # type: ignore[attr-defined]
    assert set(sides) <= {"left", "right", "bilateral"}, sides
    areas = page.locator("tr[data-study] td[data-area]").all_inner_texts()  # type: ignore[attr-defined]
    assert all(re.fullmatch(r"\d+\.\d cm²|\d+ pixels", a) for a in areas), areas
    _shot(page, "worklist-urgency")
    # sorted by arrival on request
    page.locator('[data-control="sort"]').select_option("-received")  # type: ignore[attr-defined]
    page.wait_for_timeout(1000)  # type: ignore[attr-defined]
    received = page.locator("tr[data-study] td[data-time]").all_inner_texts()  # type: ignore[attr-defined]
    assert received == sorted(received, reverse=True)


def test_one_date_format_everywhere(page: object, node: Node) -> None:
    rows = _finished_worklist(page, node)
    dates = page.locator("tr[data-study] td[data-date]").all_inner_texts()  # type: ignore[attr-defined]
    assert "1901-01-01" in dates  # the SIIM films' StudyDate 19010101, shown as a date
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}|—", d) for d in dates), dates
    times = page.locator("tr[data-study] td[data-time]").all_inner_texts()  # type: ignore[attr-defined]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", t) for t in times), times
    assert "19010101" not in page.locator("main").inner_text()  # type: ignore[attr-defined]
    rows.first.get_by_role("link").click()
    page.locator("ol time").first.wait_for()  # type: ignore[attr-defined]
    assert page.locator("p [data-date]").inner_text() == "1901-01-01"  # type: ignore[attr-defined]
    stamps = page.locator("ol time").all_inner_texts()  # type: ignore[attr-defined]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", t) for t in stamps), stamps


def test_the_model_limits_are_on_the_worklist_and_the_study_page(page: object, node: Node) -> None:
    rows = _finished_worklist(page, node)
    limits = page.locator("[data-model-limits]")  # type: ignore[attr-defined]
    limits.wait_for()
    assert "AI result, not for clinical use. A research model" in limits.inner_text()
    assert "called positive at a probability of" not in limits.inner_text()  # the tiny model
    limits.get_by_text("Known limits of the model").click()
    one_archive = limits.get_by_text("One archive. Every training film comes from the NIH")
    assert one_archive.is_visible()
    _shot(page, "model-limits")
    rows.first.get_by_role("link").click()
    page.locator("[data-model-limits]").get_by_text(
        "Not for clinical use. Not a medical device."
    ).wait_for(state="attached")  # type: ignore[attr-defined]


def test_deliveries_are_labelled_seg_sr_sc(page: object, node: Node) -> None:
    rows = _finished_worklist(page, node)
    rows.last.get_by_role("link").click()
    page.locator("li[data-delivery]").first.wait_for()  # type: ignore[attr-defined]
    kinds = page.locator("li[data-delivery] [data-kind]").all_inner_texts()  # type: ignore[attr-defined]
    assert sorted(kinds) == ["SC", "SEG", "SR"], kinds
    _shot(page, "deliveries")


def _send_a_seg_back(node: Node) -> tuple[str, str]:
    """One study's SEG, sent back to the node as a PACS would: (study UID, SEG SOP UID)."""
    database = node.database()
    try:
        with database.session() as session:
            seg = next(
                d
                for d in session.scalars(select(Delivery).order_by(Delivery.id))
                if result_kind(d.sop_class_uid) == "SEG"
            )
            study_uid, sop_uid, path = seg.study_uid, seg.sop_uid, Path(seg.path)
        storescu([path], node.port)
        deadline = time.monotonic() + 30
        while True:
            with database.session() as session:
                back = session.scalars(select(Instance).where(Instance.sop_uid == sop_uid)).first()
                if back is not None:
                    assert back.skip_reason == OWN_OUTPUT_REASON
                    break
            assert time.monotonic() < deadline, "the SEG did not come back"
            time.sleep(0.5)
    finally:
        database.dispose()
    assert study_uid is not None
    return study_uid, sop_uid


def test_our_own_returned_results_are_hidden_unless_shown(page: object, node: Node) -> None:
    study_uid, seg_uid = _send_a_seg_back(node)
    _finished_worklist(page, node)
    row = page.locator(f'tr[data-study="{study_uid}"]')  # type: ignore[attr-defined]
    row.wait_for()
    page.wait_for_timeout(3500)  # type: ignore[attr-defined]  # a live update or two later
    assert row.locator("td[data-images]").get_attribute("data-images") == "1"  # not our SEG
    page.locator('[data-control="own"]').check()  # type: ignore[attr-defined]
    row.locator('td[data-images="2"]').wait_for()
    row.get_by_role("link").click()
    page.locator("h2#study-title").wait_for()  # type: ignore[attr-defined]
    assert page.locator("[data-own-output]").count() == 0  # type: ignore[attr-defined]
    assert page.get_by_text("No image to show").count() == 0  # type: ignore[attr-defined]
    page.locator('[data-control="own"]').check()  # type: ignore[attr-defined]
    page.locator("[data-own-output]").wait_for()  # type: ignore[attr-defined]
    assert page.get_by_text(seg_uid).count() == 1  # type: ignore[attr-defined]
    _shot(page, "own-results")


def test_the_system_page_lists_dead_letters_and_resends_one(page: object, node: Node) -> None:
    _sign_in(page, node)
    page.get_by_role("link", name="System", exact=True).click()  # type: ignore[attr-defined]
    listed = page.locator("tr[data-dead-delivery]")  # type: ignore[attr-defined]
    listed.first.wait_for(timeout=30_000)
    first = listed.first
    delivery_id = int(first.get_attribute("data-dead-delivery"))
    assert first.locator("[data-kind]").inner_text() in ("SEG", "SR", "SC")
    reason = first.locator("[data-reason]").inner_text()
    assert reason.startswith("dead-lettered after 1 attempt: "), reason
    assert re.fullmatch(
        r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", first.locator("[data-time]").inner_text()
    )
    _shot(page, "dead-letters")
    first.get_by_role("button", name="Re-send").click()
    status = page.get_by_role("status")  # type: ignore[attr-defined]
    status.wait_for()
    assert status.inner_text() == f"delivery {delivery_id} queued again"
    database = node.database()
    try:
        with database.session() as session:
            from pneumonode.db.models import AuditEvent

            resent = [
                e.detail
                for e in session.scalars(
                    select(AuditEvent).where(AuditEvent.kind == "delivery.resend")
                )
            ]
    finally:
        database.dispose()
    assert {"delivery_id": delivery_id} in resent


def test_the_favicon_is_served(page: object, node: Node) -> None:
    _sign_in(page, node)
    href = page.locator('link[rel="icon"]').get_attribute("href")  # type: ignore[attr-defined]
    response = page.request.get(node.url.rstrip("/") + href)  # type: ignore[attr-defined]
    assert response.status == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in response.body()
