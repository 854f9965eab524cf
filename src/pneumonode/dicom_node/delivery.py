"""Deliveries: sending files to destinations with retries, back-off and a dead-letter state.

Each (file, destination) pair is a row in ``deliveries``. An attempt sends every due row of a
destination over one association. A transient failure (peer down, out of resources, transient
rejection) is retried after ``base * 2**(attempts-1)`` seconds (capped); after ``max_attempts``
the row is dead-lettered. A permanent failure (our AE title rejected, SOP class refused, a
destination that does not parse) is dead-lettered at once, so a misconfigured peer never causes
a retry storm. Whatever goes wrong, every attempt records an outcome: no row stays pending with
no attempt counted. Dead rows are retried only on request (``pneumonode resend``).

This module sends and holds the policy; the rows are written by ``db.outbox`` (queued, claimed,
each outcome recorded and audited, dead rows queued again), which the alerts share.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from pneumonode.addresses import PeerConfigError, parse_destination
from pneumonode.config import Settings
from pneumonode.db.models import Delivery
from pneumonode.db.outbox import Attempt, add_delivery, claim_due, record_attempts
from pneumonode.db.session import Database
from pneumonode.dicom_node.scu import Failure, SendOutcome, send_files
from pneumonode.dicom_node.tls import TlsConfigError, TlsSettings

__all__ = [
    "DeliveryLoop",
    "RetryPolicy",
    "attempt_claimed",
    "attempt_deliveries",
    "claim_seconds",
    "queue_delivery",
    "run_due",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_seconds: float = 10.0
    max_seconds: float = 600.0
    calling_ae: str = "PNEUMONODE"
    timeout: float = 60.0
    tls: TlsSettings | None = None
    tls_destinations: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.send_max_attempts,
            base_seconds=settings.send_backoff_seconds,
            max_seconds=settings.send_backoff_max_seconds,
            calling_ae=settings.ae_title,
            timeout=settings.network_timeout,
            tls=TlsSettings.from_settings(settings),
            tls_destinations=frozenset(settings.tls_destinations),
        )

    def tls_context(self, destination: str) -> ssl.SSLContext | None:
        """The client context for ``destination`` when it is one we send to over TLS."""
        if destination not in self.tls_destinations:
            return None
        return (self.tls or TlsSettings(None, None, None)).client_context()

    def delay(self, attempts: int) -> float:
        return float(min(self.base_seconds * 2 ** max(attempts - 1, 0), self.max_seconds))


def queue_delivery(
    database: Database,
    path: Path,
    destination: str,
    *,
    study_uid: str | None = None,
    result_id: int | None = None,
) -> int:
    """Record that ``path`` must reach ``destination`` (``AE@host:port``); returns the row id."""
    parse_destination(destination)  # refuse a malformed destination now, not at send time
    meta = read_file_meta_info(path)
    with database.session() as session:
        return add_delivery(
            session,
            path,
            destination,
            sop_uid=str(meta.MediaStorageSOPInstanceUID),
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            study_uid=study_uid,
            result_id=result_id,
        )


def claim_seconds(policy: RetryPolicy) -> float:
    """How long an attempt holds its rows: time for an association and every store in it."""
    return 4 * policy.timeout


def attempt_deliveries(database: Database, ids: Iterable[int], policy: RetryPolicy) -> list[int]:
    """Attempt the given pending, due deliveries now; returns the ids that were sent."""
    claimed = claim_due(database, Delivery, lambda _: claim_seconds(policy), ids=ids)
    return attempt_claimed(database, claimed, policy)


def attempt_claimed(
    database: Database,
    claimed: Sequence[Delivery],
    policy: RetryPolicy,
    then: Callable[[Session], None] | None = None,
) -> list[int]:
    """Send ``claimed`` rows (taken by :func:`~pneumonode.db.outbox.claim_due`, or queued with
    ``claim_seconds`` by the caller), one association per destination, and record each
    destination's outcomes as soon as they are known; returns the ids that were sent. ``then``
    runs in the transaction that records the last destination's outcomes (the worker stores its
    timings there instead of in a transaction of their own)."""
    by_destination: dict[str, list[Delivery]] = defaultdict(list)
    for row in claimed:
        by_destination[row.destination].append(row)
    sent: list[int] = []
    last = len(by_destination) - 1
    for index, (destination_text, rows) in enumerate(by_destination.items()):
        paths = [Path(row.path) for row in rows]
        missing = [p for p in paths if not p.is_file()]
        present = [p for p in paths if p.is_file()]
        outcomes = _send(destination_text, present, policy)
        for path in missing:
            outcomes[path] = SendOutcome(
                path, False, failure=Failure.PERMANENT, reason="file no longer exists"
            )
        attempts = [(row.id, _attempt(outcomes[Path(row.path)])) for row in rows]
        sent += record_attempts(
            database, Delivery, attempts, policy, then if index == last else None
        )
    if then is not None and not by_destination:
        record_attempts(database, Delivery, [], policy, then)
    return sent


def _attempt(outcome: SendOutcome) -> Attempt:
    """A file's outcome as the outbox records it."""
    return Attempt(
        outcome.ok,
        outcome.status,
        outcome.reason,
        permanent=outcome.failure is Failure.PERMANENT,
    )


def _send(destination_text: str, paths: list[Path], policy: RetryPolicy) -> dict[Path, SendOutcome]:
    """Send ``paths`` to one destination. Each path gets an outcome whatever goes wrong: a
    claimed row without one would be claimed again and again, never counting an attempt."""

    def failed(failure: Failure, reason: str) -> dict[Path, SendOutcome]:
        return {p: SendOutcome(p, False, failure=failure, reason=reason) for p in paths}

    try:
        destination = parse_destination(destination_text)
    except PeerConfigError as exc:  # malformed (queued before it was checked): no retry helps
        return failed(Failure.PERMANENT, str(exc))
    try:
        tls = policy.tls_context(destination_text)
    except TlsConfigError as exc:  # unreadable certificates: no retry can help
        return failed(Failure.PERMANENT, str(exc))
    try:
        sent = send_files(paths, destination, policy.calling_ae, policy.timeout, tls)
    except Exception as exc:  # a fault of ours: an attempt, so the row ends dead-lettered
        log.exception("sending to %s failed", destination_text)
        return failed(Failure.TRANSIENT, f"send failed ({type(exc).__name__})")
    return {o.path: o for o in sent}


def run_due(database: Database, policy: RetryPolicy, limit: int = 500) -> int:
    """Attempt every pending delivery whose time has come (at most ``limit``, the longest due
    first); returns how many were sent."""
    claimed = claim_due(database, Delivery, lambda _: claim_seconds(policy), limit=limit)
    return len(attempt_claimed(database, claimed, policy)) if claimed else 0


class DeliveryLoop:
    """A background thread that attempts due deliveries every ``interval`` seconds."""

    def __init__(self, database: Database, policy: RetryPolicy, interval: float = 2.0) -> None:
        self.database = database
        self.policy = policy
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.policy.timeout + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                run_due(self.database, self.policy)
            except SQLAlchemyError as exc:
                log.error("delivery loop: database unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("delivery loop failed; retrying")
