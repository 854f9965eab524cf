"""The work on one received image, as plain functions (the Celery tasks only call these).

``process_job(context, job_id)``, step by step:

1. **Claim** the job in the database (PENDING/QUEUED, or RUNNING with an expired lease, becomes
   RUNNING with a lease in this worker's name). A job that is done, or running elsewhere, is left
   alone: a duplicate task is a no-op.
2. **Analyse** the spooled file (:func:`analyse`): conversion, inference, then SEG + SR (+ SC).
3. **Write** the objects and the mask PNG under ``results/<StudyUID>/<SOPInstanceUID>/``,
   atomically, and the overlay itself only where a Secondary Capture needed it anyway. The API
   draws overlays from the mask and the displayed image, which it renders from the spooled
   source when a page first asks for it (and keeps as image.png): most images are never looked
   at, and encoding it here cost the worker more than writing the SEG.
4. **Record**, in one transaction: the result (one row per job and model version, replaced on a
   re-run; with the model input's statistics, for input drift), a delivery per object and
   destination, the alerts it calls for, the job DONE with its timings, audit events.
   The transaction commits only while the job is still ours (a re-send of the image meanwhile
   puts it back to PENDING; our result is then dropped and the new run makes it).
5. **Alert**: the HL7 ORU and webhook alerts queued in step 4 (positive results, or all with
   ``notify=all``; see :mod:`pneumonode.alerts.outbox`) are sent at once, each outcome recorded
   as it comes; what fails stays pending for the alert loop's retries.
6. **Send** the deliveries at once (step 4 queued them as taken by this worker for the time a
   send may need, so the delivery loop does not send them too, and sends them after that if
   this worker dies first); the outcomes and the job's timings are recorded in one transaction.
   What fails stays pending for the delivery loop's retries.

A crash anywhere leaves either no result (the lease expires and the job runs again) or a complete
one; result UIDs derive from the source and model version, so a repeat replaces, never duplicates.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import Dataset
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from pneumonode.alerts.content import AlertContent, alert_content
from pneumonode.alerts.outbox import AlertPolicy, attempt_alerts, queue_alerts
from pneumonode.config import Settings
from pneumonode.conversion import ConversionError, encode_png
from pneumonode.conversion.decode import read_dataset
from pneumonode.conversion.prepare import prepare_radiograph
from pneumonode.db.jobs import (
    ClaimedJob,
    beat,
    claim_job,
    fail_job,
    finish_job,
    give_back,
    record_result,
    still_ours,
    store_timings,
)
from pneumonode.db.models import Alert, Delivery
from pneumonode.db.outbox import add_delivery
from pneumonode.db.session import Database
from pneumonode.db.stages import (
    BUILD,
    CONVERT,
    INFER,
    QUEUE_WAIT,
    RECEIVE_TO_QUEUED,
    SEND,
    WRITE,
)
from pneumonode.dicom_node.delivery import RetryPolicy, attempt_claimed, claim_seconds
from pneumonode.dicom_node.spool import safe_component
from pneumonode.files import write_atomic
from pneumonode.model.postprocess import describe_finding
from pneumonode.results import (
    AlgorithmInfo,
    build_overlay_capture,
    build_report,
    build_segmentation,
    iod_lookup,
    render_overlay,
)
from pneumonode.results.encode import part10_bytes

if TYPE_CHECKING:
    from pneumonode.model.predictor import Prediction, Predictor

__all__ = [
    "Analysis",
    "JobOutcome",
    "PermanentJobError",
    "PipelineContext",
    "ResultFiles",
    "TransientJobError",
    "analyse",
    "process_job",
    "release_job",
    "settle_heap",
    "write_results",
]

log = logging.getLogger(__name__)


class PermanentJobError(Exception):
    """The image can never be processed as it is (undecodable pixels, missing file)."""


class TransientJobError(Exception):
    """Worth another try later (database busy or unreachable)."""


@dataclass
class PipelineContext:
    """What a worker process loads once: settings, database, model."""

    settings: Settings
    database: Database
    predictor: Predictor
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @property
    def algorithm(self) -> AlgorithmInfo:
        return AlgorithmInfo.from_checkpoint(self.predictor.config)

    def heartbeat(self) -> None:
        """Say this worker is alive (the health page lists workers seen recently) and renew the
        lease of the job it runs (only a silent worker loses its job)."""
        config = self.predictor.config
        beat(
            self.database,
            self.worker_name,
            model=config.name,
            model_version=config.version,
            device=self.predictor.device,
            backend=self.predictor.backend,
            lease_seconds=self.settings.job_lease_seconds,
        )

    def start_heartbeats(self, interval: float | None = None) -> None:
        """Refresh the heartbeat (and our running job's lease) from a daemon thread, every
        ``interval`` seconds (default: four times per lease, at most every 10 s)."""
        if interval is None:
            interval = min(10.0, self.settings.job_lease_seconds / 4)

        def beat() -> None:
            while True:
                try:
                    self.heartbeat()
                except Exception as exc:  # the database may be down for a while
                    log.warning("heartbeat failed: %s", type(exc).__name__)
                time.sleep(interval)

        threading.Thread(target=beat, name="heartbeat", daemon=True).start()

    @classmethod
    def load(cls, settings: Settings, database: Database | None = None) -> PipelineContext:
        """Open the database and load the model the settings name."""
        from pneumonode.model.predictor import Predictor

        predictor = Predictor.load(
            settings.model,
            device=settings.device,
            precision=settings.inference_precision,
            backend=settings.inference_backend,
            cache_dir=settings.data_dir / "model-cache",
        )
        if settings.operating_point is not None:
            predictor.set_operating_point(settings.operating_point)
        return cls(settings, database or Database.open(settings.database), predictor)


def settle_heap() -> None:
    """Before the first job: load highdicom's copy of the standard (22 MB of JSON, about
    300,000 Python objects; otherwise the first image waits for it), then make everything
    loaded so far permanent for the garbage collector.

    Those objects live as long as the process anyway; left in the oldest generation, each of
    Python's full collections (rare: one per tens of thousands of survivors) walks them all
    again, about 140 ms on the core the network needs.
    """
    iod_lookup.preload()
    gc.collect()
    gc.freeze()


@dataclass
class Analysis:
    """Everything made from one image: the prediction and the objects to send."""

    prediction: Prediction
    segmentation: Dataset
    report: Dataset
    capture: Dataset | None
    overlay: np.ndarray | None  # (Rows, Columns, 3) uint8; made for a capture, or when asked
    grey: np.ndarray  # (Rows, Columns) uint8, the displayed image
    timings: dict[str, float]


@dataclass(frozen=True)
class ResultFiles:
    folder: Path
    seg: Path
    sr: Path
    sc: Path | None
    image_png: Path | None
    overlay_png: Path | None
    mask_png: Path


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    state: str  # done, failed, skipped (not ours to run)
    result_id: int | None = None
    present: bool | None = None
    delivery_ids: tuple[int, ...] = ()
    sent: int = 0
    reason: str | None = None
    alert_ids: tuple[int, ...] = ()
    alerts_sent: int = 0


@dataclass(frozen=True)
class _Recorded:
    """What the recording transaction left: the deliveries and alerts to send now, when done."""

    state: str  # done, skipped
    result_id: int | None = None
    present: bool | None = None
    deliveries: tuple[Delivery, ...] = ()
    reason: str | None = None
    alerts: tuple[Alert, ...] = ()


def analyse(
    source: Dataset,
    predictor: Predictor,
    *,
    label: str = "not for clinical use",
    with_capture: bool = False,
    with_overlay: bool = False,
) -> Analysis:
    """Convert, infer and build the result objects for one image (no I/O, no database); the
    overlay picture is drawn for the capture, or when ``with_overlay`` asks for it.

    Raises:
        ConversionError: the pixels cannot be turned into a model input.
    """
    algorithm = AlgorithmInfo.from_checkpoint(predictor.config)
    spec = predictor.config.input
    started = time.perf_counter()
    prepared = prepare_radiograph(
        source, spec.size, spec.window_percentiles, "received image", keep_source=True
    )
    converted = time.perf_counter()
    prediction = predictor.predict_prepared(prepared, source)
    inferred = time.perf_counter()
    grey = prepared.source_pixels
    assert grey is not None  # keep_source=True
    overlay = render_overlay(grey, prediction.mask) if with_capture or with_overlay else None
    segmentation = build_segmentation(source, prediction.mask, algorithm, label=label)
    report = build_report(
        source, prediction.finding, algorithm, segmentation=segmentation, label=label
    )
    capture = (
        build_overlay_capture(source, overlay, algorithm, finding=prediction.finding, label=label)
        if overlay is not None and with_capture
        else None
    )
    built = time.perf_counter()
    return Analysis(
        prediction=prediction,
        segmentation=segmentation,
        report=report,
        capture=capture,
        overlay=overlay,
        grey=grey,
        timings={
            CONVERT: converted - started,
            INFER: inferred - converted,
            BUILD: built - inferred,
        },
    )


def write_results(
    analysis: Analysis, folder: Path, png_level: int = 1, *, with_image: bool = True
) -> ResultFiles:
    """Write the objects (durably) and the PNGs of one analysis into ``folder``: mask.png,
    image.png (the displayed image) unless ``with_image`` is false, overlay.png when the
    analysis drew the overlay."""
    mask = analysis.prediction.mask.astype(np.uint8) * 255
    return ResultFiles(
        folder=folder,
        seg=write_atomic(folder / "seg.dcm", part10_bytes(analysis.segmentation)),
        sr=write_atomic(folder / "sr.dcm", part10_bytes(analysis.report)),
        sc=(
            write_atomic(folder / "sc.dcm", part10_bytes(analysis.capture))
            if analysis.capture is not None
            else None
        ),
        image_png=(
            write_atomic(folder / "image.png", encode_png(analysis.grey, png_level), durable=False)
            if with_image
            else None
        ),
        overlay_png=(
            write_atomic(
                folder / "overlay.png", encode_png(analysis.overlay, png_level), durable=False
            )
            if analysis.overlay is not None
            else None
        ),
        mask_png=write_atomic(folder / "mask.png", encode_png(mask, png_level), durable=False),
    )


def _fail(context: PipelineContext, claimed: ClaimedJob, reason: str) -> JobOutcome:
    if not fail_job(context.database, claimed, context.worker_name, reason):
        return JobOutcome(claimed.job_id, "skipped", reason="no longer ours")
    log.warning("job %d failed: %s", claimed.job_id, reason)
    return JobOutcome(claimed.job_id, "failed", reason=reason)


def release_job(context: PipelineContext, job_id: int, reason: str) -> None:
    """Give a claimed job back (QUEUED) after a transient error, for the task's retry."""
    give_back(context.database, job_id, context.worker_name, reason)


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max((later - earlier).total_seconds(), 0.0)


