"""Read-side queries: one row per received image with its job, finding and deliveries.

Backs ``pneumonode results`` (and the API). One SELECT with outer joins and a grouped delivery
summary, filtered and ordered on indexed columns, so it stays fast on 100k images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    FunctionElement,
    Select,
    SQLColumnExpression,
    Subquery,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session

from pneumonode.db.models import (
    Alert,
    AuditEvent,
    Delivery,
    DeliveryState,
    Instance,
    InstanceStatus,
    Job,
    JobState,
    Result,
    Study,
)
from pneumonode.identity import OWN_OUTPUT_REASON

__all__ = [
    "REFUSAL_REASONS",
    "REJECTION_REASONS",
    "STATUSES",
    "STUDY_SORTS",
    "Histogram",
    "ResultFilters",
    "ResultRow",
    "StudyFilters",
    "StudyRow",
    "alert_histograms",
    "association_counts",
    "delivery_counts",
    "delivery_histograms",
    "list_results",
    "list_studies",
    "not_own_output",
    "refusal_counts",
    "seconds_between",
    "span_histogram",
    "stage_histograms",
    "study_row",
]

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
    own_output: bool = False  # our own SEG/SR/SC that came back from the PACS: left out unless True


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


def not_own_output() -> ColumnElement[bool]:
    """WHERE clause: the instance is not our own output come back (SEG/SR/SC the loop guard
    skipped), which the worklist and the results leave out unless asked."""
    return or_(Instance.skip_reason.is_(None), Instance.skip_reason != OWN_OUTPUT_REASON)


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
    if not filters.own_output:
        query = query.where(not_own_output())
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
    "urgency": "positive first, then failed, pending, negative, skipped; each by calibrated "
    "probability, then newest",
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
    sort: str = "urgency"
    limit: int = 50
    offset: int = 0
    own_output: bool = False  # our own SEG/SR/SC that came back from the PACS: hidden unless True


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
    # the finding of the image with the highest calibrated probability (None: no result yet)
    probability: float | None = None
    side: str | None = None
    area_mm2: float | None = None
    area_pixels: int | None = None

    @property
    def badge(self) -> str:
        """positive > failed > pending > negative > skipped: what needs a look first (the
        order of the ``urgency`` sort, which ranks in SQL the same way)."""
        if self.positives:
            return "positive"
        if self.failed:
            return "failed"
        if self.pending:
            return "pending"
        if self.images > self.skipped:
            return "negative"
        return "skipped"


def _study_counts(own_output: bool = False) -> Subquery:
    """Per study: images, positives, pending/failed/skipped counts, newest receipt and the
    highest calibrated probability, from each image's latest result; our own returned objects
    are left out unless ``own_output``."""
    in_flight = Job.state.in_(("pending", "queued", "running"))
    skipped = Instance.status == InstanceStatus.SKIPPED
    positive = Result.pneumothorax.is_(True)
    latest = _latest_results()
    query = (
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
            func.max(Result.probability).label("probability"),
        )
        .outerjoin(Job, Job.instance_id == Instance.id)
        .outerjoin(latest, latest.c.job_id == Job.id)
        .outerjoin(Result, Result.id == latest.c.result_id)
        .group_by(Instance.study_id)
    )
    if not own_output:
        query = query.where(not_own_output())
    return query.subquery()


def _urgency(counts: Subquery) -> list[ColumnElement[Any]]:
    """ORDER BY terms: the badge's rank (as ``StudyRow.badge``), probability, newest."""
    rank = case(
        (counts.c.positives > 0, 0),
        (counts.c.failed > 0, 1),
        (counts.c.pending > 0, 2),
        (counts.c.images > counts.c.skipped, 3),
        else_=4,
    )
    return [
        rank.asc(),
        func.coalesce(counts.c.probability, -1.0).desc(),
        counts.c.received_at.desc(),
    ]


def list_studies(session: Session, filters: StudyFilters) -> tuple[list[StudyRow], int]:
    """Studies with their counts, sorted and paged; returns (page, total matching)."""
    if filters.sort not in STUDY_SORTS:
        raise ValueError(f"unknown sort {filters.sort!r}; one of {', '.join(STUDY_SORTS)}")
    counts = _study_counts(filters.own_output)
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
    if filters.sort == "urgency":
        order = _urgency(counts)
    else:
        column = counts.c.received_at if "received" in filters.sort else Study.study_date
        order = [column.desc() if filters.sort.startswith("-") else column.asc()]
    rows = session.execute(
        query.order_by(*order, Study.id.desc()).limit(filters.limit).offset(filters.offset)
    ).all()
    findings = _top_findings(session, [row.Study.id for row in rows])
    return [_study_row(row, findings.get(row.Study.id)) for row in rows], total


def study_row(session: Session, study_uid: str, own_output: bool = False) -> StudyRow | None:
    counts = _study_counts(own_output)
    row = session.execute(
        select(Study, counts)
        .join(counts, counts.c.study_id == Study.id)
        .where(Study.study_uid == study_uid)
    ).first()
    if row is None:
        return None
    return _study_row(row, _top_findings(session, [row.Study.id]).get(row.Study.id))


