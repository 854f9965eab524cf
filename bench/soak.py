"""Soak: minutes of steady load on `pneumonode serve`; its memory and latency over time.

storescu sends SIIM images (fresh UIDs each time, one association per image) at a steady rate to
`pneumonode serve`, which sends a SEG and an SR for each to a storescp. Every interval it samples
the resident memory (RSS, from /proc) of the node's processes (serve; its worker; the worker's
pool processes), the end-to-end latency of the images finished in the interval (received by the
node -> last result delivered, from the database), the backlog (images received and not finished)
and the throughput, and prints a row. At the end: memory growth from the first sample after the
warm-up to the last one under load (and its trend per hour), latency drift over the same span, and
a PNG plot of both.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 2] [--interval 30] [--warmup 60]
        [--model M] [--out bench/out/soak.png] [--broker URL --database URL]

--broker/--database run the node on a shared broker and database (give it a Redis database and a
PostgreSQL database of its own). Exits 1 only when images are lost (refused, failed, or results
not delivered once the backlog drained), never on the numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom

from _common import REPO, bench_model, pct, running_node, siim_sources, with_new_uids
from peers_harness import free_port, run_storescp, storescu  # tests/ is on sys.path via _common

ROLES = ("serve", "worker", "pool")
STALL_S = 120.0  # draining gives up when no image finished for this long
GROWTH_NOTE = (0.05, 20.0)  # memory "grew" beyond 5 % and 20 MiB
DRIFT_NOTE = 1.2  # latency "drifted" beyond 1.2x


class Sender(threading.Thread):
    """storescu, one image per association, at ``rate`` images/s for ``seconds``."""

    def __init__(self, port: int, rate: float, seconds: float, folder: Path) -> None:
        super().__init__(name="sender", daemon=True)
        self.port, self.rate, self.seconds, self.folder = port, rate, seconds, folder
        self.sent = 0
        self.refused: list[str] = []  # why, per image not accepted
        self.stop = threading.Event()

    def run(self) -> None:
        sources = [pydicom.dcmread(path) for path in siim_sources()]
        self.folder.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        index = 0
        while index / self.rate < self.seconds:
            if self.stop.wait(max(0.0, start + index / self.rate - time.monotonic())):
                return
            path = self.folder / f"{index:06d}.dcm"
            with_new_uids(sources[index % len(sources)]).save_as(path)
            try:
                done = storescu([path], self.port)
            except subprocess.TimeoutExpired:
                self.refused.append(f"storescu sending image {index} timed out")
            else:
                if done.returncode == 0:
                    self.sent += 1
                else:
                    self.refused.append((done.stderr.strip().splitlines() or ["?"])[-1])
            path.unlink()
            index += 1


@dataclass
class Sample:
    """The node ``t`` seconds after the load started; ``latencies`` (seconds, received ->
    delivered) and ``rate`` (images/s) are of the images finished since the previous sample,
    whose time ``loading`` says was still under load."""

    t: float
    loading: bool
    sent: int
    done: int
    failed: int
    backlog: int
    rate: float
    latencies: list[float]
    rss: dict[str, float]  # MiB per role, and "total"
    workers: frozenset[int]  # worker and pool pids


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def _rss_mib(pid: int) -> float:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _node_rss(serve_pid: int) -> tuple[dict[str, float], frozenset[int]]:
    """RSS in MiB of serve, its children (the worker) and their descendants (the pool), summed
    per role; and the worker and pool pids (a new one: a process was replaced)."""
    tree = _children()
    workers = tree.get(serve_pid, [])
    pool, stack = [], [c for w in workers for c in tree.get(w, [])]
    while stack:
        pid = stack.pop()
        pool.append(pid)
        stack.extend(tree.get(pid, []))
    pids = {"serve": [serve_pid], "worker": workers, "pool": pool}
    rss = {role: sum(_rss_mib(pid) for pid in pids[role]) for role in ROLES}
    rss["total"] = sum(rss.values())
    return rss, frozenset(workers + pool)


class Progress:
    """The node's database: images finished (every result delivered) and their latency."""

    def __init__(self, database_url: str) -> None:
        from sqlalchemy import func, select

        from pneumonode.db.models import Job
        from pneumonode.db.session import Database

        self.database = Database.open(database_url)
        with self.database.session() as session:
            self.first_job = session.scalar(select(func.max(Job.id))) or 0  # a shared database
        self.finished: dict[int, float] = {}  # job id -> seconds from received to delivered
        self.failed = self.backlog = self.delivered = 0
        self._new: list[float] = []

    def poll(self) -> None:
        from sqlalchemy import func, select

        from pneumonode.db.models import Delivery, DeliveryState, Instance, Job, JobState, Result

        ours = Job.id > self.first_job
        with self.database.session() as session:
            jobs = session.scalar(select(func.count()).select_from(Job).where(ours)) or 0
            self.failed = (
                session.scalar(
                    select(func.count()).select_from(Job).where(ours, Job.state == JobState.FAILED)
                )
                or 0
            )
            rows = session.execute(
                select(
                    Job.id,
                    Instance.received_at,
                    func.max(Delivery.sent_at),
                    func.count(Delivery.id),
                    func.count(Delivery.sent_at),
                )
                .join(Instance, Instance.id == Job.instance_id)
                .join(Result, Result.job_id == Job.id)
                .join(Delivery, Delivery.result_id == Result.id)
                .where(ours, Job.state == JobState.DONE)
                .group_by(Job.id, Instance.received_at)
            ).all()
            self.delivered = (
                session.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .join(Result, Result.id == Delivery.result_id)
                    .where(Result.job_id > self.first_job, Delivery.state == DeliveryState.SENT)
                )
                or 0
            )
        for job_id, received, delivered, objects, sent in rows:
            if job_id not in self.finished and sent == objects and delivered is not None:
                self.finished[job_id] = (delivered - received).total_seconds()
                self._new.append(self.finished[job_id])
        self.backlog = jobs - len(self.finished) - self.failed

    def unfinished(self) -> dict[str, int]:
        """Jobs neither finished nor failed, by state ("done": a delivery is not sent)."""
        from sqlalchemy import select

        from pneumonode.db.models import Job, JobState

        with self.database.session() as session:
            rows = session.execute(select(Job.id, Job.state).where(Job.id > self.first_job))
            states = [
                str(state)
                for job_id, state in rows
                if job_id not in self.finished and state != JobState.FAILED
            ]
        return dict(Counter(states))

    def take(self) -> list[float]:
        """Latencies of the images finished since the last call."""
        new, self._new = self._new, []
        return new