def process_job(context: PipelineContext, job_id: int) -> JobOutcome:
    """Run job ``job_id`` from spooled file to sent results (see the module docstring).

    Raises:
        TransientJobError: the database failed; the job is back in the queue's hands.
    """
    settings = context.settings
    try:
        claimed = claim_job(
            context.database, job_id, context.worker_name, settings.job_lease_seconds
        )
    except OperationalError as exc:
        raise TransientJobError(f"database unavailable: {type(exc).__name__}") from exc
    if claimed is None:
        log.info("job %d: not runnable here (done, failed or running elsewhere)", job_id)
        return JobOutcome(job_id, "skipped", reason="not runnable")

    spooled = settings.spool_dir / claimed.path
    try:
        source = read_dataset(spooled, "spooled instance")
        analysis = analyse(
            source,
            context.predictor,
            label=settings.result_label,
            with_capture=bool(settings.sc_destinations),
        )
    except FileNotFoundError:
        return _fail(context, claimed, "the spooled file is missing")
    except ConversionError as exc:
        return _fail(context, claimed, f"cannot convert the image: {exc.reason}")
    except ValueError as exc:
        return _fail(context, claimed, f"cannot build results: {exc}")

    built = time.perf_counter()
    folder = (
        settings.results_dir / safe_component(claimed.study_uid) / safe_component(claimed.sop_uid)
    )
    files = write_results(analysis, folder, settings.png_level, with_image=False)
    timings: dict[str, Any] = {
        RECEIVE_TO_QUEUED: _seconds(claimed.queued_at, claimed.received_at),
        QUEUE_WAIT: _seconds(claimed.started_at, claimed.queued_at or claimed.received_at),
        **analysis.timings,
        WRITE: time.perf_counter() - built,
    }
    policy = RetryPolicy.from_settings(settings)
    alerting = AlertPolicy.from_settings(settings)
    content = alert_content(
        source, analysis.prediction.finding, context.algorithm, settings.result_label
    )
    try:
        outcome = _record(
            context, claimed, analysis, files, timings, claim_seconds(policy), content, alerting
        )
    except OperationalError as exc:
        release_job(context, job_id, f"database unavailable: {type(exc).__name__}")
        raise TransientJobError(f"database unavailable: {type(exc).__name__}") from exc
    if outcome.state != "done":
        return JobOutcome(job_id, outcome.state, reason=outcome.reason)
    # the alerts first: they are the urgent part; what fails is the alert loop's to retry
    alert_ids = tuple(row.id for row in outcome.alerts)
    alerts_sent = len(attempt_alerts(context.database, outcome.alerts, alerting))
    if not outcome.deliveries:
        return JobOutcome(
            job_id,
            "done",
            result_id=outcome.result_id,
            present=outcome.present,
            alert_ids=alert_ids,
            alerts_sent=alerts_sent,
        )

    sending = time.perf_counter()

    def sent_in(session: Session) -> None:  # with the outcomes: no transaction of its own
        timings[SEND] = time.perf_counter() - sending
        store_timings(session, job_id, timings)

    sent = attempt_claimed(context.database, outcome.deliveries, policy, then=sent_in)
    return JobOutcome(
        job_id,
        "done",
        result_id=outcome.result_id,
        present=outcome.present,
        delivery_ids=tuple(row.id for row in outcome.deliveries),
        sent=len(sent),
        alert_ids=alert_ids,
        alerts_sent=alerts_sent,
    )


