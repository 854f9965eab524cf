"""The alert outbox: alert rows queued with the result, sent, retried, dead-lettered.

An alert is queued in the transaction that records its result (so a result is never without its
alerts, nor an alert without its result): one row per result and receiver, holding the message
exactly as it will be sent. The worker sends its rows at once, before the DICOM deliveries (an
alert is the urgent part); the :class:`AlertLoop` of ``pneumonode serve``/``dicom-listen`` sends
what failed, when it is due. Attempts and back-off are the deliveries' (``send_max_attempts``,
``send_backoff_seconds`` doubling up to ``send_backoff_max_seconds``: one
:class:`~pneumonode.dicom_node.delivery.RetryPolicy`); a permanent failure (a webhook answering
4xx, a message that cannot be built) is dead-lettered at once. Every attempt is audited with the
receiver named (a URL redacted) and never with patient data. This module builds the messages,
sends them and holds the policy; the rows are written by ``db.outbox``, which the DICOM
deliveries share (``shown_destination``, how a receiver is named, is defined there).

A re-run of an alerted result queues its alerts again as corrections (OBR-25/OBX-11 ``C``, the
webhook's ``result.corrected``), whatever the new finding, so that nobody acts on the old one.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from pneumonode.addresses import AlertTargetError, parse_mllp_target
from pneumonode.alerts.content import AlertContent, Notify, wants_alert
from pneumonode.alerts.hl7 import build_oru, send_oru
from pneumonode.alerts.outcome import AttemptOutcome
from pneumonode.alerts.webhook import post_webhook, webhook_body
from pneumonode.db.models import Alert, AlertChannel, utcnow
from pneumonode.db.outbox import (
    Attempt,
    alerts_of_result,
    claim_due,
    queue_alert,
    record_attempts,
    resend_dead,
    shown_destination,
    withdraw_alerts,
)
from pneumonode.db.session import Database
from pneumonode.dicom_node.delivery import RetryPolicy

if TYPE_CHECKING:
    from pneumonode.config import Settings

__all__ = [
    "AlertLoop",
    "AlertPolicy",
    "attempt_alerts",
    "queue_alerts",
    "resend_alerts",
    "run_due_alerts",
    "shown_destination",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertPolicy:
    """What the outbox needs of the settings: receivers, rule, identity, retries, timeout."""

    retry: RetryPolicy
    timeout: float
    notify: Notify = "positive"
    hl7_destinations: tuple[str, ...] = ()
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    sending_application: str = "PNEUMONODE"
    sending_facility: str | None = None
    base_url: str = "http://127.0.0.1:8000"

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertPolicy:
        secret = settings.webhook_secret
        return cls(
            retry=RetryPolicy.from_settings(settings),
            timeout=settings.alert_timeout,
            notify=settings.notify,
            hl7_destinations=tuple(settings.hl7_destinations),
            webhook_urls=tuple(settings.webhook_urls),
            webhook_secret=secret.get_secret_value() if secret is not None else None,
            sending_application=settings.hl7_sending_application,
            sending_facility=settings.hl7_sending_facility,
            base_url=settings.public_base_url,
        )

    @property
    def configured(self) -> bool:
        """Whether any receiver is configured (else nothing is queued)."""
        return bool(self.hl7_destinations or self.webhook_urls)

    def claim_seconds(self, count: int) -> float:
        """How long an attempt at ``count`` alerts holds them: per alert, connecting, sending
        and awaiting the answer, each up to the timeout."""
        return count * 3 * self.timeout + 10


def _targets(policy: AlertPolicy) -> list[tuple[AlertChannel, str]]:
    return [(AlertChannel.HL7, d) for d in policy.hl7_destinations] + [
        (AlertChannel.WEBHOOK, u) for u in policy.webhook_urls
    ]


def _payload(
    channel: str,
    content: AlertContent,
    policy: AlertPolicy,
    control_id: str,
    at: datetime,
    correction: bool,
) -> str:
    if channel == AlertChannel.HL7:
        return build_oru(
            content,
            control_id=control_id,
            sending_application=policy.sending_application,
            sending_facility=policy.sending_facility,
            at=at,
            correction=correction,
        )
    body = webhook_body(
        content, alert_id=control_id, base_url=policy.base_url, at=at, correction=correction
    )
    return body.decode("utf-8")


def queue_alerts(
    session: Session,
    policy: AlertPolicy,
    content: AlertContent,
    result_id: int,
    *,
    claim_seconds: float | None = None,
) -> list[Alert]:
    """Queue the alerts ``content`` calls for (``policy.notify``; corrections of alerted
    results always) within ``session``; returns their rows (pending). One row per result and
    receiver: queueing again resets that row with a fresh message and control ID.
    ``claim_seconds``: the caller sends them at once (:func:`attempt_alerts`); the loop leaves
    them alone for that long (default: :meth:`AlertPolicy.claim_seconds`)."""
    targets = _targets(policy)
    if not targets:
        return []
    existing = alerts_of_result(session, result_id)
    alerted = {key for key, row in existing.items() if row.sent_at is not None or row.correction}
    if not wants_alert(policy.notify, content.present, alerted_before=bool(alerted)):
        withdraw_alerts(session, existing.values())
        return []
    now = utcnow()
    lease = policy.claim_seconds(len(targets)) if claim_seconds is None else claim_seconds
    rows: list[Alert] = []
    for channel, destination in targets:
        control_id = uuid.uuid4().hex[:20]  # MSH-10 is at most 20 characters
        correction = (channel, destination) in alerted
        error = None
        try:
            payload = _payload(channel, content, policy, control_id, now, correction)
        except ValueError as exc:  # a value HL7 cannot carry; its text may quote patient data
            payload, error = "", f"cannot build the message: {str(exc)[:300]}"
        row = queue_alert(
            session,
            existing.get((channel, destination)),
            channel=channel,
            destination=destination,
            result_id=result_id,
            study_uid=content.study_uid or None,
            sop_uid=content.sop_uid or None,
            control_id=control_id,
            correction=correction,
            payload=payload,
            due=now + timedelta(seconds=lease),
            error=error,
        )
        if error is None:
            rows.append(row)
    return rows


def _send(row: Alert, policy: AlertPolicy) -> AttemptOutcome:
    """One attempt at ``row``; every failure is an outcome (a claimed row without one would be
    claimed again and again, never counting an attempt)."""
    try:
        if row.channel == AlertChannel.HL7:
            try:
                target = parse_mllp_target(row.destination)
            except AlertTargetError as exc:
                return AttemptOutcome.failed(str(exc), permanent=True)
            return send_oru(target, row.payload, row.control_id, policy.timeout)
        if row.channel == AlertChannel.WEBHOOK:
            if not policy.webhook_secret:
                return AttemptOutcome.failed(
                    "webhook_secret is not set: webhooks cannot be signed", permanent=True
                )
            return post_webhook(
                row.destination,
                row.payload.encode("utf-8"),
                secret=policy.webhook_secret,
                alert_id=row.control_id,
                correction=row.correction,
                timeout=policy.timeout,
            )
        return AttemptOutcome.failed(f"unknown alert channel {row.channel!r}", permanent=True)
    except Exception as exc:  # a fault of ours: an attempt, so the row ends dead-lettered
        log.error("alert %d: sending failed (%s)", row.id, type(exc).__name__)
        return AttemptOutcome.failed(f"send failed ({type(exc).__name__})")


def _attempt(outcome: AttemptOutcome) -> Attempt:
    """A channel's outcome as the outbox records it (what the peer said kept on the row)."""
    return Attempt(
        outcome.ok, outcome.status, outcome.reason, outcome.detail, permanent=outcome.permanent
    )


