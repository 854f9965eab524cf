"""The Celery shell around the pipeline: one task, ids only, idempotent, acknowledged late.

Brokers:

- Embedded default (no server): kombu's filesystem transport under ``<data_dir>/broker/``. A
  message is a file; a consumer takes it by an atomic rename, so two workers never get the same
  one, and queued messages survive a restart of every process. Chosen over kombu's SQLAlchemy
  transport on SQLite because several processes polling one SQLite file contend for its write
  lock, while renames in one folder do not.
- Scale out: ``PNEUMONODE_BROKER_URL=redis://host:6379/0`` (or any Celery broker) and
  ``pneumonode worker`` on as many machines as wanted.

Pools: ``pneumonode worker`` runs Celery's threads pool by default, two jobs at once in one
process sharing one model. The network runs one image at a time on every core
(:class:`pneumonode.model.predictor.Predictor`); while it runs, the other job is decoded, turned
into SEG + SR, written and sent, instead of the network waiting for that. The prefork pool (a
process, and a model, per job in hand) remains for isolation.

Whatever the broker loses (a worker killed with its message, a message never published), the
database does not: the dispatcher re-queues jobs that are pending, running past their lease, or
queued for longer than a lease (see :mod:`pneumonode.worker.dispatch`). The task's claim makes a
duplicate message a no-op.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from functools import cached_property
from typing import Any

from celery import Celery, Task, signals
from celery.apps.worker import Worker
from celery.exceptions import SecurityWarning
from kombu.utils.url import maybe_sanitize_url

from pneumonode.config import Settings, get_settings
from pneumonode.worker.pipeline import (
    PipelineContext,
    TransientJobError,
    process_job,
    settle_heap,
)

__all__ = ["PROCESS_JOB", "app", "celery_config", "configure", "process_job_task"]

log = logging.getLogger(__name__)

PROCESS_JOB = "pneumonode.process_job"
QUEUE = "pneumonode"


class QuietWorker(Worker):  # type: ignore[misc]  # Celery is untyped
    """Celery's worker program, started in one log line: no ASCII-art banner on stdout and no
    warning about running as root on every start. That warning is about pickle, which these
    workers never accept (JSON only; with pickle accepted Celery still refuses to run as root,
    as ``check_privileges`` raises then)."""

    def on_before_init(self, quiet: bool = False, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            super().on_before_init(quiet=quiet, **kwargs)

    def emit_banner(self) -> None:
        pool = self.pool_cls
        name = pool if isinstance(pool, str) else pool.__module__.rpartition(".")[2]
        log.info(
            "celery worker %s: pool %s, concurrency %s, queue %s, broker %s",
            self.hostname,
            name,
            self.concurrency,
            QUEUE,
            maybe_sanitize_url(self.app.conf.broker_url),  # the password masked
        )


class PneumonodeCelery(Celery):  # type: ignore[misc]  # Celery is untyped
    """The Celery app whose ``worker`` command runs :class:`QuietWorker`."""

    @cached_property
    def Worker(self) -> type[Worker]:  # noqa: N802 (Celery's name)
        return self.subclass_with_self(QuietWorker)  # type: ignore[no-any-return]


app = PneumonodeCelery("pneumonode")
_context: PipelineContext | None = None
_context_lock = threading.Lock()
_settings: Settings | None = None


def embedded_broker(settings: Settings) -> bool:
    return settings.broker.startswith("filesystem://")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for ``settings`` (broker, late acks, one message at a time)."""
    config: dict[str, Any] = {
        "broker_url": settings.broker,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_transport_options": {},
    }
    if embedded_broker(settings):
        folder = settings.data_dir / "broker"
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        config["broker_transport"] = "pneumonode.worker.broker:FilesystemTransport"
        config["broker_url"] = "filesystem://localhost//"  # a host, or kombu warns of none
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            # kept on the same filesystem so that taking a message is an atomic rename
            "processed_folder": str(folder / "processed"),
            "store_processed": True,
            "control_folder": str(folder / "control"),  # exchange bindings (default: the cwd)
            "polling_interval": 0.1,
        }
        # remote control needs fanout exchanges, which this transport lacks
        config["worker_enable_remote_control"] = False
    else:
        # Redis and friends: a message whose worker died comes back after this long
        config["broker_transport_options"] = {"visibility_timeout": settings.job_lease_seconds}
    return config


def configure(settings: Settings) -> Celery:
    """Point the app at ``settings``' broker (and its workers at ``settings``); returns the app."""
    global _settings
    _settings = settings
    app.conf.update(celery_config(settings))
    return app


def context() -> PipelineContext:
    """This process's pipeline context (database and model, loaded once, at first use; the
    threads pool's threads share it)."""
    global _context
    with _context_lock:
        if _context is None:
            loaded = PipelineContext.load(_settings or get_settings())
            settle_heap()
            loaded.start_heartbeats()
            log.info(
                "worker %s ready: model %s %s on %s (%s)",
                loaded.worker_name,
                loaded.predictor.config.name,
                loaded.predictor.config.version,
                loaded.predictor.device,
                loaded.predictor.backend,
            )
            _context = loaded
        return _context


@signals.setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    """The command line has set logging up (text or JSON lines); with a receiver of this
    signal Celery leaves it alone and adds no handlers of its own."""


@signals.worker_process_init.connect
def _load_in_each_worker_process(**_: Any) -> None:
    """Load the model when a pool process starts, not when its first image arrives."""
    context()


@app.task(name=PROCESS_JOB, bind=True, acks_late=True, max_retries=12)
def process_job_task(self: Task, job_id: int) -> dict[str, Any]:
    """Run job ``job_id``; a database hiccup retries with back-off (2 s doubling, 5 min cap)."""
    try:
        outcome = process_job(context(), job_id)
    except TransientJobError as exc:
        delay = min(2 * 2**self.request.retries, 300)
        log.warning("job %d: %s; retry in %d s", job_id, exc, delay)
        raise self.retry(exc=exc, countdown=delay) from exc
    return dataclasses.asdict(outcome)
