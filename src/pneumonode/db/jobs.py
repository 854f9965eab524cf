"""A job's life in the database: queued by the dispatcher, claimed by a worker with a lease (its
heartbeat renews it), failed, given back to the queue, or run again on request.

``worker.dispatch`` and ``worker.pipeline`` decide when; these functions write it. Every write
that takes a job is a conditional UPDATE or holds the row's lock, so two processes never both
take one job, and a worker whose lease ran out finds its job no longer its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from pneumonode.db.audit import audit
from pneumonode.db.models import Instance, Job, JobState, Result, Study, WorkerHeartbeat, utcnow
from pneumonode.db.session import Database
from pneumonode.findings import AlgorithmInfo, Finding

if TYPE_CHECKING:
    from pneumonode.conversion.prepare import InputStatistics

__all__ = [
    "ClaimedJob",
    "Taken",
    "beat",
    "claim_job",
    "fail_job",
    "finish_job",
    "give_back",
    "record_result",
    "rerun_job",
    "still_ours",
    "store_timings",
    "take_for_queue",
    "unqueue",
]


@dataclass(frozen=True)
class Taken:
    """What one look of the dispatcher took to publish (job ids)."""

    queued: list[int]  # PENDING, now QUEUED
    expired: list[int]  # RUNNING past their lease, now QUEUED again (audited)
    stale: list[int]  # QUEUED too long (their message may be lost), queued_at renewed


def take_for_queue(
    database: Database,
    now: datetime,
    limit: int,
    *,
    full: bool = True,
    queued_before: datetime | None = None,
) -> Taken:
    """In one transaction: the oldest ``limit`` PENDING jobs become QUEUED; with ``full``, also
    RUNNING jobs whose lease ran out go back to QUEUED, and QUEUED jobs queued before
    ``queued_before`` (default ``now``) get a new ``queued_at``. Returns their ids, to publish."""
    with database.session() as session:
        # one statement: two dispatchers never both flip (and publish) the same job
        oldest = (
            select(Job.id)
            .where(Job.state == JobState.PENDING)
            .order_by(Job.id)
            .limit(limit)
            .scalar_subquery()
        )
        queued = sorted(
            session.scalars(
                update(Job)
                .where(Job.id.in_(oldest))
                .where(Job.state == JobState.PENDING)
                .values(state=JobState.QUEUED, queued_at=now)
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        )
        if not full:
            return Taken(queued, [], [])
        expired = _requeue_expired(session, now, limit)
        stale = _refresh_stale(session, now, queued_before or now, queued + expired, limit)
        return Taken(queued, expired, stale)


def _requeue_expired(session: Session, now: datetime, limit: int) -> list[int]:
    """RUNNING jobs whose lease ran out go back to QUEUED (audited); returns their ids."""
    expired = list(
        session.scalars(
            select(Job)
            .where(Job.state == JobState.RUNNING)
            .where(Job.lease_until < now)
            .limit(limit)
        )
    )
    for job in expired:
        audit(
            session,
            "job.requeued",
            f"job {job.id} re-queued: its worker gave no sign within the lease",
            detail={"job_id": job.id, "worker": job.worker},
        )
        # back to the queue: a late finish by the old worker no longer counts
        job.state = JobState.QUEUED
        job.queued_at = now
        job.lease_until = None
    return [job.id for job in expired]


def _refresh_stale(
    session: Session, now: datetime, queued_before: datetime, exclude: list[int], limit: int
) -> list[int]:
    """QUEUED jobs queued before ``queued_before`` (their message may be lost) get a new
    queued_at; returns their ids, to publish again."""
    stale = list(
        session.scalars(
            select(Job)
            .where(Job.state == JobState.QUEUED)
            .where(Job.queued_at < queued_before)
            .where(Job.id.not_in(exclude))
            .limit(limit)
        )
    )
    for job in stale:
        job.queued_at = now
    return [job.id for job in stale]


def unqueue(database: Database, ids: Sequence[int]) -> None:
    """QUEUED jobs whose message could not be published go back to PENDING (the next look)."""
    with database.session() as session:
        session.execute(
            update(Job)
            .where(Job.id.in_(list(ids)))
            .where(Job.state == JobState.QUEUED)
            .values(state=JobState.PENDING, queued_at=None)
        )


def beat(
    database: Database,
    worker: str,
    *,
    model: str,
    model_version: str,
    device: str,
    backend: str,
    lease_seconds: float,
) -> None:
    """Say ``worker`` is alive (the health page lists workers seen recently), and renew the
    lease of the job it runs: only a silent worker (dead, frozen, cut off) loses its job."""
    with database.session() as session:
        row = session.get(WorkerHeartbeat, worker)
        if row is None:
            row = WorkerHeartbeat(name=worker, started_at=utcnow())
            session.add(row)
        row.model = model[:128]
        row.model_version = model_version[:64]
        row.device = device[:32]
        row.backend = backend[:32]
        row.seen_at = utcnow()
        session.execute(
            update(Job)
            .where(Job.state == JobState.RUNNING)
            .where(Job.worker == worker)
            .values(lease_until=row.seen_at + timedelta(seconds=lease_seconds))
        )


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker has claimed, with what it needs of its instance and study."""

    job_id: int
    instance_id: int
    path: Path
    study_uid: str
    sop_uid: str
    received_at: datetime
    queued_at: datetime | None
    started_at: datetime
    attempt: int


