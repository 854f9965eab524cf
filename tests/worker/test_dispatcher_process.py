"""The dispatcher runs as a child process of the listener: woken per image, restarted when it
dies, gone when the listener is gone."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from node_processes import jobs_in, node_env, running, wait_until
from peers_harness import free_port, storescu
from pneumonode.db.models import JobState
from pneumonode.db.session import Database

READY = re.compile(rb"dispatcher ready \(process (\d+)\)")


def _dispatchers(log: Path) -> list[int]:
    return [int(pid) for pid in READY.findall(log.read_bytes())]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.integration
def test_the_dispatcher_process_is_woken_restarted_and_stops_with_the_listener(
    siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    port = free_port()
    # a look every 60 s: only the listener's wakes queue jobs within the test's waits
    env = node_env(
        tmp_path / "data",
        tmp_path / "no-model",
        port,
        PNEUMONODE_ALLOWED_PEERS="STORESCU",
        PNEUMONODE_DISPATCH_INTERVAL="60",
    )
    log = tmp_path / "listen.log"
    database_url = f"sqlite:///{tmp_path / 'data' / 'pneumonode.sqlite3'}"
    with running(["dicom-listen"], env, log, port) as listener:
        wait_until(lambda: len(_dispatchers(log)) == 1, 60, "the dispatcher process")
        first = _dispatchers(log)[0]
        assert first != listener.pid and _alive(first)
        database = Database(database_url)

        assert storescu(siim_sample_dicoms[5:7], port).returncode == 0  # two positives
        wait_until(lambda: jobs_in(database, JobState.QUEUED) == 2, 20, "two queued jobs")

        os.kill(first, signal.SIGKILL)  # the listener starts another, which queues what waits
        wait_until(lambda: len(_dispatchers(log)) == 2, 60, "a new dispatcher process")
        assert storescu(siim_sample_dicoms[7:9], port).returncode == 0
        wait_until(lambda: jobs_in(database, JobState.QUEUED) == 4, 20, "four queued jobs")
        assert jobs_in(database, JobState.PENDING) == 0

        second = _dispatchers(log)[1]
        os.kill(listener.pid, signal.SIGKILL)  # no chance to stop its child: the pipe closes
        wait_until(lambda: not _alive(second), 30, "the dispatcher to exit with its listener")
        database.dispose()


def test_a_lone_image_is_looked_at_at_once_and_a_burst_in_one_look(monkeypatch) -> None:
    """The dispatcher's timing, with its look replaced by a recorder: a wake after a quiet
    while is looked at at once; the wakes of a burst share one look, once they pause."""
    import threading
    import time

    from pneumonode.worker import dispatch

    looks: list[float] = []
    looked = threading.Event()

    def look(*_: object, **__: object) -> dispatch.DispatchReport:
        looks.append(time.monotonic())
        looked.set()
        return dispatch.DispatchReport()

    monkeypatch.setattr(dispatch, "dispatch_once", look)
    dispatcher = dispatch.Dispatcher(
        None,  # type: ignore[arg-type]  # the recorder needs no database
        lambda _: None,
        lease_seconds=60,
        interval=3600,
        gap=0.3,
        burst_delay=30,
    )
    dispatcher.start()
    try:
        assert looked.wait(10)  # the first look after a start
        time.sleep(0.5)
        looked.clear()
        woken = time.monotonic()
        dispatcher.wake()
        assert looked.wait(10) and looks[-1] - woken < 0.25  # a lone image: at once

        burst_looks = len(looks)
        for _ in range(20):  # a burst: 20 images 10 ms apart
            last_wake = time.monotonic()
            dispatcher.wake()
            time.sleep(0.01)
        wait_until(lambda: looks[-1] > last_wake, timeout=10, what="the look after the burst")
        time.sleep(0.5)
        assert len(looks) - burst_looks == 1
        assert looks[-1] - last_wake >= 0.3  # after the pause, not before
    finally:
        dispatcher.stop()


def test_between_wakes_a_look_only_reads_unless_an_image_waits(monkeypatch) -> None:
    """Timer looks: a read that finds nothing PENDING goes no further; one that finds a job
    queues it; the look for expired leases and lost messages comes every twelfth of a lease."""
    import threading
    import time

    from pneumonode.worker import dispatch

    looks: list[bool] = []  # each look's ``full``
    reads = 0
    waiting = threading.Event()

    def look(*_: object, full: bool = True, **__: object) -> dispatch.DispatchReport:
        looks.append(full)
        return dispatch.DispatchReport()

    def pending(_database: object) -> bool:
        nonlocal reads
        reads += 1
        return waiting.is_set()

    monkeypatch.setattr(dispatch, "dispatch_once", look)
    monkeypatch.setattr(dispatch, "pending_waiting", pending)
    dispatcher = dispatch.Dispatcher(
        None,  # type: ignore[arg-type]  # the recorders need no database
        lambda _: None,
        lease_seconds=24,  # maintenance every 2 s
        interval=0.05,
    )
    assert dispatcher.maintenance_interval == 2.0
    dispatcher.start()
    try:
        time.sleep(1.0)
        assert looks == [True]  # the first look after a start, then only reads
        assert reads >= 10
        waiting.set()  # an image the listener did not wake us for
        wait_until(lambda: False in looks, timeout=5, what="a look that queues it")
        waiting.clear()
        wait_until(lambda: looks.count(True) >= 2, timeout=5, what="the maintenance look")
    finally:
        dispatcher.stop()
