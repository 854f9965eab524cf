"""Alerts (HL7 ORU^R01 and webhooks): the list with their state and latency, and re-sending
dead-lettered ones. A payload holds patient data: it is never answered here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi import Path as FastApiPath
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from pneumonode.alerts.outbox import resend_alerts, shown_destination
from pneumonode.api.deps import Authorized, SessionDep, StateDep
from pneumonode.api.schemas import ActionOut, ProblemOut
from pneumonode.db.models import Alert, DeliveryState

__all__ = ["AlertOut", "router"]

router = APIRouter(prefix="/api", dependencies=[Authorized], tags=["alerts"])

PROBLEMS: dict[int | str, dict[str, object]] = {
    code: {"model": ProblemOut} for code in (401, 404, 409, 422)
}


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


def _out(row: Alert) -> AlertOut:
    out = AlertOut.model_validate(row)
    return out.model_copy(update={"destination": shown_destination(row.channel, row.destination)})


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
    row = session.get(Alert, alert_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no alert with this id")
    if row.state != DeliveryState.DEAD:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"the alert is {row.state}; only a dead one is re-sent"
        )
    session.rollback()  # resend_alerts writes in its own session
    chosen = resend_alerts(state.database, [alert_id])
    if not chosen:
        raise HTTPException(status.HTTP_409_CONFLICT, "the alert cannot be re-sent")
    return ActionOut(message=f"alert {alert_id} queued to be sent again")
