"""Studies, their images (PNG and overlay), results export and the audit trail."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from pneumonode.api.deliveries import delivery_out
from pneumonode.api.deps import Authorized, SessionDep, SettingsDep, UidPath, checked_uid
from pneumonode.api.schemas import (
    AuditOut,
    InstanceOut,
    JobOut,
    ProblemOut,
    ResultOut,
    StudyDetail,
    StudyPage,
    StudySummary,
)
from pneumonode.config import Settings
from pneumonode.conversion import ConversionError, encode_png
from pneumonode.conversion.prepare import prepare_radiograph
from pneumonode.db.models import AuditEvent, Delivery, Instance, Job, Result
from pneumonode.db.queries import (
    STATUSES,
    STUDY_SORTS,
    ResultFilters,
    StudyFilters,
    StudyRow,
    list_results,
    list_studies,
    not_own_output,
    study_row,
)
from pneumonode.db.repository import list_audit
from pneumonode.dicom_node.spool import safe_component
from pneumonode.files import write_atomic
from pneumonode.identity import OWN_OUTPUT_REASON
from pneumonode.model.checkpoint import CheckpointError, InputSpec, read_checkpoint_config
from pneumonode.results import render_overlay

__all__ = ["router"]

router = APIRouter(prefix="/api", dependencies=[Authorized], tags=["studies"])

Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": ProblemOut}}
GONE: Responses = {410: {"model": ProblemOut}}
BAD: Responses = {422: {"model": ProblemOut}, 401: {"model": ProblemOut}}
PNG: dict[str, Any] = {"content": {"image/png": {}}, "description": "PNG image"}
DATE = r"^\d{8}$"
OWN = Query(
    description="include our own SEG/SR/SC that came back from the PACS (skipped by the loop "
    "guard; hidden from counts and lists by default)"
)


def _summary(row: StudyRow) -> StudySummary:
    return StudySummary.model_validate(row)  # fields and the badge property, by attribute


@router.get("/studies", response_model=StudyPage, responses=BAD)
def studies(
    session: SessionDep,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    accession_number: Annotated[str | None, Query(max_length=64)] = None,
    date_from: Annotated[str | None, Query(pattern=DATE, description="YYYYMMDD")] = None,
    date_to: Annotated[str | None, Query(pattern=DATE, description="YYYYMMDD")] = None,
    sort: Annotated[
        Literal["urgency", "-received", "received", "-study_date", "study_date"],
        Query(description="; ".join(f"{k}: {v}" for k, v in STUDY_SORTS.items())),
    ] = "urgency",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    own: Annotated[bool, OWN] = False,
) -> StudyPage:
    """Studies, most urgent first by default, with counts, a badge and the top finding each."""
    filters = StudyFilters(
        patient_id, accession_number, date_from, date_to, sort, limit, offset, own_output=own
    )
    rows, total = list_studies(session, filters)
    return StudyPage(items=[_summary(r) for r in rows], total=total, limit=limit, offset=offset)


def _instance_out(instance: Instance, session: Session) -> InstanceOut:
    job: Job | None = instance.job
    result = None
    if job is not None:
        latest = session.scalars(
            select(Result).where(Result.job_id == job.id).order_by(Result.id.desc()).limit(1)
        ).first()
        if latest is not None:
            deliveries = session.scalars(
                select(Delivery).where(Delivery.result_id == latest.id).order_by(Delivery.id)
            ).all()
            result = ResultOut.model_validate(latest).model_copy(
                update={"deliveries": [delivery_out(d) for d in deliveries]}
            )
    base = f"/api/instances/{instance.sop_uid}"
    kept = instance.pruned_at is None
    has_image = kept and (instance.status != "skipped" or instance.modality in ("CR", "DX"))
    return InstanceOut(
        sop_uid=instance.sop_uid,
        series_uid=instance.series_uid,
        sop_class_uid=instance.sop_class_uid,
        modality=instance.modality,
        received_at=instance.received_at,
        calling_ae=instance.calling_ae,
        status=instance.status,
        skip_reason=instance.skip_reason,
        own_output=instance.skip_reason == OWN_OUTPUT_REASON,
        job=JobOut.model_validate(job) if job is not None else None,
        result=result,
        image_url=f"{base}/image.png" if has_image else None,
        overlay_url=f"{base}/overlay.png" if result is not None and kept else None,
        pruned_at=instance.pruned_at,
    )


@router.get("/studies/{study_uid}", response_model=StudyDetail, responses={**NOT_FOUND, **BAD})
def study(
    study_uid: UidPath, session: SessionDep, own: Annotated[bool, OWN] = False
) -> StudyDetail:
    """One study: its images with job, finding and deliveries, and its audit trail."""
    checked_uid(study_uid, "Study Instance UID")
    row = study_row(session, study_uid, own_output=own)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no study with this Study Instance UID")
    query = select(Instance).where(Instance.study_id == row.id).order_by(Instance.received_at)
    if not own:
        query = query.where(not_own_output())
    instances = session.scalars(query).all()
    events = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.study_uid == study_uid)
        .order_by(AuditEvent.at, AuditEvent.id)
        .limit(2000)
    ).all()
    return StudyDetail(
        **_summary(row).model_dump(),
        instances=[_instance_out(i, session) for i in instances],
        audit=[AuditOut.model_validate(e) for e in events],
    )


def _instance(session: Session, sop_uid: str) -> Instance:
    checked_uid(sop_uid, "SOP Instance UID")
    instance = session.scalars(select(Instance).where(Instance.sop_uid == sop_uid)).first()
    if instance is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no instance with this SOP Instance UID")
    return instance


def _kept_instance(session: Session, sop_uid: str) -> Instance:
    """The instance, when its files are still here (retention did not delete them)."""
    instance = _instance(session, sop_uid)
    if instance.pruned_at is not None:
        when = instance.pruned_at.isoformat(timespec="seconds")
        raise HTTPException(
            status.HTTP_410_GONE,
            f"retention deleted this image and its results on {when}; the PACS still has it",
        )
    return instance


def _result_folder(settings: Settings, instance: Instance) -> Path:
    study_uid = instance.study.study_uid
    return settings.results_dir / safe_component(study_uid) / safe_component(instance.sop_uid)


def _grey(settings: Settings, instance: Instance) -> np.ndarray:
    """The displayed image at the source's size: image.png when made already, else rendered."""
    stored = _result_folder(settings, instance) / "image.png"
    if stored.is_file():
        grey = cv2.imread(str(stored), cv2.IMREAD_GRAYSCALE)
        if grey is not None:
            return grey
    return _render(settings, instance)[0]


