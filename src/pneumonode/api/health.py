"""``GET /health``: readiness of every part; no token (``/metrics`` is in ``api.metrics``)."""

from __future__ import annotations

import shutil
import socket
from datetime import timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from pneumonode import __version__
from pneumonode.api.deps import StateDep
from pneumonode.api.schemas import ComponentHealth, HealthOut
from pneumonode.config import Settings
from pneumonode.db.models import (
    Alert,
    Delivery,
    DeliveryState,
    WorkerHeartbeat,
    utcnow,
)
from pneumonode.db.session import Database
from pneumonode.model.checkpoint import CheckpointError, read_checkpoint_config

__all__ = ["router"]

router = APIRouter(tags=["health"])

WORKER_SILENCE = timedelta(seconds=30)
#: A pending delivery due this long ago and not attempted: nothing is sending (a listener runs
#: the delivery loop; it looks every few seconds).
DELIVERY_OVERDUE = timedelta(minutes=5)


def _listener(settings: Settings) -> ComponentHealth:
    host = "127.0.0.1" if settings.dicom_host in ("0.0.0.0", "::", "") else settings.dicom_host
    try:
        with socket.create_connection((host, settings.dicom_port), timeout=1.0):
            pass
    except OSError as exc:
        return ComponentHealth(
            state="down", detail=f"{host}:{settings.dicom_port}: {exc.strerror or exc}"
        )
    return ComponentHealth(
        state="ok", detail=f"{settings.ae_title} on {host}:{settings.dicom_port}"
    )


def _database(database: Database) -> ComponentHealth:
    try:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return ComponentHealth(state="down", detail=f"{type(exc).__name__}")
    return ComponentHealth(state="ok", detail=database.redacted_url.split("://")[0])


def _broker(settings: Settings) -> ComponentHealth:
    url = settings.broker
    if url.startswith("filesystem://"):
        folder = settings.data_dir / "broker" / "queue"
        if folder.is_dir():
            return ComponentHealth(state="ok", detail=f"embedded (filesystem), {folder}")
        return ComponentHealth(state="down", detail=f"embedded broker folder {folder} missing")
    from kombu.connection import Connection

    try:
        with Connection(url, connect_timeout=2) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return ComponentHealth(state="down", detail=f"{url.split('://')[0]}: {type(exc).__name__}")
    return ComponentHealth(state="ok", detail=url.split("://")[0])


def _workers_and_model(
    settings: Settings, database: Database
) -> tuple[ComponentHealth, ComponentHealth]:
    try:
        with database.session() as session:
            alive = list(
                session.scalars(
                    select(WorkerHeartbeat).where(
                        WorkerHeartbeat.seen_at >= utcnow() - WORKER_SILENCE
                    )
                )
            )
    except SQLAlchemyError:
        down = ComponentHealth(state="down", detail="database unavailable")
        return down, down
    if alive:
        workers = ComponentHealth(
            state="ok",
            detail=f"{len(alive)} alive: "
            + ", ".join(f"{w.name} ({w.backend} on {w.device})" for w in alive[:8]),
        )
        versions = sorted({f"{w.model} {w.model_version}" for w in alive})
        model = ComponentHealth(state="ok", detail="loaded: " + ", ".join(versions))
        return workers, model
    workers = ComponentHealth(state="down", detail="no worker seen in the last 30 s")
    try:
        config = read_checkpoint_config(settings.model)
    except CheckpointError as exc:
        return workers, ComponentHealth(state="down", detail=str(exc)[:300])
    model = ComponentHealth(
        state="degraded", detail=f"{config.name} {config.version} configured, no worker has it"
    )
    return workers, model


def _disk(settings: Settings) -> ComponentHealth:
    folder = settings.spool_dir if settings.spool_dir.exists() else settings.data_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free_mb = shutil.disk_usage(folder).free // (1024 * 1024)
    if free_mb < settings.min_free_disk_mb:
        return ComponentHealth(
            state="down",
            detail=f"{free_mb} MB free, below {settings.min_free_disk_mb} MB: C-STOREs refused",
        )
    return ComponentHealth(state="ok", detail=f"{free_mb} MB free")


