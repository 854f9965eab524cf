"""SQLAlchemy 2.0 table models: studies, instances, jobs, results, deliveries, alerts, audit
events.

Table models are never API response models (the API has its own schemas). Timestamps are UTC and
timezone-aware on every backend (``UTCDateTime``).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Alert",
    "AlertChannel",
    "AuditEvent",
    "Base",
    "Delivery",
    "DeliveryState",
    "Feedback",
    "FeedbackVerdict",
    "Instance",
    "InstanceStatus",
    "Job",
    "JobState",
    "Result",
    "Study",
    "WorkerHeartbeat",
    "utcnow",
]

UID = String(128)  # DICOM allows 64; received files may carry longer, invalid ones
AE_TITLE = String(16)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on SQLite (which stores naive values) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class InstanceStatus(enum.StrEnum):
    RECEIVED = "received"  # stored, selected for processing (a job exists)
    SKIPPED = "skipped"  # stored, not a frontal chest radiograph (see skip_reason)


class JobState(enum.StrEnum):
    PENDING = "pending"  # received, not yet handed to the queue
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SENT = "sent"
    DEAD = "dead"  # gave up; `pneumonode resend` tries again


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    instances: Mapped[list[Instance]] = relationship(back_populates="study")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str | None] = mapped_column(UID)
    sop_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(1024))  # relative to the spool directory
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # of the dataset after the file meta; computed when a re-send has to be compared
    sha256: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(AE_TITLE)
    peer_address: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    skip_reason: Mapped[str | None] = mapped_column(String(256))
    times_received: Mapped[int] = mapped_column(Integer, default=1)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # when retention deleted the spooled file and the result files (the rows stay)
    pruned_at: Mapped[datetime | None] = mapped_column(default=None)

    study: Mapped[Study] = relationship(back_populates="instances")
    job: Mapped[Job | None] = relationship(back_populates="instance")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # while RUNNING: when the job is given up for lost (its worker died) and re-queued
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(128), default=None)

    instance: Mapped[Instance] = relationship(back_populates="job")
    results: Mapped[list[Result]] = relationship(back_populates="job")


class Result(Base):
    """What one model version found on one image (a re-run of the same version replaces it)."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("job_id", "model_version", name="uq_results_job_model"),
        Index("ix_results_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    pneumothorax: Mapped[bool] = mapped_column(Boolean)
    # the calibrated image-level probability and the operating point it was compared with
    # (null for a model without them); max_probability is the highest pixel probability
    probability: Mapped[float | None] = mapped_column(Float)
    operating_point: Mapped[float | None] = mapped_column(Float)
    max_probability: Mapped[float] = mapped_column(Float)
    area_pixels: Mapped[int] = mapped_column(BigInteger)
    area_mm2: Mapped[float | None] = mapped_column(Float)
    side: Mapped[str | None] = mapped_column(String(16))
    side_assumed: Mapped[bool] = mapped_column(Boolean, default=False)
    threshold: Mapped[float] = mapped_column(Float)
    min_area_pixels: Mapped[int] = mapped_column(Integer)
    # hysteresis: regions reaching threshold grown down to this probability (null: none, or a
    # result recorded before it was kept)
    grow_threshold: Mapped[float | None] = mapped_column(Float, default=None)
    seg_sop_uid: Mapped[str | None] = mapped_column(UID)
    sr_sop_uid: Mapped[str | None] = mapped_column(UID)
    sc_sop_uid: Mapped[str | None] = mapped_column(UID)
    # statistics of the film in the model's input, 0..1 (conversion.prepare.InputStatistics),
    # for input drift; null for results recorded before they were kept
    input_mean: Mapped[float | None] = mapped_column(Float, default=None)
    input_std: Mapped[float | None] = mapped_column(Float, default=None)
    input_dark_share: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")


class Delivery(Base):
    """One object to send to one destination, with its attempts and dead-letter state."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_state_next", "state", "next_attempt_at"),
        Index("ix_deliveries_sop_destination", "sop_uid", "destination"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    destination: Mapped[str] = mapped_column(String(300))  # AE@host:port
    path: Mapped[str] = mapped_column(String(1024))  # absolute path of the file to send
    sop_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_uid: Mapped[str | None] = mapped_column(UID, index=True)
    result_id: Mapped[int | None] = mapped_column(ForeignKey("results.id"), default=None)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)


class AlertChannel(enum.StrEnum):
    HL7 = "hl7"  # an ORU^R01 over MLLP to an HL7 receiver (host:port)
    WEBHOOK = "webhook"  # a signed JSON POST to a URL


class Alert(Base):
    """One alert about one result to one receiver (an HL7 ORU or a webhook), with its attempts
    and dead-letter state (the states of a delivery). ``payload`` is exactly what is sent, so a
    retry repeats the same message and control ID; an ORU holds patient data, which stays here
    (never in logs or audit messages). ``destination`` may be a URL with a secret in it: logs
    and the audit trail name it redacted."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("result_id", "channel", "destination", name="uq_alerts_result_target"),
        Index("ix_alerts_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    destination: Mapped[str] = mapped_column(String(2048))  # host:port, or the URL
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"))
    study_uid: Mapped[str | None] = mapped_column(UID, index=True)
    sop_uid: Mapped[str | None] = mapped_column(UID)
    control_id: Mapped[str] = mapped_column(String(64))  # MSH-10, or the webhook's id
    correction: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[str | None] = mapped_column(String(16), default=None)  # AA, AE, 503...
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)  # the ACK or 2xx came
    # from the image's arrival (the instance's received_at) to the ACK or 2xx, in seconds
    latency_seconds: Mapped[float | None] = mapped_column(Float, default=None)


class FeedbackVerdict(enum.StrEnum):
    AGREE = "agree"  # the model's call is right (a positive's region too)
    DISAGREE = "disagree"  # the model marked a pneumothorax that is not there
    MISSED = "missed"  # there is a pneumothorax the model did not mark


class Feedback(Base):
    """A radiologist's verdict on the result of one image; each review is a row (the newest
    counts), with who gave it (the name of the API token) and when."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_instance_created", "instance_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    result_id: Mapped[int | None] = mapped_column(ForeignKey("results.id"), default=None)
    verdict: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    reviewer: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class WorkerHeartbeat(Base):
    """A worker process that is (or was) alive: it refreshes ``seen_at`` while it runs."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AuditEvent(Base):
    """One step in the trail. ``message`` never holds patient data; ``patient_id`` and
    ``accession_number`` are kept for traceability and guarded by the API."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_study", "study_uid"),
        Index("ix_audit_kind", "kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(48))
    message: Mapped[str] = mapped_column(String(512))
    calling_ae: Mapped[str | None] = mapped_column(AE_TITLE, default=None)
    peer_address: Mapped[str | None] = mapped_column(String(64), default=None)
    study_uid: Mapped[str | None] = mapped_column(UID, default=None)
    sop_uid: Mapped[str | None] = mapped_column(UID, default=None)
    patient_id: Mapped[str | None] = mapped_column(String(64), default=None)
    accession_number: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)
