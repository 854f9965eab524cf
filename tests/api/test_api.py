"""The HTTP API against a node that received real SIIM images and processed them."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from peers_harness import storescu
from pneumonode.api import TokenError, create_app, resolve_token
from pneumonode.api.security import ApiToken
from pneumonode.config import Settings
from pneumonode.conversion.prepare import prepare_radiograph
from pneumonode.db.models import AuditEvent, Delivery, DeliveryState, Job, JobState, Result
from pneumonode.identity import OWN_OUTPUT_REASON
from pneumonode.model.checkpoint import read_checkpoint_config
from pneumonode.model.predictor import Predictor
from pneumonode.worker.pipeline import PipelineContext, process_job
from pneumonode.worker.tasks import celery_config

if TYPE_CHECKING:
    from conftest import RunningNode

TOKEN = "test-token-0123456789abcdef"


@dataclass
class Api:
    client: TestClient
    node: RunningNode
    positive_sop: str
    files: list[Path]

    def get(self, url: str, **kwargs: object) -> object:
        return self.client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)  # type: ignore[arg-type]

    def post(self, url: str, **kwargs: object) -> object:
        return self.client.post(url, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def api(
    request: pytest.FixtureRequest,
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
) -> Iterator[Api]:
    """Three SIIM images received and processed (a model that finds something everywhere on
    the first, nothing on the others); results sent to a destination that is down. On SQLite,
    or on PostgreSQL where a test asks (``parametrize("api", ["postgresql"], indirect=True)``)."""
    postgresql = getattr(request, "param", "sqlite") == "postgresql"
    node = node_factory(
        database_url=request.getfixturevalue("empty_postgresql") if postgresql else None,
        destinations=["PACS@127.0.0.1:9"],
        send_max_attempts=1,
    )
    files = siim_sample_dicoms[:3]
    storescu(files, node.port)
    jobs = [job.id for job in _jobs(node)]
    positive = PipelineContext(
        node.settings, node.database, Predictor.load(tiny_checkpoint(bias=20.0), backend="torch")
    )
    negative = PipelineContext(
        node.settings, node.database, Predictor.load(tiny_checkpoint(bias=-20.0), backend="torch")
    )
    process_job(positive, jobs[0])
    for job_id in jobs[1:]:
        process_job(negative, job_id)
    positive.heartbeat()
    celery_config(node.settings)  # creates the embedded broker's folders, as serve does
    app = create_app(node.settings, node.database, ApiToken(TOKEN, "settings"))
    with TestClient(app) as client:
        yield Api(client, node, str(pydicom.dcmread(files[0]).SOPInstanceUID), files)


def _jobs(node: RunningNode) -> list[Job]:
    with node.database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def test_health_needs_no_token_and_says_what_is_up(api: Api) -> None:
    response = api.client.get("/health")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["ready"] is True
    assert set(body["components"]) == {
        *("listener", "database", "broker", "workers", "model", "disk", "deliveries", "alerts")
    }
    assert body["components"]["alerts"] == {
        "state": "ok",
        "detail": "no HL7 destinations or webhook URLs configured",
    }
    # the results went to a destination that is down, once (send_max_attempts=1): dead-lettered
    assert body["status"] == body["components"]["deliveries"]["state"] == "degraded"
    assert body["components"]["workers"]["state"] == "ok"
    assert "pneumonode-test-unet" in body["components"]["model"]["detail"]


def test_health_is_503_when_the_listener_is_down(api: Api) -> None:
    api.node.listener.stop(grace=1)
    response = api.client.get("/health")
    assert response.status_code == 503
    assert response.json()["components"]["listener"]["state"] == "down"


def test_a_missing_or_wrong_token_is_refused(api: Api) -> None:
    missing = api.client.get("/api/studies")
    assert missing.status_code == 401 and "bearer" in missing.json()["detail"].lower()
    wrong = api.client.get("/api/studies", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong API token"


def test_studies_newest_first_with_badges_and_paging(api: Api) -> None:
    page = api.get("/api/studies", params={"sort": "-received"}).json()  # type: ignore[attr-defined]
    assert page["total"] == 3 and len(page["items"]) == 3
    received = [item["received_at"] for item in page["items"]]
    assert received == sorted(received, reverse=True)
    badges = {item["study_uid"]: item["badge"] for item in page["items"]}
    first_study = str(pydicom.dcmread(api.files[0]).StudyInstanceUID)
    assert badges[first_study] == "positive"
    assert sorted(badges.values()) == ["negative", "negative", "positive"]
    one = api.get("/api/studies", params={"limit": 1, "offset": 1}).json()  # type: ignore[attr-defined]
    assert one["total"] == 3 and len(one["items"]) == 1
    patient = pydicom.dcmread(api.files[1]).PatientID
    mine = api.get("/api/studies", params={"patient_id": patient}).json()  # type: ignore[attr-defined]
    assert [i["patient_id"] for i in mine["items"]] == [patient]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"offset": -1}, "offset"),
        ({"sort": "name"}, "sort"),
        ({"date_from": "2024-01-01"}, "date_from"),
    ],
)
def test_bad_paging_and_filters_are_4xx_with_a_message(
    api: Api, params: dict[str, object], fragment: str
) -> None:
    response = api.get("/api/studies", params=params)
    assert response.status_code == 422  # type: ignore[attr-defined]
    assert fragment in response.json()["detail"]  # type: ignore[attr-defined]


def test_a_study_with_its_images_results_deliveries_and_audit(api: Api) -> None:
    study_uid = str(pydicom.dcmread(api.files[0]).StudyInstanceUID)
    study = api.get(f"/api/studies/{study_uid}").json()  # type: ignore[attr-defined]
    (instance,) = study["instances"]
    assert instance["sop_uid"] == api.positive_sop
    assert instance["job"]["state"] == "done"
    result = instance["result"]
    assert result["pneumothorax"] is True and result["model_version"] == "0.0.1-test"
    assert {d["state"] for d in result["deliveries"]} == {"dead"}  # the PACS port is closed
    kinds = [event["kind"] for event in study["audit"]]
    assert "instance.received" in kinds and "job.done" in kinds
    assert instance["overlay_url"].endswith("/overlay.png")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("/api/studies/1.2.3.4.5", 404),
        ("/api/studies/1.2%2F..%2F3", 404),
        ("/api/studies/1.2$3", 422),
        ("/api/studies/" + "1" * 129, 422),
        ("/api/instances/1.2.3/image.png", 404),
        ("/api/instances/1.2 3/overlay.png", 422),
    ],
)
def test_unknown_and_invalid_uids(api: Api, url: str, code: int) -> None:
    response = api.get(url)
    assert response.status_code == code, response.text  # type: ignore[attr-defined]
    assert response.json()["detail"]  # type: ignore[attr-defined]


def _png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def test_image_and_overlay_pngs(api: Api) -> None:
    study = str(pydicom.dcmread(api.files[0], stop_before_pixels=True).StudyInstanceUID)
    kept = api.node.settings.results_dir / study / api.positive_sop / "image.png"
    assert kept.with_name("mask.png").is_file()
    assert not kept.exists()  # the worker leaves it to the first request
    plain = api.get(f"/api/instances/{api.positive_sop}/image.png")
    assert plain.headers["content-type"] == "image/png"  # type: ignore[attr-defined]
    grey = _png(plain.content)  # type: ignore[attr-defined]
    assert grey.shape == (1024, 1024)
    # windowed as the model's input was, and kept for the next request
    shown = prepare_radiograph(api.files[0], 64, keep_source=True).source_pixels
    assert np.array_equal(grey, shown)
    assert kept.read_bytes() == plain.content  # type: ignore[attr-defined]
    again = api.get(f"/api/instances/{api.positive_sop}/image.png")
    assert again.content == plain.content  # type: ignore[attr-defined]
    strong = _png(
        api.get(f"/api/instances/{api.positive_sop}/overlay.png", params={"opacity": 0.8}).content
    )  # type: ignore[attr-defined]
    faint = _png(
        api.get(f"/api/instances/{api.positive_sop}/overlay.png", params={"opacity": 0.1}).content
    )  # type: ignore[attr-defined]
    assert strong.shape == (1024, 1024, 3)
    centre = (slice(400, 600), slice(400, 600))  # inside the (everywhere) mask
    assert np.abs(strong[centre].astype(int) - faint[centre].astype(int)).mean() > 20
    bad = api.get(f"/api/instances/{api.positive_sop}/overlay.png", params={"opacity": 2})
    assert bad.status_code == 422  # type: ignore[attr-defined]


def test_results_export_as_json_and_csv(api: Api) -> None:
    rows = api.get("/api/results").json()  # type: ignore[attr-defined]
    assert len(rows) == 3 and {r["finding"] for r in rows} == {"present", "absent"}
    text = api.get("/api/results", params={"format": "csv", "positive": True}).text  # type: ignore[attr-defined]
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["sop_uid"] == api.positive_sop and row["delivery"] == "dead"


def test_rerun_a_job(api: Api) -> None:
    job_id = _jobs(api.node)[1].id
    response = api.post(f"/api/jobs/{job_id}/rerun")
    assert response.status_code == 202, response.text  # type: ignore[attr-defined]
    assert _jobs(api.node)[1].state == JobState.PENDING
    again = api.post(f"/api/jobs/{job_id}/rerun")
    assert again.status_code == 409  # type: ignore[attr-defined]
    assert api.post("/api/jobs/999999/rerun").status_code == 404  # type: ignore[attr-defined]


def test_resend_a_dead_lettered_result(api: Api) -> None:
    with api.node.database.session() as session:
        result_id = session.scalars(select(Delivery.result_id)).first()
    response = api.post(f"/api/results/{result_id}/resend")
    assert response.status_code == 202, response.text  # type: ignore[attr-defined]
    assert len(response.json()["delivery_ids"]) == 2  # type: ignore[attr-defined]
    with api.node.database.session() as session:
        states = set(session.scalars(select(Delivery.state).where(Delivery.result_id == result_id)))
    assert states == {DeliveryState.PENDING}
    assert api.post(f"/api/results/{result_id}/resend").status_code == 409  # type: ignore[attr-defined]


def test_upload_dicom_files(api: Api, siim_sample_dicoms: list[Path], tmp_path: Path) -> None:
    new = siim_sample_dicoms[5]
    response = api.post(
        "/api/upload", files=[("files", (new.name, new.read_bytes(), "application/dicom"))]
    )
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["stored"] == 1 and body["items"][0]["sop_uid"] == new.stem
    assert len(_jobs(api.node)) == 4  # a job, as if a PACS had sent it

    text = api.post("/api/upload", files=[("files", ("notes.txt", b"hello", "text/plain"))])
    assert text.status_code == 415 and "not a DICOM file" in text.json()["detail"]  # type: ignore[attr-defined]
    mixed = api.post(
        "/api/upload",
        files=[
            ("files", ("a.dcm", siim_sample_dicoms[6].read_bytes(), "application/dicom")),
            ("files", ("b.txt", b"nope", "text/plain")),
        ],
    )
    assert mixed.status_code == 207  # type: ignore[attr-defined]
    assert [i["stored"] for i in mixed.json()["items"]] == [True, False]  # type: ignore[attr-defined]


def test_an_oversize_upload_is_413(
    node_factory: Callable[..., RunningNode], tmp_path: Path
) -> None:
    node = node_factory(max_upload_mb=1)
    app = create_app(node.settings, node.database, ApiToken(TOKEN, "settings"))
    with TestClient(app) as client:
        response = client.post(
            "/api/upload",
            headers={"Authorization": f"Bearer {TOKEN}"},
            files=[("files", ("big.dcm", b"\0" * (2 << 20), "application/dicom"))],
        )
    assert response.status_code == 413 and "upload limit" in response.json()["detail"]


def test_uploads_over_the_rate_limit_get_429_and_nothing_is_stored(
    node_factory: Callable[..., RunningNode], siim_sample_dicoms: list[Path]
) -> None:
    node = node_factory(upload_rate_per_minute=2)
    app = create_app(node.settings, node.database, ApiToken(TOKEN, "settings"))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as client:
        answers = [
            client.post(
                "/api/upload",
                headers=auth,
                files=[("files", (path.name, path.read_bytes(), "application/dicom"))],
            )
            for path in siim_sample_dicoms[:3]
        ]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert 1 <= int(answers[2].headers["Retry-After"]) <= 60
        assert "more than 2 uploads a minute" in answers[2].json()["detail"]
        assert client.get("/api/studies", headers=auth).status_code == 200  # reads are not limited
    assert len(_jobs(node)) == 2


def test_metrics_in_prometheus_text(api: Api) -> None:
    response = api.client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'pneumonode_instances_received_total{outcome="stored",status="0x0000"} 3' in text
    assert 'pneumonode_jobs{state="done"} 3' in text
    assert 'pneumonode_stage_seconds_count{stage="infer"} 3' in text
    assert "pneumonode_queue_depth 0" in text


def test_openapi_schema_lists_every_route_with_its_responses(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/health",
        "/metrics",
        "/api/studies",
        "/api/studies/{study_uid}",
        "/api/instances/{sop_uid}/image.png",
        "/api/instances/{sop_uid}/overlay.png",
        "/api/results",
        "/api/audit",
        "/api/jobs/{job_id}/rerun",
        "/api/results/{result_id}/resend",
        "/api/deliveries/problems",
        "/api/deliveries/{delivery_id}/resend",
        "/api/upload",
    ):
        assert path in paths, path
    assert "StudySummary" in schema["components"]["schemas"]
    assert "Study" not in schema["components"]["schemas"]  # table models stay private


def test_token_generated_once_and_known_defaults_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = resolve_token(settings)
    assert first.source == "generated" and len(first.value) >= 32
    assert (first.path is not None) and (first.path.stat().st_mode & 0o777) == 0o600
    again = resolve_token(settings)
    assert again.source == "file" and again.value == first.value
    for weak in ("changeme", "short"):
        with pytest.raises(TokenError):
            resolve_token(Settings(data_dir=tmp_path, api_token=SecretStr(weak)))
    dev = resolve_token(Settings(data_dir=tmp_path, api_token=SecretStr("changeme"), dev_mode=True))
    assert dev.value == "changeme"


def test_a_skipped_study_says_why(api: Api, tmp_path: Path) -> None:
    from dicom_factory import basic_text_sr

    report = basic_text_sr(tmp_path / "report.dcm")
    storescu([report], api.node.port)
    page = api.get("/api/studies").json()  # type: ignore[attr-defined]
    skipped = [item for item in page["items"] if item["badge"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["skip_reason"].startswith("not a radiograph")


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _set_probabilities(api: Api, probabilities: list[float | None]) -> None:
    """Give the files' results the calibrated probabilities a calibrated model would have
    (the tiny test model has none)."""
    with api.node.database.session() as session:
        for job, probability in zip(_jobs(api.node), probabilities, strict=True):
            for result in session.scalars(select(Result).where(Result.job_id == job.id)):
                result.probability = probability


@pytest.mark.parametrize("api", ["sqlite", "postgresql"], indirect=True)
def test_studies_by_urgency_with_the_top_finding(api: Api) -> None:
    """Positive first, then by calibrated probability, then newest: the default order."""
    items = api.get("/api/studies").json()["items"]  # type: ignore[attr-defined]
    assert [i["badge"] for i in items] == ["positive", "negative", "negative"]
    assert items[0]["probability"] is None  # a model without a calibrated probability
    # newest first among the negatives, which have no probability
    assert items[1]["received_at"] >= items[2]["received_at"]

    _set_probabilities(api, [0.91, 0.12, 0.30])
    items = api.get("/api/studies").json()["items"]  # type: ignore[attr-defined]
    assert [i["study_uid"] for i in items] == [_study_uid(api.files[i]) for i in (0, 2, 1)]
    assert [i["probability"] for i in items] == [0.91, 0.30, 0.12]
    first = items[0]
    assert first["side"] in ("left", "right", "bilateral") and first["area_mm2"] > 0
    assert all(i["side"] is None and i["area_mm2"] is None for i in items[1:])


def _send_our_seg_back(api: Api) -> str:
    """The positive image's SEG, as a PACS would send it back to us; its SOP Instance UID."""
    from pneumonode.results import result_kind

    with api.node.database.session() as session:
        mine = select(Delivery).where(Delivery.study_uid == _study_uid(api.files[0]))
        (seg,) = [d for d in session.scalars(mine) if result_kind(d.sop_class_uid) == "SEG"]
        path, sop_uid = Path(seg.path), seg.sop_uid
    storescu([path], api.node.port)
    return sop_uid