def _deliveries(database: Database) -> ComponentHealth:
    """Degraded while a delivery is dead-lettered (it waits for a re-send) or overdue."""
    try:
        with database.session() as session:
            counts: dict[str, int] = {
                str(state): int(count)
                for state, count in session.execute(
                    select(Delivery.state, func.count())
                    .where(Delivery.state != DeliveryState.SENT)
                    .group_by(Delivery.state)
                )
            }
            overdue = session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.state == DeliveryState.PENDING)
                .where(Delivery.next_attempt_at < utcnow() - DELIVERY_OVERDUE)
            )
    except SQLAlchemyError:
        return ComponentHealth(state="down", detail="database unavailable")
    dead, pending = counts.get(DeliveryState.DEAD, 0), counts.get(DeliveryState.PENDING, 0)
    problems = []
    if dead:
        problems.append(
            f"{dead} dead-lettered (the System page lists them with the reason and a Re-send "
            "button; on the command line, `pneumonode deliveries --state dead` and "
            "`pneumonode resend`)"
        )
    if overdue:
        minutes = DELIVERY_OVERDUE.total_seconds() / 60
        problems.append(
            f"{overdue} overdue (due over {minutes:.0f} min ago, not attempted: is a "
            "listener, which sends them, running?)"
        )
    if problems:
        return ComponentHealth(state="degraded", detail="; ".join(problems))
    return ComponentHealth(state="ok", detail=f"{pending} pending, none dead-lettered or overdue")


def _alerts(settings: Settings, database: Database) -> ComponentHealth:
    """Degraded while an alert is dead-lettered or overdue, as deliveries are."""
    try:
        with database.session() as session:
            counts: dict[str, int] = {
                str(state): int(count)
                for state, count in session.execute(
                    select(Alert.state, func.count()).group_by(Alert.state)
                )
            }
            overdue = session.scalar(
                select(func.count())
                .select_from(Alert)
                .where(Alert.state == DeliveryState.PENDING)
                .where(Alert.next_attempt_at < utcnow() - DELIVERY_OVERDUE)
            )
    except SQLAlchemyError:
        return ComponentHealth(state="down", detail="database unavailable")
    receivers = len(settings.hl7_destinations) + len(settings.webhook_urls)
    if not counts and not receivers:
        return ComponentHealth(state="ok", detail="no HL7 destinations or webhook URLs configured")
    dead, pending = counts.get(DeliveryState.DEAD, 0), counts.get(DeliveryState.PENDING, 0)
    problems = []
    if dead:
        problems.append(
            f"{dead} dead-lettered (the System page lists them with the reason and a Re-send "
            "button; the audit trail's alert.dead events say why too)"
        )
    if overdue:
        minutes = DELIVERY_OVERDUE.total_seconds() / 60
        problems.append(
            f"{overdue} overdue (due over {minutes:.0f} min ago, not attempted: is a "
            "listener, which retries them, running with the alert settings?)"
        )
    if problems:
        return ComponentHealth(state="degraded", detail="; ".join(problems))
    sent = counts.get(DeliveryState.SENT, 0)
    return ComponentHealth(
        state="ok",
        detail=f"{sent} delivered, {pending} pending to {receivers} receivers; none "
        "dead-lettered or overdue",
    )


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "not ready: see the components"}},
)
def health(state: StateDep) -> JSONResponse:
    """Each part's state, and the worst of them; HTTP 503 while any of them is down."""
    settings, database = state.settings, state.database
    workers, model = _workers_and_model(settings, database)
    components = {
        "listener": _listener(settings),
        "database": _database(database),
        "broker": _broker(settings),
        "workers": workers,
        "model": model,
        "disk": _disk(settings),
        "deliveries": _deliveries(database),
        "alerts": _alerts(settings, database),
    }
    states = {c.state for c in components.values()}
    status = next(s for s in ("down", "degraded", "ok") if s in states)
    ready = status != "down"
    body = HealthOut(ready=ready, status=status, components=components, version=__version__)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
