"""The outbox's rows: DICOM deliveries (``deliveries``) and alerts (``alerts``), queued, claimed
for an attempt with a lease, and each attempt's outcome recorded; every step audited.

Both tables live the same life (:class:`~pneumonode.db.models.DeliveryState`), and one set of
functions serves both (``model`` names the table):

- a row is queued pending, due at once or after a claim its queuer holds while it sends it;
- :func:`claim_due` takes due pending rows for an attempt: their next attempt moves past the time
  sending may take, in an UPDATE that checks again that each is pending and due, so two senders
  never send the same row, and a sender that dies leaves its rows due again;
- :func:`record_attempts` counts the attempt and makes the row sent, pending again after
  ``backoff.delay(attempts)``, or dead-lettered with the reason (a permanent failure, or the
  last attempt), audited as ``<name>.sent``, ``<name>.failed`` or ``<name>.dead``;
- :func:`resend_dead` queues dead-lettered rows again, on request only (``<name>.resend``).

What is sent, how, and which failures are permanent is the senders' (``dicom_node.delivery``,
``alerts.outbox``). Audit messages name a receiver as :func:`shown_destination` does (a webhook's
URL redacted) and never hold patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pneumonode.addresses import redact_url
from pneumonode.db.audit import audit
from pneumonode.db.models import (
    Alert,
    AlertChannel,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    Result,
    utcnow,
)
from pneumonode.db.session import Database

__all__ = [
    "CHANNEL_NAMES",
    "Attempt",
    "Backoff",
    "add_delivery",
    "alerts_of_result",
    "claim_due",
    "queue_alert",
    "record_attempts",
    "resend_dead",
    "shown_destination",
    "withdraw_alerts",
]

log = logging.getLogger(__name__)

Row = TypeVar("Row", Delivery, Alert)

#: How an alert's channel is named in the audit trail and logs.
CHANNEL_NAMES = {AlertChannel.HL7: "HL7 ORU", AlertChannel.WEBHOOK: "webhook"}


class Backoff(Protocol):
    """The retry policy an outcome is recorded by (``dicom_node.delivery.RetryPolicy``)."""

    @property
    def max_attempts(self) -> int: ...

    def delay(self, attempts: int) -> float:
        """Seconds until the next attempt after ``attempts`` attempts."""
        ...


@dataclass(frozen=True)
class Attempt:
    """One attempt's outcome, as the outbox records it.

    ``status``: what the peer answered (a C-STORE status, an ACK code, an HTTP status), if it
    did. ``reason`` goes to logs and the audit trail, so it never holds patient data; ``error``,
    kept on the row instead of ``reason`` when given, may quote what the peer said.
    ``permanent``: no retry can help, the row is dead-lettered at once.
    """

    ok: bool
    status: int | str | None = None
    reason: str = ""
    error: str | None = None
    permanent: bool = False


def _name(model: type[Delivery] | type[Alert]) -> str:
    """The prefix of the table's audit kinds and of its id in their detail."""
    return "alert" if model is Alert else "delivery"


def shown_destination(channel: str, destination: str) -> str:
    """An alert's destination as logs, the audit trail and /health show it (a URL redacted)."""
    return redact_url(destination) if channel == AlertChannel.WEBHOOK else destination


def _alert_subject(row: Alert, correction: bool = False) -> str:
    """How messages name an alert: ``alert 7 (HL7 ORU)``, ``alert 8 (webhook correction)``."""
    what = CHANNEL_NAMES.get(AlertChannel(row.channel), row.channel)
    return f"alert {row.id} ({what}{' correction' if correction else ''})"


def _detail(row: Delivery | Alert) -> dict[str, Any]:
    if isinstance(row, Alert):
        shown = shown_destination(row.channel, row.destination)
        return {"alert_id": row.id, "channel": row.channel, "destination": shown}
    return {"delivery_id": row.id, "destination": row.destination}


def add_delivery(
    session: Session,
    path: Path,
    destination: str,
    *,
    sop_uid: str,
    sop_class_uid: str,
    study_uid: str | None = None,
    result_id: int | None = None,
    claim_seconds: float | None = None,
) -> int:
    """Queue ``path`` for ``destination`` (``AE@host:port``) within ``session``; returns the row
    id.

    One row per (destination, SOP Instance UID): queueing the same object again (a re-run makes
    the same UIDs) resets that row to pending with fresh attempts instead of adding a second one.
    ``claim_seconds``: the caller sends it at once; the delivery loop leaves it alone for that
    long (then it is due, in case the caller died before sending).
    """
    delivery = session.scalars(
        select(Delivery)
        .where(Delivery.destination == destination)
        .where(Delivery.sop_uid == sop_uid)
        .order_by(Delivery.id)
        .limit(1)
    ).first()
    if delivery is None:
        delivery = Delivery(destination=destination, sop_uid=sop_uid)
        session.add(delivery)
    delivery.path = str(path.absolute())
    delivery.sop_class_uid = sop_class_uid
    delivery.study_uid = study_uid
    delivery.result_id = result_id
    delivery.state = DeliveryState.PENDING
    delivery.attempts = 0
    delivery.last_error = None
    delivery.next_attempt_at = utcnow() + timedelta(seconds=claim_seconds or 0)
    session.flush()
    audit(
        session,
        "delivery.queued",
        f"delivery {delivery.id} to {destination} queued",
        study_uid=study_uid,
        sop_uid=sop_uid,
        detail={"delivery_id": delivery.id, "destination": destination},
    )
    return delivery.id