def claim_job(
    database: Database, job_id: int, worker: str, lease_seconds: float
) -> ClaimedJob | None:
    """Make the job RUNNING in ``worker``'s name (audited); None when it is not ours to run."""
    now = utcnow()
    runnable = (Job.state.in_((JobState.PENDING, JobState.QUEUED))) | (
        (Job.state == JobState.RUNNING) & (Job.lease_until < now)
    )
    with database.session() as session:
        claimed: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(Job)
            .where(Job.id == job_id)
            .where(runnable)
            .values(
                state=JobState.RUNNING,
                started_at=now,
                lease_until=now + timedelta(seconds=lease_seconds),
                worker=worker,
                attempts=Job.attempts + 1,
            )
        )
        if claimed.rowcount != 1:
            return None
        # one query for what the job needs of its instance and study (not three lazy loads)
        row = session.execute(
            select(
                Job.attempts,
                Job.queued_at,
                Instance.id,
                Instance.path,
                Instance.sop_uid,
                Instance.received_at,
                Study.study_uid,
            )
            .join(Instance, Instance.id == Job.instance_id)
            .join(Study, Study.id == Instance.study_id)
            .where(Job.id == job_id)
        ).one()
        attempts, queued_at, instance_id, path, sop_uid, received_at, study_uid = row
        audit(
            session,
            "job.started",
            f"job {job_id} started (attempt {attempts})",
            study_uid=study_uid,
            sop_uid=sop_uid,
            detail={"job_id": job_id, "worker": worker, "attempt": attempts},
        )
        return ClaimedJob(
            job_id=job_id,
            instance_id=instance_id,
            path=Path(path),
            study_uid=study_uid,
            sop_uid=sop_uid,
            received_at=received_at,
            queued_at=queued_at,
            started_at=now,
            attempt=attempts,
        )


def still_ours(session: Session, job_id: int, worker: str) -> Job | None:
    """The job, locked, if it is still RUNNING in ``worker``'s name (else it was reset)."""
    job = session.scalars(
        select(Job)
        .where(Job.id == job_id)
        .where(Job.state == JobState.RUNNING)
        .where(Job.worker == worker)
        .with_for_update()
    ).first()
    return job