def _top_findings(session: Session, study_ids: Sequence[int]) -> dict[int, Result]:
    """Per study: the latest result with the highest calibrated probability (positives first)."""
    if not study_ids:
        return {}
    latest = _latest_results()
    best: dict[int, Result] = {}
    for study_id, result in session.execute(
        select(Instance.study_id, Result)
        .join(Job, Job.instance_id == Instance.id)
        .join(latest, latest.c.job_id == Job.id)
        .join(Result, Result.id == latest.c.result_id)
        .where(Instance.study_id.in_(study_ids))
    ).all():
        key = (result.pneumothorax, result.probability or -1.0)
        held = best.get(study_id)
        if held is None or key > (held.pneumothorax, held.probability or -1.0):
            best[study_id] = result
    return best


def _study_row(row: Any, top: Result | None) -> StudyRow:
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
        probability=top.probability if top is not None else None,
        side=top.side if top is not None and top.pneumothorax else None,
        area_mm2=top.area_mm2 if top is not None and top.pneumothorax else None,
        area_pixels=top.area_pixels if top is not None and top.pneumothorax else None,
    )


# ------------------------------------------------------------------ /metrics: counts at scrape time
#
# The listener, the worker and the API are separate processes, so what /metrics counts comes from
# the database, aggregated in SQL: each query returns a few rows whatever the table sizes, and
# reads the audit trail only through its ``kind`` index.

#: Why an association was rejected, from the audit message the listener writes (first match wins;
#: anything else is "other").
REJECTION_REASONS: tuple[tuple[str, str], ...] = (
    ("rejected: called AE title %", "called_ae"),
    ("rejected: calling AE title %", "calling_ae"),
    ("rejected: more than %", "busy"),
    ("rejected: free disk space %", "disk_low"),
    ("rejected: TLS handshake %", "tls_handshake"),
    ("rejected: protocol version %", "protocol_version"),
    ("rejected: application context %", "application_context"),
)

#: Why a C-STORE was refused and the status it was answered with, from the audit message.
REFUSAL_REASONS: tuple[tuple[str, str, int], ...] = (
    ("refused: free disk space %", "disk_low", 0xA700),
    ("refused: object of % bytes is larger than the limit %", "too_large", 0xA700),
    ("refused: the deflated dataset inflates %", "too_large", 0xA700),
    ("refused: damaged dataset%", "damaged", 0xC210),
    ("refused: no File Meta Information Group Length%", "no_file_meta", 0xC210),
    ("refused: unreadable dataset%", "unreadable", 0xC210),
    ("refused: the dataset's SOP Class UID differs%", "sop_class_mismatch", 0xA900),
    ("refused: no Study Instance UID%", "no_study_uid", 0xC210),
    ("refused: SOP Instance UID differs%", "sop_uid_mismatch", 0xC210),
)


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts of observations at or below each of ``bounds`` (seconds), their count
    and sum: a Prometheus histogram."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # one per bound
    count: int
    total: float


class _SecondsBetween(FunctionElement[float]):
    """``later - earlier`` in seconds (a float) on SQLite and PostgreSQL."""

    name = "seconds_between"
    inherit_cache = True
    type = Float()


@compiles(_SecondsBetween)
def _seconds_between_default(element: _SecondsBetween, compiler: Any, **kw: Any) -> str:
    later, earlier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"EXTRACT(EPOCH FROM ({later} - {earlier}))"


@compiles(_SecondsBetween, "sqlite")
def _seconds_between_sqlite(element: _SecondsBetween, compiler: Any, **kw: Any) -> str:
    later, earlier = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({later}) - julianday({earlier})) * 86400.0)"


def seconds_between(
    later: SQLColumnExpression[Any], earlier: SQLColumnExpression[Any]
) -> ColumnElement[float]:
    """Seconds from ``earlier`` to ``later`` (two timestamp columns), as a float."""
    return _SecondsBetween(later, earlier)


def _histograms(
    session: Session, rows: Subquery, bounds: tuple[float, ...]
) -> dict[str, Histogram]:
    """Per ``rows.c.label``: the histogram of ``rows.c.value`` (nulls left out), counted in SQL
    (one row per label and bucket comes back)."""
    value = rows.c.value
    bucket = case(
        *((value <= bound, index) for index, bound in enumerate(bounds)), else_=len(bounds)
    )
    # grouped in an outer query: PostgreSQL does not take a CASE with parameters as its own
    bucketed = (
        select(rows.c.label, bucket.label("bucket"), value.label("value"))
        .where(value.is_not(None))
        .subquery()
    )
    per_bucket: dict[str, list[int]] = {}
    totals: dict[str, float] = {}
    for label, index, count, total in session.execute(
        select(
            bucketed.c.label, bucketed.c.bucket, func.count(), func.sum(bucketed.c.value)
        ).group_by(bucketed.c.label, bucketed.c.bucket)
    ):
        per_bucket.setdefault(str(label), [0] * (len(bounds) + 1))[int(index)] += int(count)
        totals[str(label)] = totals.get(str(label), 0.0) + float(total or 0.0)
    histograms = {}
    for label, counts in per_bucket.items():
        cumulative, running = [], 0
        for count in counts[:-1]:
            running += count
            cumulative.append(running)
        histograms[label] = Histogram(bounds, tuple(cumulative), sum(counts), totals[label])
    return histograms


