"""Repository functions: the only code that writes studies, instances, jobs and the audit trail."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

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
    "ReceiveOutcome",
    "ReceivedInstance",
    "audit",
    "find_instance",
    "list_audit",
    "record_received_instance",
]


def audit(session: Session, kind: str, message: str, **fields: Any) -> AuditEvent:
    """Add one audit event (committed with the caller's transaction).

    ``message`` must not contain patient data; identifiers go in their own fields.
    """
    event = AuditEvent(kind=kind, message=message[:512], at=utcnow(), **fields)
    session.add(event)
    return event


def list_audit(
    session: Session,
    *,
    study_uid: str | None = None,
    sop_uid: str | None = None,
    kinds: Sequence[str] = (),
    since: datetime | None = None,
    limit: int = 1000,
) -> list[AuditEvent]:
    """Audit events, oldest first, filtered."""
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
    return list(reversed(session.scalars(query).all()))


def find_instance(session: Session, sop_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_uid == sop_uid))


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
    sha256: str
    calling_ae: str | None
    peer_address: str | None
    skip_reason: str | None  # None: a frontal chest radiograph, processed


class ReceiveOutcome(enum.StrEnum):
    NEW = "new"
    RESENT_IDENTICAL = "resent-identical"  # same bytes again: nothing to do
    RESENT_CHANGED = "resent-changed"  # different bytes: kept the newer, job re-runs


def _study(session: Session, item: ReceivedInstance) -> Study:
    study = session.scalar(select(Study).where(Study.study_uid == item.study_uid))
    if study is None:
        study = Study(
            study_uid=item.study_uid,
            patient_id=item.patient_id,
            accession_number=item.accession_number,
            study_date=item.study_date,
        )
        session.add(study)
        session.flush()
    else:
        study.patient_id = study.patient_id or item.patient_id
        study.accession_number = study.accession_number or item.accession_number
        study.study_date = study.study_date or item.study_date
    return study


def record_received_instance(
    session: Session, item: ReceivedInstance
) -> tuple[ReceiveOutcome, Instance, Job | None]:
    """Record a stored instance, its job (when selected) and the audit events.

    Idempotent on SOP Instance UID: identical bytes again create no job; different bytes
    replace the record and put the job back to pending.
    """
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
    status = InstanceStatus.SKIPPED if item.skip_reason else InstanceStatus.RECEIVED
    instance = find_instance(session, item.sop_uid)
    if instance is not None and instance.sha256 == item.sha256:
        instance.times_received += 1
        audit(
            session,
            "instance.resent",
            f"re-sent with identical content (received {instance.times_received} times)",
            detail={**detail, "changed": False},
            **ids,
        )
        return ReceiveOutcome.RESENT_IDENTICAL, instance, instance.job

    study = _study(session, item)
    if instance is None:
        outcome = ReceiveOutcome.NEW
        instance = Instance(
            study_id=study.id,
            sop_uid=item.sop_uid,
            times_received=1,
            received_at=utcnow(),
        )
        session.add(instance)
        audit(session, "instance.received", "instance stored", detail=detail, **ids)
    else:
        outcome = ReceiveOutcome.RESENT_CHANGED
        instance.times_received += 1
        instance.study_id = study.id
        audit(
            session,
            "instance.resent",
            "re-sent with different content: kept the newer file",
            detail={**detail, "changed": True},
            **ids,
        )
    instance.series_uid = item.series_uid
    instance.sop_class_uid = item.sop_class_uid
    instance.transfer_syntax_uid = item.transfer_syntax_uid
    instance.modality = item.modality
    instance.path = item.path
    instance.size_bytes = item.size_bytes
    instance.sha256 = item.sha256
    instance.calling_ae = item.calling_ae
    instance.peer_address = item.peer_address
    instance.status = status
    instance.skip_reason = item.skip_reason
    session.flush()

    job = instance.job
    if item.skip_reason:
        audit(session, "instance.skipped", f"skipped: {item.skip_reason}", **ids)
        if job is not None and job.state in (JobState.PENDING, JobState.QUEUED):
            job.state = JobState.FAILED
            job.error = f"superseded by a re-sent object that is skipped: {item.skip_reason}"
        return outcome, instance, job
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
    return outcome, instance, job
