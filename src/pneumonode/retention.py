"""Retention: delete spooled images and result files past their time; keep the trail.

A hospital keeps images in its PACS, not in a node beside it: after ``retention_days`` the
received DICOM file and the results we built from it (SEG, SR, SC, overlay) are deleted. The
database rows stay (studies, instances, jobs, results, deliveries) and so does the audit trail,
which gains an ``instance.pruned`` event per image; the instance's ``pruned_at`` says when.

Never deleted, whatever their age: an image whose job is still pending, queued or running, and
an image with a result that still waits for delivery (pending) or was dead-lettered (``pneumonode
resend`` needs the files). Files go first, then the row is marked, so a crash in between leaves
an instance that the next run prunes again, never a row that claims a file it no longer has.
A PACS that sends a pruned image again gets it stored and processed as new.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from pneumonode.config import Settings
from pneumonode.db.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    Study,
    utcnow,
)
from pneumonode.db.repository import PrunedInstance, record_pruned
from pneumonode.db.session import Database
from pneumonode.dicom_node.spool import safe_component

__all__ = ["PruneReport", "RetentionLoop", "prune"]

log = logging.getLogger(__name__)

#: a job in one of these states still needs its spooled file
UNFINISHED_JOBS = (JobState.PENDING, JobState.QUEUED, JobState.RUNNING)
#: a delivery in one of these states still needs its result files
UNDELIVERED = (DeliveryState.PENDING, DeliveryState.DEAD)


@dataclass
class PruneReport:
    cutoff: datetime
    dry_run: bool
    instances: int = 0  # pruned (or, in a dry run, that would be)
    files: int = 0
    bytes: int = 0
    held: int = 0  # old enough, kept: unfinished job or undelivered result

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        held = f"; {self.held} kept (work or delivery not finished)" if self.held else ""
        return (
            f"{verb} the files of {self.instances} instances received before "
            f"{self.cutoff.isoformat(timespec='seconds')}: {self.files} files, "
            f"{self.bytes / 1e6:.1f} MB{held}"
        )


def _files(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """(file, size) of every regular file at or under ``paths``."""
    found = []
    for path in paths:
        if path.is_file():
            found.append((path, path.stat().st_size))
        elif path.is_dir():
            found.extend((p, p.stat().st_size) for p in path.rglob("*") if p.is_file())
    return found


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another instance of the study), or gone
        folder.rmdir()


def _held(instance_ids: list[int], database: Database) -> set[int]:
    """Instances among ``session_ids`` whose job is unfinished or whose results wait to be sent."""
    with database.session() as session:
        running = session.scalars(
            select(Job.instance_id)
            .where(Job.instance_id.in_(instance_ids))
            .where(Job.state.in_([str(s) for s in UNFINISHED_JOBS]))
        ).all()
        undelivered = session.scalars(
            select(Job.instance_id)
            .join(Result, Result.job_id == Job.id)
            .join(Delivery, Delivery.result_id == Result.id)
            .where(Job.instance_id.in_(instance_ids))
            .where(Delivery.state.in_([str(s) for s in UNDELIVERED]))
        ).all()
    return set(running) | set(undelivered)


def prune(
    settings: Settings,
    database: Database,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch: int = 500,
    progress: Callable[[int], object] | None = None,
) -> PruneReport:
    """Delete the spooled file and result files of every instance received more than
    ``older_than`` ago that nothing still needs (see the module docstring)."""
    cutoff = (now or utcnow()) - older_than
    report = PruneReport(cutoff=cutoff, dry_run=dry_run)
    after = 0
    while True:
        with database.session() as session:
            rows = session.execute(
                select(Instance.id, Instance.path, Instance.sop_uid, Study.study_uid)
                .join(Study, Study.id == Instance.study_id)
                .where(Instance.received_at < cutoff)
                .where(Instance.pruned_at.is_(None))
                .where(Instance.id > after)
                .order_by(Instance.id)
                .limit(batch)
            ).all()
        if not rows:
            return report
        after = rows[-1].id
        held = _held([row.id for row in rows], database)
        report.held += len(held)
        events = []
        for candidate in rows:
            if candidate.id in held:
                continue
            spooled = settings.spool_dir / candidate.path
            results = (
                settings.results_dir
                / safe_component(candidate.study_uid)
                / safe_component(candidate.sop_uid)
            )
            files = _files([spooled, results])
            size = sum(n for _, n in files)
            report.instances += 1
            report.files += len(files)
            report.bytes += size
            if dry_run:
                continue
            spooled.unlink(missing_ok=True)
            shutil.rmtree(results, ignore_errors=True)
            _remove_if_empty(spooled.parent)
            _remove_if_empty(results.parent)
            events.append((candidate, len(files), size))
        if events and not dry_run:
            pruned = [
                PrunedInstance(c.id, c.study_uid, c.sop_uid, files=count, size_bytes=size)
                for c, count, size in events
            ]
            with database.session() as session:
                record_pruned(session, pruned)
        if progress is not None:
            progress(len(rows))


class RetentionLoop:
    """A background thread that prunes at start and then every ``interval`` seconds."""

    def __init__(self, settings: Settings, database: Database, interval: float = 3600.0):
        self.settings = settings
        self.database = database
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        period = timedelta(days=self.settings.retention_days)
        while not self._stop.is_set():
            try:
                report = prune(self.settings, self.database, period)
                if report.instances or report.held:
                    log.info("retention: %s", report.summary())
            except SQLAlchemyError as exc:
                log.error("retention: database unavailable (%s)", type(exc).__name__)
            except OSError as exc:
                log.error("retention: cannot delete files (%s)", exc.strerror or exc)
            self._stop.wait(self.interval)