def fail_job(database: Database, claimed: ClaimedJob, worker: str, reason: str) -> bool:
    """Make a claimed job FAILED with ``reason`` (audited); False when it is no longer ours."""
    with database.session() as session:
        job = still_ours(session, claimed.job_id, worker)
        if job is None:
            return False
        job.state = JobState.FAILED
        job.error = reason
        job.finished_at = utcnow()
        job.lease_until = None
        audit(
            session,
            "job.failed",
            f"job {claimed.job_id} failed: {reason}",
            study_uid=claimed.study_uid,
            sop_uid=claimed.sop_uid,
            detail={"job_id": claimed.job_id, "reason": reason},
        )
        return True


def record_result(
    session: Session,
    job: Job,
    finding: Finding,
    algorithm: AlgorithmInfo,
    *,
    seg_sop_uid: str,
    sr_sop_uid: str,
    sc_sop_uid: str | None,
    input_stats: InputStatistics | None = None,
) -> Result:
    """Store the job's result by ``algorithm``: one row per job and model version, replaced
    when the job runs again with the same version, with the statistics of the model's input
    (``input_stats``) when given. Returns it (flushed: it has its id)."""
    result = session.scalars(
        select(Result)
        .where(Result.job_id == job.id)
        .where(Result.model_version == algorithm.version)
    ).first()
    if result is None:
        result = Result(job_id=job.id, model_version=algorithm.version)
        session.add(result)
    result.pneumothorax = finding.present
    result.probability = finding.probability
    result.operating_point = finding.threshold
    result.max_probability = finding.max_probability
    result.area_pixels = finding.area_pixels
    result.area_mm2 = finding.area_mm2
    result.side = finding.side
    result.side_assumed = finding.orientation_assumed
    result.threshold = algorithm.threshold
    result.min_area_pixels = algorithm.min_area_pixels
    result.grow_threshold = algorithm.grow_threshold
    result.seg_sop_uid = seg_sop_uid
    result.sr_sop_uid = sr_sop_uid
    result.sc_sop_uid = sc_sop_uid
    result.input_mean = input_stats.mean if input_stats else None
    result.input_std = input_stats.std if input_stats else None
    result.input_dark_share = input_stats.dark_share if input_stats else None
    result.created_at = utcnow()
    session.flush()
    return result


def finish_job(
    session: Session,
    job: Job,
    result: Result,
    timings: dict[str, Any],
    verdict: str,
    *,
    study_uid: str,
    sop_uid: str,
) -> None:
    """Make the job DONE with its per-stage ``timings`` (``db.stages``' names), audited as
    ``job <id> done: <verdict>``."""
    job.state = JobState.DONE
    job.error = None
    job.finished_at = utcnow()
    job.lease_until = None
    job.timings = dict(timings)
    audit(
        session,
        "job.done",
        f"job {job.id} done: {verdict}",
        study_uid=study_uid,
        sop_uid=sop_uid,
        detail={
            "job_id": job.id,
            "result_id": result.id,
            "timings": {k: v for k, v in timings.items() if v is not None},
        },
    )


def store_timings(session: Session, job_id: int, timings: dict[str, Any]) -> None:
    """Replace the job's per-stage timings (the worker adds ``send`` once it has sent)."""
    job = session.get(Job, job_id)
    if job is not None:
        job.timings = dict(timings)


def give_back(database: Database, job_id: int, worker: str, reason: str) -> None:
    """Give a claimed job back (QUEUED) after a transient error, if it is still ours."""
    with database.session() as session:
        job = still_ours(session, job_id, worker)
        if job is not None:
            job.state = JobState.QUEUED
            job.error = reason
            job.lease_until = None
            job.queued_at = utcnow()


def rerun_job(session: Session, job: Job, requested: str) -> None:
    """Make a finished job PENDING to run again (audited; ``requested``: how, for the trail)."""
    instance = job.instance
    job.state = JobState.PENDING
    job.error = None
    job.queued_at = job.started_at = job.finished_at = None
    audit(
        session,
        "job.rerun",
        f"job {job.id} will run again ({requested})",
        study_uid=instance.study.study_uid,
        sop_uid=instance.sop_uid,
        detail={"job_id": job.id},
    )
