"""For the system view: throughput and latency of recent jobs, and the model's card."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import func, select

from pneumonode.api.deps import Authorized, SessionDep, SettingsDep
from pneumonode.api.schemas import ModelOut, ProblemOut, StageStats, StatsOut
from pneumonode.db.models import Job, JobState, utcnow
from pneumonode.db.stages import STAGES
from pneumonode.model.card import CARD_NAME, card_limits, card_summary
from pneumonode.model.checkpoint import CheckpointError, read_checkpoint_config

__all__ = ["router"]

router = APIRouter(prefix="/api", dependencies=[Authorized], tags=["system"])


@router.get("/stats", response_model=StatsOut, responses={422: {"model": ProblemOut}})
def stats(session: SessionDep, minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> StatsOut:
    """Jobs finished per minute over the last ``minutes``; stage p50/p95 of the last 500 jobs."""
    now = utcnow()
    since = now - timedelta(minutes=minutes)
    per_minute = [0] * minutes
    for (finished,) in session.execute(
        select(Job.finished_at).where(Job.state == JobState.DONE).where(Job.finished_at >= since)
    ):
        if finished is None:
            continue
        index = int((finished - since).total_seconds() // 60)
        per_minute[min(max(index, 0), minutes - 1)] += 1
    depth = session.scalar(
        select(func.count()).select_from(Job).where(Job.state.in_(("pending", "queued")))
    )
    timings = [
        t
        for t in session.scalars(
            select(Job.timings)
            .where(Job.state == JobState.DONE)
            .order_by(Job.finished_at.desc())
            .limit(500)
        )
        if t
    ]
    stages = []
    for stage in STAGES:
        values = [float(t[stage]) for t in timings if t.get(stage) is not None]
        stages.append(
            StageStats(
                stage=stage,
                p50=float(np.percentile(values, 50)) if values else None,
                p95=float(np.percentile(values, 95)) if values else None,
            )
        )
    return StatsOut(
        window_minutes=minutes, done_per_minute=per_minute, queue_depth=depth or 0, stages=stages
    )


@router.get("/model", response_model=ModelOut, responses={503: {"model": ProblemOut}})
def model(settings: SettingsDep) -> ModelOut:
    """The configured model: version, thresholds, metrics, training data and its card, with the
    card's first paragraph and its known limits as plain words (the page shows them)."""
    try:
        config = read_checkpoint_config(settings.model)
    except CheckpointError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    folder = settings.model if settings.model.is_dir() else settings.model.parent
    card_path = folder / CARD_NAME
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    return ModelOut(
        name=config.name,
        version=config.version,
        intended_use=config.intended_use,
        input_size=config.input.size,
        threshold=config.postprocess.threshold,
        grow_threshold=config.postprocess.grow_threshold,
        min_area_pixels=config.postprocess.min_area_pixels,
        operating_point=None if config.decision is None else config.decision.threshold,
        metrics=config.metrics,
        training={k: v for k, v in config.training.items() if k != "config"},
        card=card,
        summary=None if card is None else card_summary(card),
        limits=[] if card is None else card_limits(card),
    )
