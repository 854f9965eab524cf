"""Run the node's parts until SIGTERM/SIGINT, then stop them gracefully.

``pneumonode serve`` (everything on one machine): the DICOM listener, the dispatcher (jobs to the
queue), the delivery loop (retries of results) and one worker process, supervised: a worker that
dies (killed, out of memory) is started again, and its job is re-queued when its lease runs out.

``pneumonode dicom-listen`` (scale-out): the same without the worker; run ``pneumonode worker``
wherever the model should run, against a shared broker and database.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from pneumonode.alerts.outbox import AlertLoop, AlertPolicy
from pneumonode.api.security import ApiToken
from pneumonode.config import Settings, child_environment
from pneumonode.db.session import Database
from pneumonode.dicom_node.delivery import DeliveryLoop, RetryPolicy
from pneumonode.dicom_node.scp import Listener
from pneumonode.dicom_node.service import build_listener
from pneumonode.retention import RetentionLoop
from pneumonode.startup import StartupError, listen_socket, port_problem
from pneumonode.worker.dispatch import Dispatcher

__all__ = [
    "ApiServer",
    "DispatcherProcess",
    "WorkerProcess",
    "run_api",
    "run_dispatcher",
    "run_node",
]

log = logging.getLogger(__name__)


class _Supervised:
    """A ``pneumonode`` child process, started again whenever it exits unasked."""

    name = "child"

    def __init__(
        self, config_file: Path | None, arguments: list[str], restart_delay: float = 2.0
    ) -> None:
        self.command = [sys.executable, "-m", "pneumonode"]
        if config_file is not None:
            self.command += ["--config", str(config_file)]
        self.command += arguments
        self.restart_delay = restart_delay
        self.process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name=f"{self.name}-supervisor")
        self._thread.daemon = True

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _popen(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, start_new_session=True, env=child_environment())

    def _spawn(self) -> None:
        self.process = self._popen()
        log.info("%s process %d started", self.name, self.process.pid)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            process = self.process
            if process is not None and process.poll() is not None and not self._stop.is_set():
                log.warning(
                    "%s process %d exited (%s); starting another",
                    self.name,
                    process.pid,
                    process.returncode,
                )
                if self._stop.wait(self.restart_delay):
                    break
                self._spawn()
            self._stop.wait(0.5)

    def _stop_supervising(self) -> subprocess.Popen[bytes] | None:
        """Stop restarting; the process still running, if any."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        process = self.process
        return process if process is not None and process.poll() is None else None

    def _kill_after(self, process: subprocess.Popen[bytes], grace: float) -> None:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s process %d did not stop in %.0f s; killing it", self.name, process.pid, grace
            )
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class WorkerProcess(_Supervised):
    """A ``pneumonode worker`` child process."""

    name = "worker"

    def __init__(self, config_file: Path | None, concurrency: int = 2, restart_delay: float = 2.0):
        super().__init__(config_file, ["worker", "--concurrency", str(concurrency)], restart_delay)

    def stop(self, grace: float) -> None:
        """SIGTERM (Celery's warm shutdown: the job in hand finishes), then SIGKILL after grace."""
        process = self._stop_supervising()
        if process is None:
            return
        # to the main process only: it stops its pool children itself once their jobs are done
        os.kill(process.pid, signal.SIGTERM)
        self._kill_after(process, grace)


class DispatcherProcess(_Supervised):
    """A ``pneumonode dispatch --wake-stdin`` child process, woken through its stdin.

    Its own process, so that publishing jobs never takes the listener's GIL (see
    ``pneumonode.worker.dispatch``). A wake is one byte written without blocking: a full pipe
    already holds a wake. When this process ends, killed -9 included, the pipe closes and the
    dispatcher makes its last look and exits.
    """

    name = "dispatcher"

    def __init__(self, config_file: Path | None, restart_delay: float = 2.0) -> None:
        super().__init__(config_file, ["dispatch", "--wake-stdin"], restart_delay)

    def _popen(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
            env=child_environment(),
        )
        assert process.stdin is not None
        os.set_blocking(process.stdin.fileno(), False)
        return process

    def _spawn(self) -> None:
        previous = self.process
        super()._spawn()
        if previous is not None and previous.stdin is not None:
            previous.stdin.close()

    def wake(self, _job_id: int | None = None) -> None:
        """Look for new jobs now (the listener calls this when it creates one)."""
        process = self.process
        if process is None or process.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):  # full, or the process is gone
            process.stdin.write(b"\x01")

    def stop(self, grace: float = 10.0) -> None:
        """Close its stdin: it queues what is still pending, then exits."""
        process = self._stop_supervising()
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        self._kill_after(process, grace)


