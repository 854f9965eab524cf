"""Live performance over a period: agreement, PPV, a sensitivity estimate, counts by
manufacturer, station and view, a per-day trend, and input drift against the model's training
data (computed by :mod:`pneumonode.performance`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from pneumonode.api.deps import Authorized, SessionDep, SettingsDep
from pneumonode.api.schemas import ProblemOut
from pneumonode.db.feedback import films_in_period
from pneumonode.performance import (
    Film,
    HeaderFacts,
    read_header_facts,
    read_training_data,
    summarize,
)

__all__ = ["router"]

router = APIRouter(prefix="/api", dependencies=[Authorized], tags=["performance"])

#: The most films one answer looks at (the newest of the period beyond it are left out).
MAX_FILMS = 20_000
DEFAULT_DAYS = 30


@lru_cache(maxsize=MAX_FILMS)
def _facts(path: str, mtime_ns: int) -> HeaderFacts | None:
    return read_header_facts(Path(path))


def _header(path: Path) -> HeaderFacts:
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:  # pruned by retention, or moved: nothing known of its header
        return HeaderFacts()
    return _facts(str(path), mtime) or HeaderFacts()


def _moment(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{name}: expected an ISO date or time (2026-12-01 or 2026-12-01T08:00:00Z), "
            f"got {value[:40]!r}",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@router.get(
    "/performance",
    responses={code: {"model": ProblemOut} for code in (401, 422)},
)
def performance(
    session: SessionDep,
    settings: SettingsDep,
    since: Annotated[
        str | None, Query(max_length=40, description="ISO date/time; default 30 days ago")
    ] = None,
    until: Annotated[
        str | None, Query(max_length=40, description="ISO date/time; default now")
    ] = None,
) -> dict[str, Any]:
    """Performance of the films received in ``[since, until)`` and their input drift."""
    end = _moment(until, "until") or datetime.now(UTC)
    start = _moment(since, "since") or end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since must be before until")
    rows = films_in_period(session, start, end, limit=MAX_FILMS)
    films = [
        Film(
            received_at=row.received_at,
            positive=row.pneumothorax,
            verdict=row.verdict,
            facts=HeaderFacts() if row.pruned else _header(settings.spool_dir / row.path),
            input_mean=row.input_mean,
            input_std=row.input_std,
            input_dark_share=row.input_dark_share,
        )
        for row in rows
    ]
    report = summarize(films, read_training_data(settings.model), since=start, until=end)
    report["truncated"] = len(rows) >= MAX_FILMS
    return report
