"""A worker starts in readable log lines: no Celery banner, no root warning, no raw objects."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pneumonode.worker.dispatch import DispatchReport

#: Started as ``pneumonode worker`` starts it (pneumonode.cli), with the threads pool (which
#: loads no model on its own) and logging to stderr.
WORKER = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from pneumonode.config import Settings
from pneumonode.worker.tasks import QUEUE, configure
app = configure(Settings(data_dir=sys.argv[1]))
app.worker_main(["worker", "--concurrency=1", "--pool=threads", "--loglevel=INFO",
                 f"--queues={QUEUE}", "--without-gossip", "--without-mingle",
                 "--without-heartbeat"])
"""


def test_a_worker_starts_without_banner_or_root_warning(tmp_path: Path) -> None:
    """Celery prints an ASCII-art banner with its configuration on stdout at every start,
    and warns of running as root (as in most containers); we log one line instead."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMONODE_")}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "data")],
        env={**environment, "PYTHONWARNINGS": "default"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert worker.stderr is not None
    lines = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            line = worker.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.rstrip().endswith(" ready."):
                break
        assert lines and lines[-1].rstrip().endswith(" ready."), "".join(lines)
    finally:
        os.kill(worker.pid, signal.SIGTERM)
        stdout, rest = worker.communicate(timeout=60)
    stderr = "".join(lines) + rest
    assert "superuser" not in stderr + stdout and "Warning" not in stderr
    assert "[config]" not in stdout and "[queues]" not in stdout and "-------" not in stdout
    assert stdout.strip() in ("", "worker: Warm shutdown (MainProcess)")
    started = [line for line in lines if "pneumonode.worker.tasks: celery worker" in line]
    assert len(started) == 1 and "pool thread, concurrency 1, queue pneumonode" in started[0]
    assert "broker filesystem://localhost//" in started[0]


def test_a_dispatch_report_is_one_readable_line() -> None:
    """The dispatcher logs ``dispatch: <summary>``, not the dataclass's repr."""
    report = DispatchReport(queued=3, requeued_expired=1, publish_failures=2)
    assert report.summary() == (
        "jobs: 3 queued, 1 re-queued (lease expired), 2 could not be published"
    )
    assert DispatchReport().summary() == "no jobs"
