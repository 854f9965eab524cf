"""Alerts end to end: a film received over DICOM, run by the worker's pipeline, alerted to a real
MLLP listener (its ORU parsed and validated by hl7apy here) and a real HTTP server (its HMAC
signature checked here); failures retried with the deliveries' back-off, then dead-lettered,
audited and shown by /health and /metrics."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest
from fastapi.testclient import TestClient
from hl7apy.core import Message
from sqlalchemy import select, update

from alert_receivers import MllpListener, WebhookReceiver
from dicom_factory import make_dx, save, synthetic_chest
from node_processes import node_env, running, wait_until
from peers_harness import free_port
from pneumonode.addresses import Destination
from pneumonode.alerts.outbox import AlertLoop, AlertPolicy, resend_alerts, run_due_alerts
from pneumonode.api.app import create_app
from pneumonode.api.security import ApiToken
from pneumonode.db.models import Alert, AuditEvent, DeliveryState, Job, JobState
from pneumonode.db.session import Database
from pneumonode.dicom_node.scu import send_files
from pneumonode.model.predictor import Predictor
from pneumonode.worker.pipeline import JobOutcome, PipelineContext, process_job

if TYPE_CHECKING:
    from conftest import RunningNode

SECRET = "test-webhook-secret-0123456789"
PATIENT_NAME, PATIENT_ID, ACCESSION = "Doe^Jane", "PAT-0001", "ACC-0001"
#: attempts and back-off small enough for a test (the deliveries' settings)
QUICK_RETRIES = {
    "send_max_attempts": 3,
    "send_backoff_seconds": 0.01,
    "send_backoff_max_seconds": 0.05,
}


@pytest.fixture(scope="module")
def predictors(tiny_checkpoint: Callable[..., Path]) -> dict[str, Predictor]:
    """A model that finds a pneumothorax everywhere, and one that finds none."""
    return {
        "positive": Predictor.load(tiny_checkpoint(bias=20.0), backend="torch"),
        "negative": Predictor.load(tiny_checkpoint(bias=-20.0), backend="torch"),
    }


def _film(folder: Path) -> Path:
    ds = make_dx(synthetic_chest(256, 256, 12), 12)
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate, ds.PatientSex = "19700102", "F"
    ds.AccessionNumber = ACCESSION
    ds.StudyDate, ds.StudyTime = "20260105", "101500"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    folder.mkdir(parents=True, exist_ok=True)
    return save(ds, folder / f"{ds.SOPInstanceUID}.dcm")


def _receive_and_run(node: RunningNode, predictor: Predictor, path: Path) -> JobOutcome:
    """Send ``path`` to the node's listener (a real association), run its job."""
    sent = send_files([path], Destination("PNEUMONODE", "127.0.0.1", node.port), "PNEUMONODE")
    assert all(o.ok for o in sent), sent
    with node.database.session() as session:
        job_id = session.scalars(select(Job.id).order_by(Job.id.desc())).first()
    assert job_id is not None
    return process_job(PipelineContext(node.settings, node.database, predictor), job_id)


def _rerun(node: RunningNode, predictor: Predictor, job_id: int) -> JobOutcome:
    with node.database.session() as session:  # what `jobs/{id}/rerun` does
        session.execute(update(Job).where(Job.id == job_id).values(state=JobState.PENDING))
    return process_job(PipelineContext(node.settings, node.database, predictor), job_id)


def _alerts(node: RunningNode) -> list[Alert]:
    with node.database.session() as session:
        return list(session.scalars(select(Alert).order_by(Alert.id)))


def _audit(node: RunningNode, prefix: str = "alert.") -> list[AuditEvent]:
    with node.database.session() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.kind.startswith(prefix)).order_by(AuditEvent.id)
            )
        )


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _signature(body: bytes) -> str:
    """The test's own HMAC-SHA256, as a receiver computes it."""
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def _obx(message: Message) -> dict[str, str]:
    order = message.oru_r01_patient_result.oru_r01_order_observation
    return {o.obx.obx_3.ce_1.to_er7(): o.obx.obx_5.to_er7() for o in order.oru_r01_observation}


def _no_patient_data(texts: list[str]) -> None:
    for text in texts:
        for secret in ("Doe", PATIENT_ID, "s3cr3t-path", "unknown patient"):
            assert secret not in text, (secret, text)