class ApiServer:
    """The HTTP API (uvicorn) in a thread of this process, on a socket it binds itself (so that
    a port in use is one :class:`StartupError` naming the setting, not uvicorn's exit)."""

    def __init__(self, settings: Settings, database: Database, token: ApiToken) -> None:
        import uvicorn

        from pneumonode.api import create_app

        self.settings = settings
        config = uvicorn.Config(
            create_app(settings, database, token),
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            log_config=None,  # through our handlers (and their format), not uvicorn's own
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        settings = self.settings
        bound = listen_socket(settings, "api_port", "api_host", settings.api_port)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [bound]}, name="api", daemon=True
        )
        self._thread.start()
        waited = 0.0
        while not self.server.started and waited < timeout:
            if not self._thread.is_alive():
                raise StartupError(
                    f"{settings.name_of('api_port')}: the API server stopped at start "
                    f"on {settings.api_host}:{settings.api_port}"
                )
            threading.Event().wait(0.05)
            waited += 0.05

    def stop(self) -> None:
        if self._thread is None:
            return
        self.server.should_exit = True
        self._thread.join(timeout=10)


def _say(settings: Settings, text: str, level: int = logging.INFO) -> None:
    """A start-up line for the operator: printed, or a log record when logs are JSON lines
    (so that a log shipper reading the output sees nothing else)."""
    if settings.log_format == "json":
        log.log(level, text)
    else:
        print(text, flush=True)


def _token_banner(settings: Settings, token: ApiToken) -> None:
    if token.source != "generated":
        return
    if settings.log_format == "json":  # logs are shipped and kept: never a secret in them
        _say(settings, f"API token generated; read it from {token.path}")
    else:
        print(
            f"API token (shown once; kept in {token.path}, or set PNEUMONODE_API_TOKEN): "
            f"{token.value}",
            flush=True,
        )


def _print_banner(
    settings: Settings, listener: Listener, worker: WorkerProcess | None, api: ApiServer | None
) -> None:
    def say(text: str, level: int = logging.INFO) -> None:
        _say(settings, text, level)

    host = settings.dicom_host
    where = [f"{host}:{listener.port}"] if "plain" in listener.servers else []
    if "tls" in listener.servers:
        where.append(f"{host}:{listener.tls_port} (TLS)")
    say(
        f"pneumonode listening as {settings.ae_title} on {' and '.join(where)} "
        f"(data in {settings.data_dir})"
    )
    if settings.accept_any_peer:
        say(
            "warning: PNEUMONODE_ACCEPT_ANY_PEER is on: any calling AE is accepted", logging.WARNING
        )
    elif not settings.allowed_peers:
        say(
            "note: no peer is allowed yet; set PNEUMONODE_ALLOWED_PEERS=AE or AE@host "
            "(comma separated) for your PACS and modalities"
        )
    else:
        say(f"allowed peers: {', '.join(settings.allowed_peers)}")
    if settings.destinations:
        say(f"results go to: {', '.join(settings.destinations)}")
    else:
        say("note: no destination for results; set PNEUMONODE_DESTINATIONS=AE@host:port")
    if worker is not None:
        say(f"worker process {worker.pid} (model {settings.model})")
    if api is not None:
        say(
            f"API and web page: http://{settings.api_host}:{settings.api_port}/ "
            f"(health: /health, API docs: /docs)"
        )


def _until_signalled() -> tuple[threading.Event, dict[signal.Signals, Any]]:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing work in flight", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    return stop, previous


def _wait_for(stop: threading.Event) -> None:
    """Block (in the main thread) until ``stop`` is set by a signal's handler, or by another
    thread. The kernel may deliver a signal to any thread, and Python runs its handler in the
    main thread only when that thread next runs: blocked in an Event's wait it would notice
    only at the wait's timeout (SIGTERM took up to a second to stop the listener accepting).
    Python's wakeup descriptor makes the delivery wake this thread at once."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        while not stop.is_set():
            select.select([reader], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                reader.recv(4096)
    finally:
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()


def _restore(previous: dict[signal.Signals, Any]) -> None:
    """Put back the signal handlers ``_until_signalled`` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def run_api(settings: Settings, database: Database, token: ApiToken) -> None:
    """Only the HTTP API (scale-out: as many as wanted behind a proxy); block until a signal."""
    stop, previous = _until_signalled()
    api = ApiServer(settings, database, token)
    try:
        api.start()
        _token_banner(settings, token)
        _say(settings, f"API on http://{settings.api_host}:{settings.api_port}/")
        _wait_for(stop)
    finally:
        api.stop()  # nothing to stop when it never started
        _restore(previous)


