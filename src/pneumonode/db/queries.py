"""Read-side queries: one row per received image with its job, finding and deliveries.

Backs ``pneumonode results`` (and the API). One SELECT with outer joins and a grouped delivery
summary, filtered and ordered on indexed columns, so it stays fast on 100k images.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Subquery, and_, case, func, select
from sqlalchemy.orm import Session

from pneumonode.db.models import (
    Delivery,
    DeliveryState,
    Instance,
    InstanceStatus,
    Job,
    Result,
    Study,
)

__all__ = ["STATUSES", "ResultFilters", "ResultRow", "list_results"]

#: What ``status`` may be asked for: a job state, or "skipped" (not a frontal chest image).
STATUSES = ("pending", "queued", "running", "done", "failed", "skipped")


@dataclass(frozen=True)
class ResultFilters:
    study_uid: str | None = None
    patient_id: str | None = None
    since: datetime | None = None
    positive: bool | None = None
    status: str | None = None
    limit: int = 1000
    offset: int = 0


@dataclass(frozen=True)
class ResultRow:
    study_uid: str
    sop_uid: str
    patient_id: str | None
    accession_number: str | None
    received_at: datetime
    status: str  # job state, or skipped
    skip_reason: str | None
    error: str | None
    finding: str | None  # present, absent, or None when there is no result yet
    probability: float | None
    area_mm2: float | None
    area_pixels: int | None
    side: str | None
    model_version: str | None
    seg_uid: str | None
    sr_uid: str | None
    sc_uid: str | None
    destinations: str | None  # comma separated
    deliveries_sent: int
    deliveries_total: int
    deliveries_dead: int

    @property
    def delivery(self) -> str | None:
        """sent, pending, dead (any dead), or None when nothing is to be sent."""
        if not self.deliveries_total:
            return None
        if self.deliveries_dead:
            return "dead"
        return "sent" if self.deliveries_sent == self.deliveries_total else "pending"


def _latest_results() -> Subquery:
    """(job_id, id of its newest result)."""
    return (
        select(Result.job_id, func.max(Result.id).label("result_id"))
        .group_by(Result.job_id)
        .subquery()
    )


def _delivery_summary() -> Subquery:
    """Per result: deliveries in all, sent, dead."""
    return (
        select(
            Delivery.result_id,
            func.count().label("total"),
            func.sum(case((Delivery.state == DeliveryState.SENT, 1), else_=0)).label("sent"),
            func.sum(case((Delivery.state == DeliveryState.DEAD, 1), else_=0)).label("dead"),
        )
        .group_by(Delivery.result_id)
        .subquery()
    )


def results_query(filters: ResultFilters) -> Select[Any]:
    """The SELECT behind :func:`list_results` (exposed for query-plan checks)."""
    if filters.status is not None and filters.status not in STATUSES:
        raise ValueError(f"unknown status {filters.status!r}; one of {', '.join(STATUSES)}")
    latest = _latest_results()
    sent = _delivery_summary()
    query = (
        select(Instance, Study, Job, Result, sent.c.total, sent.c.sent, sent.c.dead)
        .join(Study, Instance.study_id == Study.id)
        .outerjoin(Job, Job.instance_id == Instance.id)
        .outerjoin(latest, latest.c.job_id == Job.id)
        .outerjoin(Result, Result.id == latest.c.result_id)
        .outerjoin(sent, sent.c.result_id == Result.id)
        .order_by(Instance.received_at.desc(), Instance.id.desc())
        .limit(filters.limit)
        .offset(filters.offset)
    )
    if filters.study_uid:
        query = query.where(Study.study_uid == filters.study_uid)
    if filters.patient_id:
        query = query.where(Study.patient_id == filters.patient_id)
    if filters.since is not None:
        query = query.where(Instance.received_at >= filters.since)
    if filters.positive is not None:
        query = query.where(Result.pneumothorax.is_(filters.positive))
    if filters.status == "skipped":
        query = query.where(Instance.status == InstanceStatus.SKIPPED)
    elif filters.status is not None:
        query = query.where(
            and_(Instance.status != InstanceStatus.SKIPPED, Job.state == filters.status)
        )
    return query


def list_results(session: Session, filters: ResultFilters) -> list[ResultRow]:
    """Received images, newest first, with what became of them."""
    rows = session.execute(results_query(filters)).all()
    result_ids = [row.Result.id for row in rows if row.Result is not None]
    names: dict[int, list[str]] = {}
    if result_ids:
        for result_id, destination in session.execute(
            select(Delivery.result_id, Delivery.destination)
            .where(Delivery.result_id.in_(result_ids))
            .distinct()
            .order_by(Delivery.destination)
        ):
            if result_id is not None:
                names.setdefault(result_id, []).append(destination)
    return [_row(row, names) for row in rows]


def _row(row: object, names: dict[int, list[str]]) -> ResultRow:
    instance: Instance = row.Instance  # type: ignore[attr-defined]
    study: Study = row.Study  # type: ignore[attr-defined]
    job: Job | None = row.Job  # type: ignore[attr-defined]
    result: Result | None = row.Result  # type: ignore[attr-defined]
    skipped = instance.status == InstanceStatus.SKIPPED
    return ResultRow(
        study_uid=study.study_uid,
        sop_uid=instance.sop_uid,
        patient_id=study.patient_id,
        accession_number=study.accession_number,
        received_at=instance.received_at,
        status="skipped" if skipped or job is None else job.state,
        skip_reason=instance.skip_reason,
        error=job.error if job is not None else None,
        finding=None if result is None else ("present" if result.pneumothorax else "absent"),
        probability=result.max_probability if result is not None else None,
        area_mm2=result.area_mm2 if result is not None else None,
        area_pixels=result.area_pixels if result is not None else None,
        side=result.side if result is not None else None,
        model_version=result.model_version if result is not None else None,
        seg_uid=result.seg_sop_uid if result is not None else None,
        sr_uid=result.sr_sop_uid if result is not None else None,
        sc_uid=result.sc_sop_uid if result is not None else None,
        destinations=", ".join(names.get(result.id, [])) if result is not None else None,
        deliveries_sent=int(getattr(row, "sent", None) or 0),
        deliveries_total=int(getattr(row, "total", None) or 0),
        deliveries_dead=int(getattr(row, "dead", None) or 0),
    )
