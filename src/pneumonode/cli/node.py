"""Run the node (operators): serve, dicom-listen, dispatch, worker, api."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from pneumonode.cli.common import EXIT_OK, CliError, CommandGroup, open_database, positive_int

if TYPE_CHECKING:
    from pneumonode.api.security import ApiToken
    from pneumonode.config import Settings

__all__ = ["add_commands"]

log = logging.getLogger("pneumonode")


def add_commands(group: CommandGroup) -> None:
    group.add(
        "serve",
        _cmd_serve,
        help="run the node: DICOM listener, queue, a worker, result delivery, API and web page",
        description="Run everything on this machine until SIGTERM/SIGINT: the DICOM listener, "
        "the dispatcher that queues jobs, one worker process (restarted if it dies), the "
        "delivery of results and the HTTP API with the web page. Transfers and jobs in flight "
        "finish first.",
    )
    group.add(
        "dicom-listen",
        _cmd_serve,
        help="run the listener, dispatcher and deliveries without a worker (scale-out)",
        description="Like serve, without the worker: run `pneumonode worker` elsewhere against "
        "the same broker (PNEUMONODE_BROKER_URL) and database (PNEUMONODE_DATABASE_URL).",
    )
    dispatch = group.add(
        "dispatch",
        _cmd_dispatch,
        help="run only the dispatcher that queues received images (serve and dicom-listen "
        "start one themselves)",
        description="Look for received images every PNEUMONODE_DISPATCH_INTERVAL seconds and "
        "publish their jobs to the broker; re-queue jobs whose worker died. Until SIGTERM.",
    )
    dispatch.add_argument(
        "--wake-stdin",
        action="store_true",
        help="also look whenever a byte arrives on stdin, and stop when stdin ends (how "
        "serve and dicom-listen run it)",
    )
    worker = group.add(
        "worker",
        _cmd_worker,
        help="run a Celery worker that segments queued images",
        description="Load the model (PNEUMONODE_MODEL_PATH, default the shipped one) and "
        "process queued jobs until SIGTERM (the job in hand finishes).",
    )
    worker.add_argument(
        "--concurrency",
        type=positive_int,
        default=2,
        help="images in hand at once (default 2): threads sharing one model with the threads "
        "pool, processes with a model each with prefork",
    )
    worker.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: settings)")
    worker.add_argument(
        "--pool",
        choices=("threads", "prefork", "solo"),
        default="threads",
        help="Celery pool (default threads: the network runs one image at a time on all cores "
        "while the other image is decoded, turned into SEG + SR and sent)",
    )
    group.add(
        "api",
        _cmd_api,
        help="run only the HTTP API and web page (scale-out)",
        description="Serve the API on PNEUMONODE_API_HOST:PNEUMONODE_API_PORT until SIGTERM.",
    )


def _require_model(settings: Settings) -> None:
    from pneumonode.model.checkpoint import CheckpointError, read_checkpoint_config

    try:
        config = read_checkpoint_config(settings.model)
    except CheckpointError as exc:
        raise CliError(
            f"{exc} (set PNEUMONODE_MODEL_PATH to a checkpoint folder or best_model.pth)"
        ) from None
    if settings.operating_point is not None and config.calibration is None:
        raise CliError(
            f"PNEUMONODE_OPERATING_POINT: the model {config.name} has no calibrated probability "
            "to set it on (pneumonode calibrate makes one)"
        )


def _api_token(settings: Settings) -> ApiToken:
    from pneumonode.api.security import TokenError, resolve_token

    try:
        return resolve_token(settings)
    except TokenError as exc:
        raise CliError(str(exc)) from None


def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.node import run_node

    everything = args.command == "serve"
    token = None
    if everything:
        _require_model(settings)
        token = _api_token(settings)
    from pneumonode.dicom_node.tls import TlsConfigError

    try:
        run_node(settings, open_database(settings), with_worker=everything, token=token)
    except TlsConfigError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def _cmd_dispatch(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.node import run_dispatcher

    run_dispatcher(settings, open_database(settings), wake_stdin=args.wake_stdin)
    return EXIT_OK


def _cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.node import run_api

    run_api(settings, open_database(settings), _api_token(settings))
    return EXIT_OK


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.results import iod_lookup
    from pneumonode.worker.tasks import QUEUE, configure, context

    iod_lookup.install()  # this process makes SEG, SR and SC objects (prefork's children too)
    if args.device:
        settings = settings.model_copy(update={"device": args.device})
    _require_model(settings)
    open_database(settings).dispose()  # fail now, with one line, if it cannot be opened
    app = configure(settings)
    if args.pool != "prefork":
        # one process runs the tasks: load the model before taking any (prefork loads it in
        # each pool process, see pneumonode.worker.tasks)
        context()
    quiet = []
    if settings.log_format == "json":  # JSON lines only: no banner, no bare shutdown lines
        import celery.apps.worker

        quiet = ["--quiet"]
        celery.apps.worker.safe_say = lambda msg, f=None: log.info(msg.strip())
    app.worker_main(
        [
            *quiet,
            "worker",
            f"--concurrency={args.concurrency}",
            f"--pool={args.pool}",
            f"--loglevel={settings.log_level}",
            f"--queues={QUEUE}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return EXIT_OK