def _warm_up_publishing() -> None:
    """Connect to the broker and declare the queue now, not with the first job (about 25 ms
    of Python, which would otherwise compete with the listener during the first images)."""
    from pneumonode.worker.tasks import QUEUE, app

    try:
        with app.producer_or_acquire() as producer:
            producer.maybe_declare(app.amqp.queues[QUEUE])
    except Exception as exc:  # the broker may be down: publishing retries on its own
        log.warning("broker not reachable yet: %s", type(exc).__name__)


def run_dispatcher(settings: Settings, database: Database, *, wake_stdin: bool = False) -> None:
    """Only the dispatcher (``pneumonode dispatch``): look for jobs every
    ``dispatch_interval`` seconds and, with ``wake_stdin``, at once whenever a byte arrives on
    stdin; block until a signal or the end of stdin, then make a last look."""
    from pneumonode.worker.tasks import celery_config, configure, process_job_task

    stop, previous = _until_signalled()
    configure(settings)

    def publish(job_id: int) -> None:
        process_job_task.apply_async(args=[job_id], retry=False)

    options = celery_config(settings)["broker_transport_options"]
    dispatcher = Dispatcher(
        database,
        publish,
        lease_seconds=settings.job_lease_seconds,
        interval=settings.dispatch_interval,
        processed_folder=options.get("processed_folder"),
    )

    def read_wakes() -> None:
        with contextlib.suppress(OSError):
            while os.read(sys.stdin.fileno(), 4096):
                dispatcher.wake()
        stop.set()  # the process that started us is stopping, or gone

    _warm_up_publishing()
    dispatcher.start()
    if wake_stdin:
        threading.Thread(target=read_wakes, name="dispatch-wakes", daemon=True).start()
    log.info(
        "dispatcher ready (process %d): looks every %.1f s%s",
        os.getpid(),
        settings.dispatch_interval,
        " and whenever an image arrives" if wake_stdin else "",
    )
    try:
        _wait_for(stop)
    finally:
        dispatcher.stop()
        _restore(previous)


def run_node(
    settings: Settings, database: Database, *, with_worker: bool, token: ApiToken | None = None
) -> None:
    """Start the listener, dispatcher, delivery loop, alert loop (a worker, the API); block
    until a signal."""
    stop, previous = _until_signalled()
    dispatcher = DispatcherProcess(settings.config_file)
    listener = build_listener(settings, database, on_job=dispatcher.wake)
    deliveries = DeliveryLoop(database, RetryPolicy.from_settings(settings))
    alerting = AlertPolicy.from_settings(settings)
    alerts = AlertLoop(database, alerting) if alerting.configured else None
    retention = RetentionLoop(settings, database) if settings.retention_days else None
    worker = WorkerProcess(settings.config_file) if with_worker else None
    api = ApiServer(settings, database, token) if token is not None else None
    started: set[str] = set()  # what to stop: a part that failed to start stops nothing
    try:
        _start_listener(settings, listener)
        started.add("listener")
        dispatcher.start()
        started.add("dispatcher")
        deliveries.start()
        started.add("deliveries")
        if alerts is not None:
            alerts.start()
            started.add("alerts")
        if retention is not None:
            retention.start()
            started.add("retention")
        if api is not None:
            api.start()
            _token_banner(settings, token)  # type: ignore[arg-type]
        if worker is not None:
            worker.start()
        _print_banner(settings, listener, worker, api)
        _wait_for(stop)
    finally:
        if "listener" in started:
            listener.stop()  # in-flight C-STOREs finish first
        if api is not None:
            api.stop()
        if "dispatcher" in started:
            dispatcher.stop()
        if "deliveries" in started:
            deliveries.stop()
        if alerts is not None and "alerts" in started:
            alerts.stop()
        if retention is not None and "retention" in started:
            retention.stop()
        if worker is not None:
            worker.stop(settings.shutdown_grace)
        _restore(previous)


def _start_listener(settings: Settings, listener: Listener) -> None:
    """Start the listener; a port taken since ``pneumonode.startup`` checked it is a
    :class:`StartupError` naming its setting."""
    try:
        listener.start()
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise
        plain_failed = settings.dicom_plaintext and "plain" not in listener.servers
        failed = "dicom_port" if plain_failed else "dicom_tls_port"
        listener.stop(grace=0)
        port = int(getattr(settings, failed))
        raise port_problem(settings, failed, "dicom_host", port, exc) from None
