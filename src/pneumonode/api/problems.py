"""What the alerts, deliveries and feedback routes share: their problem responses, the outbox
rows that wait for someone (dead-lettered or overdue), the checks before a re-send, and a
lookup that answers 404."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from fastapi import HTTPException, status
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from pneumonode.api.health import DELIVERY_OVERDUE
from pneumonode.api.schemas import ProblemOut
from pneumonode.db.models import Alert, Delivery, DeliveryState, utcnow

__all__ = ["LIST_PROBLEMS", "PROBLEMS", "check_dead", "found", "waiting"]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemOut} for code in (401, 404, 409, 422)
}
# a list answers neither 404 nor 409
LIST_PROBLEMS: dict[int | str, dict[str, Any]] = {code: PROBLEMS[code] for code in (401, 422)}

T = TypeVar("T")
Out = TypeVar("Out")
Outbox = TypeVar("Outbox", Alert, Delivery)


def found(row: T | None, detail: str) -> T:
    """``row``, or a 404 with ``detail`` where there is none."""
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail)
    return row


def waiting(
    session: Session,
    model: type[Outbox],
    limit: int,
    out: Callable[[Outbox, datetime], Out],
) -> list[Out]:
    """Dead-lettered rows of ``model`` and pending ones overdue, oldest first, each as
    ``out(row, overdue_before)`` (a pending row due before ``overdue_before`` is overdue)."""
    overdue_before = utcnow() - DELIVERY_OVERDUE
    rows = session.scalars(
        select(model)
        .where(
            or_(
                model.state == DeliveryState.DEAD,
                and_(
                    model.state == DeliveryState.PENDING,
                    model.next_attempt_at < overdue_before,
                ),
            )
        )
        .order_by(model.created_at, model.id)
        .limit(limit)
    )
    return [out(row, overdue_before) for row in rows]


def check_dead(
    session: Session,
    model: type[Outbox],
    row_id: int,
    missing: str,
    not_dead: Callable[[Outbox], str],
) -> None:
    """A 404 (``missing``) where there is no row ``row_id``, a 409 (``not_dead(row)``) where it
    is not dead-lettered; then ends the read, as a re-send writes in a session of its own."""
    row = found(session.get(model, row_id), missing)
    if row.state != DeliveryState.DEAD:
        raise HTTPException(status.HTTP_409_CONFLICT, not_dead(row))
    session.rollback()
