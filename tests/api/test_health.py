"""``/health`` says when deliveries are stuck: dead-lettered or overdue ones make it degraded."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from pneumonode.api import create_app
from pneumonode.api.security import ApiToken
from pneumonode.db.models import Delivery, WorkerHeartbeat, utcnow
from pneumonode.db.outbox import add_delivery, resend_dead
from pneumonode.dicom_node.delivery import RetryPolicy, run_due
from pneumonode.worker.tasks import celery_config

if TYPE_CHECKING:
    from conftest import RunningNode

pytestmark = pytest.mark.integration

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _health(node: RunningNode) -> tuple[int, dict[str, Any]]:
    app = create_app(node.settings, node.database, ApiToken("test-token-0123456789", "settings"))
    with TestClient(app) as client:
        response = client.get("/health")
    return response.status_code, response.json()


def _queue(node: RunningNode, tmp_path: Path, destination: str, name: str) -> int:
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(b"not sent in this test")
    with node.database.session() as session:
        return add_delivery(
            session, path, destination, sop_uid=f"1.2.3.{len(name)}", sop_class_uid=SEG_STORAGE
        )


def test_dead_lettered_and_overdue_deliveries_make_health_degraded(
    node_factory: Callable[..., RunningNode], database_url: str, tmp_path: Path
) -> None:
    node = node_factory(database_url=database_url)
    celery_config(node.settings)  # the embedded broker's folders, as serve makes them
    with node.database.session() as session:  # a worker alive, so that only deliveries matter
        session.add(
            WorkerHeartbeat(name="test:1", model="m", model_version="1", device="cpu", backend="t")
        )
    code, body = _health(node)
    assert (code, body["status"]) == (200, "ok"), body
    assert body["components"]["deliveries"] == {
        "state": "ok",
        "detail": "0 pending, none dead-lettered or overdue",
    }

    # a destination without a port (queued before the settings refused it): dead at once
    dead = _queue(node, tmp_path, "ORTHANC@127.0.0.1", "seg")
    assert run_due(node.database, RetryPolicy(max_attempts=6, timeout=5)) == 0
    # due ten minutes ago and never attempted: nothing is sending
    overdue = _queue(node, tmp_path, "PACS@127.0.0.1:104", "sr-of-it")
    with node.database.session() as session:
        row = session.get(Delivery, overdue)
        assert row is not None
        row.next_attempt_at = utcnow() - timedelta(minutes=10)

    code, body = _health(node)
    assert (code, body["ready"], body["status"]) == (200, True, "degraded"), body
    deliveries = body["components"]["deliveries"]
    assert deliveries["state"] == "degraded"
    assert deliveries["detail"].startswith("1 dead-lettered (the System page lists them")
    assert "`pneumonode deliveries --state dead`" in deliveries["detail"]
    assert "; 1 overdue (due over 5 min ago, not attempted" in deliveries["detail"]

    # re-sent, and the overdue one attempted again later: nothing stuck any more
    assert resend_dead(node.database, Delivery, [dead]) == [dead]
    with node.database.session() as session:
        for delivery_id in (dead, overdue):
            row = session.get(Delivery, delivery_id)
            assert row is not None
            row.next_attempt_at = utcnow() + timedelta(minutes=1)
    code, body = _health(node)
    assert (code, body["status"]) == (200, "ok"), body
    assert body["components"]["deliveries"]["detail"].startswith("2 pending")
