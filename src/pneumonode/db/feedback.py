"""Radiologists' feedback: the only code that writes it, and the reads that performance and
``export-feedback`` share (one row per analysed image, with its newest verdict)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pneumonode.db.audit import audit
from pneumonode.db.models import Feedback, FeedbackVerdict, Instance, Job, Result, Study, utcnow

__all__ = [
    "MAX_COMMENT",
    "AnalysedFilm",
    "FeedbackError",
    "films_in_period",
    "list_feedback",
    "record_feedback",
]

#: The longest comment kept (characters).
MAX_COMMENT = 2000


class FeedbackError(ValueError):
    """Feedback that cannot be recorded; the message says why."""


@dataclass(frozen=True)
class AnalysedFilm:
    """One analysed image with its newest result and, when reviewed, its newest verdict.

    ``path`` is relative to the spool directory; ``pruned`` means retention deleted the files.
    """

    instance_id: int
    sop_uid: str
    study_uid: str
    path: str
    received_at: datetime
    pruned: bool
    result_id: int
    model_version: str
    pneumothorax: bool
    probability: float | None
    verdict: str | None = None
    comment: str | None = None
    reviewer: str | None = None
    reviewed_at: datetime | None = None
    # the model input's statistics (None for results recorded before they were kept)
    input_mean: float | None = None
    input_std: float | None = None
    input_dark_share: float | None = None


def _latest_result(session: Session, instance: Instance) -> Result | None:
    return session.scalars(
        select(Result)
        .join(Job, Job.id == Result.job_id)
        .where(Job.instance_id == instance.id)
        .order_by(Result.id.desc())
        .limit(1)
    ).first()


def record_feedback(
    session: Session,
    instance: Instance,
    verdict: str | FeedbackVerdict,
    reviewer: str,
    comment: str | None = None,
) -> Feedback:
    """Record ``reviewer``'s verdict on ``instance``'s newest result, audited.

    Raises:
        FeedbackError: an unknown verdict, a comment too long, or an image without a result.
    """
    try:
        verdict = FeedbackVerdict(str(verdict).strip().lower())
    except ValueError:
        choices = ", ".join(v.value for v in FeedbackVerdict)
        raise FeedbackError(f"unknown verdict {str(verdict)[:40]!r}; one of {choices}") from None
    text = (comment or "").strip() or None
    if text is not None and len(text) > MAX_COMMENT:
        raise FeedbackError(f"the comment has {len(text)} characters; at most {MAX_COMMENT}")
    result = _latest_result(session, instance)
    if result is None:
        raise FeedbackError("this image has no result to give feedback on (yet)")
    row = Feedback(
        instance_id=instance.id,
        result_id=result.id,
        verdict=verdict.value,
        comment=text,
        reviewer=reviewer,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    called = "positive" if result.pneumothorax else "negative"
    audit(
        session,
        "feedback.given",
        f"feedback {row.id}: {reviewer} says {verdict.value} to the model's {called} call "
        f"(model {result.model_version}){' with a comment' if text else ''}",
        study_uid=instance.study.study_uid,
        sop_uid=instance.sop_uid,
        detail={"feedback_id": row.id, "verdict": verdict.value, "reviewer": reviewer},
    )
    return row


def list_feedback(session: Session, instance: Instance) -> list[Feedback]:
    """The feedback on ``instance``, newest first."""
    return list(
        session.scalars(
            select(Feedback)
            .where(Feedback.instance_id == instance.id)
            .order_by(Feedback.created_at.desc(), Feedback.id.desc())
        )
    )


def films_in_period(
    session: Session,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    reviewed_only: bool = False,
    limit: int = 100_000,
) -> list[AnalysedFilm]:
    """Images received in ``[since, until)`` that have a result, oldest first, each with its
    newest result and its newest feedback (verdict None when nobody reviewed it)."""
    latest_result = (
        select(Job.instance_id.label("instance_id"), func.max(Result.id).label("result_id"))
        .join(Result, Result.job_id == Job.id)
        .group_by(Job.instance_id)
        .subquery()
    )
    latest_feedback = (
        select(Feedback.instance_id.label("instance_id"), func.max(Feedback.id).label("id"))
        .group_by(Feedback.instance_id)
        .subquery()
    )
    query = (
        select(Instance, Study.study_uid, Result, Feedback)
        .join(Study, Study.id == Instance.study_id)
        .join(latest_result, latest_result.c.instance_id == Instance.id)
        .join(Result, Result.id == latest_result.c.result_id)
        .outerjoin(latest_feedback, latest_feedback.c.instance_id == Instance.id)
        .outerjoin(Feedback, Feedback.id == latest_feedback.c.id)
    )
    if since is not None:
        query = query.where(Instance.received_at >= since)
    if until is not None:
        query = query.where(Instance.received_at < until)
    if reviewed_only:
        query = query.where(Feedback.id.is_not(None))
    query = query.order_by(Instance.received_at, Instance.id).limit(limit)
    films = []
    for instance, study_uid, result, feedback in session.execute(query):
        films.append(
            AnalysedFilm(
                instance_id=instance.id,
                sop_uid=instance.sop_uid,
                study_uid=study_uid,
                path=instance.path,
                received_at=instance.received_at,
                pruned=instance.pruned_at is not None,
                result_id=result.id,
                model_version=result.model_version,
                pneumothorax=result.pneumothorax,
                probability=result.probability,
                verdict=feedback.verdict if feedback else None,
                comment=feedback.comment if feedback else None,
                reviewer=feedback.reviewer if feedback else None,
                reviewed_at=feedback.created_at if feedback else None,
                input_mean=result.input_mean,
                input_std=result.input_std,
                input_dark_share=result.input_dark_share,
            )
        )
    return films
