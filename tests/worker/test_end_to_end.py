"""The whole loop with real processes: a PACS sends, pneumonode answers with SEG + SR.

Orthanc is the PACS (it sends with its own C-STORE and receives our results); the node runs as
`pneumonode serve` (embedded broker, SQLite) or scaled out as `pneumonode dicom-listen` plus
worker processes on Redis and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from sqlalchemy import func, select

from node_processes import (
    PNEUMONODE,
    copies,
    empty_postgres,
    jobs_in,
    node_env,
    orthanc_series,
    running,
    wait_until,
)
from peers_harness import (
    dciodvfy_errors,
    free_port,
    run_orthanc,
    run_storescp,
    storescu,
)
from pneumonode.db.models import AuditEvent, Delivery, DeliveryState, Job, JobState, Result
from pneumonode.db.session import Database
from pneumonode.model.predictor import Predictor


@pytest.mark.integration
@pytest.mark.slow
def test_a_pacs_sends_a_study_and_gets_seg_and_sr_back(
    siim_sample_dicoms: list[Path], tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    port = free_port()
    model = tiny_checkpoint()
    modalities = {"pneumonode": ["PNEUMONODE", "127.0.0.1", port]}
    with run_orthanc(tmp_path / "orthanc", modalities=modalities) as pacs:  # type: ignore[arg-type]
        env = node_env(
            tmp_path / "data",
            model,
            port,
            PNEUMONODE_ALLOWED_PEERS="ORTHANC@127.0.0.1",
            PNEUMONODE_DESTINATIONS=pacs.destination,
            PNEUMONODE_LOG_LEVEL="DEBUG",  # the most we would ever log
            PNEUMONODE_LOG_FORMAT="json",
        )
        with running(["serve"], env, tmp_path / "serve.log", port):
            ids = [
                pacs.post("/instances", p.read_bytes(), "application/dicom")
                for p in siim_sample_dicoms
            ]
            pacs.post(
                "/modalities/pneumonode/store",
                json.dumps({"Resources": [i["ID"] for i in ids], "Synchronous": True}).encode(),  # type: ignore[index]
            )
            wait_until(
                lambda: sum(len(v) for k, v in orthanc_series(pacs).items() if k != "CR") >= 20,
                timeout=120,
                what="a SEG and an SR per image in Orthanc",
            )
            done = subprocess.run(
                [PNEUMONODE, "results", "--format", "json"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
        held = orthanc_series(pacs)
        assert len(held["SEG"]) == 10 and len(held["SR"]) == 10
        predictor = Predictor.load(model, backend="torch", precision="fp32")
        sources = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in siim_sample_dicoms}
        for seg_tags in held["SEG"]:
            seg_file = tmp_path / "seg.dcm"
            seg_file.write_bytes(pacs.file(str(seg_tags["_id"])))
            assert dciodvfy_errors(seg_file) == []
            seg = pydicom.dcmread(seg_file)
            source_uid = str(
                seg.ReferencedSeriesSequence[0]
                .ReferencedInstanceSequence[0]
                .ReferencedSOPInstanceUID
            )
            source = pydicom.dcmread(sources[source_uid])
            assert seg.StudyInstanceUID == source.StudyInstanceUID  # same study, new series
            assert seg.SeriesInstanceUID != source.SeriesInstanceUID
            mask = predictor.predict_dicom(sources[source_uid]).mask
            assert np.array_equal(seg.pixel_array.astype(bool).reshape(mask.shape), mask)
        for sr_tags in held["SR"]:
            sr_file = tmp_path / "sr.dcm"
            sr_file.write_bytes(pacs.file(str(sr_tags["_id"])))
            assert dciodvfy_errors(sr_file) == []
        assert_no_patient_data_in_log(tmp_path / "serve.log", siim_sample_dicoms)
        rows = json.loads(done.stdout)
        assert len(rows) == 10
        assert {row["status"] for row in rows} == {"done"}
        assert {row["delivery"] for row in rows} == {"sent"}
        assert {row["sop_uid"] for row in rows} == set(sources)


def assert_no_patient_data_in_log(log: Path, sources: list[Path]) -> None:
    """The log is JSON lines, and no patient's name, ID or birth date is in it."""
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert len(records) > 50 and all({"time", "level", "message"} <= r.keys() for r in records)
    text = log.read_text()
    for path in sources:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientID", "PatientName", "PatientBirthDate", "OtherPatientIDs"):
            value = str(ds.get(keyword, "") or "")
            if len(value) >= 4:  # shorter values (a sex, an age) say nothing about a person
                assert value not in text, f"{keyword} of {path.name} is in the log"


