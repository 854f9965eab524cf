"""db.feedback on SQLite and PostgreSQL: the newest verdict counts, the period filters by the
image's arrival, an image without a result takes no feedback."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from peers_harness import storescu
from pneumonode.db.feedback import FeedbackError, films_in_period, record_feedback
from pneumonode.db.models import AuditEvent, Instance, Job
from pneumonode.model.predictor import Predictor
from pneumonode.worker.pipeline import PipelineContext, process_job

if TYPE_CHECKING:
    from conftest import RunningNode


def test_the_newest_verdict_counts_in_the_period(
    node: RunningNode, siim_sample_dicoms: list[Path], tiny_checkpoint: Callable[..., Path]
) -> None:
    storescu(siim_sample_dicoms[:3], node.port)
    with node.database.session() as session:
        jobs = list(session.scalars(select(Job.id).order_by(Job.id)))
    context = PipelineContext(
        node.settings, node.database, Predictor.load(tiny_checkpoint(bias=20.0), backend="torch")
    )
    for job_id in jobs[:2]:  # the third stays unprocessed: no result
        process_job(context, job_id)
    with node.database.session() as session:
        first, second, third = session.scalars(select(Instance).order_by(Instance.id))
        record_feedback(session, first, "agree", "alice")
        record_feedback(session, first, "DISAGREE", "bob", "  on second look, a fold  ")
        with pytest.raises(FeedbackError, match="unknown verdict 'maybe'"):
            record_feedback(session, second, "maybe", "alice")
        with pytest.raises(FeedbackError, match="at most 2000"):
            record_feedback(session, second, "agree", "alice", "x" * 2001)
        with pytest.raises(FeedbackError, match="no result"):
            record_feedback(session, third, "agree", "alice")
    with node.database.session() as session:
        films = films_in_period(session)
        assert [(f.sop_uid, f.verdict, f.reviewer) for f in films] == [
            (first.sop_uid, "disagree", "bob"),
            (second.sop_uid, None, None),
        ]
        assert films[0].comment == "on second look, a fold" and films[0].pneumothorax
        reviewed = films_in_period(session, reviewed_only=True)
        assert [f.sop_uid for f in reviewed] == [first.sop_uid]
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert films_in_period(session, since=later) == []
        assert len(films_in_period(session, until=later)) == 2
        kinds = session.scalars(
            select(AuditEvent.kind).where(AuditEvent.kind == "feedback.given")
        ).all()
        assert len(kinds) == 2
