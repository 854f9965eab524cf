"""End to end: storescu sends N SIIM images to `pneumonode serve`, results go to storescp.

Latency: images sent one at a time, each after the previous one's results arrived; the worker
records how long each stage took (receive -> queued, queue wait, convert, infer, build SEG/SR,
write, send): p50/p95 per stage and of everything but inference. Throughput: a burst in one
association, from its first byte to the last result delivered (the database's time of that
delivery; the harness looks only once a second, so as not to take CPU from the model).
Reference, in the same run with the node stopped: the same model's own inference (same backend
and precision) on the burst's images, half before the node runs and half after.

CPU (Linux): the processor time the burst took, per image, in every process involved (the
node's, storescu's and storescp's), beside the network's own per image in the reference. The
difference is not the cost of the rest: the network's threads spin while they wait for each
other, and they spin less when other work wants the cores.

    .venv/bin/python bench/end_to_end.py [--latency-images 16] [--burst-images 40] [--model M]

Alert latency: an HL7 receiver (a real MLLP listener, tests/alert_receivers.py) gets an ORU^R01
for every result (PNEUMONODE_NOTIFY=all); each alert stores the seconds from the image's arrival
(the instance's received time, after the C-STORE's last byte) to the ORU's ACK. Reported at
p50/p95 for the images sent one at a time, and beyond inference (target: p95 <= 2 s).

Without --model it uses the shipped model, or a random-weight EfficientNet-B4 U-Net at 1024 px
when none is shipped (same cost per image). Targets (worker issue): everything except inference
adds <= 0.5 s per image at p50; throughput within 10% of inference-only throughput.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom

from _common import bench_model, design_model, pct, running_node, siim_sources, with_new_uids
from alert_receivers import run_mllp_listener
from peers_harness import run_storescp, storescu  # tests/ is on sys.path via _common
from pneumonode.db.stages import STAGES

OVERHEAD_TARGET_S = 0.5
ALERT_TARGET_S = 2.0  # alert latency beyond inference, at p95
THROUGHPUT_TARGET = 0.9


def _copies(count: int, folder: Path) -> list[Path]:
    sources = siim_sources()
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index in range(count):
        ds = with_new_uids(pydicom.dcmread(sources[index % len(sources)]))
        ds.save_as(folder / f"{index:04d}.dcm")
        made.append(folder / f"{index:04d}.dcm")
    return made


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc; empty elsewhere)."""
    found = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += _process_tree(int(child))
    except OSError:
        return found if Path(f"/proc/{pid}").exists() else []
    return found


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def _alert_latencies(
    database: object, count: int, timeout: float = 60
) -> tuple[list[float], list[float]]:
    """The alert latencies of the first ``count`` images once all are acknowledged (the first,
    the warm-up, left out), in seconds: in all, and minus the image's inference time."""
    from sqlalchemy import select

    from pneumonode.db.models import Alert, Job, Result

    deadline = time.monotonic() + timeout
    while True:
        with database.session() as session:  # type: ignore[attr-defined]
            rows = session.execute(
                select(Alert.latency_seconds, Job.timings)
                .join(Result, Result.id == Alert.result_id)
                .join(Job, Job.id == Result.job_id)
                .where(Alert.sent_at.is_not(None))
                .order_by(Job.id)
                .limit(count)
            ).all()
        if len(rows) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(rows) < count:
        sys.exit(f"bench: {len(rows)} of {count} alerts were acknowledged")
    measured = [(float(lat), (timings or {}).get("infer")) for lat, timings in rows[1:] if lat]
    return (
        [latency for latency, _ in measured],
        [latency - float(infer or 0.0) for latency, infer in measured],
    )