def _clock(t: float) -> str:
    minutes, seconds = divmod(round(t), 60)
    return f"{minutes}:{seconds:02d}"


def _header() -> str:
    rss = "".join(f"{role:>8}" for role in (*ROLES, "total"))
    return (
        f"{'time':>6}{'sent':>7}{'done':>7}{'failed':>7}{'backlog':>8}{'img/s':>7}"
        f"{'p50 s':>8}{'p95 s':>8}{rss}  (latency: received -> delivered; RSS in MiB)"
    )


def _row(s: Sample) -> str:
    rss = "".join(f"{s.rss[role]:>8.0f}" for role in (*ROLES, "total"))
    note = "" if s.loading else "  drained" if s.backlog == 0 else "  draining"
    return (
        f"{_clock(s.t):>6}{s.sent:>7d}{s.done:>7d}{s.failed:>7d}{s.backlog:>8d}{s.rate:>7.2f}"
        f"{pct(s.latencies, 50):>8.3f}{pct(s.latencies, 95):>8.3f}{rss}{note}"
    )


def _soak(model: Path, work: Path, args: argparse.Namespace) -> tuple[list[Sample], list[str]]:
    """Run the node under load, then until its backlog drained (or stalled); print a row per
    interval. Returns the samples and the functional problems (images refused or lost)."""
    env = {"PNEUMONODE_API_PORT": str(free_port())}
    if args.broker:
        env["PNEUMONODE_BROKER_URL"] = args.broker
    if args.database:
        env["PNEUMONODE_DATABASE_URL"] = args.database
    load_s = args.minutes * 60
    samples: list[Sample] = []
    with (
        run_storescp(work / "pacs") as pacs,
        running_node(model, work, pacs.destination, env) as node,
    ):
        progress = Progress(node.database_url)
        sender = Sender(node.port, args.rate, load_s, work / "send")
        print(_header(), flush=True)
        start = last = finished_at = time.monotonic()
        sender.start()
        try:
            while True:
                due = start + args.interval * (int((last - start) / args.interval) + 1)
                if sender.is_alive():
                    sender.join(timeout=max(0.0, due - time.monotonic()))
                else:  # draining: look every second
                    time.sleep(min(1.0, max(0.0, due - time.monotonic())))
                now = time.monotonic()
                before = len(progress.finished)
                progress.poll()
                if len(progress.finished) > before or sender.is_alive():
                    finished_at = now
                drained = not sender.is_alive() and progress.backlog == 0
                stalled = now - finished_at > STALL_S
                if now >= due or drained or stalled:
                    latencies = progress.take()
                    rss, workers = _node_rss(node.process.pid)
                    samples.append(
                        Sample(
                            t=now - start,
                            loading=last - start < load_s,
                            sent=sender.sent,
                            done=len(progress.finished),
                            failed=progress.failed,
                            backlog=progress.backlog,
                            rate=len(latencies) / (now - last),
                            latencies=latencies,
                            rss=rss,
                            workers=workers,
                        )
                    )
                    print(_row(samples[-1]), flush=True)
                    last = now
                if stalled:
                    print(f"soak: nothing finished for {STALL_S:.0f} s; no more waiting")
                if drained or stalled:
                    break
        finally:
            sender.stop.set()
            sender.join()
        unfinished = progress.unfinished()
        progress.database.dispose()
    problems = [f"refused by the node: {reason}" for reason in sender.refused]
    lost = sender.sent - len(progress.finished)
    if lost or progress.delivered != 2 * len(progress.finished):
        problems.append(
            f"{lost} of {sender.sent} accepted images not finished ({progress.failed} failed, "
            f"unfinished jobs by state: {unfinished}); {progress.delivered} results delivered "
            f"for {len(progress.finished)} finished images (2 each expected)"
        )
    return samples, problems


