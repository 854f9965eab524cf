"""Retention: old images and result files go, unfinished work and the audit trail stay."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from peers_harness import storescu
from pneumonode.api import create_app
from pneumonode.api.security import ApiToken
from pneumonode.cli import EXIT_ERROR, EXIT_OK, main
from pneumonode.db.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    utcnow,
)
from pneumonode.db.models import Result as ResultRow
from pneumonode.dicom_node.spool import safe_component
from pneumonode.model.predictor import Predictor
from pneumonode.retention import RetentionLoop, prune
from pneumonode.worker.pipeline import PipelineContext, process_job

if TYPE_CHECKING:
    from conftest import RunningNode

TOKEN = "test-token-0123456789abcdef"
DAY = timedelta(days=1)


def _instances(node: RunningNode) -> dict[str, Instance]:
    with node.database.session() as session:
        rows = session.scalars(select(Instance).order_by(Instance.id)).all()
        session.expunge_all()
    return {row.sop_uid: row for row in rows}


def _files_of(node: RunningNode, instance: Instance, study_uid: str) -> list[Path]:
    results = (
        node.settings.results_dir / safe_component(study_uid) / safe_component(instance.sop_uid)
    )
    found = [node.settings.spool_dir / instance.path]
    found += [p for p in results.rglob("*") if p.is_file()] if results.is_dir() else []
    return [p for p in found if p.is_file()]


@pytest.mark.integration
def test_prune_deletes_only_finished_old_work_and_keeps_the_trail(
    node_factory: Callable[..., RunningNode],
    database_url: str,
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
) -> None:
    # four images from 40 days ago: delivered / dead-lettered / never processed / and one new
    node = node_factory(
        database_url=database_url, destinations=["PACS@127.0.0.1:9"], send_max_attempts=1
    )
    files = siim_sample_dicoms[:4]
    storescu(files, node.port)
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    study_uid = {
        sop: str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
        for sop, f in zip(sops, files, strict=True)
    }
    context = PipelineContext(
        node.settings, node.database, Predictor.load(tiny_checkpoint(bias=20.0), backend="torch")
    )
    with node.database.session() as session:
        jobs = {i.sop_uid: i.job.id for i in session.scalars(select(Instance)) if i.job is not None}
    for sop in (sops[0], sops[1], sops[3]):
        assert process_job(context, jobs[sop]).state == "done"
    with node.database.session() as session:
        delivered = select(ResultRow.id).join(Job).where(Job.id.in_([jobs[sops[0]], jobs[sops[3]]]))
        session.execute(
            update(Delivery)
            .where(Delivery.result_id.in_(delivered))
            .values(state=DeliveryState.SENT)
        )
        session.execute(
            update(Instance)
            .where(Instance.sop_uid.in_(sops[:3]))
            .values(received_at=utcnow() - 40 * DAY)
        )
    before = {sop: _files_of(node, i, study_uid[sop]) for sop, i in _instances(node).items()}
    assert len(before[sops[0]]) >= 4  # the DICOM, SEG, SR, PNGs

    dry = prune(node.settings, node.database, 30 * DAY, dry_run=True)
    assert (dry.instances, dry.held, dry.files) == (1, 2, len(before[sops[0]]))
    assert all(p.is_file() for p in before[sops[0]])

    report = prune(node.settings, node.database, 30 * DAY)
    assert (report.instances, report.held) == (1, 2)
    assert (report.files, report.bytes) == (dry.files, dry.bytes)  # the dry run told the truth
    assert not any(p.exists() for p in before[sops[0]])
    for kept in sops[1:]:
        assert all(p.is_file() for p in before[kept]), kept
    instances = _instances(node)
    assert instances[sops[0]].pruned_at is not None
    assert all(instances[s].pruned_at is None for s in sops[1:])
    with node.database.session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "instance.pruned")
        ).all()
        assert [(e.sop_uid, e.detail) for e in events] == [
            (sops[0], {"files": len(before[sops[0]]), "bytes": dry.bytes})
        ]
        # the rows stay: the trail of the pruned image is complete
        kinds = set(session.scalars(select(AuditEvent.kind).where(AuditEvent.sop_uid == sops[0])))
        assert {"instance.received", "job.done", "instance.pruned"} <= kinds
    assert prune(node.settings, node.database, 30 * DAY).instances == 0  # idempotent

    # the API says the image is gone, and a re-run cannot work without it
    app = create_app(node.settings, node.database, ApiToken(TOKEN, "settings"))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as client:
        gone = client.get(f"/api/instances/{sops[0]}/image.png", headers=auth)
        assert gone.status_code == 410 and "retention" in gone.json()["detail"]
        assert client.get(f"/api/instances/{sops[0]}/overlay.png", headers=auth).status_code == 410
        rerun = client.post(f"/api/jobs/{jobs[sops[0]]}/rerun", headers=auth)
        assert rerun.status_code == 409 and "send it again" in rerun.json()["detail"]
        study = client.get(f"/api/studies/{study_uid[sops[0]]}", headers=auth).json()
        shown = {i["sop_uid"]: i for i in study["instances"]}
        assert shown[sops[0]]["pruned_at"] and shown[sops[0]]["image_url"] is None
        assert client.get(f"/api/instances/{sops[1]}/image.png", headers=auth).status_code == 200

    # the PACS sends it again: stored and processed as new
    storescu(files[:1], node.port)
    again = _instances(node)[sops[0]]
    assert again.pruned_at is None and (node.settings.spool_dir / again.path).is_file()
    with node.database.session() as session:
        job = session.get(Job, jobs[sops[0]])
        assert job is not None and job.state == JobState.PENDING
        resent = session.scalars(
            select(AuditEvent.message)
            .where(AuditEvent.kind == "instance.resent")
            .where(AuditEvent.sop_uid == sops[0])
        ).all()
        assert resent == ["re-sent after retention deleted the stored file: stored again"]


def test_the_prune_command_and_the_setting(
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = node_factory()
    storescu(siim_sample_dicoms[:1], node.port)  # a job that never ran: always kept
    for key, value in (
        ("DATA_DIR", node.settings.data_dir),
        ("DATABASE_URL", node.settings.database),
    ):
        monkeypatch.setenv(f"PNEUMONODE_{key}", str(value))
    assert main(["prune"]) == EXIT_ERROR
    assert "pass --older-than DAYS or set PNEUMONODE_RETENTION_DAYS" in capsys.readouterr().err
    assert main(["prune", "--older-than", "0", "--dry-run", "--format", "json"]) == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    assert printed["dry_run"] is True and printed["held"] == 1 and printed["instances"] == 0
    with pytest.raises(SystemExit):
        main(["prune", "--older-than", "-3"])
    assert "not a number of days: '-3'" in capsys.readouterr().err
    monkeypatch.setenv("PNEUMONODE_RETENTION_DAYS", "30")
    assert main(["prune"]) == EXIT_OK
    assert "deleted the files of 0 instances received before" in capsys.readouterr().out


def test_the_retention_loop_prunes_at_start(
    node_factory: Callable[..., RunningNode], siim_sample_dicoms: list[Path]
) -> None:
    node = node_factory(retention_days=1)
    storescu(siim_sample_dicoms[:1], node.port)
    with node.database.session() as session:  # two days old, and its job ended
        session.execute(update(Instance).values(received_at=utcnow() - 2 * DAY))
        session.execute(update(Job).values(state=JobState.FAILED))
    loop = RetentionLoop(node.settings, node.database, interval=3600)
    loop.start()
    try:
        deadline = 100
        while deadline and next(iter(_instances(node).values())).pruned_at is None:
            deadline -= 1
            loop._stop.wait(0.1)
    finally:
        loop.stop()
    (instance,) = _instances(node).values()
    assert instance.pruned_at is not None
    assert not (node.settings.spool_dir / instance.path).exists()
