"""What a user can make happen: re-run a job, resend a result, upload DICOM files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Request, UploadFile, status
from fastapi import Path as FastApiPath
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select

from pneumonode.api.deps import Authorized, SessionDep, StateDep
from pneumonode.api.schemas import ActionOut, ProblemOut, UploadItem, UploadOut
from pneumonode.db.jobs import rerun_job
from pneumonode.db.models import Delivery, DeliveryState, Job, JobState, Result
from pneumonode.db.outbox import resend_dead
from pneumonode.dicom_node.receive import InstanceReceiver
from pneumonode.dicom_node.spool import Spool

__all__ = ["UPLOAD_AE", "router"]

router = APIRouter(prefix="/api", dependencies=[Authorized], tags=["actions"])

IdPath = Annotated[int, FastApiPath(ge=1, le=2**62, description="a row id")]

#: The calling AE title recorded for files that came in through the upload.
UPLOAD_AE = "HTTP-UPLOAD"
CHUNK = 1 << 20


def _problems(*codes: int) -> dict[int | str, dict[str, object]]:
    return {code: {"model": ProblemOut} for code in (401, 422, *codes)}


@router.post(
    "/jobs/{job_id}/rerun",
    response_model=ActionOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_problems(404, 409),
)
def rerun(job_id: IdPath, session: SessionDep) -> ActionOut:
    """Run a job again (the same model version replaces its result; new UIDs for a new one)."""
    if not 1 <= job_id <= 2**62:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no job with this id")
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no job with this id")
    if job.state in (JobState.RUNNING, JobState.QUEUED, JobState.PENDING):
        raise HTTPException(status.HTTP_409_CONFLICT, f"the job is {job.state} already")
    instance = job.instance
    if instance.pruned_at is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "retention deleted this image; send it again from the PACS to run it again",
        )
    rerun_job(session, job, "requested through the API")
    return ActionOut(message="queued to run again", job_id=job.id)


@router.post(
    "/results/{result_id}/resend",
    response_model=ActionOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses=_problems(404, 409),
)
def resend_result(result_id: IdPath, session: SessionDep, state: StateDep) -> ActionOut:
    """Send a result's dead-lettered deliveries again (the delivery loop picks them up)."""
    if not 1 <= result_id <= 2**62 or session.get(Result, result_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no result with this id")
    dead = list(
        session.scalars(
            select(Delivery.id)
            .where(Delivery.result_id == result_id)
            .where(Delivery.state == DeliveryState.DEAD)
        )
    )
    if not dead:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "nothing of this result is dead-lettered; nothing to resend"
        )
    session.rollback()  # resend_dead() takes its own session
    ids = resend_dead(state.database, Delivery, dead)
    return ActionOut(message=f"{len(ids)} deliveries queued again", delivery_ids=ids)


def _store_upload(
    upload: UploadFile, receiver: InstanceReceiver, limit: int, peer: str | None
) -> UploadItem:
    name = Path(upload.filename or "upload.dcm").name[:200]
    incoming = receiver.spool.root / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=incoming, prefix="upload-", suffix=".dcm")
    temp = Path(temp_name)
    try:
        size = 0
        with os.fdopen(fd, "wb") as handle:
            while chunk := upload.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE,
                        f"{name}: larger than the upload limit of {limit // (1 << 20)} MB "
                        "(PNEUMONODE_MAX_UPLOAD_MB)",
                    )
                handle.write(chunk)
        try:
            meta = read_file_meta_info(temp)
            sop_class = str(meta.MediaStorageSOPClassUID)
            sop_uid = str(meta.MediaStorageSOPInstanceUID)
            syntax = str(meta.TransferSyntaxUID)
        except Exception:
            return UploadItem(
                filename=name,
                stored=False,
                sop_uid=None,
                message="not a DICOM file (DICOM Part 10: a 128-byte preamble, 'DICM', file meta)",
            )
        outcome = receiver.receive(temp, sop_class, sop_uid, syntax, UPLOAD_AE, peer)
        stored = outcome.code == 0
        return UploadItem(
            filename=name,
            stored=stored,
            sop_uid=sop_uid,
            message="stored" if stored else (outcome.comment or f"refused ({outcome.code:#06x})"),
        )
    finally:
        temp.unlink(missing_ok=True)  # stored files were renamed into the spool already


@router.post(
    "/upload",
    response_model=UploadOut,
    responses={
        **_problems(413, 415),
        207: {"model": UploadOut, "description": "some files stored, some refused"},
    },
)
def upload(
    request: Request,
    state: StateDep,
    files: Annotated[list[UploadFile], File(description="DICOM Part 10 files")],
) -> UploadOut:
    """Store DICOM files as if a PACS had sent them (selection, spool, audit, job)."""
    settings = state.settings
    receiver = InstanceReceiver(
        Spool(settings.spool_dir),
        state.database,
        min_free_bytes=settings.min_free_disk_mb * 1024 * 1024,
        rules=settings.selection,
    )
    peer = request.client.host if request.client else None
    limit = settings.max_upload_mb * 1024 * 1024
    items = [_store_upload(f, receiver, limit, peer) for f in files]
    stored = sum(item.stored for item in items)
    if not stored and all(item.message.startswith("not a DICOM file") for item in items):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "; ".join(f"{item.filename}: {item.message}" for item in items)[:2000],
        )
    out = UploadOut(stored=stored, refused=len(items) - stored, items=items)
    if stored and stored < len(items):
        from fastapi.responses import JSONResponse

        return JSONResponse(out.model_dump(), status_code=207)  # type: ignore[return-value]
    if not stored:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "; ".join(f"{item.filename}: {item.message}" for item in items)[:2000],
        )
    return out
