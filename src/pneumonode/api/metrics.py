"""``GET /metrics``: Prometheus text format (0.0.4), no token.

The listener, the worker and the API are separate processes, so every number here is read from
the database at scrape time (the audit trail, jobs, deliveries, alerts, worker heartbeats), counted
and bucketed in SQL: a scrape costs a handful of grouped queries whatever the history's size.
Counters and histograms cover the whole history kept in the database; gauges are the state now.
docs/operations.md#metrics lists the families.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pneumonode.api.deps import StateDep
from pneumonode.config import Settings
from pneumonode.db.models import (
    Alert,
    AlertChannel,
    AuditEvent,
    DeliveryState,
    Instance,
    Job,
    JobState,
    WorkerHeartbeat,
    utcnow,
)
from pneumonode.db.queries import (
    REFUSAL_REASONS,
    REJECTION_REASONS,
    Histogram,
    alert_histograms,
    association_counts,
    delivery_counts,
    delivery_histograms,
    refusal_counts,
    span_histogram,
    stage_histograms,
)
from pneumonode.db.stages import QUEUED_TO_INFERRED, STAGES
from pneumonode.model.checkpoint import CheckpointError, read_checkpoint_config

__all__ = ["BUCKETS", "render_metrics", "router"]

router = APIRouter(tags=["health"])

#: Upper bounds (seconds) of every latency histogram.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: A worker that has not refreshed its heartbeat for this long is not serving (as /health says).
WORKER_SILENCE_S = 30.0

Labels = dict[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


@dataclass
class Family:
    """One metric family: its HELP and TYPE lines and its samples."""

    name: str
    kind: str  # counter, gauge, histogram
    help: str
    lines: list[str] = field(default_factory=list)

    def sample(self, value: float, labels: Labels | None = None, suffix: str = "") -> None:
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in (labels or {}).items())
        selector = f"{{{text}}}" if text else ""
        self.lines.append(f"{self.name}{suffix}{selector} {_number(value)}")

    def histogram(self, histogram: Histogram | None, labels: Labels | None = None) -> None:
        """The ``_bucket``, ``_sum`` and ``_count`` samples (zeros for no observations)."""
        labels = labels or {}
        cumulative = histogram.cumulative if histogram else (0,) * len(BUCKETS)
        for bound, count in zip(BUCKETS, cumulative, strict=True):
            self.sample(count, {**labels, "le": repr(bound)}, "_bucket")
        count = histogram.count if histogram else 0
        self.sample(count, {**labels, "le": "+Inf"}, "_bucket")
        self.sample(histogram.total if histogram else 0.0, labels, "_sum")
        self.sample(count, labels, "_count")

    def text(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self.lines


def _status(code: int | None) -> str:
    return "unknown" if code is None else f"0x{code:04X}"


def _associations(session: Session) -> list[Family]:
    counts = association_counts(session)
    accepted = Family("pneumonode_associations_accepted_total", "counter", "Associations accepted.")
    accepted.sample(counts.get(("accepted", ""), 0))
    rejected = Family(
        "pneumonode_associations_rejected_total",
        "counter",
        "Associations rejected (A-ASSOCIATE-RJ, or a failed TLS handshake), by reason.",
    )
    for reason in [r for _, r in REJECTION_REASONS] + ["other"]:
        rejected.sample(counts.get(("rejected", reason), 0), {"reason": reason})
    aborted = Family(
        "pneumonode_associations_aborted_total",
        "counter",
        "Associations aborted (by the peer, by us, or dropped).",
    )
    aborted.sample(counts.get(("aborted", ""), 0))
    return [accepted, rejected, aborted]


def _instances(session: Session) -> list[Family]:
    stored = session.scalar(select(func.count()).select_from(Instance)) or 0
    refused = refusal_counts(session)
    received = Family(
        "pneumonode_instances_received_total",
        "counter",
        "C-STOREs answered, by outcome (stored: first arrivals, re-sends not counted; refused) "
        "and the status answered.",
    )
    received.sample(stored, {"outcome": "stored", "status": "0x0000"})
    by_status: dict[str, int] = {_status(code): 0 for _, _, code in REFUSAL_REASONS}
    for (_, code), count in refused.items():
        by_status[_status(code)] = by_status.get(_status(code), 0) + count
    for status, count in sorted(by_status.items()):
        received.sample(count, {"outcome": "refused", "status": status})
    reasons = Family(
        "pneumonode_instances_refused_total",
        "counter",
        "C-STOREs refused, by reason and the status answered.",
    )
    known: dict[tuple[str, int | None], int] = {(r, c): 0 for _, r, c in REFUSAL_REASONS}
    for (reason, code), count in sorted({**known, **refused}.items(), key=str):
        reasons.sample(count, {"reason": reason, "status": _status(code)})
    return [received, reasons]


def _jobs(session: Session) -> list[Family]:
    by_state: dict[str, int] = {s.value: 0 for s in JobState}
    for job_state, count in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        by_state[str(job_state)] = int(count)
    jobs = Family("pneumonode_jobs", "gauge", "Jobs by state.")
    for state, count in sorted(by_state.items()):
        jobs.sample(count, {"state": state})
    depth = Family(
        "pneumonode_queue_depth", "gauge", "Jobs waiting for a worker (pending + queued)."
    )
    depth.sample(by_state[JobState.PENDING] + by_state[JobState.QUEUED])
    return [jobs, depth]


def _latency(session: Session) -> list[Family]:
    stages = Family(
        "pneumonode_stage_seconds",
        "histogram",
        f"Seconds per pipeline stage of finished jobs: {', '.join(STAGES)}.",
    )
    per_stage = stage_histograms(session, STAGES, BUCKETS)
    for stage in STAGES:
        stages.histogram(per_stage.get(stage), {"stage": stage})
    span = Family(
        "pneumonode_queued_to_inferred_seconds",
        "histogram",
        f"Seconds from a job's queueing to its inference done ({' + '.join(QUEUED_TO_INFERRED)}).",
    )
    span.histogram(span_histogram(session, QUEUED_TO_INFERRED, BUCKETS))
    delivery = Family(
        "pneumonode_delivery_seconds",
        "histogram",
        "Seconds from a delivery's queueing to the destination's success status, by destination.",
    )
    for destination, histogram in sorted(delivery_histograms(session, BUCKETS).items()):
        delivery.histogram(histogram, {"destination": destination})
    return [stages, span, delivery]


def _deliveries(session: Session) -> list[Family]:
    counts = delivery_counts(session)
    deliveries = Family(
        "pneumonode_deliveries",
        "gauge",
        "Deliveries (DICOM objects to send) by destination and state.",
    )
    destinations = sorted({destination for destination, _ in counts})
    for destination in destinations:
        for state in DeliveryState:
            deliveries.sample(
                counts.get((destination, state.value), 0),
                {"destination": destination, "state": state.value},
            )
    failures = Family(
        "pneumonode_send_failures_total",
        "counter",
        "Failed send attempts (retried or dead-lettered).",
    )
    failures.sample(
        session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.kind.in_(("delivery.failed", "delivery.dead")))
        )
        or 0
    )
    return [deliveries, failures]


def _alerts(session: Session) -> list[Family]:
    by_state: dict[tuple[str, str], int] = {
        (c.value, s.value): 0 for c in AlertChannel for s in DeliveryState
    }
    for channel, alert_state, count in session.execute(
        select(Alert.channel, Alert.state, func.count()).group_by(Alert.channel, Alert.state)
    ):
        by_state[(str(channel), str(alert_state))] = int(count)
    alerts = Family("pneumonode_alerts", "gauge", "Alerts (HL7 ORU, webhook) by channel and state.")
    for (channel, state), count in sorted(by_state.items()):
        alerts.sample(count, {"channel": channel, "state": state})
    failures = Family(
        "pneumonode_alert_failures_total",
        "counter",
        "Failed alert attempts (retried or dead-lettered).",
    )
    failures.sample(
        session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.kind.in_(("alert.failed", "alert.dead")))
        )
        or 0
    )
    latency = Family(
        "pneumonode_alert_latency_seconds",
        "histogram",
        "Seconds from an image's arrival to its alert's acknowledgement (HL7 ACK AA, webhook "
        "2xx), by channel.",
    )
    per_channel = alert_histograms(session, BUCKETS)
    for channel in sorted(c.value for c in AlertChannel):
        latency.histogram(per_channel.get(channel), {"channel": channel})
    return [alerts, failures, latency]


def _model(session: Session, settings: Settings) -> Family:
    """One series per model served by a live worker (engine: its backend); with none alive,
    the configured model with engine "none"."""
    info = Family(
        "pneumonode_model_info",
        "gauge",
        "The model served: name, version, input size (pixels) and inference engine; always 1.",
    )
    try:
        config = read_checkpoint_config(settings.model)
        configured: tuple[str, str, str] | None = (
            config.name,
            config.version,
            str(config.input.size),
        )
    except CheckpointError:
        configured = None
    served = sorted(
        {
            (str(name), str(version), str(backend))
            for name, version, backend in session.execute(
                select(
                    WorkerHeartbeat.model, WorkerHeartbeat.model_version, WorkerHeartbeat.backend
                ).where(WorkerHeartbeat.seen_at >= utcnow() - timedelta(seconds=WORKER_SILENCE_S))
            )
        }
    )
    for name, version, engine in served:
        # the input size is the configured checkpoint's when the worker serves that one
        size = configured[2] if configured and configured[:2] == (name, version) else ""
        info.sample(1, {"name": name, "version": version, "input_size": size, "engine": engine})
    if not served and configured is not None:
        name, version, size = configured
        info.sample(1, {"name": name, "version": version, "input_size": size, "engine": "none"})
    return info


def render_metrics(session: Session, settings: Settings) -> str:
    """Every family, in the Prometheus text format."""
    families = [
        *_associations(session),
        *_instances(session),
        *_jobs(session),
        *_latency(session),
        *_deliveries(session),
        *_alerts(session),
        _model(session, settings),
    ]
    return "\n".join(line for family in families for line in family.text()) + "\n"


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(state: StateDep) -> PlainTextResponse:
    """Prometheus text format: associations, instances, jobs, stage latencies, deliveries, alerts
    and the model served (docs/operations.md#metrics)."""
    with state.database.session() as session:
        text = render_metrics(session, state.settings)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
