"""The pipeline on real received images: results built, recorded, sent to a real storescp."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select

from dicom_factory import make_dx, save, synthetic_chest
from peers_harness import StoreSCP, dciodvfy_errors, run_storescp, storescu
from pneumonode.db.jobs import claim_job
from pneumonode.db.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
    utcnow,
)
from pneumonode.db.session import Database
from pneumonode.model.predictor import Predictor
from pneumonode.worker.dispatch import dispatch_once
from pneumonode.worker.pipeline import PipelineContext, process_job

if TYPE_CHECKING:
    from conftest import RunningNode


def _context(node: RunningNode, model: Path) -> PipelineContext:
    return PipelineContext(
        node.settings, node.database, Predictor.load(model, backend="torch", precision="fp32")
    )


def _jobs(database: Database) -> list[Job]:
    with database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def _received_files(scp: StoreSCP) -> dict[str, pydicom.Dataset]:
    found = {}
    for path in scp.folder.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path)
            found[str(ds.SOPInstanceUID)] = ds
    return found


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


@pytest.mark.integration
def test_received_images_come_back_as_seg_and_sr(
    node_factory: Callable[..., RunningNode],
    database_url: str,
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    tmp_path: Path,
) -> None:
    files = siim_sample_dicoms[:3]
    with run_storescp(tmp_path / "pacs", options=("+xa",)) as pacs:
        node = node_factory(database_url=database_url, destinations=[pacs.destination])
        storescu(files, node.port)
        context = _context(node, tiny_checkpoint())
        jobs = _jobs(node.database)
        assert len(jobs) == 3
        outcomes = [process_job(context, job.id) for job in jobs]
        assert [o.state for o in outcomes] == ["done"] * 3
        assert all(o.sent == 2 for o in outcomes)  # SEG + SR, sent at once

        received = _received_files(pacs)
        with node.database.session() as session:
            results = list(session.scalars(select(Result).order_by(Result.job_id)))
            assert len(results) == 3
            uids = {r.seg_sop_uid for r in results} | {r.sr_sop_uid for r in results}
            assert uids == set(received)
            for job in session.scalars(select(Job)):
                assert job.state == JobState.DONE
                assert job.attempts == 1
                assert job.timings is not None
                assert {"receive_to_queued", "queue_wait", "convert", "infer", "build", "send"} <= (
                    set(job.timings)
                )
            deliveries = list(session.scalars(select(Delivery)))
            assert len(deliveries) == 6
            assert {d.state for d in deliveries} == {DeliveryState.SENT}
            kinds = set(session.scalars(select(AuditEvent.kind)))
            assert {"job.started", "job.done", "delivery.queued", "delivery.sent"} <= kinds

        # what the PACS got is valid and is exactly what the model predicted
        predictor = context.predictor
        for path, result in zip(files, results, strict=True):
            source = pydicom.dcmread(path)
            seg = received[result.seg_sop_uid]
            assert seg.StudyInstanceUID == source.StudyInstanceUID
            assert seg.Modality == "SEG"
            expected = predictor.predict_dicom(path).mask
            assert np.array_equal(seg.pixel_array.astype(bool).reshape(expected.shape), expected)
            sr = received[result.sr_sop_uid]
            assert sr.Modality == "SR"
            assert result.pneumothorax == bool(expected.any())
            # the statistics of the model's input, kept for input drift
            stats = predictor.predict_dicom(path).prepared.statistics()
            assert result.input_mean == pytest.approx(stats.mean)
            assert result.input_std == pytest.approx(stats.std)
            assert result.input_dark_share == pytest.approx(stats.dark_share)
            assert 0.0 < stats.mean < 1.0 and 0.0 < stats.std < 0.5
            for kind, dataset in (("seg", seg), ("sr", sr)):
                out = tmp_path / f"{kind}.dcm"
                dataset.save_as(out)
                assert dciodvfy_errors(out) == [], kind
        folder = node.settings.results_dir / str(source.StudyInstanceUID)
        # the API draws the overlay from the mask and renders the image when first asked for
        # it (no SC destination here: no overlay.png)
        names = {p.name for p in next(folder.iterdir()).iterdir()}
        assert names == {"seg.dcm", "sr.dcm", "mask.png"}


@pytest.mark.integration
def test_a_job_runs_once_and_a_rerun_replaces(
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    tmp_path: Path,
) -> None:
    with run_storescp(tmp_path / "pacs") as pacs:
        node = node_factory(destinations=[pacs.destination])
        storescu(siim_sample_dicoms[:1], node.port)
        context = _context(node, tiny_checkpoint(bias=20.0))
        (job,) = _jobs(node.database)
        first = process_job(context, job.id)
        assert first.state == "done" and first.present is True
        # a duplicate message is a no-op
        assert process_job(context, job.id).state == "skipped"

        # a re-run (API "re-run", or the image re-sent) replaces: same UIDs, no second row
        with node.database.session() as session:
            session.get(Job, job.id).state = JobState.PENDING  # type: ignore[union-attr]
        again = process_job(context, job.id)
        assert again.state == "done"
        with node.database.session() as session:
            assert session.scalar(select(func.count()).select_from(Result)) == 1
            assert session.scalar(select(func.count()).select_from(Delivery)) == 2
            assert session.get(Job, job.id).attempts == 2  # type: ignore[union-attr]
        assert len(_received_files(pacs)) == 2  # the PACS replaced, by UID


@pytest.mark.integration
def test_a_negative_image_gets_a_report_that_says_absent(
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    tmp_path: Path,
) -> None:
    with run_storescp(tmp_path / "pacs") as pacs:
        node = node_factory(destinations=[pacs.destination])
        storescu(siim_sample_dicoms[:1], node.port)
        context = _context(node, tiny_checkpoint(bias=-20.0))
        (job,) = _jobs(node.database)
        outcome = process_job(context, job.id)
        assert outcome.present is False and outcome.sent == 2
        sr = next(ds for ds in _received_files(pacs).values() if ds.Modality == "SR")
        values = [
            item.ConceptCodeSequence[0].CodeMeaning
            for group in sr.ContentSequence
            if group.ValueType == "CONTAINER"
            for measurement in group.ContentSequence
            for item in measurement.get("ContentSequence", [])
            if item.ValueType == "CODE"
        ]
        assert "Absent" in values


@pytest.mark.integration
def test_secondary_capture_goes_only_where_asked(
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    tmp_path: Path,
) -> None:
    with (
        run_storescp(tmp_path / "viewer", ae_title="VIEWER") as viewer,
        run_storescp(tmp_path / "pacs", ae_title="PACS") as pacs,
    ):
        node = node_factory(
            destinations=[pacs.destination, viewer.destination],
            sc_destinations=[viewer.destination],
        )
        storescu(siim_sample_dicoms[:1], node.port)
        context = _context(node, tiny_checkpoint(bias=20.0))
        (job,) = _jobs(node.database)
        assert process_job(context, job.id).sent == 5
        assert sorted(ds.Modality for ds in _received_files(pacs).values()) == ["SEG", "SR"]
        at_viewer = _received_files(viewer).values()
        assert sorted(ds.Modality for ds in at_viewer) == ["OT", "SEG", "SR"]
        capture = next(ds for ds in at_viewer if ds.Modality == "OT")
        assert capture.PhotometricInterpretation == "RGB"
        assert capture.Columns == 1024 and capture.Rows > 1024  # the film under its banner


@pytest.mark.integration
def test_an_undecodable_image_fails_once_with_its_reason(
    node_factory: Callable[..., RunningNode],
    tiny_checkpoint: Callable[..., Path],
    tmp_path: Path,
) -> None:
    ds = make_dx(synthetic_chest(256, 200, 12), 12)
    node = node_factory()
    storescu([save(ds, tmp_path / "whole.dcm")], node.port)
    # the listener refuses a damaged dataset (0xC210), so the damage happens in the spool
    # after the film was stored: the pixel data far too short for 256 x 200 x 16 bits
    ds.PixelData = ds.PixelData[:1000]
    with node.database.session() as session:
        (instance,) = session.scalars(select(Instance))
        save(ds, node.spool / instance.path)
    context = _context(node, tiny_checkpoint())
    (job,) = _jobs(node.database)
    outcome = process_job(context, job.id)
    assert outcome.state == "failed"
    assert outcome.reason is not None and "cannot convert" in outcome.reason
    with node.database.session() as session:
        stored = session.get(Job, job.id)
        assert stored is not None and stored.state == JobState.FAILED
        assert stored.error == outcome.reason
        event = session.scalars(select(AuditEvent).where(AuditEvent.kind == "job.failed")).one()
        assert event.sop_uid == ds.SOPInstanceUID
    assert process_job(context, job.id).state == "skipped"  # failed stays failed


def test_dispatch_queues_pending_jobs_and_recovers_lost_ones(
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
) -> None:
    node = node_factory()
    storescu(siim_sample_dicoms[:3], node.port)
    published: list[int] = []
    report = dispatch_once(node.database, published.append, lease_seconds=60)
    ids = [job.id for job in _jobs(node.database)]
    assert report.queued == 3 and published == ids
    assert {job.state for job in _jobs(node.database)} == {JobState.QUEUED}
    assert dispatch_once(node.database, published.append, lease_seconds=60).queued == 0
    assert published == ids  # nothing published twice

    # a worker claims one and dies (killed -9): after its lease, the job goes back to the queue
    claimed = claim_job(node.database, ids[0], "dead-worker:1", lease_seconds=60)
    assert claimed is not None
    assert claim_job(node.database, ids[0], "other:2", lease_seconds=60) is None
    with node.database.session() as session:
        session.get(Job, ids[0]).lease_until = utcnow() - timedelta(seconds=1)  # type: ignore[union-attr]
    report = dispatch_once(node.database, published.append, lease_seconds=60)
    assert report.requeued_expired == 1 and published[-1] == ids[0]
    assert claim_job(node.database, ids[0], "other:2", lease_seconds=60) is not None

    # a message the broker lost: queued for five leases, published again (not before)
    with node.database.session() as session:
        session.get(Job, ids[1]).queued_at = utcnow() - timedelta(seconds=240)  # type: ignore[union-attr]
    assert dispatch_once(node.database, published.append, lease_seconds=60).requeued_stale == 0
    with node.database.session() as session:
        session.get(Job, ids[1]).queued_at = utcnow() - timedelta(seconds=301)  # type: ignore[union-attr]
    report = dispatch_once(node.database, published.append, lease_seconds=60)
    assert report.requeued_stale == 1 and published[-1] == ids[1]

    # a dispatcher killed after marking jobs QUEUED, before publishing them: its first look
    # after the restart publishes every queued job again, however young
    published.clear()
    report = dispatch_once(node.database, published.append, lease_seconds=60, republish_queued=True)
    assert sorted(published) == sorted(ids[1:])


def test_a_working_worker_keeps_its_lease_and_a_silent_one_loses_it(
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
) -> None:
    node = node_factory(job_lease_seconds=30)
    storescu(siim_sample_dicoms[:1], node.port)
    (job_id,) = [job.id for job in _jobs(node.database)]
    context = PipelineContext(
        node.settings, node.database, Predictor.load(tiny_checkpoint(), backend="torch")
    )
    assert claim_job(node.database, job_id, context.worker_name, lease_seconds=30) is not None
    with node.database.session() as session:  # as if the job had run for a while
        session.get(Job, job_id).lease_until = utcnow() + timedelta(seconds=1)  # type: ignore[union-attr]
    context.heartbeat()
    with node.database.session() as session:
        lease = session.get(Job, job_id).lease_until  # type: ignore[union-attr]
    assert lease is not None and lease > utcnow() + timedelta(seconds=25)


def test_a_failed_publish_leaves_the_job_pending(
    node_factory: Callable[..., RunningNode], siim_sample_dicoms: list[Path]
) -> None:
    node = node_factory()
    storescu(siim_sample_dicoms[:2], node.port)

    def broker_down(job_id: int) -> None:
        raise ConnectionError("broker unreachable")

    report = dispatch_once(node.database, broker_down, lease_seconds=60)
    assert report.queued == 0 and report.publish_failures == 2
    assert {job.state for job in _jobs(node.database)} == {JobState.PENDING}
    published: list[Any] = []
    assert dispatch_once(node.database, published.append, lease_seconds=60).queued == 2