def _worker_pid(log: Path) -> int:
    found = re.search(r"worker process (\d+)", log.read_text())
    assert found, log.read_text()[-2000:]
    return int(found.group(1))


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_once(
    siim_sample_dicoms: list[Path], tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    port = free_port()
    files = copies(siim_sample_dicoms, 12, tmp_path / "in")
    with run_storescp(tmp_path / "pacs") as pacs:
        env = node_env(
            tmp_path / "data",
            tiny_checkpoint(size=512),  # slow enough to be caught running
            port,
            PNEUMONODE_ALLOWED_PEERS="STORESCU",
            PNEUMONODE_DESTINATIONS=pacs.destination,
            PNEUMONODE_JOB_LEASE_SECONDS="4",
        )
        log = tmp_path / "serve.log"
        database = Database.open(f"sqlite:///{tmp_path / 'data' / 'pneumonode.sqlite3'}")
        with running(["serve"], env, log, port):
            wait_until(lambda: "worker process" in log.read_text(), 30, "the worker to start")
            first_worker = _worker_pid(log)
            storescu(files, port)
            wait_until(lambda: jobs_in(database, JobState.RUNNING) > 0, 60, "a running job")
            with database.session() as session:
                victim = session.scalars(
                    select(Job.id).where(Job.state == JobState.RUNNING)
                ).first()
            os.killpg(first_worker, signal.SIGKILL)
            wait_until(lambda: jobs_in(database, JobState.DONE) == 12, 180, "all jobs done")
            started = set(re.findall(r"worker process (\d+) started", log.read_text()))
            assert len(started) >= 2, "the killed worker was not replaced"
        with database.session() as session:
            jobs = list(session.scalars(select(Job)))
            assert len(jobs) == 12
            killed = session.get(Job, victim)
            assert killed is not None and killed.state == JobState.DONE and killed.attempts == 2
            assert session.scalar(select(func.count()).select_from(Result)) == 12
            done_events = session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "job.done")
            )
            assert done_events == 12  # each job finished exactly once
            requeued = session.scalars(
                select(AuditEvent).where(AuditEvent.kind == "job.requeued")
            ).all()
            # the victim for sure; a job slower than the short lease may join it (its late
            # finish is then dropped, as the single job.done per job above shows)
            assert victim in [e.detail["job_id"] for e in requeued if e.detail]
            deliveries = list(session.scalars(select(Delivery)))
            assert len(deliveries) == 24
            assert {d.state for d in deliveries} == {DeliveryState.SENT}
        database.dispose()
        received = {
            pydicom.dcmread(p).SOPInstanceUID for p in pacs.folder.rglob("*") if p.is_file()
        }
        assert len(received) == 24


