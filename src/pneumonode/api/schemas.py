"""What the API answers: response models, separate from the database's table models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ActionOut",
    "AuditOut",
    "ComponentHealth",
    "DeliveryOut",
    "DeliveryProblemOut",
    "HealthOut",
    "InstanceOut",
    "JobOut",
    "ModelOut",
    "ProblemOut",
    "ResultOut",
    "StageStats",
    "StatsOut",
    "StudyDetail",
    "StudyPage",
    "StudySummary",
    "UploadItem",
    "UploadOut",
]

Badge = Literal["positive", "negative", "pending", "failed", "skipped"]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ProblemOut(_Out):
    """Every error: HTTP status plus a message saying what was wrong."""

    detail: str = Field(examples=["no study with this Study Instance UID"])


class StudySummary(_Out):
    study_uid: str
    patient_id: str | None
    accession_number: str | None
    study_date: str | None = Field(description="YYYYMMDD as the PACS sent it")
    received_at: datetime = Field(description="when the newest image of the study arrived")
    images: int
    positives: int = Field(description="images where pneumothorax was found")
    pending: int = Field(description="images still pending, queued or running")
    failed: int
    skipped: int
    skip_reason: str | None = Field(description="why images were skipped (one of the reasons)")
    badge: Badge = Field(description="the study at a glance, most urgent first")
    probability: float | None = Field(
        default=None,
        description="the highest calibrated probability of pneumothorax among the study's "
        "images (null: no result yet)",
    )
    side: str | None = Field(default=None, description="side of that image's finding")
    area_mm2: float | None = Field(default=None, description="area of that image's finding")
    area_pixels: int | None = Field(
        default=None, description="the same in pixels (for images without a pixel spacing)"
    )


class StudyPage(_Out):
    items: list[StudySummary]
    total: int
    limit: int
    offset: int


class JobOut(_Out):
    id: int
    state: str
    attempts: int
    error: str | None
    timings: dict[str, float | None] | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class DeliveryOut(_Out):
    id: int
    destination: str
    sop_uid: str
    kind: str = Field(
        description="what is sent: SEG, SR or SC for our results, else the SOP class keyword"
    )
    state: str
    attempts: int
    last_error: str | None
    sent_at: datetime | None


class DeliveryProblemOut(DeliveryOut):
    """A delivery that waits for someone: dead-lettered, or pending and overdue."""

    study_uid: str | None
    overdue: bool = Field(description="pending, due long ago and not attempted")
    next_attempt_at: datetime
    created_at: datetime
    reason: str = Field(description="why it is listed, in words")


class ResultOut(_Out):
    id: int
    model_version: str
    pneumothorax: bool
    probability: float | None = Field(
        default=None,
        description="calibrated probability of a pneumothorax on the image (null: a model "
        "without one)",
    )
    operating_point: float | None = Field(
        default=None, description="called present when probability >= operating_point"
    )
    max_probability: float = Field(description="the highest pixel probability (not calibrated)")
    area_pixels: int
    area_mm2: float | None
    side: str | None
    side_assumed: bool
    threshold: float
    grow_threshold: float | None = Field(
        default=None,
        description="the pixel threshold's regions were grown down to this probability "
        "(hysteresis); null: no growing",
    )
    min_area_pixels: int
    seg_sop_uid: str | None
    sr_sop_uid: str | None
    sc_sop_uid: str | None
    created_at: datetime
    deliveries: list[DeliveryOut] = []


class InstanceOut(_Out):
    sop_uid: str
    series_uid: str | None
    sop_class_uid: str
    modality: str | None
    received_at: datetime
    calling_ae: str | None
    status: str
    skip_reason: str | None
    own_output: bool = Field(
        default=False, description="our own SEG/SR/SC come back from the PACS (not analysed)"
    )
    job: JobOut | None
    result: ResultOut | None
    image_url: str | None
    overlay_url: str | None
    pruned_at: datetime | None = None  # retention deleted the image and result files


class AuditOut(_Out):
    id: int
    at: datetime
    kind: str
    message: str
    calling_ae: str | None
    peer_address: str | None
    sop_uid: str | None
    detail: dict[str, Any] | None


class StudyDetail(StudySummary):
    instances: list[InstanceOut]
    audit: list[AuditOut]


class ActionOut(_Out):
    message: str
    job_id: int | None = None
    delivery_ids: list[int] = []


class UploadItem(_Out):
    filename: str
    stored: bool
    sop_uid: str | None
    message: str


class UploadOut(_Out):
    stored: int
    refused: int
    items: list[UploadItem]


class ComponentHealth(_Out):
    state: Literal["ok", "degraded", "down"]
    detail: str


class HealthOut(_Out):
    ready: bool
    status: Literal["ok", "degraded", "down"]  # the worst of the components'
    components: dict[str, ComponentHealth]
    version: str


class StageStats(_Out):
    stage: str
    p50: float | None
    p95: float | None


class StatsOut(_Out):
    window_minutes: int
    done_per_minute: list[int] = Field(description="jobs finished per minute, oldest first")
    queue_depth: int
    stages: list[StageStats]


class ModelOut(_Out):
    name: str
    version: str
    intended_use: str
    input_size: int
    threshold: float
    grow_threshold: float | None = Field(
        default=None,
        description="regions reaching threshold are grown to their connected pixels down to "
        "this probability (hysteresis); null: no growing",
    )
    min_area_pixels: int
    operating_point: float | None = Field(
        default=None, description="a film is called positive at this calibrated probability"
    )
    metrics: dict[str, Any]
    training: dict[str, Any]
    card: str | None = Field(description="MODEL_CARD.md, when the checkpoint has one")
    summary: str | None = Field(
        default=None, description="what the model is, in words: the card's first paragraph"
    )
    limits: list[str] = Field(
        default=[], description="what the model cannot do: the card's 'Known limits' items"
    )