def _record(
    context: PipelineContext,
    claimed: ClaimedJob,
    analysis: Analysis,
    files: ResultFiles,
    timings: dict[str, Any],
    send_within: float,
    content: AlertContent,
    alerting: AlertPolicy,
) -> _Recorded:
    """Result, deliveries, alerts and DONE in one transaction, if the job is still ours. The
    deliveries are ours to send at once: the delivery loop leaves them alone for
    ``send_within`` seconds (the alert loop leaves the alerts for as long as they may take)."""
    settings = context.settings
    algorithm = context.algorithm
    finding = analysis.prediction.finding
    ids = {"study_uid": claimed.study_uid, "sop_uid": claimed.sop_uid}
    with context.database.session() as session:
        job = still_ours(session, claimed.job_id, context.worker_name)
        if job is None:
            log.info("job %d was reset while running; its result is dropped", claimed.job_id)
            return _Recorded("skipped", reason="reset while running")
        capture = analysis.capture
        result = record_result(
            session,
            job,
            finding,
            algorithm,
            seg_sop_uid=str(analysis.segmentation.SOPInstanceUID),
            sr_sop_uid=str(analysis.report.SOPInstanceUID),
            sc_sop_uid=str(capture.SOPInstanceUID) if capture is not None else None,
            input_stats=analysis.prediction.prepared.statistics(),
        )

        deliveries: list[Delivery] = []
        objects = [(files.seg, analysis.segmentation), (files.sr, analysis.report)]
        for destination in settings.destinations:
            wanted = list(objects)
            capture = analysis.capture
            if (
                files.sc is not None
                and capture is not None
                and destination in settings.sc_destinations
            ):
                wanted.append((files.sc, capture))
            for path, dataset in wanted:
                delivery_id = add_delivery(
                    session,
                    path,
                    destination,
                    sop_uid=str(dataset.SOPInstanceUID),
                    sop_class_uid=str(dataset.SOPClassUID),
                    study_uid=claimed.study_uid,
                    result_id=result.id,
                    claim_seconds=send_within,
                )
                delivery = session.get(Delivery, delivery_id)  # in the session already
                assert delivery is not None
                deliveries.append(delivery)
        alerts = queue_alerts(session, alerting, content, result.id)
        finish_job(
            session,
            job,
            result,
            timings,
            f"{describe_finding(finding)}; model {algorithm.version}",
            **ids,
        )
        return _Recorded(
            "done", result.id, finding.present, tuple(deliveries), alerts=tuple(alerts)
        )