def _run_node(
    model: Path, latency_files: list[Path], burst_files: list[Path], work: Path
) -> tuple[dict[str, list[float]], float, float | None, tuple[list[float], list[float]]]:
    """Latency: images sent one at a time (each waits for the last to be done): per-stage
    seconds. Throughput: a burst in one association: images/s from first byte to last result.
    And the CPU seconds per image of the burst in every process involved (None off Linux), and
    the alert latencies of the images sent one at a time: beyond inference, then in all."""
    from sqlalchemy import func, select

    from pneumonode.db.models import Delivery, DeliveryState, Job, JobState
    from pneumonode.db.session import Database

    work.mkdir(parents=True, exist_ok=True)
    alerts = {"PNEUMONODE_NOTIFY": "all"}
    with (
        run_storescp(work / "pacs") as pacs,
        run_mllp_listener() as ris,
        running_node(
            model,
            work,
            pacs.destination,
            {**alerts, "PNEUMONODE_HL7_DESTINATIONS": ris.destination},
        ) as node,
    ):
        database = Database.open(node.database_url)
        for done, path in enumerate(latency_files, start=1):  # the first one warms up
            storescu([path], node.port)
            _wait(database, done)
        alert_latency = _alert_latencies(database, len(latency_files))
        pids = [*_process_tree(node.process.pid), pacs.process.pid]
        cpu_before = _cpu_seconds(pids)
        peer_before = _children_cpu()  # storescu, once it has ended
        started = datetime.now(UTC)
        storescu(burst_files, node.port, timeout=3600)
        total = len(latency_files) + len(burst_files)
        # a slow look: a harness polling every few milliseconds takes CPU from the model
        _wait(database, total, every=1.0)
        used = _cpu_seconds(pids) - cpu_before + _children_cpu() - peer_before
        cpu = used / len(burst_files) if Path("/proc/self/stat").exists() else None
        with database.session() as session:
            last = session.scalar(select(func.max(Delivery.sent_at)))
        assert last is not None
        elapsed = (last.replace(tzinfo=UTC) - started).total_seconds()
        with database.session() as session:
            sent = session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.state == DeliveryState.SENT)
            )
            if sent != 2 * total:
                sys.exit(f"bench: {sent} of {2 * total} results were delivered")
            jobs = list(
                session.scalars(select(Job).where(Job.state == JobState.DONE).order_by(Job.id))
            )
            timings = [
                job.timings
                for job in jobs[1 : len(latency_files)]
                if job.timings and all(job.timings.get(s) is not None for s in STAGES)
            ]
        database.dispose()
    stages = {stage: [float(t[stage]) for t in timings] for stage in STAGES}
    return stages, len(burst_files) / elapsed, cpu, alert_latency


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait(database: object, count: int, timeout: float = 3600, every: float = 0.05) -> None:
    from sqlalchemy import func, select

    from pneumonode.db.models import Delivery, DeliveryState, Job, JobState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with database.session() as session:  # type: ignore[attr-defined]
            done = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.state.in_((JobState.DONE, JobState.FAILED)))
            )
            pending = session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.state == DeliveryState.PENDING)
            )
        if done >= count and pending == 0:
            return
        time.sleep(every)
    sys.exit("bench: the node did not finish in time")


def _inference_only(model: Path, files: list[Path]) -> tuple[float, float, float]:
    """(median seconds per image, images/s, CPU seconds per image) of the Predictor alone on
    the same images."""
    from pneumonode.config import Settings
    from pneumonode.conversion.prepare import prepare_radiograph
    from pneumonode.model.predictor import Predictor

    settings = Settings()
    predictor = Predictor.load(
        model,
        device=settings.device,
        precision=settings.inference_precision,
        backend=settings.inference_backend,
        cache_dir=Path(tempfile.gettempdir()) / "pneumonode-bench-cache",
    )
    prepared = [prepare_radiograph(pydicom.dcmread(p), predictor.size) for p in files]
    predictor.predict_prepared(prepared[0])  # warm-up
    times = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for item in prepared[1:]:
        t0 = time.perf_counter()
        predictor.predict_prepared(item)
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    cpu = (time.process_time() - cpu_started) / (len(prepared) - 1)
    return float(np.median(times)), (len(prepared) - 1) / elapsed, cpu