def _verdict(samples: list[Sample], args: argparse.Namespace) -> list[str]:
    """Memory growth and latency drift from the first sample after the warm-up to the last one
    under load."""
    loaded = [s for s in samples if s.loading and s.latencies]
    base = next((s for s in loaded if s.t >= args.warmup), None)
    last = loaded[-1] if loaded else None
    if base is None or last is None or last is base:
        return [
            f"too short to compare: run longer than the warm-up ({args.warmup:g} s) plus one "
            f"interval ({args.interval:g} s)"
        ]
    lines = [
        f"memory (RSS MiB) from {_clock(base.t)} (first sample after the {args.warmup:g} s "
        f"warm-up) to {_clock(last.t)} (last under load):"
    ]
    for role in (*ROLES, "total"):
        a, b = base.rss[role], last.rss[role]
        share = f"{(b - a) / a * 100:+6.1f} %" if a else ""
        lines.append(f"  {role:<7}{a:>7.0f} -> {b:>5.0f}  {b - a:+7.1f} MiB {share}")
    a, b = base.rss["total"], last.rss["total"]
    span = [s for s in loaded if s.t >= base.t]
    trend = ""
    if len(span) >= 3:
        slope = np.polyfit([s.t for s in span], [s.rss["total"] for s in span], 1)[0]
        trend = f"; trend {slope * 3600:+.0f} MiB/h over {len(span)} samples"
    grew = b - a > max(GROWTH_NOTE[0] * a, GROWTH_NOTE[1])
    lines.append(
        f"memory: {'GREW' if grew else 'stable'}: total {b - a:+.1f} MiB "
        f"({(b - a) / a * 100:+.1f} %; 'grew' means > {GROWTH_NOTE[0]:.0%} and "
        f"> {GROWTH_NOTE[1]:.0f} MiB){trend}"
    )
    ratio = {q: pct(last.latencies, q) / pct(base.latencies, q) for q in (50, 95)}
    drifted = ratio[50] > DRIFT_NOTE
    lines.append(
        f"latency: {'DRIFTED' if drifted else 'steady'}: p50 {pct(base.latencies, 50):.3f} -> "
        f"{pct(last.latencies, 50):.3f} s ({ratio[50]:.2f}x), p95 {pct(base.latencies, 95):.3f} "
        f"-> {pct(last.latencies, 95):.3f} s ({ratio[95]:.2f}x); 'drifted' means p50 > "
        f"{DRIFT_NOTE:.1f}x"
    )
    finished = (last.done - base.done) / (last.t - base.t)
    slower = finished < 0.95 * args.rate and last.backlog > base.backlog
    lines.append(
        f"throughput: {finished:.2f} images/s finished for {args.rate:g} sent, backlog "
        f"{base.backlog} -> {last.backlog}"
        + (": the node is slower than the load; latency includes queueing" if slower else "")
    )
    if len({s.workers for s in samples}) > 1:
        lines.append("a worker or pool process was replaced during the run (see serve.log)")
    return lines


