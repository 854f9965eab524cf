"""The scaled-out topology under load and under faults, as separate processes on loopback.

A listener (`pneumonode dicom-listen`), the API (`pneumonode api`) and two workers (`pneumonode
worker`) share a PostgreSQL database and a Redis broker; dcmtk's storescu is the sending PACS and
Orthanc the PACS that receives our results. Each fault test sends a burst, breaks one part in the
middle of it, and checks that nothing received is lost, nothing is done twice, and the system
recovers without help. The model is a tiny random U-Net: these tests are about the plumbing.

Figures (throughput, latency) are written to test-artifacts/load.json and printed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import create_engine, func, select, text

from node_processes import copies, empty_postgres, jobs_in, node_env, start, stop, wait_until
from peers_harness import (
    Orthanc,
    dcmtk_env,
    free_port,
    run_orthanc,
    storescu,
    storescu_command,
    wait_for_port,
)
from pneumonode.db.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Result,
)
from pneumonode.db.session import Database
from pneumonode.dicom_node.receive import dataset_offset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "load-test-token-0123456789abcdef"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def redis_url_or_skip(url: str) -> str:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(url).flushdb()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis at {url} unavailable: {exc}")
    return url


@contextmanager
def own_redis(folder: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A private redis-server (no persistence, like a restarted cache); yields its URL and a
    function that kills it with SIGKILL and starts it again on the same port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)]
    args += ["--appendonly", "no"]
    processes = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    wait_for_port(port)

    def restart() -> None:
        processes[-1].kill()
        processes[-1].wait(timeout=10)
        time.sleep(3)  # down for a moment: publishes and acks fail meanwhile
        processes.append(
            subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        wait_for_port(port)

    try:
        yield f"redis://127.0.0.1:{port}/0", restart
    finally:
        processes[-1].kill()
        processes[-1].wait(timeout=10)


@dataclass
class Topology:
    """The running processes (by name) and what they share."""

    env: dict[str, str]
    database: Database
    port: int
    api_port: int
    folder: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], port: int | None = None) -> None:
        self.processes[name] = start(args, self.env, self.folder / f"{name}.log")
        if port is not None:
            wait_for_port(port, timeout=60)

    def start_listener(self) -> None:
        self.start("listener", ["dicom-listen"], self.port)

    def kill(self, name: str) -> None:
        """SIGKILL the process and its children (a crash, an OOM kill, a pulled plug)."""
        stop(self.processes.pop(name), signal.SIGKILL)

    def api(self, path: str) -> object:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def count(self, model: type, *where: object) -> int:
        with self.database.session() as session:
            query = select(func.count()).select_from(model)
            for condition in where:
                query = query.where(condition)  # type: ignore[arg-type]
            return int(session.scalar(query) or 0)


@contextmanager
def scaled(
    tmp_path: Path,
    model: Path,
    broker: str,
    postgres: str,
    pacs: Orthanc,
    workers: int = 2,
    **extra: str,
) -> Iterator[Topology]:
    """Listener + API + ``workers`` worker processes on ``broker`` and ``postgres``."""
    port, api_port = free_port(), free_port()
    env = node_env(
        tmp_path / "data",
        model,
        port,
        PNEUMONODE_ALLOWED_PEERS="STORESCU",
        PNEUMONODE_DESTINATIONS=pacs.destination,
        PNEUMONODE_BROKER_URL=broker,
        PNEUMONODE_DATABASE_URL=postgres,
        PNEUMONODE_API_PORT=str(api_port),
        PNEUMONODE_API_TOKEN=TOKEN,
        PNEUMONODE_SEND_BACKOFF_SECONDS="1",
        PNEUMONODE_SEND_BACKOFF_MAX_SECONDS="4",
        PNEUMONODE_SEND_MAX_ATTEMPTS="1000",
        **extra,
    )
    topology = Topology(env, empty_postgres(postgres), port, api_port, tmp_path)
    try:
        topology.start_listener()  # it migrates the database before the others use it
        topology.start("api", ["api"], api_port)
        for index in range(1, workers + 1):
            topology.start(f"worker{index}", ["worker"])
        yield topology
    finally:
        for process in topology.processes.values():
            stop(process)
        topology.database.dispose()


def send_in_background(files: list[Path], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        storescu_command(files, port),
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def resend_missing(topology: Topology, files: list[Path]) -> int:
    """What a PACS does after failures: send again whatever was not acknowledged as stored."""
    with topology.database.session() as session:
        have = set(session.scalars(select(Instance.sop_uid)))
    missing = [
        p
        for p in files
        if str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) not in have
    ]
    if missing:
        storescu(missing, topology.port, timeout=300)
    return len(missing)


def assert_everything_done_once(
    topology: Topology, count: int, pacs: Orthanc, timeout: float = 300
) -> None:
    """``count`` instances, one job each, done with one job.done; every result delivered once
    and held by Orthanc."""
    db = topology.database
    wait_until(lambda: jobs_in(db, JobState.DONE) == count, timeout, f"{count} jobs done")
    wait_until(
        lambda: topology.count(Delivery, Delivery.state == DeliveryState.SENT) == 2 * count,
        timeout,
        f"{2 * count} results delivered",
    )
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == count
        jobs = list(session.scalars(select(Job)))
        assert len(jobs) == count and {j.state for j in jobs} == {JobState.DONE}
        done = session.scalars(select(AuditEvent.detail).where(AuditEvent.kind == "job.done"))
        done_ids = [d["job_id"] for d in done if d]
        assert sorted(done_ids) == sorted(j.id for j in jobs), "a job finished twice or never"
        assert session.scalar(select(func.count()).select_from(Delivery)) == 2 * count
    statistics_ = pacs.rest("/statistics")
    assert statistics_["CountInstances"] == 2 * count  # type: ignore[index]


def spool_is_clean(topology: Topology, files: list[Path]) -> None:
    """Exactly the sent files in the spool, each dataset byte for byte as sent; no leftovers."""
    spool = Path(topology.env["PNEUMONODE_DATA_DIR"]) / "spool"
    assert not list((spool / ".incoming").iterdir()), "half-received files left behind"
    with topology.database.session() as session:
        stored = {i.sop_uid: spool / i.path for i in session.scalars(select(Instance))}
    assert len(stored) == len(files)
    assert len(list(spool.glob("*/*.dcm"))) == len(files)
    for source in files:
        kept = stored[str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)]
        assert dataset_bytes(kept) == dataset_bytes(source), f"{kept.name} differs from {source}"


def dataset_bytes(path: Path) -> bytes:
    """Everything after the File Meta Information (which each receiver writes itself)."""
    return path.read_bytes()[dataset_offset(path) :]


def stage_medians(timings: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per pipeline stage (receive_to_queued, queue_wait, convert, infer, ...)."""
    values: dict[str, list[float]] = {}
    for entry in timings:
        for stage, seconds in entry.items():
            if isinstance(seconds, int | float):
                values.setdefault(stage, []).append(float(seconds))
    return {stage: round(statistics.median(v), 3) for stage, v in sorted(values.items())}


