"""Repository functions: the only code that writes studies, instances and jobs as they arrive,
and marks instances pruned. Their audit events go through ``db.audit``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from pneumonode.db.audit import audit, audit_direct, audit_row
from pneumonode.db.direct import Direct, direct_insert
from pneumonode.db.models import (
    AuditEvent,
    Instance,
    InstanceStatus,
    Job,
    JobState,
    Study,
    utcnow,
)

__all__ = [
    "KnownInstance",
    "PrunedInstance",
    "ReceiveOutcome",
    "ReceiveRecord",
    "ReceivedInstance",
    "find_instance",
    "find_known_instance",
    "list_audit",
    "record_pruned",
    "record_received_instance",
]


def list_audit(
    session: Session,
    *,
    study_uid: str | None = None,
    sop_uid: str | None = None,
    kinds: Sequence[str] = (),
    since: datetime | None = None,
    limit: int = 1000,
    newest_first: bool = False,
) -> list[AuditEvent]:
    """The newest ``limit`` audit events, filtered; oldest first unless ``newest_first``."""
    query = select(AuditEvent)
    if study_uid:
        query = query.where(AuditEvent.study_uid == study_uid)
    if sop_uid:
        query = query.where(AuditEvent.sop_uid == sop_uid)
    if kinds:
        query = query.where(AuditEvent.kind.in_(list(kinds)))
    if since:
        query = query.where(AuditEvent.at >= since)
    query = query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
    events = list(session.scalars(query))
    return events if newest_first else events[::-1]


def find_instance(session: Session, sop_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_uid == sop_uid))


@dataclass(frozen=True)
class KnownInstance:
    """What the database already holds for a SOP Instance UID (one indexed query)."""

    id: int
    sha256: str | None
    path: str


# The receive path's statements, compiled once and run on the DBAPI cursor (see db.direct).
_FIND_KNOWN = Direct(
    select(Instance.id, Instance.sha256, Instance.path).where(
        Instance.sop_uid == bindparam("sop_uid")
    )
)
_FIND_STUDY = Direct(select(Study.id).where(Study.study_uid == bindparam("study_uid")))
_INSERT_STUDY = direct_insert(Study.__table__, Study.id)  # type: ignore[arg-type]
_INSERT_INSTANCE = direct_insert(Instance.__table__, Instance.id)  # type: ignore[arg-type]
_INSERT_JOB = direct_insert(Job.__table__, Job.id)  # type: ignore[arg-type]


def _connection(db: Session | Connection) -> Connection:
    return db.connection() if isinstance(db, Session) else db


def find_known_instance(db: Session | Connection, sop_uid: str) -> KnownInstance | None:
    row = _FIND_KNOWN.first(_connection(db), {"sop_uid": sop_uid})
    return KnownInstance(*row) if row is not None else None


@dataclass(frozen=True)
class ReceivedInstance:
    """What the listener knows about a stored instance."""

    study_uid: str
    series_uid: str | None
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    patient_id: str | None
    accession_number: str | None
    study_date: str | None
    path: str
    size_bytes: int
    sha256: str | None  # computed when needed (a re-send); None for a first arrival
    calling_ae: str | None
    peer_address: str | None
    skip_reason: str | None  # None: a frontal chest radiograph, processed


class ReceiveOutcome(enum.StrEnum):
    NEW = "new"
    RESENT_IDENTICAL = "resent-identical"  # same bytes again: nothing to do
    RESENT_CHANGED = "resent-changed"  # different bytes: kept the newer, job re-runs


@dataclass(frozen=True)
class ReceiveRecord:
    outcome: ReceiveOutcome
    instance_id: int
    job_id: int | None  # the job to run, when the instance is selected
    job_state: str | None


def _study_id(connection: Connection, item: ReceivedInstance) -> int:
    study_id = _FIND_STUDY.scalar(connection, {"study_uid": item.study_uid})
    if study_id is not None:
        return int(study_id)
    values = {
        "study_uid": item.study_uid,
        "patient_id": item.patient_id,
        "accession_number": item.accession_number,
        "study_date": item.study_date,
    }
    return int(_INSERT_STUDY.scalar(connection, values))


def _instance_values(item: ReceivedInstance) -> dict[str, Any]:
    return {
        "series_uid": item.series_uid,
        "sop_class_uid": item.sop_class_uid,
        "transfer_syntax_uid": item.transfer_syntax_uid,
        "modality": item.modality,
        "path": item.path,
        "size_bytes": item.size_bytes,
        "sha256": item.sha256,
        "calling_ae": item.calling_ae,
        "peer_address": item.peer_address,
        "status": InstanceStatus.SKIPPED if item.skip_reason else InstanceStatus.RECEIVED,
        "skip_reason": item.skip_reason,
        "pruned_at": None,
    }


def record_received_instance(
    db: Session | Connection,
    item: ReceivedInstance,
    known: KnownInstance | None = None,
    *,
    unchanged: bool = False,
) -> ReceiveRecord:
    """Record a stored instance, its job (when selected) and the audit events.

    ``known`` is what ``find_known_instance`` returned for the SOP Instance UID; ``unchanged``
    says that the bytes equal the stored ones. Idempotent: identical bytes again create no job;
    different bytes replace the record and put the job back to pending. ``db``: a session, or
    a connection in a transaction (the listener's: Core statements only, unless it is a
    re-send).
    """
    now = utcnow()
    ids = {
        "study_uid": item.study_uid,
        "sop_uid": item.sop_uid,
        "calling_ae": item.calling_ae,
        "peer_address": item.peer_address,
        "patient_id": item.patient_id,
        "accession_number": item.accession_number,
    }
    detail = {
        "size_bytes": item.size_bytes,
        "transfer_syntax": item.transfer_syntax_uid,
        "sop_class": item.sop_class_uid,
    }
    if known is None:  # the common case, in as few statements as possible
        connection = _connection(db)
        study_id = _study_id(connection, item)
        values = {
            "study_id": study_id,
            "sop_uid": item.sop_uid,
            "times_received": 1,
            "received_at": now,
            "updated_at": now,
            **_instance_values(item),
        }
        instance_id = _INSERT_INSTANCE.scalar(connection, values)
        events = [audit_row("instance.received", "instance stored", at=now, detail=detail, **ids)]
        job_id = None
        if item.skip_reason:
            reason = f"skipped: {item.skip_reason}"
            events.append(audit_row("instance.skipped", reason, at=now, **ids))
        else:
            job_values = {
                "instance_id": instance_id,
                "state": JobState.PENDING,
                "attempts": 0,
                "created_at": now,
            }
            job_id = _INSERT_JOB.scalar(connection, job_values)
            job_detail = {"job_id": job_id}
            events.append(
                audit_row("job.created", f"job {job_id} created", at=now, detail=job_detail, **ids)
            )
        audit_direct(connection, events)
        state = None if job_id is None else JobState.PENDING
        return ReceiveRecord(ReceiveOutcome.NEW, instance_id, job_id, state)

    if isinstance(db, Session):
        return _record_resent(db, item, known, unchanged, ids, detail)
    with Session(bind=db) as session:  # joins the connection's transaction
        record = _record_resent(session, item, known, unchanged, ids, detail)
        session.flush()
        return record


def _record_resent(
    session: Session,
    item: ReceivedInstance,
    known: KnownInstance,
    unchanged: bool,
    ids: dict[str, Any],
    detail: dict[str, Any],
) -> ReceiveRecord:
    instance = session.get(Instance, known.id)
    assert instance is not None
    instance.times_received += 1
    job = instance.job
    if unchanged:
        instance.sha256 = instance.sha256 or item.sha256
        audit(
            session,
            "instance.resent",
            f"re-sent with identical content (received {instance.times_received} times)",
            detail={**detail, "changed": False},
            **ids,
        )
        job_id = job.id if job is not None and not instance.skip_reason else None
        return ReceiveRecord(
            ReceiveOutcome.RESENT_IDENTICAL, instance.id, job_id, job.state if job else None
        )

    was_pruned = instance.pruned_at is not None
    instance.study_id = _study_id(session.connection(), item)
    for key, value in _instance_values(item).items():
        setattr(instance, key, value)
    audit(
        session,
        "instance.resent",
        "re-sent after retention deleted the stored file: stored again"
        if was_pruned
        else "re-sent with different content: kept the newer file",
        detail={**detail, "changed": True},
        **ids,
    )
    if item.skip_reason:
        audit(session, "instance.skipped", f"skipped: {item.skip_reason}", **ids)
        if job is not None and job.state in (JobState.PENDING, JobState.QUEUED):
            job.state = JobState.FAILED
            job.error = f"superseded by a re-sent object that is skipped: {item.skip_reason}"
        return ReceiveRecord(ReceiveOutcome.RESENT_CHANGED, instance.id, None, None)
    if job is None:
        job = Job(instance_id=instance.id, state=JobState.PENDING, attempts=0)
        session.add(job)
        session.flush()
        audit(session, "job.created", f"job {job.id} created", detail={"job_id": job.id}, **ids)
    else:
        job.state = JobState.PENDING
        job.error = None
        job.queued_at = job.started_at = job.finished_at = None
        audit(
            session, "job.reset", f"job {job.id} will run again", detail={"job_id": job.id}, **ids
        )
    return ReceiveRecord(ReceiveOutcome.RESENT_CHANGED, instance.id, job.id, JobState.PENDING)


@dataclass(frozen=True)
class PrunedInstance:
    """An instance whose spooled image and result files retention deleted."""

    instance_id: int
    study_uid: str
    sop_uid: str
    files: int
    size_bytes: int


def record_pruned(session: Session, pruned: Sequence[PrunedInstance]) -> None:
    """Mark ``pruned`` instances as pruned now (their rows and audit trail stay), one
    ``instance.pruned`` event each, written many at once on the cursor."""
    if not pruned:
        return
    stamp = utcnow()
    session.execute(
        update(Instance)
        .where(Instance.id.in_([p.instance_id for p in pruned]))
        .values(pruned_at=stamp)
    )
    audit_direct(
        session,
        [
            audit_row(
                "instance.pruned",
                "stored image and result files deleted (retention)",
                at=stamp,
                study_uid=p.study_uid,
                sop_uid=p.sop_uid,
                detail={"files": p.files, "bytes": p.size_bytes},
            )
            for p in pruned
        ],
    )