def _plot(samples: list[Sample], args: argparse.Namespace) -> None:
    """RSS per process, RSS total and latency against time, stacked, to ``args.out``."""
    from pneumonode.model.plots import line_chart

    def chart(series: dict[str, list[float]], title: str) -> np.ndarray:
        image = line_chart(series, title, width=900, height=300)
        image[-25:] = 255  # line_chart labels its x axis "epoch"
        label = f"time: one point per {args.interval:g} s, {_clock(samples[-1].t)} in all"
        cv2.putText(image, label, (60, 290), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1, cv2.LINE_AA)
        return image

    rss = {f"{role} MiB": [s.rss[role] for s in samples] for role in ROLES}
    latency = {q: [pct(s.latencies, n) for s in samples] for q, n in (("p50 s", 50), ("p95 s", 95))}
    rgb = np.vstack(
        [
            chart(rss, f"soak at {args.rate:g} images/s: RSS per process"),
            chart(
                {"total MiB": [s.rss["total"] for s in samples]},
                "RSS, all node processes (the axis spans what was seen)",
            ),
            chart(latency, "latency, received -> results delivered"),
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="of load (default 10)")
    parser.add_argument("--rate", type=float, default=2.0, help="images/s sent (default 2)")
    parser.add_argument("--interval", type=float, default=30.0, help="s between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="s before the baseline sample")
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "soak.png")
    parser.add_argument("--broker", default=None, help="e.g. redis://127.0.0.1:6379/5")
    parser.add_argument("--database", default=None, help="e.g. postgresql://…/pneumonode_soak")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.interval <= 0:
        parser.error("--minutes, --rate and --interval must be positive")
    work = Path(tempfile.mkdtemp(prefix="pneumonode-soak-"))
    keep = args.keep
    try:
        model = bench_model(args.model, work)
        print(
            f"soak, model {model}: {args.rate:g} SIIM images/s for {args.minutes:g} min "
            f"(one storescu association each), a sample every {args.interval:g} s"
        )
        samples, problems = _soak(model, work, args)
        keep = keep or bool(problems) or len({s.workers for s in samples}) > 1
    except BaseException:
        keep = True
        raise
    finally:
        if keep:
            print(f"working folder (serve.log, data/): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for line in _verdict(samples, args):
        print(line)
    _plot(samples, args)
    print(f"plot: {args.out}")
    if problems:
        print(f"FAILED: {len(problems)} problem(s):")
        for problem in problems[:10]:
            print(f"  {problem}")
        return 1
    print(f"OK: {samples[-1].sent} images sent, all finished, a SEG and an SR delivered for each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
