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
        # the calibrated probability of the finding where the model has one, else its top pixel
        probability=(
            None
            if result is None
            else result.probability
            if result.probability is not None
            else result.max_probability
        ),
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


STUDY_SORTS = {
    "-received": "received_at desc",
    "received": "received_at asc",
    "-study_date": "study_date desc",
    "study_date": "study_date asc",
}


@dataclass(frozen=True)
class StudyFilters:
    patient_id: str | None = None
    accession_number: str | None = None
    date_from: str | None = None  # YYYYMMDD, inclusive
    date_to: str | None = None
    sort: str = "-received"
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class StudyRow:
    id: int
    study_uid: str
    patient_id: str | None
    accession_number: str | None
    study_date: str | None
    received_at: datetime
    images: int
    positives: int
    pending: int
    failed: int
    skipped: int
    skip_reason: str | None = None  # one of the reasons, when images were skipped

    @property
    def badge(self) -> str:
        """positive > failed > pending > negative > skipped: what needs a look first."""
        if self.positives:
            return "positive"
        if self.failed:
            return "failed"
        if self.pending:
            return "pending"
        if self.images > self.skipped:
            return "negative"
        return "skipped"


def _study_counts() -> Subquery:
    """Per study: images, positives, pending/failed/skipped counts, newest receipt."""
    in_flight = Job.state.in_(("pending", "queued", "running"))
    skipped = Instance.status == InstanceStatus.SKIPPED
    positive = Result.pneumothorax.is_(True)
    return (
        select(
            Instance.study_id.label("study_id"),
            func.count(func.distinct(Instance.id)).label("images"),
            func.max(Instance.received_at).label("received_at"),
            func.count(func.distinct(case((positive, Instance.id)))).label("positives"),
            func.count(func.distinct(case((and_(in_flight, ~skipped), Instance.id)))).label(
                "pending"
            ),
            func.count(func.distinct(case((Job.state == "failed", Instance.id)))).label("failed"),
            func.count(func.distinct(case((skipped, Instance.id)))).label("skipped"),
            func.max(Instance.skip_reason).label("skip_reason"),
        )
        .outerjoin(Job, Job.instance_id == Instance.id)
        .outerjoin(Result, Result.job_id == Job.id)
        .group_by(Instance.study_id)
        .subquery()
    )


def list_studies(session: Session, filters: StudyFilters) -> tuple[list[StudyRow], int]:
    """Studies with their counts, sorted and paged; returns (page, total matching)."""
    if filters.sort not in STUDY_SORTS:
        raise ValueError(f"unknown sort {filters.sort!r}; one of {', '.join(STUDY_SORTS)}")
    counts = _study_counts()
    query = select(Study, counts).join(counts, counts.c.study_id == Study.id)
    if filters.patient_id:
        query = query.where(Study.patient_id == filters.patient_id)
    if filters.accession_number:
        query = query.where(Study.accession_number == filters.accession_number)
    if filters.date_from:
        query = query.where(Study.study_date >= filters.date_from)
    if filters.date_to:
        query = query.where(Study.study_date <= filters.date_to)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    column = counts.c.received_at if "received" in filters.sort else Study.study_date
    order = column.desc() if filters.sort.startswith("-") else column.asc()
    rows = session.execute(
        query.order_by(order, Study.id.desc()).limit(filters.limit).offset(filters.offset)
    ).all()
    return [_study_row(row) for row in rows], total


def study_row(session: Session, study_uid: str) -> StudyRow | None:
    counts = _study_counts()
    row = session.execute(
        select(Study, counts)
        .join(counts, counts.c.study_id == Study.id)
        .where(Study.study_uid == study_uid)
    ).first()
    return _study_row(row) if row is not None else None


def _study_row(row: Any) -> StudyRow:
    study: Study = row.Study
    return StudyRow(
        id=study.id,
        study_uid=study.study_uid,
        patient_id=study.patient_id,
        accession_number=study.accession_number,
        study_date=study.study_date,
        received_at=row.received_at,
        images=int(row.images),
        positives=int(row.positives),
        pending=int(row.pending),
        failed=int(row.failed),
        skipped=int(row.skipped),
        skip_reason=row.skip_reason,
    )
