"""``/metrics`` after real traffic: an instance stored, one refused, associations rejected, a job
run and its results delivered (to a listener that takes them, and to one that is down); the text
is read back with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from sqlalchemy import func, select

from dicom_factory import make_dx, synthetic_chest
from pneumonode.api import create_app
from pneumonode.api.metrics import BUCKETS, render_metrics
from pneumonode.api.security import ApiToken
from pneumonode.db.models import Delivery
from pneumonode.model.predictor import Predictor
from pneumonode.worker.dispatch import dispatch_once
from pneumonode.worker.pipeline import PipelineContext, process_job

if TYPE_CHECKING:
    from pydicom import Dataset

    from conftest import RunningNode

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

FAMILIES = {
    "pneumonode_associations_accepted": "counter",
    "pneumonode_associations_rejected": "counter",
    "pneumonode_associations_aborted": "counter",
    "pneumonode_instances_received": "counter",
    "pneumonode_instances_refused": "counter",
    "pneumonode_jobs": "gauge",
    "pneumonode_queue_depth": "gauge",
    "pneumonode_stage_seconds": "histogram",
    "pneumonode_queued_to_inferred_seconds": "histogram",
    "pneumonode_delivery_seconds": "histogram",
    "pneumonode_deliveries": "gauge",
    "pneumonode_send_failures": "counter",
    "pneumonode_alerts": "gauge",
    "pneumonode_alert_failures": "counter",
    "pneumonode_alert_latency_seconds": "histogram",
    "pneumonode_model_info": "gauge",
}


def _parse(text: str) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, labels) -> value), checking the conventions."""
    kinds: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("pneumonode_"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        kinds[family.name] = family.type
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return kinds, samples


def _value(samples: Samples, name: str, /, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _store(
    port: int, dataset: Dataset, calling: str = "STORESCU", called: str = "PNEUMONODE"
) -> int | None:
    """One association, one C-STORE; the status, or None when the association was rejected."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        assert assoc.is_rejected
        return None
    try:
        return int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


def test_metrics_count_associations_instances_jobs_deliveries_and_the_model(
    node_factory: Callable[..., RunningNode],
    database_url: str,
    tiny_checkpoint: Callable[..., Path],
) -> None:
    pacs = node_factory()  # takes what we send (calling AE PNEUMONODE is allowed)
    pacs_destination = f"PNEUMONODE@127.0.0.1:{pacs.port}"
    down = "DOWN@127.0.0.1:9"
    model = tiny_checkpoint(bias=20.0)
    node = node_factory(
        database_url=database_url,
        destinations=[pacs_destination, down],
        send_max_attempts=1,
        max_instance_mb=1,
        model_path=model,
    )

    small = make_dx(synthetic_chest(128, 128, 12), 12)
    assert _store(node.port, small) == 0x0000
    large = make_dx(synthetic_chest(1024, 1024, 12, seed=1), 12)  # 2 MiB > 1 MiB
    assert _store(node.port, large) == 0xA700
    assert _store(node.port, small, calling="INTRUDER") is None
    assert _store(node.port, small, called="SOMEBODYELSE") is None

    published: list[int] = []  # the dispatcher queues the job, as the listener's would
    dispatch_once(node.database, published.append, lease_seconds=60)
    (job_id,) = published
    context = PipelineContext(node.settings, node.database, Predictor.load(model, backend="torch"))
    assert process_job(context, job_id).state == "done"
    context.heartbeat()
    with node.database.session() as session:
        per_destination = dict(
            session.execute(
                select(Delivery.destination, func.count()).group_by(Delivery.destination)
            ).all()
        )
    sent = per_destination[pacs_destination]
    assert sent >= 2 and per_destination[down] == sent  # SEG and SR to each

    app = create_app(node.settings, node.database, ApiToken("test-token-0123456789", "settings"))
    with TestClient(app) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    kinds, samples = _parse(response.text)
    assert kinds == FAMILIES

    # associations: the two that stored (one C-STORE refused in it), two rejected with reasons
    assert _value(samples, "pneumonode_associations_accepted_total") == 2
    rejected = "pneumonode_associations_rejected_total"
    assert _value(samples, rejected, reason="calling_ae") == 1
    assert _value(samples, rejected, reason="called_ae") == 1
    assert _value(samples, rejected, reason="busy") == 0
    assert _value(samples, rejected, reason="other") == 0

    received = "pneumonode_instances_received_total"
    assert _value(samples, received, outcome="stored", status="0x0000") == 1
    assert _value(samples, received, outcome="refused", status="0xA700") == 1
    assert _value(samples, received, outcome="refused", status="0xC210") == 0
    refused = "pneumonode_instances_refused_total"
    assert _value(samples, refused, reason="too_large", status="0xA700") == 1
    assert _value(samples, refused, reason="damaged", status="0xC210") == 0

    assert _value(samples, "pneumonode_jobs", state="done") == 1
    assert _value(samples, "pneumonode_jobs", state="failed") == 0
    assert _value(samples, "pneumonode_queue_depth") == 0

    # stage histograms: one observation each, cumulative buckets ending at the count
    for stage in ("receive_to_queued", "queue_wait", "convert", "infer", "build", "write"):
        assert _value(samples, "pneumonode_stage_seconds_count", stage=stage) == 1, stage
        assert _value(samples, "pneumonode_stage_seconds_bucket", stage=stage, le="+Inf") == 1
    buckets = [
        _value(samples, "pneumonode_stage_seconds_bucket", stage="infer", le=repr(bound))
        for bound in BUCKETS
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 1
    assert _value(samples, "pneumonode_stage_seconds_sum", stage="infer") > 0
    assert _value(samples, "pneumonode_queued_to_inferred_seconds_count") == 1
    assert _value(samples, "pneumonode_queued_to_inferred_seconds_sum") >= _value(
        samples, "pneumonode_stage_seconds_sum", stage="infer"
    )

    # deliveries: sent to the listener, dead-lettered for the one that is down
    deliveries = "pneumonode_deliveries"
    assert _value(samples, deliveries, destination=pacs_destination, state="sent") == sent
    assert _value(samples, deliveries, destination=pacs_destination, state="dead") == 0
    assert _value(samples, deliveries, destination=down, state="dead") == sent
    assert _value(samples, deliveries, destination=down, state="pending") == 0
    assert _value(samples, "pneumonode_send_failures_total") == sent
    delivered = "pneumonode_delivery_seconds"
    assert _value(samples, f"{delivered}_count", destination=pacs_destination) == sent
    assert _value(samples, f"{delivered}_bucket", destination=pacs_destination, le="+Inf") == sent
    assert (f"{delivered}_count", frozenset({("destination", down)})) not in samples

    # the model a live worker serves, with the checkpoint's input size
    info = {labels: value for (name, labels), value in samples.items() if "model_info" in name}
    assert info == {
        frozenset(
            {
                ("name", "pneumonode-test-unet"),
                ("version", "0.0.1-test"),
                ("input_size", "64"),
                ("engine", "torch"),
            }
        ): 1.0
    }
    # the alert families are still there (no alerts configured here)
    assert _value(samples, "pneumonode_alerts", channel="hl7", state="sent") == 0
    assert _value(samples, "pneumonode_alert_latency_seconds_count", channel="webhook") == 0


def test_metrics_of_an_empty_node_parse_with_zeros_and_the_configured_model(
    node_factory: Callable[..., RunningNode],
    database_url: str,
    tiny_checkpoint: Callable[..., Path],
) -> None:
    node = node_factory(database_url=database_url, model_path=tiny_checkpoint(size=96))
    with node.database.session() as session:
        kinds, samples = _parse(render_metrics(session, node.settings))
    assert kinds == FAMILIES
    assert _value(samples, "pneumonode_associations_accepted_total") == 0
    assert _value(samples, "pneumonode_stage_seconds_count", stage="infer") == 0
    assert _value(samples, "pneumonode_stage_seconds_bucket", stage="infer", le="0.01") == 0
    assert _value(samples, "pneumonode_queued_to_inferred_seconds_count") == 0
    # no worker alive: the configured model, served by no engine
    assert (
        _value(
            samples,
            "pneumonode_model_info",
            name="pneumonode-test-unet",
            version="0.0.1-test",
            input_size="96",
            engine="none",
        )
        == 1
    )