def test_load_500_images_from_4_associations_into_the_scaled_topology(
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    postgres_server: str,
    tmp_path: Path,
) -> None:
    broker = redis_url_or_skip("redis://127.0.0.1:6379/12")
    files = copies(siim_sample_dicoms, 500, tmp_path / "in")
    with (
        run_orthanc(tmp_path / "orthanc") as pacs,
        scaled(tmp_path, tiny_checkpoint(), broker, postgres_server, pacs) as topology,
    ):
        began = time.monotonic()
        senders = [send_in_background(files[i::4], topology.port) for i in range(4)]
        for sender in senders:
            output, _ = sender.communicate(timeout=600)
            assert sender.returncode == 0, output[-2000:]
        received_s = time.monotonic() - began
        assert_everything_done_once(topology, 500, pacs, timeout=1200)
        total_s = time.monotonic() - began
        page = topology.api("/api/studies?limit=1")
        assert page["total"] == 500  # type: ignore[index]
        health = topology.api("/health")
        assert health["components"]["workers"]["state"] == "ok"  # type: ignore[index]
        with topology.database.session() as session:
            rows = session.execute(
                select(Instance.received_at, func.max(Delivery.sent_at))
                .join(Job, Job.instance_id == Instance.id)
                .join(Result, Result.job_id == Job.id)
                .join(Delivery, Delivery.result_id == Result.id)
                .group_by(Instance.id, Instance.received_at)
            ).all()
            workers = set(session.scalars(select(Job.worker)))
            timings = [t for t in session.scalars(select(Job.timings)) if t]
    # received (stored and committed) -> the last of its results acknowledged by Orthanc
    latencies = sorted((sent - received).total_seconds() for received, sent in rows)
    assert len(latencies) == 500
    assert len(workers) == 2, "both workers took a share"
    figures = {
        "images": 500,
        "associations": 4,
        "workers": 2,
        "received_in_s": round(received_s, 1),
        "all_results_in_orthanc_s": round(total_s, 1),
        "throughput_images_per_s": round(500 / total_s, 2),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(latencies[int(0.95 * len(latencies)) - 1], 2),
        "latency_max_s": round(latencies[-1], 2),
        "cpu_cores": os.cpu_count(),
        "stage_median_s": stage_medians(timings),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\nload:", json.dumps(figures))


def burst_with_a_fault(
    topology: Topology, files: list[Path], fault: Callable[[], None], after_done: int = 8
) -> None:
    """Send ``files`` in one association; when ``after_done`` jobs are done, break something."""
    sender = send_in_background(files, topology.port)
    wait_until(
        lambda: jobs_in(topology.database, JobState.DONE) >= after_done, 180, "the burst to start"
    )
    fault()
    sender.communicate(timeout=600)  # it may report failures: resend_missing is its retry


def test_redis_restarted_mid_burst(
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    postgres_server: str,
    tmp_path: Path,
) -> None:
    files = copies(siim_sample_dicoms, 60, tmp_path / "in")
    with (
        own_redis(tmp_path / "redis") as (broker, restart_redis),
        run_orthanc(tmp_path / "orthanc") as pacs,
        # queued messages Redis lost are published again after a lease
        scaled(
            tmp_path,
            tiny_checkpoint(),
            broker,
            postgres_server,
            pacs,
            PNEUMONODE_JOB_LEASE_SECONDS="15",
        ) as topology,
    ):
        burst_with_a_fault(topology, files, restart_redis)
        resend_missing(topology, files)
        assert_everything_done_once(topology, 60, pacs)


def test_postgresql_connections_dropped_mid_burst(
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    postgres_server: str,
    tmp_path: Path,
) -> None:
    broker = redis_url_or_skip("redis://127.0.0.1:6379/13")
    files = copies(siim_sample_dicoms, 60, tmp_path / "in")
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")

    def drop_connections() -> None:
        """What a PostgreSQL restart or a failover does to every open connection."""
        for _ in range(3):
            with admin.connect() as connection:
                dropped = connection.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar()
            assert dropped and dropped > 0
            time.sleep(1.0)

    with (
        run_orthanc(tmp_path / "orthanc") as pacs,
        scaled(tmp_path, tiny_checkpoint(), broker, postgres_server, pacs) as topology,
    ):
        burst_with_a_fault(topology, files, drop_connections)
        resend_missing(topology, files)
        assert_everything_done_once(topology, 60, pacs)
        assert topology.api("/api/studies?limit=1")["total"] == 60  # type: ignore[index]
        spool_is_clean(topology, files)
    admin.dispose()


def test_a_worker_killed_mid_burst(
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    postgres_server: str,
    tmp_path: Path,
) -> None:
    broker = redis_url_or_skip("redis://127.0.0.1:6379/14")
    files = copies(siim_sample_dicoms, 60, tmp_path / "in")
    with (
        run_orthanc(tmp_path / "orthanc") as pacs,
        scaled(
            tmp_path,
            tiny_checkpoint(size=512),
            broker,
            postgres_server,
            pacs,
            PNEUMONODE_JOB_LEASE_SECONDS="8",
        ) as topology,
    ):
        victims: list[int] = []

        def kill_a_busy_worker() -> None:
            def running() -> list[Job]:
                with topology.database.session() as session:
                    return list(session.scalars(select(Job).where(Job.state == JobState.RUNNING)))

            wait_until(lambda: bool(running()), 60, "a running job")
            job = running()[0]
            pid = int(str(job.worker).rsplit(":", 1)[-1])
            name = next(
                n
                for n, p in topology.processes.items()
                if n.startswith("worker") and _is_ancestor(p.pid, pid)
            )
            victims.append(job.id)
            topology.kill(name)

        burst_with_a_fault(topology, files, kill_a_busy_worker)
        assert resend_missing(topology, files) == 0  # the listener never noticed
        assert_everything_done_once(topology, 60, pacs)
        with topology.database.session() as session:
            victim = session.get(Job, victims[0])
            assert victim is not None and victim.attempts >= 2
            requeued = session.scalars(
                select(AuditEvent.detail).where(AuditEvent.kind == "job.requeued")
            ).all()
            assert victims[0] in [d["job_id"] for d in requeued if d]


def _is_ancestor(ancestor: int, pid: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or one of its descendants (a Celery pool process)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def test_the_listener_killed_mid_association(
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    postgres_server: str,
    tmp_path: Path,
) -> None:
    """kill -9 while storescu is sending: the sender's retry succeeds, no half file stays in the
    spool, no job without its file, nothing twice."""
    broker = redis_url_or_skip("redis://127.0.0.1:6379/15")
    # 4 MB each: the transfer takes long enough to be cut off in the middle of a dataset
    files = copies(siim_sample_dicoms, 60, tmp_path / "in", pad_bytes=4_000_000)
    with (
        run_orthanc(tmp_path / "orthanc") as pacs,
        scaled(tmp_path, tiny_checkpoint(), broker, postgres_server, pacs) as topology,
    ):
        sender = send_in_background(files, topology.port)
        wait_until(lambda: topology.count(Instance) >= 10, 120, "10 instances received")
        topology.kill("listener")
        sender.communicate(timeout=120)
        assert sender.returncode != 0, "storescu should have lost its association"
        before = topology.count(Instance)
        assert before < len(files)
        topology.start_listener()  # a supervisor (systemd, compose) restarts it
        assert resend_missing(topology, files) == len(files) - before
        assert_everything_done_once(topology, 60, pacs)
        spool_is_clean(topology, files)


def test_orthanc_down_for_a_minute(
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    postgres_server: str,
    tmp_path: Path,
) -> None:
    broker = redis_url_or_skip("redis://127.0.0.1:6379/10")
    files = copies(siim_sample_dicoms, 40, tmp_path / "in")
    ports = (free_port(), free_port())
    with run_orthanc(tmp_path / "orthanc", ports=ports) as pacs:
        pass  # its address, while it is down
    with scaled(tmp_path, tiny_checkpoint(), broker, postgres_server, pacs) as topology:
        down_since = time.monotonic()
        sent = storescu(files, topology.port, timeout=300)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_until(lambda: jobs_in(topology.database, JobState.DONE) == 40, 300, "40 jobs done")
        failed = topology.count(AuditEvent, AuditEvent.kind == "delivery.failed")
        assert failed > 0 and topology.count(Delivery, Delivery.state == DeliveryState.SENT) == 0
        time.sleep(max(0.0, 60 - (time.monotonic() - down_since)))
        with run_orthanc(tmp_path / "orthanc", ports=ports) as pacs:
            assert_everything_done_once(topology, 40, pacs)
            assert topology.count(Delivery, Delivery.state == DeliveryState.DEAD) == 0