def attempt_alerts(database: Database, claimed: Sequence[Alert], policy: AlertPolicy) -> list[int]:
    """Send ``claimed`` rows (queued with a claim by the caller, or taken by
    :func:`run_due_alerts`) one by one, recording each outcome in a transaction of its own as
    soon as it is known; returns the ids delivered."""
    sent: list[int] = []
    for row in claimed:
        attempt = _attempt(_send(row, policy))
        sent += record_attempts(database, Alert, [(row.id, attempt)], policy.retry)
    return sent


def run_due_alerts(database: Database, policy: AlertPolicy, limit: int = 20) -> int:
    """Attempt every pending alert whose time has come (``limit`` at a time); returns how many
    were delivered."""
    delivered = 0
    while True:
        claimed = claim_due(database, Alert, policy.claim_seconds, limit=limit)
        if not claimed:
            return delivered
        delivered += len(attempt_alerts(database, claimed, policy))
        if len(claimed) < limit:
            return delivered


def resend_alerts(
    database: Database, ids: Iterable[int] = (), *, all_dead: bool = False
) -> list[int]:
    """Put dead-lettered alerts back to pending (attempts reset, same message); returns their
    ids. Nothing without ``ids`` unless ``all_dead``."""
    return resend_dead(database, Alert, ids, all_dead=all_dead)


class AlertLoop:
    """A background thread that attempts due alerts every ``interval`` seconds."""

    def __init__(self, database: Database, policy: AlertPolicy, interval: float = 2.0) -> None:
        self.database = database
        self.policy = policy
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3 * self.policy.timeout + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                run_due_alerts(self.database, self.policy)
            except SQLAlchemyError as exc:
                log.error("alert loop: database unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("alert loop failed; retrying")