def stage_histograms(
    session: Session, stages: Sequence[str], bounds: tuple[float, ...]
) -> dict[str, Histogram]:
    """Per stage of the worker's timings (``Job.timings``, seconds): its histogram over every
    finished job."""
    parts = [
        select(literal(stage).label("label"), Job.timings[stage].as_float().label("value")).where(
            Job.state == JobState.DONE
        )
        for stage in stages
    ]
    return _histograms(session, union_all(*parts).subquery(), bounds)


def span_histogram(
    session: Session, stages: Sequence[str], bounds: tuple[float, ...]
) -> Histogram | None:
    """The histogram over every finished job of the sum of ``stages`` (a job missing one of
    them is left out)."""
    total: ColumnElement[Any] | None = None
    for stage in stages:
        part = Job.timings[stage].as_float()
        total = part if total is None else total + part
    assert total is not None
    rows = (
        select(literal("span").label("label"), total.label("value"))
        .where(Job.state == JobState.DONE)
        .subquery()
    )
    return _histograms(session, rows, bounds).get("span")


def delivery_histograms(session: Session, bounds: tuple[float, ...]) -> dict[str, Histogram]:
    """Per destination: seconds from a delivery's queueing to its acceptance, over every sent
    delivery."""
    rows = (
        select(
            Delivery.destination.label("label"),
            seconds_between(Delivery.sent_at, Delivery.created_at).label("value"),
        )
        .where(Delivery.state == DeliveryState.SENT)
        .subquery()
    )
    return _histograms(session, rows, bounds)


def alert_histograms(session: Session, bounds: tuple[float, ...]) -> dict[str, Histogram]:
    """Per alert channel: seconds from the image's arrival to the alert's acknowledgement."""
    rows = (
        select(
            Alert.channel.label("label"),
            seconds_between(Alert.sent_at, Instance.received_at).label("value"),
        )
        .join(Result, Result.id == Alert.result_id)
        .join(Job, Job.id == Result.job_id)
        .join(Instance, Instance.id == Job.instance_id)
        .where(Alert.state == DeliveryState.SENT)
        .subquery()
    )
    return _histograms(session, rows, bounds)


def _classified(column: SQLColumnExpression[str], patterns: Sequence[str]) -> ColumnElement[int]:
    """The index of the first LIKE pattern ``column`` matches, or ``len(patterns)``."""
    return case(
        *((column.like(pattern), index) for index, pattern in enumerate(patterns)),
        else_=len(patterns),
    )


def association_counts(session: Session) -> dict[tuple[str, str], int]:
    """(outcome, reason) -> associations: accepted, aborted (reason "") and rejected (by
    :data:`REJECTION_REASONS`, else "other"), from the audit trail."""
    patterns = [pattern for pattern, _ in REJECTION_REASONS]
    reasons = [reason for _, reason in REJECTION_REASONS] + ["other"]
    rejected = AuditEvent.kind == "association.rejected"
    reason = case((rejected, _classified(AuditEvent.message, patterns)), else_=-1)
    events = (
        select(AuditEvent.kind.label("kind"), reason.label("reason"))
        .where(
            AuditEvent.kind.in_(
                ("association.accepted", "association.rejected", "association.aborted")
            )
        )
        .subquery()
    )
    counts: dict[tuple[str, str], int] = {}
    for kind, index, count in session.execute(
        select(events.c.kind, events.c.reason, func.count()).group_by(
            events.c.kind, events.c.reason
        )
    ):
        outcome = str(kind).removeprefix("association.")
        label = reasons[int(index)] if int(index) >= 0 else ""
        counts[(outcome, label)] = counts.get((outcome, label), 0) + int(count)
    return counts


def refusal_counts(session: Session) -> dict[tuple[str, int | None], int]:
    """(reason, status) -> C-STOREs refused, from the audit trail (:data:`REFUSAL_REASONS`; an
    unknown message is ("other", None))."""
    patterns = [pattern for pattern, _, _ in REFUSAL_REASONS]
    counts: dict[tuple[str, int | None], int] = {}
    events = (
        select(_classified(AuditEvent.message, patterns).label("reason"))
        .where(AuditEvent.kind == "instance.refused")
        .subquery()
    )
    for index, count in session.execute(
        select(events.c.reason, func.count()).group_by(events.c.reason)
    ):
        key: tuple[str, int | None] = (
            REFUSAL_REASONS[int(index)][1:]
            if int(index) < len(REFUSAL_REASONS)
            else ("other", None)
        )
        counts[key] = counts.get(key, 0) + int(count)
    return counts


def delivery_counts(session: Session) -> dict[tuple[str, str], int]:
    """(destination, state) -> deliveries."""
    return {
        (str(destination), str(state)): int(count)
        for destination, state, count in session.execute(
            select(Delivery.destination, Delivery.state, func.count()).group_by(
                Delivery.destination, Delivery.state
            )
        )
    }