@pytest.mark.parametrize("api", ["sqlite", "postgresql"], indirect=True)
def test_our_own_returned_objects_are_hidden_unless_asked_for(api: Api) -> None:
    seg_uid = _send_our_seg_back(api)
    study_uid = _study_uid(api.files[0])
    page = api.get("/api/studies").json()  # type: ignore[attr-defined]
    (mine,) = [i for i in page["items"] if i["study_uid"] == study_uid]
    assert page["total"] == 3 and (mine["images"], mine["skipped"]) == (1, 0)
    assert mine["badge"] == "positive"
    shown = api.get("/api/studies", params={"own": True}).json()  # type: ignore[attr-defined]
    (mine,) = [i for i in shown["items"] if i["study_uid"] == study_uid]
    assert (mine["images"], mine["skipped"]) == (2, 1)
    study = api.get(f"/api/studies/{study_uid}").json()  # type: ignore[attr-defined]
    assert [i["sop_uid"] for i in study["instances"]] == [api.positive_sop]
    study = api.get(f"/api/studies/{study_uid}", params={"own": True}).json()  # type: ignore[attr-defined]
    own = {i["sop_uid"]: i["own_output"] for i in study["instances"]}
    assert own == {api.positive_sop: False, seg_uid: True}
    rows = api.get("/api/results").json()  # type: ignore[attr-defined]
    assert len(rows) == 3 and seg_uid not in {r["sop_uid"] for r in rows}
    rows = api.get("/api/results", params={"own": True}).json()  # type: ignore[attr-defined]
    (back,) = [r for r in rows if r["sop_uid"] == seg_uid]
    assert back["status"] == "skipped" and back["skip_reason"] == OWN_OUTPUT_REASON


