"""db.outbox on SQLite and on PostgreSQL, without a peer: a due row is claimed by one sender
for its lease, each outcome is recorded (sent, retried after the back-off, dead-lettered) and
audited, and dead rows are queued again only on request."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from pneumonode.db.models import Delivery, DeliveryState, utcnow
from pneumonode.db.outbox import Attempt, add_delivery, claim_due, record_attempts, resend_dead
from pneumonode.db.repository import list_audit
from pneumonode.db.session import Database

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class Backoff:
    max_attempts: int = 2

    def delay(self, attempts: int) -> float:
        return 60.0 * attempts


def _queue(database: Database, tmp_path: Path, count: int) -> list[int]:
    with database.session() as session:
        return [
            add_delivery(
                session,
                tmp_path / f"{index}.dcm",
                "PACS@127.0.0.1:104",
                sop_uid=f"1.2.3.{index}",
                sop_class_uid=SEG_STORAGE,
            )
            for index in range(count)
        ]


def _row(database: Database, delivery_id: int) -> Delivery:
    with database.session() as session:
        row = session.scalars(select(Delivery).where(Delivery.id == delivery_id)).one()
    return row


def _kinds(database: Database) -> list[str]:
    with database.session() as session:
        return [event.kind for event in list_audit(session)]


def test_a_due_row_is_claimed_by_one_sender_for_its_lease(
    database: Database, tmp_path: Path
) -> None:
    ids = _queue(database, tmp_path, 3)
    counts: list[int] = []

    def lease(count: int) -> float:
        counts.append(count)
        return 60.0

    assert [row.id for row in claim_due(database, Delivery, lease, limit=2)] == ids[:2]
    assert [row.id for row in claim_due(database, Delivery, lease)] == ids[2:]
    assert claim_due(database, Delivery, lease) == []  # every row is held by its lease
    assert claim_due(database, Delivery, lease, ids=[]) == []
    assert counts == [2, 1]  # the lease is asked for as many rows as are taken
    assert _row(database, ids[0]).next_attempt_at > utcnow() + timedelta(seconds=50)


def test_outcomes_are_sent_retried_dead_lettered_and_resent_on_request(
    database: Database, tmp_path: Path
) -> None:
    sent, failing, refused = _queue(database, tmp_path, 3)
    delivered = record_attempts(
        database,
        Delivery,
        [
            (sent, Attempt(True, 0)),
            (failing, Attempt(False, 0xA700, "out of resources")),
            (refused, Attempt(False, reason="SOP class refused", permanent=True)),
        ],
        Backoff(),
    )
    assert delivered == [sent]
    assert _row(database, sent).state == DeliveryState.SENT
    row = _row(database, failing)
    assert (row.state, row.attempts, row.last_status) == (DeliveryState.PENDING, 1, 0xA700)
    assert row.last_error == "out of resources"
    assert row.next_attempt_at > utcnow() + timedelta(seconds=50)  # the back-off
    assert (_row(database, refused).state, _row(database, refused).attempts) == ("dead", 1)

    assert (
        record_attempts(database, Delivery, {failing: Attempt(False, reason="down")}, Backoff())
        == []
    )
    row = _row(database, failing)
    assert (row.state, row.attempts, row.last_error) == (DeliveryState.DEAD, 2, "down")
    assert record_attempts(database, Delivery, {10**9: Attempt(True)}, Backoff()) == []  # gone

    assert resend_dead(database, Delivery) == []  # neither ids nor all_dead: nothing
    assert sorted(resend_dead(database, Delivery, all_dead=True)) == [failing, refused]
    row = _row(database, failing)
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 0)
    assert _kinds(database) == [
        *["delivery.queued"] * 3,
        "delivery.sent",
        "delivery.failed",
        "delivery.dead",
        "delivery.dead",
        *["delivery.resend"] * 2,
    ]
