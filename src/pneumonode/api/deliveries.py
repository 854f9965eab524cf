"""Deliveries that wait for someone (dead-lettered or overdue), and re-sending one of them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi import Path as FastApiPath

from pneumonode.api.deps import Authorized, SessionDep, StateDep
from pneumonode.api.health import DELIVERY_OVERDUE
from pneumonode.api.problems import LIST_PROBLEMS, PROBLEMS, check_dead, waiting
from pneumonode.api.schemas import ActionOut, DeliveryOut, DeliveryProblemOut
from pneumonode.db.models import Delivery, DeliveryState
from pneumonode.db.outbox import resend_dead
from pneumonode.results import result_kind

__all__ = ["delivery_out", "router"]

router = APIRouter(prefix="/api", dependencies=[Authorized], tags=["deliveries"])

DeliveryId = Annotated[int, FastApiPath(ge=1, le=2**62, description="a delivery's id")]


def delivery_out(delivery: Delivery) -> DeliveryOut:
    """A delivery as the API shows it, labelled SEG, SR or SC."""
    return DeliveryOut(
        id=delivery.id,
        destination=delivery.destination,
        sop_uid=delivery.sop_uid,
        kind=result_kind(delivery.sop_class_uid),
        state=delivery.state,
        attempts=delivery.attempts,
        last_error=delivery.last_error,
        sent_at=delivery.sent_at,
    )


def _problem_out(delivery: Delivery, overdue_before: Any) -> DeliveryProblemOut:
    overdue = delivery.state == DeliveryState.PENDING and delivery.next_attempt_at < overdue_before
    if overdue:
        minutes = DELIVERY_OVERDUE.total_seconds() / 60
        reason = (
            f"overdue: due over {minutes:.0f} min ago and not attempted (is a listener, which "
            "sends deliveries, running?)"
        )
    else:
        attempts = f"{delivery.attempts} attempt{'' if delivery.attempts == 1 else 's'}"
        reason = f"dead-lettered after {attempts}: " + (delivery.last_error or "no error recorded")
    return DeliveryProblemOut(
        **delivery_out(delivery).model_dump(),
        study_uid=delivery.study_uid,
        overdue=overdue,
        next_attempt_at=delivery.next_attempt_at,
        created_at=delivery.created_at,
        reason=reason,
    )


@router.get(
    "/deliveries/problems",
    response_model=list[DeliveryProblemOut],
    responses=LIST_PROBLEMS,
)
def problems(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> list[DeliveryProblemOut]:
    """Dead-lettered deliveries (each waits for a re-send) and overdue ones, oldest first."""
    return waiting(session, Delivery, limit, _problem_out)


@router.post(
    "/deliveries/{delivery_id}/resend",
    response_model=ActionOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=PROBLEMS,
)
def resend_delivery(delivery_id: DeliveryId, session: SessionDep, state: StateDep) -> ActionOut:
    """Queue a dead-lettered delivery again: pending, attempts reset, audited."""
    check_dead(
        session,
        Delivery,
        delivery_id,
        "no delivery with this id",
        lambda row: f"delivery {delivery_id} is {row.state}, not dead-lettered; nothing to resend",
    )
    ids = resend_dead(state.database, Delivery, [delivery_id])
    if not ids:  # another request re-sent it in between
        raise HTTPException(status.HTTP_409_CONFLICT, f"delivery {delivery_id} was re-sent already")
    return ActionOut(message=f"delivery {delivery_id} queued again", delivery_ids=ids)