def _report(
    model: str,
    stages: dict[str, list[float]],
    node_rate: float,
    node_cpu: float | None,
    infer: tuple[float, float, float],
    args: argparse.Namespace,
    alert_latency: tuple[list[float], list[float]],
) -> bool:
    """Print one model's table; whether both targets hold."""
    infer_median, infer_rate, infer_cpu = infer
    print(
        f"\nend to end, model {model}: latency of "
        f"{args.latency_images - 1} SIIM images sent one at a time (after one warm-up); "
        f"throughput of {args.burst_images} sent in one burst"
    )
    print(f"{'stage':<20}{'p50 s':>10}{'p95 s':>10}")
    for stage in STAGES:
        print(f"{stage:<20}{pct(stages[stage], 50):>10.3f}{pct(stages[stage], 95):>10.3f}")
    totals = [sum(v) for v in zip(*(stages[s] for s in STAGES), strict=True)]
    others = [t - i for t, i in zip(totals, stages["infer"], strict=True)]
    print(f"{'total latency':<20}{pct(totals, 50):>10.3f}{pct(totals, 95):>10.3f}")
    print(f"{'all but inference':<20}{pct(others, 50):>10.3f}{pct(others, 95):>10.3f}")
    print(
        f"inference only (same model, same images): {infer_median:.3f} s/image, "
        f"{infer_rate:.2f} images/s"
    )
    print(
        f"node throughput: {node_rate:.2f} images/s = {node_rate / infer_rate:.2f}x inference-only"
    )
    if node_cpu is not None:
        print(
            f"CPU per image: burst, every process {1000 * node_cpu:.0f} ms; "
            f"inference only {1000 * infer_cpu:.0f} ms"
        )
    alert_total, beyond = alert_latency
    print(f"{'alert latency':<20}{pct(alert_total, 50):>10.3f}{pct(alert_total, 95):>10.3f}")
    print(f"{'  beyond inference':<20}{pct(beyond, 50):>10.3f}{pct(beyond, 95):>10.3f}")
    print("  (alert latency: the image received, after the C-STORE's last byte, to the ORU's ACK)")
    overhead_ok = pct(others, 50) <= OVERHEAD_TARGET_S
    alert_ok = pct(beyond, 95) <= ALERT_TARGET_S
    rate_ok = node_rate / infer_rate >= THROUGHPUT_TARGET
    verdict = {True: "PASS", False: "FAIL"}
    print(f"target: all but inference <= {OVERHEAD_TARGET_S} s at p50: {verdict[overhead_ok]}")
    print(f"target: throughput >= {THROUGHPUT_TARGET:.1f}x inference-only: {verdict[rate_ok]}")
    print(
        f"target: alert latency beyond inference <= {ALERT_TARGET_S} s at p95: {verdict[alert_ok]}"
    )
    return overhead_ok and rate_ok and alert_ok


def _describe(model: Path) -> str:
    import json

    config = json.loads((model / "config.json").read_text())
    encoder = config["architecture"]["encoder"]
    return f"{config['name']} {config['version']}, {encoder}, {config['input']['size']} px"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-images", type=int, default=16, help="sent one at a time")
    parser.add_argument("--burst-images", type=int, default=40, help="sent in one burst")
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        help="a checkpoint folder; repeat for several (default: the shipped model, then the "
        "design's EfficientNet-B4 U-Net at 1024 px with random weights)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pneumonode-e2e-"))
    reports = []
    try:
        models = args.model or [bench_model(None, work), design_model(work)]
        files = _copies(args.latency_images + args.burst_images, work / "in")
        latency_files, burst_files = files[: args.latency_images], files[args.latency_images :]
        for index, model in enumerate(dict.fromkeys(models)):
            # the reference before and after the node, on half the burst's images each: the
            # speed of a shared machine drifts over minutes
            half = len(burst_files) // 2
            before = _inference_only(model, burst_files[: half + 1])
            stages, node_rate, node_cpu, alert_latency = _run_node(
                model, latency_files, burst_files, work / f"node{index}"
            )
            after = _inference_only(model, burst_files[half:])
            infer = (
                (before[0] + after[0]) / 2,
                2 / (1 / before[1] + 1 / after[1]),
                (before[2] + after[2]) / 2,
            )
            name = f"{model} ({_describe(model)})"
            reports.append((name, stages, node_rate, node_cpu, infer, alert_latency))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for model, stages, node_rate, node_cpu, infer, alert_latency in reports:
        _report(model, stages, node_rate, node_cpu, infer, args, alert_latency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