@pytest.mark.integration
@pytest.mark.slow
def test_scaled_out_on_redis_and_postgresql_no_job_lost_or_done_twice(
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    postgres_server: str,
    tmp_path: Path,
) -> None:
    redis = pytest.importorskip("redis")
    broker = "redis://127.0.0.1:6379/11"
    try:
        redis.Redis.from_url(broker).flushdb()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis at {broker} unavailable: {exc}")
    port = free_port()
    files = copies(siim_sample_dicoms, 100, tmp_path / "in")
    with run_storescp(tmp_path / "pacs") as pacs:
        env = node_env(
            tmp_path / "data",
            tiny_checkpoint(),
            port,
            PNEUMONODE_ALLOWED_PEERS="STORESCU",
            PNEUMONODE_DESTINATIONS=pacs.destination,
            PNEUMONODE_BROKER_URL=broker,
            PNEUMONODE_DATABASE_URL=postgres_server,
        )
        database = empty_postgres(postgres_server)
        with (
            running(["dicom-listen"], env, tmp_path / "listen.log", port),
            running(["worker"], env, tmp_path / "worker1.log"),
            running(["worker"], env, tmp_path / "worker2.log"),
        ):
            done = storescu(files, port, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            wait_until(lambda: jobs_in(database, JobState.DONE) == 100, 300, "100 jobs done")
        with database.session() as session:
            jobs = list(session.scalars(select(Job)))
            assert len(jobs) == 100
            assert {job.attempts for job in jobs} == {1}  # none done twice
            assert len({job.worker for job in jobs}) == 2  # both workers took a share
            assert session.scalar(select(func.count()).select_from(Result)) == 100
            started = session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "job.started")
            )
            assert started == 100
        database.dispose()
        received = {
            pydicom.dcmread(p).SOPInstanceUID for p in pacs.folder.rglob("*") if p.is_file()
        }
        assert len(received) == 200


@pytest.mark.integration
@pytest.mark.slow
def test_pacs_down_while_sending_and_a_corrupt_image_in_the_study(
    siim_sample_dicoms: list[Path], tiny_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    """Orthanc is stopped while results are sent, then restarted: everything arrives. A corrupt
    image in the middle of the study fails alone, with its reason in the audit trail."""
    port = free_port()
    files = copies(siim_sample_dicoms, 6, tmp_path / "in")
    broken = pydicom.dcmread(files[3])
    (frame,) = generate_frames(broken.PixelData, number_of_frames=1)
    broken.PixelData = encapsulate([frame[:2] + bytes(len(frame) - 2)])  # a JPEG of zeros
    broken.save_as(files[3])
    pacs_ports = (free_port(), free_port())
    with run_orthanc(tmp_path / "orthanc", ports=pacs_ports) as pacs:
        destination = pacs.destination
    # the PACS is down now
    env = node_env(
        tmp_path / "data",
        tiny_checkpoint(),
        port,
        PNEUMONODE_ALLOWED_PEERS="STORESCU",
        PNEUMONODE_DESTINATIONS=destination,
        PNEUMONODE_SEND_BACKOFF_SECONDS="1",
        PNEUMONODE_SEND_BACKOFF_MAX_SECONDS="2",
        PNEUMONODE_SEND_MAX_ATTEMPTS="100",
    )
    database = Database.open(f"sqlite:///{tmp_path / 'data' / 'pneumonode.sqlite3'}")

    def failed_attempts() -> int:
        with database.session() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(AuditEvent)
                    .where(AuditEvent.kind == "delivery.failed")
                )
                or 0
            )

    with running(["serve"], env, tmp_path / "serve.log", port):
        sent = storescu(files, port)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_until(lambda: jobs_in(database, JobState.DONE) == 5, 120, "5 jobs done")
        wait_until(lambda: failed_attempts() >= 10, 60, "failed delivery attempts")
        with run_orthanc(tmp_path / "orthanc", ports=pacs_ports) as pacs:
            wait_until(
                lambda: sum(len(v) for k, v in orthanc_series(pacs).items()) >= 10,
                120,
                "10 results in the restarted Orthanc",
            )
            held = orthanc_series(pacs)
    assert len(held["SEG"]) == 5 and len(held["SR"]) == 5
    with database.session() as session:
        failed = session.scalars(select(Job).where(Job.state == JobState.FAILED)).one()
        assert failed.error is not None and "cannot convert" in failed.error
        assert failed.instance.sop_uid == broken.SOPInstanceUID
        states = set(session.scalars(select(Delivery.state)))
        assert states == {DeliveryState.SENT}
    database.dispose()