def _render(settings: Settings, instance: Instance) -> tuple[np.ndarray, bytes]:
    """The displayed image, windowed from the spooled source as the model's input is, and its
    PNG, kept as image.png in the result folder (when there is one) for the next request."""
    try:
        percentiles = read_checkpoint_config(settings.model).input.window_percentiles
    except CheckpointError:  # the model is being replaced: the default window
        percentiles = InputSpec().window_percentiles
    try:
        prepared = prepare_radiograph(
            settings.spool_dir / instance.path,
            256,
            percentiles,
            label="instance",
            keep_source=True,
        )
    except ConversionError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"no image to show: {exc.reason}"
        ) from None
    assert prepared.source_pixels is not None
    png = encode_png(prepared.source_pixels, settings.png_level)
    folder = _result_folder(settings, instance)
    if folder.is_dir():
        with contextlib.suppress(OSError):  # a read-only results folder: render each time
            write_atomic(folder / "image.png", png, durable=False)
    return prepared.source_pixels, png


def _png(image: np.ndarray, level: int) -> Response:
    return _png_bytes(encode_png(image, level))


def _png_bytes(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.get(
    "/instances/{sop_uid}/image.png",
    response_class=Response,
    responses={200: PNG, **NOT_FOUND, **GONE, **BAD},
)
def image(sop_uid: UidPath, session: SessionDep, settings: SettingsDep) -> Response:
    """The image as the model saw it (windowed, 8-bit), at the source's size."""
    instance = _kept_instance(session, sop_uid)
    stored = _result_folder(settings, instance) / "image.png"
    try:
        return _png_bytes(stored.read_bytes())
    except OSError:  # not made yet (the worker leaves it to the first request)
        return _png_bytes(_render(settings, instance)[1])


@router.get(
    "/instances/{sop_uid}/overlay.png",
    response_class=Response,
    responses={200: PNG, **NOT_FOUND, **GONE, **BAD},
)
def overlay(
    sop_uid: UidPath,
    session: SessionDep,
    settings: SettingsDep,
    opacity: Annotated[float, Query(ge=0.0, le=1.0, description="tint of the region")] = 0.35,
    outline: Annotated[bool, Query(description="draw the region's border")] = True,
) -> Response:
    """The image with the finding drawn on it (no finding: the plain image)."""
    instance = _kept_instance(session, sop_uid)
    mask_path = _result_folder(settings, instance) / "mask.png"
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) if mask_path.is_file() else None
    if mask is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no result for this instance yet")
    grey = _grey(settings, instance)
    if grey.shape != mask.shape:
        raise HTTPException(status.HTTP_409_CONFLICT, "image and mask differ; re-run the job")
    return _png(render_overlay(grey, mask > 127, opacity=opacity, outline=outline), 1)