def alerts_of_result(session: Session, result_id: int) -> dict[tuple[str, str], Alert]:
    """The alert rows of a result, by (channel, destination)."""
    return {
        (row.channel, row.destination): row
        for row in session.scalars(select(Alert).where(Alert.result_id == result_id))
    }


def queue_alert(
    session: Session,
    row: Alert | None,
    *,
    channel: AlertChannel,
    destination: str,
    result_id: int,
    study_uid: str | None,
    sop_uid: str | None,
    control_id: str,
    correction: bool,
    payload: str,
    due: datetime,
    error: str | None = None,
) -> Alert:
    """Queue one alert within ``session`` (``row``: the result's existing row for this
    receiver, reset, or None for a new one) to be sent as ``payload``, due at ``due``; returns
    the row. ``error``: the message could not be built (``payload`` is empty); the row is
    dead-lettered at once with that error, its audit message pointing to it."""
    if row is None:
        row = Alert(channel=channel, destination=destination, result_id=result_id)
        session.add(row)
    row.study_uid = study_uid
    row.sop_uid = sop_uid
    row.control_id = control_id
    row.correction = correction
    row.payload = payload
    row.state = DeliveryState.DEAD if error is not None else DeliveryState.PENDING
    row.attempts = 0
    row.last_status = None
    row.last_error = error
    row.sent_at = None
    row.next_attempt_at = due
    session.flush()
    what = _alert_subject(row, correction)
    shown = shown_destination(channel, destination)
    ids = {"study_uid": study_uid, "sop_uid": sop_uid}
    detail = _detail(row)
    if error is not None:
        audit(
            session,
            "alert.dead",
            f"{what} to {shown} dead-lettered: the message cannot be built (see the alert's "
            "last_error)",
            detail=detail,
            **ids,
        )
        log.warning("%s to %s: the message cannot be built", what, shown)
    else:
        audit(session, "alert.queued", f"{what} to {shown} queued", detail=detail, **ids)
    return row


def withdraw_alerts(session: Session, rows: Iterable[Alert]) -> None:
    """Delete alerts never delivered about a result that a re-run no longer alerts (a pending
    positive alert must not reach the RIS after the result turned negative); audited."""
    for row in rows:
        if row.sent_at is not None or row.correction:
            continue
        shown = shown_destination(row.channel, row.destination)
        audit(
            session,
            "alert.withdrawn",
            f"{_alert_subject(row)} to {shown} withdrawn, never delivered: a re-run of its "
            "result calls for no alert",
            study_uid=row.study_uid,
            sop_uid=row.sop_uid,
            detail=_detail(row),
        )
        session.delete(row)


def claim_due(
    database: Database,
    model: type[Row],
    lease: Callable[[int], float],
    *,
    ids: Iterable[int] | None = None,
    limit: int | None = None,
) -> list[Row]:
    """Take due pending rows of ``model`` for one attempt (``ids``: only those; at most
    ``limit``, the longest due first); returns them, in id order.

    Their next attempt moves ``lease(count)`` seconds on, so no other sender takes them while
    they are sent; the UPDATE checks again that each is pending and due, so two senders never
    take the same row.
    """
    wanted = None if ids is None else list(ids)
    if wanted is not None and not wanted:
        return []
    now = utcnow()
    table: Any = model  # one of two mapped classes: their columns have the same names
    with database.session() as session:
        query = (
            select(table.id)
            .where(table.state == DeliveryState.PENDING)
            .where(table.next_attempt_at <= now)
            .order_by(table.next_attempt_at)
        )
        if wanted is not None:
            query = query.where(table.id.in_(wanted))
        if limit is not None:
            query = query.limit(limit)
        due = list(session.scalars(query))
        if not due:
            return []
        claimed = list(
            session.scalars(
                update(table)
                .where(table.id.in_(due))
                .where(table.state == DeliveryState.PENDING)
                .where(table.next_attempt_at <= now)
                .values(next_attempt_at=now + timedelta(seconds=lease(len(due))))
                .returning(table.id)
                .execution_options(synchronize_session=False)
            )
        )
        if not claimed:
            return []
        return list(session.scalars(select(model).where(table.id.in_(claimed)).order_by(table.id)))