def test_deliveries_are_labelled_seg_sr_sc(api: Api) -> None:
    study = api.get(f"/api/studies/{_study_uid(api.files[0])}").json()  # type: ignore[attr-defined]
    deliveries = study["instances"][0]["result"]["deliveries"]
    assert sorted(d["kind"] for d in deliveries) == ["SEG", "SR"]


@pytest.mark.parametrize("api", ["sqlite", "postgresql"], indirect=True)
def test_dead_lettered_deliveries_are_listed_with_their_reason(api: Api) -> None:
    assert api.client.get("/api/deliveries/problems").status_code == 401
    rows = api.get("/api/deliveries/problems").json()  # type: ignore[attr-defined]
    assert sorted(r["kind"] for r in rows) == ["SEG", "SEG", "SEG", "SR", "SR", "SR"]
    assert rows[0]["study_uid"] == _study_uid(api.files[0])  # oldest first
    for row in rows:
        assert row["state"] == "dead" and row["overdue"] is False
        assert row["destination"] == "PACS@127.0.0.1:9"
        assert row["reason"].startswith("dead-lettered after 1 attempt: ")
        assert row["last_error"] and row["last_error"] in row["reason"]


def test_an_overdue_delivery_is_listed(api: Api) -> None:
    from datetime import timedelta

    from pneumonode.db.models import utcnow

    with api.node.database.session() as session:
        delivery = session.scalars(select(Delivery)).first()
        assert delivery is not None
        delivery.state = DeliveryState.PENDING
        delivery.next_attempt_at = utcnow() - timedelta(hours=1)
        delivery_id = delivery.id
    rows = {r["id"]: r for r in api.get("/api/deliveries/problems").json()}  # type: ignore[attr-defined]
    assert rows[delivery_id]["overdue"] is True and "overdue" in rows[delivery_id]["reason"]
    assert api.post(f"/api/deliveries/{delivery_id}/resend").status_code == 409  # type: ignore[attr-defined]