@router.get(
    "/results",
    responses={
        200: {"content": {"application/json": {}, "text/csv": {}}, "description": "rows"},
        **BAD,
    },
)
def results_export(
    session: SessionDep,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
    study_uid: Annotated[str | None, Query(max_length=128)] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601 date/time")] = None,
    positive: Annotated[bool | None, Query()] = None,
    status_: Annotated[
        Literal["pending", "queued", "running", "done", "failed", "skipped"] | None,
        Query(alias="status", description=f"one of {', '.join(STATUSES)}"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    own: Annotated[bool, OWN] = False,
) -> Response:
    """One row per received image (the same as `pneumonode results`), as JSON or CSV."""
    if study_uid is not None:
        checked_uid(study_uid, "Study Instance UID")
    if since is not None and since.tzinfo is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "since needs a time zone, e.g. ...Z"
        )
    rows = list_results(
        session,
        ResultFilters(study_uid, patient_id, since, positive, status_, limit, offset, own),
    )
    records: list[dict[str, Any]] = []
    for row in rows:
        record = {
            key: (value.isoformat() if isinstance(value, datetime) else value)
            for key, value in row.__dict__.items()
        }
        record["delivery"] = row.delivery
        records.append(record)
    if format == "json":
        return Response(json.dumps(records), media_type="application/json")
    buffer = io.StringIO()
    columns = list(records[0]) if records else ["study_uid", "sop_uid", "status"]
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records)
    return Response(
        buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="pneumonode-results.csv"'},
    )


@router.get("/audit", response_model=list[AuditOut], responses=BAD)
def audit_trail(
    session: SessionDep,
    study_uid: Annotated[str | None, Query(max_length=128)] = None,
    kind: Annotated[str | None, Query(max_length=48)] = None,
    since: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> list[AuditOut]:
    """The audit trail, newest first (read through ``db``, which alone writes it)."""
    if study_uid is not None:
        study_uid = checked_uid(study_uid, "Study Instance UID")
    if since is not None and since.tzinfo is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "since needs a time zone, e.g. ...Z"
        )
    events = list_audit(
        session,
        study_uid=study_uid,
        kinds=() if kind is None else (kind,),
        since=since,
        limit=limit,
        newest_first=True,
    )
    return [AuditOut.model_validate(e) for e in events]
