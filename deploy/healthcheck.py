"""Container healthchecks of the compose stack: exit 0 when this container's part works, else 1.

``python healthcheck.py listener``: the DICOM port takes TCP connections (it opens only after the
database is migrated, which is why the worker and API services wait for it).
``python healthcheck.py api``: ``GET /health`` answers, and the API's database is up (a 503 that
only reports, say, no worker yet is still a working API).
``python healthcheck.py worker``: a worker process of this container (heartbeat rows are named
``<hostname>:<pid>``) has refreshed its heartbeat within the last 30 s, so its model is loaded.

Ports and the database come from the same ``PNEUMONODE_*`` settings as the process checked.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from datetime import timedelta

from pneumonode.config import Settings

TIMEOUT = 5.0
WORKER_SILENCE = timedelta(seconds=30)


def check_listener(settings: Settings) -> str:
    """The plaintext port, or the TLS port of a TLS-only listener."""
    port = settings.dicom_port if settings.dicom_plaintext else settings.dicom_tls_port
    assert port is not None  # Settings refuses TLS-only without a TLS port
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
        return f"{settings.ae_title} accepts connections on port {port}"


def check_api(settings: Settings) -> str:
    """Healthy while the API answers and reaches its database; the other parts (listener,
    workers) have their own healthchecks, and ``/health``'s body names any that is down."""
    url = f"http://127.0.0.1:{settings.api_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return f"{url}: {response.status}, ready"
    except urllib.error.HTTPError as exc:
        if exc.code != 503:
            raise
        body = json.loads(exc.read())
    down = sorted(name for name, part in body["components"].items() if part["state"] == "down")
    if "database" in down:
        raise RuntimeError(f"{url}: 503, the database is down")
    return f"{url}: 503, serving; not ready: {', '.join(down)}"


def check_worker(settings: Settings) -> str:
    from sqlalchemy import select

    from pneumonode.db.models import WorkerHeartbeat, utcnow
    from pneumonode.db.session import Database

    prefix = f"{socket.gethostname()}:"
    database = Database(settings.database)  # no migrations: the listener ran them
    try:
        with database.session() as session:
            names = session.scalars(
                select(WorkerHeartbeat.name).where(
                    WorkerHeartbeat.seen_at >= utcnow() - WORKER_SILENCE
                )
            ).all()
    finally:
        database.dispose()
    alive = [name for name in names if name.startswith(prefix)]
    if not alive:
        raise RuntimeError(f"no heartbeat from {prefix}* in the last {WORKER_SILENCE.seconds} s")
    return f"{len(alive)} worker process(es) alive: {', '.join(sorted(alive))}"


CHECKS = {"listener": check_listener, "api": check_api, "worker": check_worker}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in CHECKS:
        print(f"usage: healthcheck.py {{{','.join(CHECKS)}}}", file=sys.stderr)
        return 2
    try:
        print(CHECKS[args[0]](Settings()))
    except Exception as exc:
        print(f"{args[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
