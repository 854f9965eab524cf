"""Dead-lettered alerts on the System page, in a real browser (Debian's Chromium driven by
Playwright): a node (`pneumonode serve`) that alerts an HL7 receiver and a webhook that are both
down, with one attempt allowed, receives a film it calls positive from dcmtk's storescu; both
alerts are dead-lettered, listed with their target, kind, attempts and reason, and Re-send
queues one again (audited, then attempted again by the node's alert loop)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from browser_harness import require_browser, serving, shot, sign_in
from peers_harness import free_port
from pneumonode.db.models import AuditEvent
from pneumonode.db.session import Database

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

TOKEN = "alerts-page-token-5e8b2d7c1a9f"
TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


@dataclass
class Node:
    url: str
    hl7: str  # host:port, nothing listens there
    webhook: str  # a URL with a secret in its path, nothing listens there
    database_url: str

    def audit(self, kind: str) -> list[dict[str, object]]:
        """The details of the audit events of ``kind``, oldest first."""
        database = Database(self.database_url)
        try:
            with database.session() as session:
                events = session.scalars(
                    select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)
                )
                return [dict(event.detail or {}) for event in events]
        finally:
            database.dispose()


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory,
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
) -> Iterator[Node]:
    require_browser()
    work = tmp_path_factory.mktemp("alerts-page")
    hl7 = f"127.0.0.1:{free_port()}"
    webhook = f"http://127.0.0.1:{free_port()}/hooks/secret-path-token"
    settings = {
        "PNEUMONODE_MODEL_PATH": str(tiny_checkpoint(bias=20.0)),  # every film positive
        "PNEUMONODE_API_TOKEN": TOKEN,
        "PNEUMONODE_HL7_DESTINATIONS": hl7,
        "PNEUMONODE_WEBHOOK_URLS": webhook,
        "PNEUMONODE_WEBHOOK_SECRET": "alerts-page-webhook-secret-0123456789",
        "PNEUMONODE_ALERT_TIMEOUT": "2",
        "PNEUMONODE_SEND_MAX_ATTEMPTS": "1",
    }
    with serving(work, siim_sample_dicoms[:1], settings) as served:
        yield Node(served.url, hl7, webhook, served.database_url)


def test_dead_lettered_alerts_are_listed_and_one_is_resent(page: object, node: Node) -> None:
    sign_in(page, node.url, TOKEN)
    page.get_by_role("link", name="System", exact=True).click()  # type: ignore[attr-defined]
    section = page.locator("[data-alert-problems]")  # type: ignore[attr-defined]
    rows = section.locator("tr[data-dead-alert]")
    deadline = time.monotonic() + 120
    while rows.count() < 2:  # the page reloads its lists every 5 s
        assert time.monotonic() < deadline, "the System page did not list 2 dead-lettered alerts"
        page.wait_for_timeout(500)  # type: ignore[attr-defined]
    assert "Dead-lettered and overdue alerts (2)" in section.locator("h3").inner_text()
    by_kind = {row.locator("[data-channel]").inner_text(): row for row in rows.all()}
    assert set(by_kind) == {"HL7", "webhook"}, by_kind
    hl7, webhook = by_kind["HL7"], by_kind["webhook"]
    assert hl7.locator("[data-target]").inner_text() == node.hl7
    shown_url = webhook.locator("[data-target]").inner_text()
    assert shown_url.startswith("http://127.0.0.1:") and "secret-path-token" not in shown_url
    assert "secret-path-token" not in page.locator("main").inner_text()  # type: ignore[attr-defined]
    for row in (hl7, webhook):
        assert row.locator('[data-badge="dead"]').is_visible()
        assert row.locator("[data-attempts]").inner_text() == "1"
        reason = row.locator("[data-reason]").inner_text()
        assert reason.startswith("dead-lettered after 1 attempt: "), reason
        assert TIME.fullmatch(row.locator("[data-time]").inner_text())
        assert row.get_by_role("link", name=re.compile("Open")).is_visible()
    shot(page, "dead-alerts")

    alert_id = int(hl7.get_attribute("data-dead-alert"))
    dead_before = sum(1 for d in node.audit("alert.dead") if d.get("alert_id") == alert_id)
    hl7.get_by_role("button", name=f"Re-send alert {alert_id}").click()
    status = section.get_by_role("status")
    status.wait_for()
    assert status.inner_text() == f"alert {alert_id} queued to be sent again"
    assert {"alert_id": alert_id} in node.audit("alert.resend")
    # queued again: the node's alert loop attempts it (the receiver is still down) and
    # dead-letters it once more, after its one attempt
    deadline = time.monotonic() + 60
    while sum(1 for d in node.audit("alert.dead") if d.get("alert_id") == alert_id) <= dead_before:
        assert time.monotonic() < deadline, "the re-sent alert was not attempted again"
        time.sleep(0.5)
    section.locator(f'tr[data-dead-alert="{alert_id}"]').wait_for(timeout=30_000)