@pytest.fixture
def client_of() -> Iterator[Callable[[RunningNode], TestClient]]:
    clients: list[TestClient] = []

    def make(node: RunningNode) -> TestClient:
        app = create_app(node.settings, node.database, ApiToken("t" * 32, "settings"))
        client = TestClient(app)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.mark.integration
def test_a_positive_film_raises_a_validated_oru_and_a_signed_webhook(
    node_factory: Callable[..., RunningNode],
    database_url: str,
    predictors: dict[str, Predictor],
    mllp_listener: MllpListener,
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = node_factory(
        database_url=database_url,
        hl7_destinations=[mllp_listener.destination],
        hl7_sending_facility="RADIOLOGY",
        webhook_urls=[webhook_receiver.url],
        webhook_secret=SECRET,
        public_url="https://pneumonode.example",
    )
    film = _film(tmp_path / "in")
    started = time.monotonic()
    outcome = _receive_and_run(node, predictors["positive"], film)
    assert time.monotonic() - started < 60
    assert outcome.present is True
    assert outcome.alerts_sent == 2 and len(outcome.alert_ids) == 2

    # the ORU, as the listener parsed and validated it (strict v2.5.1)
    assert mllp_listener.errors == [] and len(mllp_listener.messages) == 1
    oru = mllp_listener.messages[0]
    study_uid = oru.oru_r01_patient_result.oru_r01_order_observation.obr.obr_20.to_er7()
    with node.database.session() as session:
        alert = session.scalars(select(Alert).where(Alert.channel == "hl7")).one()
        assert study_uid == alert.study_uid
    assert oru.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert oru.msh.msh_4.to_er7() == "RADIOLOGY"
    assert oru.msh.msh_10.to_er7() == alert.control_id
    pid = oru.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.cx_1.to_er7() == PATIENT_ID
    assert pid.pid_5.to_er7() == PATIENT_NAME
    obr = oru.oru_r01_patient_result.oru_r01_order_observation.obr
    assert (obr.obr_18.to_er7(), obr.obr_5.to_er7(), obr.obr_25.to_er7()) == (ACCESSION, "S", "F")
    rows = _obx(oru)
    assert rows["36118008"] == "52101004^Present^SCT"
    assert float(rows["PTXAREA"]) == pytest.approx(256 * 256 * 0.04, rel=0.01)  # mm², 0.2 mm
    assert rows["111001"] == "pneumonode-test-unet" and rows["111003"] == "0.0.1-test"
    assert rows["110180"] == study_uid
    note = oru.oru_r01_patient_result.oru_r01_order_observation.nte.nte_3.to_er7()
    assert "not for clinical use" in note

    # the webhook: signed with the shared secret, no patient data, links to page and API
    assert len(webhook_receiver.posts) == 1
    post = webhook_receiver.posts[0]
    assert post.path == "/hooks/pneumothorax/s3cr3t-path"
    assert post.headers["X-Pneumonode-Signature-256"] == _signature(post.body)
    assert post.headers["X-Pneumonode-Event"] == "result"
    body = post.json()
    assert post.headers["X-Pneumonode-Delivery"] == body["id"]
    assert body["study"] == {
        "study_instance_uid": study_uid,
        "accession_number": ACCESSION,
        "study_datetime": "20260105101500",
    }
    assert body["image"]["sop_instance_uid"] == alert.sop_uid
    assert body["finding"]["pneumothorax"] is True and body["finding"]["priority"] == "urgent"
    assert body["model"] == {"name": "pneumonode-test-unet", "version": "0.0.1-test"}
    assert body["links"]["page"] == f"https://pneumonode.example/#/study/{study_uid}"
    assert body["links"]["study"] == f"https://pneumonode.example/api/studies/{study_uid}"
    assert "not for clinical use" in body["label"]
    _no_patient_data([post.body.decode()])

    # recorded and audited, with no patient data or secret URL in the trail or the logs
    alerts = _alerts(node)
    assert [(a.channel, a.state, a.attempts) for a in alerts] == [
        ("hl7", DeliveryState.SENT, 1),
        ("webhook", DeliveryState.SENT, 1),
    ]
    assert all(a.last_status in ("AA", "200") and a.sent_at is not None for a in alerts)
    # each alert keeps its latency: the image's arrival to the ACK (or 2xx)
    assert all(a.latency_seconds is not None and 0 < a.latency_seconds < 60 for a in alerts)
    events = _audit(node)
    assert [e.kind for e in events] == ["alert.queued"] * 2 + ["alert.sent"] * 2
    assert events[-1].detail is not None and events[-1].detail["seconds_since_received"] < 60
    _no_patient_data([e.message for e in events] + [json.dumps(e.detail) for e in events])
    _no_patient_data([record.getMessage() for record in caplog.records])


@pytest.mark.integration
def test_a_negative_film_raises_nothing_by_default_and_both_with_notify_all(
    node_factory: Callable[..., RunningNode],
    predictors: dict[str, Predictor],
    mllp_listener: MllpListener,
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    receivers = {
        "hl7_destinations": [mllp_listener.destination],
        "webhook_urls": [webhook_receiver.url],
        "webhook_secret": SECRET,
    }
    quiet = node_factory(**receivers)
    outcome = _receive_and_run(quiet, predictors["negative"], _film(tmp_path / "a"))
    assert outcome.present is False and outcome.alert_ids == ()
    assert mllp_listener.received() == 0 and webhook_receiver.posts == []
    assert _alerts(quiet) == []

    every = node_factory(notify="all", **receivers)
    outcome = _receive_and_run(every, predictors["negative"], _film(tmp_path / "b"))
    assert outcome.alerts_sent == 2
    assert len(mllp_listener.messages) == 1 and len(webhook_receiver.posts) == 1
    oru = mllp_listener.messages[0]
    assert oru.oru_r01_patient_result.oru_r01_order_observation.obr.obr_5.to_er7() == "R"
    assert _obx(oru)["36118008"] == "2667000^Absent^SCT"
    post = webhook_receiver.posts[0]
    assert post.headers["X-Pneumonode-Signature-256"] == _signature(post.body)
    assert post.json()["finding"]["pneumothorax"] is False


@pytest.mark.integration
def test_a_rerun_of_an_alerted_film_sends_a_correction(
    node_factory: Callable[..., RunningNode],
    predictors: dict[str, Predictor],
    mllp_listener: MllpListener,
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    node = node_factory(
        hl7_destinations=[mllp_listener.destination],
        webhook_urls=[webhook_receiver.url],
        webhook_secret=SECRET,
    )
    first = _receive_and_run(node, predictors["positive"], _film(tmp_path))
    assert first.alerts_sent == 2
    # the same model version, now finding nothing: sent although notify=positive
    second = _rerun(node, predictors["negative"], first.job_id)
    assert second.alerts_sent == 2 and set(second.alert_ids) == set(first.alert_ids)
    old, new = mllp_listener.messages
    assert new.msh.msh_10.to_er7() != old.msh.msh_10.to_er7()
    order = new.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_25.to_er7() == "C"
    assert _obx(new)["36118008"] == "2667000^Absent^SCT"
    post = webhook_receiver.posts[1]
    assert post.headers["X-Pneumonode-Event"] == "result.corrected"
    assert post.json()["correction"] is True and post.json()["finding"]["pneumothorax"] is False


@pytest.mark.integration
@pytest.mark.parametrize("code", ["AE", "AR"])
def test_an_error_ack_is_retried_then_dead_lettered_and_shown(
    node_factory: Callable[..., RunningNode],
    predictors: dict[str, Predictor],
    mllp_listener: MllpListener,
    client_of: Callable[[RunningNode], TestClient],
    tmp_path: Path,
    code: str,
) -> None:
    mllp_listener.ack_code = code
    node = node_factory(hl7_destinations=[mllp_listener.destination], **QUICK_RETRIES)
    outcome = _receive_and_run(node, predictors["positive"], _film(tmp_path))
    assert outcome.alerts_sent == 0
    [alert] = _alerts(node)
    assert (alert.state, alert.attempts) == (DeliveryState.PENDING, 1)

    # the alert loop of `pneumonode serve` retries it when due (the worker claimed it until
    # then: make it due now)
    with node.database.session() as session:
        session.execute(update(Alert).values(next_attempt_at=alert.created_at))
    loop = AlertLoop(node.database, AlertPolicy.from_settings(node.settings), interval=0.05)
    loop.start()
    try:
        _wait_for(lambda: _alerts(node)[0].state == DeliveryState.DEAD)
    finally:
        loop.stop()
    [alert] = _alerts(node)
    assert (alert.attempts, alert.last_status) == (3, code)
    assert alert.last_error == f"ACK {code}: unknown patient (test)"  # kept on the row only
    # the same message each time: one control ID a receiver can discard repeats by
    assert len(mllp_listener.messages) == 3
    assert {m.msh.msh_10.to_er7() for m in mllp_listener.messages} == {alert.control_id}
    events = _audit(node)
    assert [e.kind for e in events] == [
        *("alert.queued", "alert.failed", "alert.failed", "alert.dead")
    ]
    assert events[-1].message.endswith(
        f"after 3 attempts: {mllp_listener.destination} answered {code}"
    )
    _no_patient_data([e.message for e in events])

    client = client_of(node)
    health = client.get("/health").json()
    assert health["components"]["alerts"]["state"] == "degraded"
    assert health["components"]["alerts"]["detail"].startswith("1 dead-lettered")
    metrics = client.get("/metrics").text
    assert 'pneumonode_alerts{channel="hl7",state="dead"} 1' in metrics
    assert "pneumonode_alert_failures_total 3" in metrics

    # sent again on request, to a receiver that now accepts it
    mllp_listener.ack_code = "AA"
    assert resend_alerts(node.database, all_dead=True) == [alert.id]
    assert run_due_alerts(node.database, AlertPolicy.from_settings(node.settings)) == 1
    assert _alerts(node)[0].state == DeliveryState.SENT
    assert client.get("/health").json()["components"]["alerts"]["state"] == "ok"
    metrics = client.get("/metrics").text
    assert 'pneumonode_alerts{channel="hl7",state="sent"} 1' in metrics
    assert 'pneumonode_alert_latency_seconds_count{channel="hl7"} 1' in metrics


@pytest.mark.integration
def test_a_down_listener_and_a_failing_webhook_are_retried_then_dead_lettered(
    node_factory: Callable[..., RunningNode],
    predictors: dict[str, Predictor],
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    webhook_receiver.status = 503
    down = f"127.0.0.1:{free_port()}"
    node = node_factory(
        hl7_destinations=[down],
        webhook_urls=[webhook_receiver.url],
        webhook_secret=SECRET,
        **QUICK_RETRIES,
    )
    outcome = _receive_and_run(node, predictors["positive"], _film(tmp_path))
    assert outcome.alerts_sent == 0
    policy = AlertPolicy.from_settings(node.settings)
    with node.database.session() as session:  # due now rather than after the worker's claim
        session.execute(update(Alert).values(next_attempt_at=_alerts(node)[0].created_at))
    deadline = time.monotonic() + 30
    while any(a.state == DeliveryState.PENDING for a in _alerts(node)):
        assert time.monotonic() < deadline
        run_due_alerts(node.database, policy)
        time.sleep(0.02)
    hl7_alert, webhook_alert = _alerts(node)
    assert (hl7_alert.state, hl7_alert.attempts) == (DeliveryState.DEAD, 3)
    assert hl7_alert.last_error is not None
    assert hl7_alert.last_error.startswith(f"cannot reach {down}")
    assert (webhook_alert.state, webhook_alert.attempts) == (DeliveryState.DEAD, 3)
    assert webhook_alert.last_status == "503"
    assert len(webhook_receiver.posts) == 3
    assert {p.headers["X-Pneumonode-Delivery"] for p in webhook_receiver.posts} == {
        webhook_alert.control_id
    }
    assert all(
        p.headers["X-Pneumonode-Signature-256"] == _signature(p.body)
        for p in webhook_receiver.posts
    )
    kinds = [e.kind for e in _audit(node)]
    assert kinds.count("alert.failed") == 4 and kinds.count("alert.dead") == 2
    # the webhook's URL is named without its path, which may be a secret
    dead = [e.message for e in _audit(node, "alert.dead")]
    assert any(f"http://127.0.0.1:{webhook_receiver.port}/… answered HTTP 503" in m for m in dead)
    _no_patient_data([e.message for e in _audit(node)])


@pytest.mark.integration
def test_a_silent_listener_times_out_and_a_refusing_webhook_is_dead_at_once(
    node_factory: Callable[..., RunningNode],
    predictors: dict[str, Predictor],
    mllp_listener: MllpListener,
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    mllp_listener.silent = True
    webhook_receiver.status = 401  # a wrong secret, say: no retry helps
    node = node_factory(
        hl7_destinations=[mllp_listener.destination],
        webhook_urls=[webhook_receiver.url],
        webhook_secret=SECRET,
        alert_timeout=0.5,
        **QUICK_RETRIES,
    )
    _receive_and_run(node, predictors["positive"], _film(tmp_path))
    hl7_alert, webhook_alert = _alerts(node)
    assert (hl7_alert.state, hl7_alert.attempts) == (DeliveryState.PENDING, 1)
    assert hl7_alert.last_error == f"no ACK from {mllp_listener.destination} within 0.5 s"
    assert (webhook_alert.state, webhook_alert.attempts) == (DeliveryState.DEAD, 1)
    assert webhook_alert.last_error == "HTTP 401: no (test)"
    assert len(webhook_receiver.posts) == 1


@pytest.mark.integration
def test_an_undelivered_alert_is_withdrawn_when_a_rerun_no_longer_calls_for_it(
    node_factory: Callable[..., RunningNode],
    predictors: dict[str, Predictor],
    tmp_path: Path,
) -> None:
    down = f"127.0.0.1:{free_port()}"
    node = node_factory(hl7_destinations=[down], **QUICK_RETRIES)
    first = _receive_and_run(node, predictors["positive"], _film(tmp_path))
    [pending] = _alerts(node)
    assert pending.state == DeliveryState.PENDING and first.alerts_sent == 0
    # the RIS never heard of it: a re-run that finds nothing must not let it through later
    second = _rerun(node, predictors["negative"], first.job_id)
    assert second.alert_ids == () and _alerts(node) == []
    [withdrawn] = _audit(node, "alert.withdrawn")
    assert withdrawn.message == (
        f"alert {pending.id} (HL7 ORU) to {down} withdrawn, never delivered: a re-run of its "
        "result calls for no alert"
    )


@pytest.mark.integration
@pytest.mark.slow
def test_serve_alerts_a_positive_film_and_its_alert_loop_retries(
    predictors: dict[str, Predictor],
    tiny_checkpoint: Callable[..., Path],
    mllp_listener: MllpListener,
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    """`pneumonode serve` as a process: its worker alerts at once; the RIS refuses the first
    ORU (AE), and serve's alert loop sends it again after the back-off."""
    mllp_listener.ack_codes = ["AE"]
    port, api_port = free_port(), free_port()
    env = node_env(
        tmp_path / "data",
        tiny_checkpoint(bias=20.0),
        port,
        PNEUMONODE_API_PORT=str(api_port),
        PNEUMONODE_ALLOWED_PEERS="PNEUMONODE",
        PNEUMONODE_HL7_DESTINATIONS=mllp_listener.destination,
        PNEUMONODE_WEBHOOK_URLS=webhook_receiver.url,
        PNEUMONODE_WEBHOOK_SECRET=SECRET,
        PNEUMONODE_SEND_BACKOFF_SECONDS="1",
    )
    film = _film(tmp_path / "in")
    with running(["serve"], env, tmp_path / "serve.log", port=port):
        started = time.monotonic()
        sent = send_files([film], Destination("PNEUMONODE", "127.0.0.1", port), "PNEUMONODE")
        assert all(o.ok for o in sent)
        wait_until(lambda: len(webhook_receiver.posts) == 1, 60, "the webhook")
        wait_until(lambda: len(mllp_listener.messages) == 2, 60, "the ORU, sent again")
        assert time.monotonic() - started < 60
    assert mllp_listener.errors == []
    first, second = mllp_listener.messages
    assert first.msh.msh_10.to_er7() == second.msh.msh_10.to_er7()
    post = webhook_receiver.posts[0]
    assert post.headers["X-Pneumonode-Signature-256"] == _signature(post.body)
    study_uid = str(pydicom.dcmread(film).StudyInstanceUID)
    obr = second.oru_r01_patient_result.oru_r01_order_observation.obr
    assert (
        obr.obr_20.to_er7() == study_uid and post.json()["study"]["study_instance_uid"] == study_uid
    )
    database = Database.open(f"sqlite:///{tmp_path / 'data' / 'pneumonode.sqlite3'}")
    try:
        with database.session() as session:
            states = {(a.channel, a.state, a.attempts) for a in session.scalars(select(Alert))}
    finally:
        database.dispose()
    assert states == {("hl7", DeliveryState.SENT, 2), ("webhook", DeliveryState.SENT, 1)}
    log = (tmp_path / "serve.log").read_text()
    _no_patient_data([log])