@pytest.mark.parametrize("api", ["sqlite", "postgresql"], indirect=True)
def test_resend_one_dead_lettered_delivery(api: Api) -> None:
    with api.node.database.session() as session:
        first, second, *_ = session.scalars(select(Delivery.id).order_by(Delivery.id))
    assert api.client.post(f"/api/deliveries/{first}/resend").status_code == 401
    response = api.post(f"/api/deliveries/{first}/resend")
    assert response.status_code == 202, response.text  # type: ignore[attr-defined]
    assert response.json()["delivery_ids"] == [first]  # type: ignore[attr-defined]
    with api.node.database.session() as session:
        again = session.get(Delivery, first)
        other = session.get(Delivery, second)
        assert again is not None and other is not None
        assert (again.state, again.attempts) == (DeliveryState.PENDING, 0)
        assert other.state == DeliveryState.DEAD  # only the one asked for
        events = [
            e.detail
            for e in session.scalars(select(AuditEvent).where(AuditEvent.kind == "delivery.resend"))
        ]
    assert events == [{"delivery_id": first}]
    conflict = api.post(f"/api/deliveries/{first}/resend")
    assert conflict.status_code == 409  # type: ignore[attr-defined]
    assert "not dead-lettered" in conflict.json()["detail"]  # type: ignore[attr-defined]
    assert api.post("/api/deliveries/999999/resend").status_code == 404  # type: ignore[attr-defined]
    assert api.post("/api/deliveries/0/resend").status_code == 422  # type: ignore[attr-defined]


def test_the_model_states_its_limits_from_its_card(
    node_factory: Callable[..., RunningNode],
) -> None:
    node = node_factory()  # the shipped model and its card
    app = create_app(node.settings, node.database, ApiToken(TOKEN, "settings"))
    with TestClient(app) as client:
        body = client.get("/api/model", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert body["summary"].startswith("AI result, not for clinical use.")
    assert 0 < body["operating_point"] < 1
    shipped = read_checkpoint_config(node.settings.model).postprocess
    assert body["threshold"] == shipped.threshold
    assert body["grow_threshold"] == shipped.grow_threshold
    assert any(limit.startswith("One archive.") for limit in body["limits"])
    assert body["limits"][-1] == "Not for clinical use. Not a medical device."
    assert all("**" not in limit for limit in body["limits"])
