"""Radiologists' feedback on an image's result: agree, disagree (no pneumothorax) or missed
(a pneumothorax the model did not mark), with an optional comment; attributed to the name of
the caller's token and audited."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from pneumonode.api.deps import Authorized, Caller, SessionDep, UidPath, checked_uid
from pneumonode.api.problems import PROBLEMS, found
from pneumonode.db.feedback import MAX_COMMENT, FeedbackError, list_feedback, record_feedback
from pneumonode.db.models import Instance
from pneumonode.db.repository import find_instance

__all__ = ["FeedbackIn", "FeedbackOut", "router"]

router = APIRouter(prefix="/api", dependencies=[Authorized], tags=["feedback"])


class FeedbackIn(BaseModel):
    """A verdict on the model's result for one image."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["agree", "disagree", "missed"] = Field(
        description="agree: the model is right; disagree: it marked a pneumothorax that is not "
        "there; missed: there is a pneumothorax it did not mark"
    )
    comment: str | None = Field(default=None, max_length=MAX_COMMENT)


class FeedbackOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    verdict: str
    comment: str | None
    reviewer: str
    result_id: int | None
    created_at: datetime


def _instance(session: Session, sop_uid: str) -> Instance:
    checked_uid(sop_uid, "SOP Instance UID")
    return found(find_instance(session, sop_uid), "no instance with this SOP Instance UID")


@router.get("/instances/{sop_uid}/feedback", response_model=list[FeedbackOut], responses=PROBLEMS)
def feedback(sop_uid: UidPath, session: SessionDep) -> list[FeedbackOut]:
    """The feedback on one image, newest first (the newest counts)."""
    instance = _instance(session, sop_uid)
    return [FeedbackOut.model_validate(row) for row in list_feedback(session, instance)]


@router.post(
    "/instances/{sop_uid}/feedback",
    response_model=FeedbackOut,
    status_code=status.HTTP_201_CREATED,
    responses=PROBLEMS,
)
def give_feedback(
    sop_uid: UidPath, body: FeedbackIn, session: SessionDep, caller: Caller
) -> FeedbackOut:
    """Record the caller's verdict on the image's newest result (audited)."""
    instance = _instance(session, sop_uid)
    try:
        row = record_feedback(session, instance, body.verdict, caller, body.comment)
    except FeedbackError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return FeedbackOut.model_validate(row)