def _received_at(session: Session, result_id: int) -> datetime | None:
    found: datetime | None = session.scalar(
        select(Instance.received_at)
        .join(Job, Job.instance_id == Instance.id)
        .join(Result, Result.job_id == Job.id)
        .where(Result.id == result_id)
    )
    return found


def _record(session: Session, row: Delivery | Alert, attempt: Attempt, backoff: Backoff) -> bool:
    """Record one attempt at ``row``; True when it was delivered."""
    now = utcnow()
    name = _name(type(row))
    row.attempts += 1
    row.last_status = attempt.status  # int for DICOM, str for alerts
    subject = f"{_alert_subject(row)} " if isinstance(row, Alert) else ""
    label = subject.strip() or f"delivery {row.id}"
    ids = {"study_uid": row.study_uid, "sop_uid": row.sop_uid}
    detail = {**_detail(row), "attempt": row.attempts, "status": attempt.status}
    if attempt.ok:
        row.state = DeliveryState.SENT
        row.sent_at = now
        row.last_error = None
        if isinstance(row, Alert):
            received = _received_at(session, row.result_id)
            if received is not None:  # the alert's latency: image received to ACK (or 2xx)
                row.latency_seconds = (now - received).total_seconds()
                detail["seconds_since_received"] = round(row.latency_seconds, 3)
            message = f"{subject}delivered to {detail['destination']} ({attempt.status})"
        else:
            message = f"sent to {row.destination}"
        audit(session, f"{name}.sent", message, detail=detail, **ids)
        return True
    row.last_error = attempt.error or attempt.reason
    if attempt.permanent or row.attempts >= backoff.max_attempts:
        row.state = DeliveryState.DEAD
        why = "permanent failure" if attempt.permanent else f"{row.attempts} attempts"
        audit(
            session,
            f"{name}.dead",
            f"{subject}dead-lettered after {why}: {attempt.reason}",
            detail=detail,
            **ids,
        )
        log.warning("%s dead-lettered: %s", label, attempt.reason)
    else:
        delay = backoff.delay(row.attempts)
        row.next_attempt_at = now + timedelta(seconds=delay)
        audit(
            session,
            f"{name}.failed",
            f"{subject}attempt failed, retry in {delay:.0f} s: {attempt.reason}",
            detail=detail,
            **ids,
        )
        log.info("%s failed (%s); retry in %.0f s", label, attempt.reason, delay)
    return False


def record_attempts(
    database: Database,
    model: type[Row],
    attempts: Mapping[int, Attempt] | Sequence[tuple[int, Attempt]],
    backoff: Backoff,
    then: Callable[[Session], None] | None = None,
) -> list[int]:
    """Record the outcome of one attempt at each row (by id) in one transaction; returns the
    ids delivered. A row gone meanwhile is passed over. ``then`` runs in the same transaction
    (the worker stores its timings there instead of in a transaction of their own)."""
    items = attempts.items() if isinstance(attempts, Mapping) else attempts
    sent: list[int] = []
    with database.session() as session:
        for row_id, attempt in items:
            row = session.get(model, row_id)
            if row is not None and _record(session, row, attempt, backoff):
                sent.append(row_id)
        if then is not None:
            then(session)
    return sent


def resend_dead(
    database: Database,
    model: type[Delivery] | type[Alert],
    ids: Iterable[int] = (),
    *,
    all_dead: bool = False,
    destination: str | None = None,
) -> list[int]:
    """Put dead-lettered rows back to pending, due now, attempts reset (an alert keeps its
    message); returns their ids. Nothing without ``ids`` unless ``all_dead``; ``destination``:
    only rows to it. An alert whose message could not be built is never queued again."""
    wanted = list(ids)
    if not wanted and not all_dead:
        return []
    name = _name(model)
    table: Any = model
    with database.session() as session:
        query = select(table.id).where(table.state == DeliveryState.DEAD)
        if model is Alert:
            query = query.where(Alert.payload != "")
        if wanted:
            query = query.where(table.id.in_(wanted))
        if destination:
            query = query.where(table.destination == destination)
        chosen = list(session.scalars(query))
        if chosen:
            session.execute(
                update(table)
                .where(table.id.in_(chosen))
                .values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=utcnow())
            )
            for row_id in chosen:
                audit(
                    session,
                    f"{name}.resend",
                    f"{name} {row_id} re-queued by request",
                    detail={f"{name}_id": row_id},
                )
    return chosen
