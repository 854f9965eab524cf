"""Radiologists' feedback, live performance and alerts over the HTTP API, and export-feedback,
against a node that received real SIIM images and processed them."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from peers_harness import storescu
from pneumonode.api import create_app
from pneumonode.api.security import ApiToken
from pneumonode.cli import main
from pneumonode.conversion.siim import INDEX_COLUMNS
from pneumonode.db.models import (
    Alert,
    AlertChannel,
    AuditEvent,
    DeliveryState,
    Job,
    Result,
    utcnow,
)
from pneumonode.model.predictor import Predictor
from pneumonode.worker.pipeline import PipelineContext, process_job

if TYPE_CHECKING:
    from conftest import RunningNode

TOKEN = "feedback-test-token-0123456789"
ALICE = "alice-token-0123456789abcdef"


@dataclass
class Api:
    client: TestClient
    node: RunningNode
    sops: list[str]  # the first is called positive, the others negative

    def get(self, url: str, token: str = ALICE, **kwargs: Any) -> Any:
        return self.client.get(url, headers={"Authorization": f"Bearer {token}"}, **kwargs)

    def post(self, url: str, token: str = ALICE, **kwargs: Any) -> Any:
        return self.client.post(url, headers={"Authorization": f"Bearer {token}"}, **kwargs)


@pytest.fixture
def api(
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
) -> Iterator[Api]:
    """Four SIIM images received and processed: the first called positive, the rest not."""
    node = node_factory(model_path=tiny_checkpoint(bias=20.0))
    files = siim_sample_dicoms[:4]
    storescu(files, node.port)
    with node.database.session() as session:
        jobs = list(session.scalars(select(Job.id).order_by(Job.id)))
    positive = PipelineContext(
        node.settings, node.database, Predictor.load(tiny_checkpoint(bias=20.0), backend="torch")
    )
    negative = PipelineContext(
        node.settings, node.database, Predictor.load(tiny_checkpoint(bias=-20.0), backend="torch")
    )
    process_job(positive, jobs[0])
    for job_id in jobs[1:]:
        process_job(negative, job_id)
    token = ApiToken(TOKEN, "settings", named={"alice": ALICE})
    app = create_app(node.settings, node.database, token)
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    with TestClient(app) as client:
        yield Api(client, node, sops)


def test_feedback_is_stored_with_who_and_audited(api: Api) -> None:
    sop = api.sops[0]
    given = api.post(f"/api/instances/{sop}/feedback", json={"verdict": "agree"})
    assert given.status_code == 201, given.json()
    assert given.json()["reviewer"] == "alice" and given.json()["comment"] is None
    second = api.post(
        f"/api/instances/{sop}/feedback",
        token=TOKEN,
        json={"verdict": "disagree", "comment": "  a skin fold  "},
    )
    assert second.status_code == 201
    listed = api.get(f"/api/instances/{sop}/feedback").json()
    assert [(f["verdict"], f["reviewer"], f["comment"]) for f in listed] == [
        ("disagree", "default", "a skin fold"),
        ("agree", "alice", None),
    ]
    with api.node.database.session() as session:
        events = list(
            session.scalars(select(AuditEvent).where(AuditEvent.kind == "feedback.given"))
        )
    assert len(events) == 2 and all(e.sop_uid == sop for e in events)
    assert "alice says agree to the model's positive call" in events[0].message
    assert "skin" not in events[1].message  # a comment may hold anything: not in the trail


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"verdict": "maybe"}, 422, "verdict"),
        ({}, 422, "verdict"),
        ({"verdict": "agree", "comment": "x" * 2001}, 422, "comment"),
        ({"verdict": "agree", "who": "mallory"}, 422, "who"),
    ],
)
def test_bad_feedback_is_refused_with_a_message(
    api: Api, body: dict[str, Any], code: int, words: str
) -> None:
    response = api.post(f"/api/instances/{api.sops[0]}/feedback", json=body)
    assert response.status_code == code
    assert words in response.json()["detail"]


def test_feedback_needs_a_token_and_a_known_image(api: Api) -> None:
    url = f"/api/instances/{api.sops[0]}/feedback"
    assert api.client.post(url, json={"verdict": "agree"}).status_code == 401
    assert api.client.get(url).status_code == 401
    unknown = api.post("/api/instances/1.2.3.4/feedback", json={"verdict": "agree"})
    assert unknown.status_code == 404 and "no instance" in unknown.json()["detail"]
    bad = api.post("/api/instances/a%20b/feedback", json={"verdict": "agree"})
    assert bad.status_code == 422


def test_performance_counts_the_reviews(api: Api) -> None:
    positive, negatives = api.sops[0], api.sops[1:]
    assert api.post(f"/api/instances/{positive}/feedback", json={"verdict": "agree"}).is_success
    assert api.post(
        f"/api/instances/{negatives[0]}/feedback", json={"verdict": "missed"}
    ).is_success
    assert api.post(f"/api/instances/{negatives[1]}/feedback", json={"verdict": "agree"}).is_success
    response = api.get("/api/performance")
    assert response.status_code == 200, response.json()
    report = response.json()
    overall = report["overall"]
    assert overall["films"] == 4 and overall["positives"] == 1 and overall["reviewed"] == 3
    assert overall["agreement"] == pytest.approx(2 / 3)
    assert overall["ppv"] == 1.0
    assert overall["sensitivity_estimate"] == 0.5  # one found, one reported missed
    assert sum(day["films"] for day in report["trend"]) == 4
    assert sum(row["films"] for row in report["by_view"]) == 4
    drift = {d["feature"]: d for d in report["drift"]}
    # the tiny test model has no training_data.json: distributions without a comparison
    assert drift["rows"]["films"] == 4 and drift["rows"]["training_range"] is None
    assert report["drift_flagged"] is False
    empty = api.get("/api/performance?since=2001-01-01&until=2001-02-01").json()
    assert empty["overall"]["films"] == 0 and empty["overall"]["ppv"] is None


def test_performance_compares_with_the_training_data(api: Api) -> None:
    model = api.node.settings.model
    (model / "training_data.json").write_text(
        '{"source": "test", "ranges": {"rows": [2000, 3000], "input_mean": [0.999, 1.0],'
        ' "input_std": [0.0, 1.0]}, "values": {"view_position": ["LL"]}}'
    )
    try:
        report = api.get("/api/performance").json()
    finally:
        (model / "training_data.json").unlink()
    drift = {d["feature"]: d for d in report["drift"]}
    assert drift["rows"]["flagged"] and drift["rows"]["outside"] == 4
    assert drift["view_position"]["flagged"] and drift["view_position"]["unseen"]
    # the worker recorded each film's input statistics: compared like the header's numbers
    assert drift["input_mean"]["films"] == 4 and drift["input_mean"]["outside"] == 4
    assert drift["input_mean"]["flagged"] and not drift["input_std"]["flagged"]
    assert drift["input_dark_share"]["training_range"] is None
    assert report["drift_flagged"] and report["training_data"] == "test"


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("since=yesterday", "since: expected an ISO"),
        ("since=2026-02-01&until=2026-01-01", "before"),
    ],
)
def test_a_bad_period_is_refused(api: Api, query: str, words: str) -> None:
    response = api.get(f"/api/performance?{query}")
    assert response.status_code == 422 and words in response.json()["detail"]


def test_export_feedback_writes_the_converters_layout(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    positive, negatives = api.sops[0], api.sops[1:]
    for sop, verdict in ((positive, "agree"), (negatives[0], "missed"), (negatives[1], "disagree")):
        body = {"verdict": verdict, "comment": "left apex" if verdict == "missed" else None}
        assert api.post(f"/api/instances/{sop}/feedback", json=body).is_success
    settings = api.node.settings
    monkeypatch.setenv("PNEUMONODE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PNEUMONODE_MODEL_PATH", str(settings.model))
    out = tmp_path / "export"
    assert main(["export-feedback", "--out", str(out), "--size", "128"]) == 0
    assert "1 positive(s) and 1 negative(s)" in capsys.readouterr().out
    with (out / "index.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == INDEX_COLUMNS
        rows = {row["ImageId"]: row for row in reader}
    assert set(rows) == {positive, negatives[1]}
    assert (
        rows[positive]["has_pneumothorax"] == "1" and rows[negatives[1]]["has_pneumothorax"] == "0"
    )
    for sop in rows:
        image = cv2.imread(str(out / "png_images" / f"{sop}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / "png_masks" / f"{sop}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == mask.shape == (128, 128) and image.dtype == np.uint8
        assert int(rows[sop]["mask_pixels"]) == np.count_nonzero(mask)
        assert set(np.unique(mask)) <= {0, 255}
    assert int(rows[positive]["mask_pixels"]) > 0 and int(rows[negatives[1]]["mask_pixels"]) == 0
    with (out / "to_annotate.csv").open() as handle:
        missed = list(csv.DictReader(handle))
    assert [(m["ImageId"], m["comment"], m["reviewer"]) for m in missed] == [
        (negatives[0], "left apex", "alice")
    ]
    assert (out / missed[0]["image"]).is_file()
    # the model's own data reader accepts the folder
    from pneumonode.model.data import discover_samples

    assert len(discover_samples(out)) == 2


def test_alerts_are_listed_and_a_dead_one_is_resent(api: Api) -> None:
    with api.node.database.session() as session:
        result_id = session.scalars(select(Result.id).order_by(Result.id)).first()
        alert = Alert(
            channel=AlertChannel.WEBHOOK,
            destination="https://ris.example/hook?key=secret",
            result_id=result_id,
            study_uid="1.2.3",
            sop_uid=api.sops[0],
            control_id="c1",
            payload="{}",
            state=DeliveryState.DEAD,
            attempts=5,
            last_error="HTTP 503",
        )
        session.add(alert)
        session.flush()
        alert_id = alert.id
    listed = api.get("/api/alerts").json()
    assert [(a["id"], a["state"]) for a in listed] == [(alert_id, "dead")]
    assert "secret" not in listed[0]["destination"] and "payload" not in listed[0]
    assert api.get("/api/alerts?state=sent").json() == []
    resent = api.post(f"/api/alerts/{alert_id}/resend")
    assert resent.status_code == 202, resent.json()
    assert api.get("/api/alerts").json()[0]["state"] == "pending"
    again = api.post(f"/api/alerts/{alert_id}/resend")
    assert again.status_code == 409 and "pending" in again.json()["detail"]
    assert api.post("/api/alerts/999/resend").status_code == 404


def test_the_alerts_that_wait_for_someone_are_listed_with_a_reason(api: Api) -> None:
    """GET /api/alerts/problems (the System page's list): dead-lettered and overdue alerts,
    oldest first, each with its reason; a webhook URL redacted, never the message."""
    now = utcnow()
    with api.node.database.session() as session:
        result_id = session.scalars(select(Result.id).order_by(Result.id)).first()
        assert result_id is not None

        def add(destination: str, state: DeliveryState, **values: Any) -> int:
            channel = AlertChannel.WEBHOOK if "://" in destination else AlertChannel.HL7
            values = {"payload": "MSH|...", "control_id": destination[-8:], **values}
            row = Alert(
                channel=channel,
                destination=destination,
                result_id=result_id,
                study_uid="1.2.3",
                state=state,
                **values,
            )
            session.add(row)
            session.flush()
            return row.id

        dead = add(
            "127.0.0.1:2575",
            DeliveryState.DEAD,
            attempts=3,
            last_status="AE",
            last_error="AE: unknown patient",
            created_at=now - timedelta(hours=2),
        )
        unbuildable = add(
            "https://ris.example/hook/secret-path?key=secret",
            DeliveryState.DEAD,
            payload="",
            last_error="cannot build the message: too long",
            created_at=now - timedelta(hours=1),
        )
        overdue = add(
            "127.0.0.1:2576",
            DeliveryState.PENDING,
            next_attempt_at=now - timedelta(minutes=30),
            created_at=now - timedelta(minutes=31),
        )
        add("127.0.0.1:2577", DeliveryState.PENDING, next_attempt_at=now)  # waits, not overdue
        add("127.0.0.1:2578", DeliveryState.SENT, attempts=1, sent_at=now)
    answer = api.get("/api/alerts/problems")
    assert answer.status_code == 200, answer.json()
    listed = answer.json()
    assert [a["id"] for a in listed] == [dead, unbuildable, overdue]
    by_id = {a["id"]: a for a in listed}
    assert by_id[dead]["reason"] == "dead-lettered after 3 attempts: AE: unknown patient"
    assert by_id[dead]["resendable"] and not by_id[dead]["overdue"]
    assert by_id[dead]["channel"] == "hl7" and by_id[dead]["attempts"] == 3
    webhook = by_id[unbuildable]
    assert webhook["reason"] == "dead-lettered: cannot build the message: too long"
    assert not webhook["resendable"]  # nothing to send again
    assert "secret" not in webhook["destination"]
    assert by_id[overdue]["overdue"] and by_id[overdue]["reason"].startswith("overdue: ")
    assert not by_id[overdue]["resendable"]
    assert "MSH" not in answer.text and "payload" not in listed[0]
    assert api.get("/api/alerts/problems?limit=1").json()[0]["id"] == dead
    assert api.get("/api/alerts/problems", token="wrong").status_code == 401


def test_the_alerts_command_lists_and_resends(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with api.node.database.session() as session:
        result_id = session.scalars(select(Result.id).order_by(Result.id)).first()
        for port, state, latency in (
            (2575, DeliveryState.SENT, 0.42),
            (2576, DeliveryState.DEAD, None),
        ):
            session.add(
                Alert(
                    channel=AlertChannel.HL7,
                    destination=f"127.0.0.1:{port}",
                    result_id=result_id,
                    sop_uid=api.sops[0],
                    control_id=f"c-{state}",
                    payload="MSH|...",
                    state=state,
                    attempts=1,
                    last_status="AA" if latency else "AE",
                    latency_seconds=latency,
                )
            )
    monkeypatch.setenv("PNEUMONODE_DATA_DIR", str(api.node.settings.data_dir))
    assert main(["alerts", "list", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["state"], a["latency_s"]) for a in listed] == [("dead", ""), ("sent", "0.420")]
    assert "MSH" not in json.dumps(listed)
    assert main(["alerts", "resend"]) == 1
    assert "name alert ids" in capsys.readouterr().err
    dead = listed[0]["id"]
    assert main(["alerts", "resend", str(dead)]) == 0
    assert f"re-queued: {dead}" in capsys.readouterr().out
    assert main(["alerts", "list", "--state", "pending", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # header + the re-queued one
    assert main(["alerts", "resend", "--all"]) == 0
    assert "no dead-lettered alerts match" in capsys.readouterr().out
