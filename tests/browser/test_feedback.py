"""Feedback round-trips through the page: given on the study page in a real browser (Debian's
Chromium driven by Playwright), it shows on the performance page and in export-feedback, on a
node (`pneumonode serve`) that received SIIM films from dcmtk's storescu and signs a named
token's user in."""

from __future__ import annotations

import csv
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from browser_harness import PNEUMONODE, Node, require_browser, serving, shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

CAROL = "carol-radiologist-token-7f3a9c"


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory,
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
) -> Iterator[Node]:
    require_browser()
    work = tmp_path_factory.mktemp("feedback")
    settings = {
        "PNEUMONODE_MODEL_PATH": str(tiny_checkpoint(bias=20.0)),  # every film positive
        "PNEUMONODE_API_TOKENS": f"carol:{CAROL}",
    }
    with serving(work, siim_sample_dicoms[:2], settings) as node:
        yield node


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
    sign_in(page, node.url, CAROL)
    _review(page, 0, "Agree (the model's call is right)", "clear apical pneumothorax")
    shot(page, "feedback")
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
    shot(page, "performance")

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
