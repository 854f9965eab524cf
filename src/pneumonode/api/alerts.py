"""Alerts (HL7 ORU^R01 and webhooks): the list with their state and latency, the ones that wait
for someone (dead-lettered or overdue, as the System page lists them), and re-sending
dead-lettered ones. A payload holds patient data: it is never answered here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi import Path as FastApiPath
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from pneumonode.alerts.outbox import resend_alerts, shown_destination
from pneumonode.api.deps import Authorized, SessionDep, StateDep
from pneumonode.api.health import DELIVERY_OVERDUE
from pneumonode.api.problems import LIST_PROBLEMS, PROBLEMS, check_dead, waiting
from pneumonode.api.schemas import ActionOut
from pneumonode.db.models import Alert, DeliveryState

__all__ = ["AlertOut", "AlertProblemOut", "router"]

router = APIRouter(prefix="/api", dependencies=[Authorized], tags=["alerts"])


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    channel: str
    destination: str  # a webhook URL redacted
    study_uid: str | None
    sop_uid: str | None
    correction: bool
    state: str
    attempts: int
    last_status: str | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    latency_seconds: float | None  # image received to the ACK (or 2xx)


class AlertProblemOut(AlertOut):
    """An alert that waits for someone: dead-lettered, or pending and overdue."""

    overdue: bool = Field(description="pending, due long ago and not attempted")
    next_attempt_at: datetime
    resendable: bool = Field(
        description="dead-lettered with a message to send again (not one that could not be built)"
    )
    reason: str = Field(description="why it is listed, in words")


def _out(row: Alert) -> AlertOut:
    out = AlertOut.model_validate(row)
    return out.model_copy(update={"destination": shown_destination(row.channel, row.destination)})


def _problem_out(row: Alert, overdue_before: datetime) -> AlertProblemOut:
    overdue = row.state == DeliveryState.PENDING and row.next_attempt_at < overdue_before
    if overdue:
        minutes = DELIVERY_OVERDUE.total_seconds() / 60
        reason = (
            f"overdue: due over {minutes:.0f} min ago and not attempted (is a listener, which "
            "retries alerts, running with the alert settings?)"
        )
    else:
        attempts = f" after {row.attempts} attempt{'' if row.attempts == 1 else 's'}"
        reason = f"dead-lettered{attempts if row.attempts else ''}: " + (
            row.last_error or "no error recorded"
        )
    return AlertProblemOut(
        **_out(row).model_dump(),
        overdue=overdue,
        next_attempt_at=row.next_attempt_at,
        resendable=row.state == DeliveryState.DEAD and row.payload != "",
        reason=reason,
    )


@router.get("/alerts", response_model=list[AlertOut], responses=PROBLEMS)
def alerts(
    session: SessionDep,
    state: Annotated[Literal["pending", "sent", "dead"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> list[AlertOut]:
    """Alerts, newest first."""
    query = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if state:
        query = query.where(Alert.state == state)
    return [_out(row) for row in session.scalars(query)]


@router.get(
    "/alerts/problems",
    response_model=list[AlertProblemOut],
    responses=LIST_PROBLEMS,
)
def problems(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> list[AlertProblemOut]:
    """Dead-lettered alerts (each waits for a re-send) and overdue ones, oldest first; a
    webhook URL redacted, never the message."""
    return waiting(session, Alert, limit, _problem_out)


@router.post(
    "/alerts/{alert_id}/resend",
    response_model=ActionOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=PROBLEMS,
)
def resend(
    alert_id: Annotated[int, FastApiPath(ge=1, le=2**62)], session: SessionDep, state: StateDep
) -> ActionOut:
    """Send a dead-lettered alert again (the same message, attempts reset)."""
    check_dead(
        session,
        Alert,
        alert_id,
        "no alert with this id",
        lambda row: f"the alert is {row.state}; only a dead one is re-sent",
    )
    chosen = resend_alerts(state.database, [alert_id])
    if not chosen:
        raise HTTPException(status.HTTP_409_CONFLICT, "the alert cannot be re-sent")
    return ActionOut(message=f"alert {alert_id} queued to be sent again")
