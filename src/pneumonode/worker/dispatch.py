"""From the database to the queue: jobs are published by id, and found again when lost.

The database is the source of truth; the broker only carries "job N is ready" messages. Each
look (``dispatch_once``) does three things:

1. PENDING jobs (just received, or received before a crash and never queued) become QUEUED, then
   are published. The flip is a conditional UPDATE, so two dispatchers never both publish a job;
   a publish that fails flips the job back to PENDING for the next look.
2. RUNNING jobs whose lease ran out (their worker died, say killed -9 mid-job) go back to QUEUED
   and are published again. Should the old worker still finish, its result no longer counts.
3. QUEUED jobs older than five leases are published again (a message the broker lost: a Redis
   restarted without persistence). The first look after a start publishes every QUEUED job
   again: a dispatcher killed between marking jobs QUEUED and publishing them leaves no job
   behind. A duplicate message is harmless: the claim lets one run through and the rest
   return at once.

The listener wakes the dispatcher when a job is created, so a new image is queued at once: a
look on a wake does only step 1 (one UPDATE ... RETURNING). Between wakes, every
``dispatch_interval`` (0.5 s) a read-only query asks whether any job is PENDING (a wake that never
came: a listener of another process, or on another machine), and step 1 runs only when one is;
steps 2 and 3 run every twelfth of a lease (5 s with the default 60 s lease), which re-queues a
dead worker's job at most that long after its lease ran out. A look costs about a millisecond of
Python: done all three ways twice a second it was, with the node idle, half a percent of a core.

The dispatcher runs in its own process (``DispatcherProcess`` in ``pneumonode.node`` starts
``pneumonode dispatch`` and wakes it through a pipe), not beside the listener: publishing a
Celery message costs about a millisecond of Python, and in the listener's process that
millisecond would be taken, under the GIL, from the association receiving the next image.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from pneumonode.db.jobs import take_for_queue, unqueue
from pneumonode.db.models import Job, JobState, utcnow
from pneumonode.db.session import Database

__all__ = ["DispatchReport", "Dispatcher", "dispatch_once", "pending_waiting", "prune_processed"]

log = logging.getLogger(__name__)

Publish = Callable[[int], None]


@dataclass(frozen=True)
class DispatchReport:
    """What one look of the dispatcher did: jobs queued, re-queued, published again."""

    queued: int = 0
    requeued_expired: int = 0
    requeued_stale: int = 0
    publish_failures: int = 0

    def summary(self) -> str:
        """One readable line: what this look did (only the counts that are not zero)."""
        parts = [
            f"{count} {what}"
            for count, what in (
                (self.queued, "queued"),
                (self.requeued_expired, "re-queued (lease expired)"),
                (self.requeued_stale, "published again (queued too long)"),
                (self.publish_failures, "could not be published"),
            )
            if count
        ]
        return f"jobs: {', '.join(parts)}" if parts else "no jobs"


def _publish_all(publish: Publish, ids: Sequence[int]) -> list[int]:
    """Publish each id; returns the ids whose publish failed."""
    failed = []
    for job_id in ids:
        try:
            publish(job_id)
        except Exception as exc:  # any broker error: the job stays in the database
            log.warning("could not queue job %d: %s", job_id, type(exc).__name__)
            failed.append(job_id)
    return failed


#: QUEUED this many leases: the broker may have lost the message
STALE_LEASES = 5


def dispatch_once(
    database: Database,
    publish: Publish,
    lease_seconds: float,
    limit: int = 500,
    *,
    republish_queued: bool = False,
    full: bool = True,
) -> DispatchReport:
    """One look at the jobs table (see the module docstring); ``republish_queued``: publish
    every QUEUED job again, however young (the first look after a start); ``full=False``: only
    queue the PENDING jobs (a look on a wake)."""
    now = utcnow()
    stale_after = timedelta(seconds=0 if republish_queued else STALE_LEASES * lease_seconds)
    taken = take_for_queue(database, now, limit, full=full, queued_before=now - stale_after)
    failed = _publish_all(publish, taken.queued)
    if failed:
        unqueue(database, failed)
    failed_again = _publish_all(publish, taken.expired + taken.stale)
    report = DispatchReport(
        queued=len(taken.queued) - len(failed),
        requeued_expired=len(taken.expired),
        requeued_stale=len(taken.stale),
        publish_failures=len(failed) + len(failed_again),
    )
    if report.queued or report.requeued_expired or report.requeued_stale:
        log.info("dispatch: %s", report.summary())
    return report


def pending_waiting(database: Database) -> bool:
    """Whether any job is PENDING (one read of the state index; no write lock taken)."""
    with database.session() as session:
        found = session.scalar(select(Job.id).where(Job.state == JobState.PENDING).limit(1))
    return found is not None


#: the lease/stale part of the periodic look runs every this fraction of a lease
MAINTENANCE_PER_LEASE = 12


def prune_processed(folder: str | None, older_than: float = 86_400.0) -> int:
    """Delete consumed message files of the embedded broker older than ``older_than`` s."""
    if not folder:
        return 0
    from pathlib import Path

    removed = 0
    cutoff = time.time() - older_than
    for path in Path(folder).glob("*.msg"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


class Dispatcher:
    """A thread that dispatches every ``interval`` seconds, and when woken.

    A wake after a quiet while is looked at at once: a single image is queued without delay.
    A wake within ``gap`` seconds of the one before means a burst (a PACS sending a study, or
    a backlog): the look then waits until the wakes pause for ``gap`` seconds, at most
    ``burst_delay`` seconds, and queues what arrived meanwhile in one go. Each look's write
    transaction (its fsync) and its publishing (about 0.6 ms of Python per job) would
    otherwise compete, image by image, for the disk and a core with the listener that is
    still receiving; a worker already busy with the burst's first images gains nothing from
    the rest being queued sooner. ``bench/ingest.py`` measured storescu's 200-image burst 7 %
    faster with a look per pause than with a look every 50 ms.
    """

    def __init__(
        self,
        database: Database,
        publish: Publish,
        *,
        lease_seconds: float,
        interval: float = 0.5,
        gap: float = 0.05,
        burst_delay: float = 1.0,
        processed_folder: str | None = None,
    ) -> None:
        self.database = database
        self.publish = publish
        self.lease_seconds = lease_seconds
        self.interval = interval
        #: seconds between the looks for expired leases and lost messages (steps 2 and 3)
        self.maintenance_interval = max(interval, lease_seconds / MAINTENANCE_PER_LEASE)
        self.gap = gap
        self.burst_delay = burst_delay
        self.processed_folder = processed_folder
        self._wake = threading.Event()
        self._last_wake = -math.inf
        self._in_burst = False  # the last wake came within ``gap`` of the one before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self, _job_id: int | None = None) -> None:
        """Look now (the listener calls this when it creates a job)."""
        now = time.monotonic()
        self._in_burst = now - self._last_wake < self.gap
        self._last_wake = now
        self._wake.set()

    def stop(self) -> None:
        """Stop after one last look (what the listener received last is queued)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _until_the_burst_pauses(self) -> None:
        """Wait until no wake came for ``gap`` seconds, at most ``burst_delay`` seconds."""
        deadline = time.monotonic() + self.burst_delay
        while not self._stop.is_set():
            self._wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._wake.wait(min(self.gap, remaining)):
                return

    def _run(self) -> None:
        last_prune = 0.0
        last_look = last_full = -math.inf
        started = True  # the first successful look publishes every QUEUED job again
        while True:
            woken = self._wake.wait(max(0.0, last_look + self.interval - time.monotonic()))
            if woken and self._in_burst:
                self._until_the_burst_pauses()
            self._wake.clear()
            stopping = self._stop.is_set()
            now = time.monotonic()
            full = started or now - last_full >= self.maintenance_interval
            try:
                last_look = now
                # a timer's look with nothing to do reads and stops there
                if woken or full or pending_waiting(self.database):
                    dispatch_once(
                        self.database,
                        self.publish,
                        self.lease_seconds,
                        republish_queued=started,
                        full=full and not stopping,
                    )
                if full:
                    started, last_full = False, now
            except SQLAlchemyError as exc:
                log.error("dispatcher: database unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("dispatcher failed; trying again")
            if stopping:
                break
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                prune_processed(self.processed_folder)
