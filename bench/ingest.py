"""Ingest throughput: dcmtk storescu (one association, all files) into our SCP, storescp, Orthanc.

Every receiver runs as its own process on 127.0.0.1 (free ports, temporary folders) and gets the
same files from the same sender, ``storescu`` with ``TCP_NODELAY=1``, in one association; the time
is the sender's wall time. Ratios are against dcmtk ``storescp`` and Orthanc measured in the same
run. After each run the receiver's count is checked: a run that lost files fails the benchmark.

Durability: our listener fsyncs each file, renames it into the spool, fsyncs the folder and commits
its SQLite row (WAL, synchronous=FULL) before it answers. Orthanc runs with SyncStorageArea (an
fdatasync per file; its SQLite index only syncs at WAL checkpoints). storescp does not fsync at
all: the "storescp + sync" row adds one sync(2) after its run, a bound on what making its files
durable would cost. The "pynetdicom bare" row is not a competitor but the floor of the framework
our listener used before it got its own upper layer: pynetdicom's SCP with chunked receive and
128 KiB PDUs that only renames each file.
Storescp and Orthanc (both DCMTK) run with TCP_NODELAY=1 like the sender: without it Orthanc
waits for a delayed ACK on every C-STORE (~22 images/s).

Memory: a fresh listener receives one ~200 MB object; its peak RSS (VmHWM) must stay under 300 MB.

    .venv/bin/python bench/ingest.py [--cr 200] [--dx 50] [--repeat 1] [--skip-memory] [--keep]

Targets (ingest issue): CR >= 1.0x Orthanc, DX >= 0.9x storescp; peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dicom_factory import make_dx, save, synthetic_chest

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000
RSS_LIMIT_MB = 300
SENDER_AET = "STORESCU"
CR_TARGET_VS_ORTHANC = 1.0
DX_TARGET_VS_STORESCP = 0.9
LISTENER_ENV: dict[str, str] = {}  # --set NAME=VALUE: extra PNEUMONODE_* settings


# --- test data ------------------------------------------------------------------------------


def siim_like_cr(siim: list[Path], folder: Path, count: int) -> list[Path]:
    """``count`` copies of the SIIM JPEG CR files with new UIDs (10 instances per study); the
    JPEG pixel data is kept byte for byte."""
    folder.mkdir(parents=True)
    studies = [(generate_uid(), generate_uid()) for _ in range(max(1, (count + 9) // 10))]
    files = []
    for i in range(count):
        ds = pydicom.dcmread(siim[i % len(siim)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = studies[i // 10]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"cr{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def synthetic_dx(folder: Path, count: int, distinct: int = 5) -> list[Path]:
    """``count`` uncompressed 16-bit 2500x3000 DX files (~15 MB), ``distinct`` pixel arrays
    reused under new UIDs."""
    folder.mkdir(parents=True)
    arrays = [synthetic_chest(3000, 2500, 16, seed=i) for i in range(min(distinct, count))]
    return [
        save(make_dx(arrays[i % len(arrays)], 16), folder / f"dx{i:04d}.dcm") for i in range(count)
    ]


def big_dx(folder: Path, side: int = 10_000) -> Path:
    """One uncompressed 16-bit ``side`` x ``side`` DX (200 MB at 10000)."""
    folder.mkdir(parents=True)
    tile = synthetic_chest(side // 4, side // 4, 16, seed=99)
    pixels = np.ascontiguousarray(np.tile(tile, (4, 4)))
    return save(make_dx(pixels, 16), folder / "big.dcm")


def warm_cache(files: list[Path]) -> None:
    for path in files:
        with path.open("rb") as handle:
            while handle.read(1 << 22):
                pass


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def terminate(proc: subprocess.Popen[bytes] | None, grace: float = 40.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


class Receiver:
    """A storage SCP process in a folder of its own."""

    name = ""
    called_aet = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.port = free_port()
        self.log = root / "receiver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, command: list[str], env: dict[str, str] | None = None) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root
            )

    def start(self) -> None:
        raise NotImplementedError

    def received(self) -> tuple[int, str]:
        """How many instances the receiver kept, and a note on any inconsistency."""
        raise NotImplementedError

    def problems(self) -> list[str]:
        """Error lines of the receiver's log worth reporting."""
        return []

    def stop(self) -> None:
        terminate(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class Pneumonode(Receiver):
    name = "pneumonode"
    called_aet = "PNEUMONODE"

    def start(self) -> None:
        self.data = self.root / "data"
        program = Path(sys.executable).parent / "pneumonode"
        env = {key: value for key, value in os.environ.items() if not key.startswith("PNEUMONODE_")}
        env |= LISTENER_ENV
        env |= {
            "PNEUMONODE_DATA_DIR": str(self.data),
            "PNEUMONODE_DICOM_HOST": "127.0.0.1",
            "PNEUMONODE_DICOM_PORT": str(self.port),
            "PNEUMONODE_AE_TITLE": self.called_aet,
            "PNEUMONODE_ALLOWED_PEERS": SENDER_AET,
        }
        self._spawn([str(program), "dicom-listen"], env)
        assert self.proc is not None
        # Not a port probe: a bare connect would show up as an association in our audit log.
        # Ready: the listener, and the dispatcher process it starts (whose imports would
        # otherwise take a core from the first second of the run)
        wait_until(
            lambda: all(
                line in self.log.read_bytes()
                for line in (b"pneumonode listening as", b"dispatcher ready")
            ),
            self.proc,
            self.name,
            60,
        )

    def received(self) -> tuple[int, str]:
        spool = self.data / "spool"
        files = sum(
            1 for p in spool.glob("*/*.dcm") if p.is_file() and not p.parent.name.startswith(".")
        )
        leftovers = sum(1 for _ in (spool / ".incoming").iterdir())
        with contextlib.closing(
            sqlite3.connect(f"file:{self.data / 'pneumonode.sqlite3'}?mode=ro", uri=True)
        ) as db:
            rows = int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
        notes = []
        if rows != files:
            notes.append(f"{files} files but {rows} DB rows")
        if leftovers:
            notes.append(f"{leftovers} left in spool/.incoming")
        return min(files, rows), "; ".join(notes)

    def problems(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [
            line
            for line in lines
            if any(word in line for word in ("ERROR", "WARNING", "Traceback", "CRITICAL"))
        ]


class Storescp(Receiver):
    name = "storescp"
    called_aet = "STORESCP"

    def start(self) -> None:
        self.out = self.root / "out"
        self.out.mkdir()
        env = os.environ | {"TCP_NODELAY": "1"}
        command = ["storescp", "-aet", self.called_aet, "--output-directory", str(self.out)]
        self._spawn([*command, "+xa", str(self.port)], env)
        assert self.proc is not None
        wait_until(lambda: port_open(self.port), self.proc, self.name, 30)

    def received(self) -> tuple[int, str]:
        return sum(1 for p in self.out.rglob("*") if p.is_file()), ""

    def problems(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if line.startswith(("E:", "F:"))]


class Orthanc(Receiver):
    name = "Orthanc"
    called_aet = "ORTHANC"

    def start(self) -> None:
        self.http_port = free_port()
        config = {
            "Name": "ingest-bench",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.port,
            "DicomAet": self.called_aet,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SyncStorageArea": True,
            "Plugins": [],
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        # Orthanc's DICOM side is DCMTK: without TCP_NODELAY=1 every C-STORE waits ~40 ms for a
        # delayed ACK (Nagle), which measures the kernel rather than Orthanc.
        self._spawn(["/usr/sbin/Orthanc", str(path)], os.environ | {"TCP_NODELAY": "1"})
        assert self.proc is not None
        wait_until(lambda: bool(self._rest("/system")), self.proc, self.name, 60)
        wait_until(lambda: port_open(self.port), self.proc, self.name, 30)

    def _rest(self, route: str) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.http_port}{route}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return dict(json.load(response))

    def received(self) -> tuple[int, str]:
        return int(str(self._rest("/statistics")["CountInstances"])), ""

    def problems(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if line.startswith("E")]


BARE_SCP = """
import os, sys, tempfile
from pathlib import Path
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pneumonode.dicom_node.contexts import ACCEPTED_TRANSFER_SYNTAXES

out = Path(sys.argv[2])
(out / ".incoming").mkdir(parents=True)
tempfile.tempdir = str(out / ".incoming")
_config.STORE_RECV_CHUNKED_DATASET = True


def store(event):
    name = str(event.request.AffectedSOPInstanceUID) + ".dcm"
    os.rename(event.dataset_path, out / name)  # no fsync, no parsing, no database
    return 0x0000


ae = AE(ae_title="PYNETDICOM")
ae.maximum_pdu_size = 131072
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, store)])
"""


class BarePynetdicom(Receiver):
    """The framework's floor: pynetdicom's threaded SCP with chunked receive, 128 KiB PDUs, a
    handler that only renames the received file (not a competitor; shows what is left for us)."""

    name = "pynetdicom bare"
    called_aet = "PYNETDICOM"

    def start(self) -> None:
        self.out = self.root / "out"
        self._spawn([sys.executable, "-c", BARE_SCP, str(self.port), str(self.out)])
        assert self.proc is not None
        wait_until(lambda: port_open(self.port), self.proc, self.name, 30)

    def received(self) -> tuple[int, str]:
        return sum(1 for p in self.out.glob("*.dcm") if p.is_file()), ""

    def problems(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if "Traceback" in line or line.startswith("E:")]


# --- runs -----------------------------------------------------------------------------------


@dataclass
class Run:
    receiver: str
    sent: int
    received: int
    seconds: float
    nbytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.received == self.sent and not any(n.startswith("FAILED") for n in self.notes)

    @property
    def images_per_s(self) -> float:
        return self.sent / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / MB / self.seconds


def storescu(receiver: Receiver, files: list[Path], jpeg: bool) -> tuple[float, int, str]:
    """Send ``files`` in one association; (wall seconds, exit code, error/warning lines)."""
    command = ["storescu", "-aet", SENDER_AET, "-aec", receiver.called_aet, "-R"]
    if jpeg:
        command.append("-xy")
    command += ["127.0.0.1", str(receiver.port), *map(str, files)]
    env = os.environ | {"TCP_NODELAY": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    output = (done.stdout + done.stderr).splitlines()
    complaints = [line for line in output if line.startswith(("E:", "F:", "W:"))]
    return seconds, done.returncode, "\n".join(complaints)


def measure(
    kind: type[Receiver], files: list[Path], jpeg: bool, work: Path, keep: bool
) -> tuple[Run, float]:
    """One fresh receiver, one association with all ``files``; also the time of a sync(2)
    right after the run (what it takes to make files nobody fsynced durable)."""
    os.sync()
    receiver = kind(work)
    nbytes = sum(p.stat().st_size for p in files)
    notes: list[str] = []
    try:
        receiver.start()
        seconds, code, complaints = storescu(receiver, files, jpeg)
        sync_start = time.perf_counter()
        os.sync()
        sync_seconds = time.perf_counter() - sync_start
        received, note = receiver.received()
        if code != 0:
            notes.append(f"FAILED: storescu exit {code}")
        if complaints:
            notes.append(f"storescu: {complaints.splitlines()[0][:80]}")
        if note:
            notes.append(note)
        if received != len(files):
            notes.append(f"LOST {len(files) - received} of {len(files)}")
    except Exception as exc:
        seconds, sync_seconds, received = float("nan"), 0.0, 0
        notes.append(f"FAILED: {type(exc).__name__}: {exc}")
    finally:
        receiver.stop()
    problems = receiver.problems() if receiver.log.exists() else []
    if problems:
        notes.append(f"{len(problems)} log problem(s), first: {problems[0][:100]}")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return Run(receiver.name, len(files), received, seconds, nbytes, notes), sync_seconds


def median(runs: list[Run]) -> Run:
    """The median run (by time) when every run received everything, else the first failure;
    with several runs, the spread goes into its notes."""
    failed = [run for run in runs if not run.ok]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda run: run.seconds)
    chosen = ordered[(len(ordered) - 1) // 2]
    if len(runs) > 1:
        rates = [run.images_per_s for run in ordered]
        chosen.notes.append(f"{len(runs)} runs: {rates[-1]:.1f}-{rates[0]:.1f} images/s")
    return chosen


def peak_rss(big: Path, work: Path, keep: bool) -> tuple[int, int, Run]:
    """A fresh listener receives one object; (idle VmHWM, VmHWM after, the run)."""
    os.sync()
    receiver = Pneumonode(work)
    notes: list[str] = []
    idle = after = 0
    try:
        receiver.start()
        time.sleep(0.5)
        idle = vm_hwm_bytes(receiver.pid)
        seconds, code, complaints = storescu(receiver, [big], jpeg=False)
        after = vm_hwm_bytes(receiver.pid)
        received, note = receiver.received()
        if code != 0:
            notes.append(f"FAILED: storescu exit {code}")
        if complaints:
            notes.append(f"storescu: {complaints.splitlines()[0][:80]}")
        if note:
            notes.append(note)
    except Exception as exc:
        seconds, received = float("nan"), 0
        notes.append(f"FAILED: {type(exc).__name__}: {exc}")
    finally:
        receiver.stop()
    problems = receiver.problems() if receiver.log.exists() else []
    if problems:
        notes.append(f"{len(problems)} log problem(s), first: {problems[0][:100]}")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return idle, after, Run(receiver.name, 1, received, seconds, big.stat().st_size, notes)


# --- report ---------------------------------------------------------------------------------


def ratio(value: float, reference: Run | None) -> str:
    if reference is None or not reference.ok or math.isnan(value):
        return "-"
    return f"{value / reference.images_per_s:.2f}x"


def print_table(title: str, runs: list[Run], sync_row: Run | None) -> None:
    by_name = {run.receiver: run for run in runs}
    scp, orthanc = by_name.get("storescp"), by_name.get("Orthanc")
    print(f"\n{title}")
    header = (
        f"{'receiver':20} {'files':>9} {'seconds':>8} {'images/s':>9} {'MB/s':>8} "
        f"{'vs storescp':>11} {'vs Orthanc':>10}  notes"
    )
    print(header)
    print("-" * len(header))
    rows = [*runs, sync_row] if sync_row is not None else runs
    for run in rows:
        files = f"{run.received}/{run.sent}"
        print(
            f"{run.receiver:20} {files:>9} {run.seconds:8.2f} {run.images_per_s:9.1f} "
            f"{run.mb_per_s:8.1f} {ratio(run.images_per_s, scp):>11} "
            f"{ratio(run.images_per_s, orthanc):>10}  {'; '.join(run.notes)}"
        )


def verdict(run: Run | None, reference: Run | None, target: float) -> tuple[str, bool]:
    if run is None or reference is None or not (run.ok and reference.ok):
        return "FAIL (a run failed or lost files)", False
    value = run.images_per_s / reference.images_per_s
    passed = value >= target
    return f"{value:.2f}x (target >= {target:.1f}x) {'PASS' if passed else 'FAIL'}", passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cr", type=int, default=200, help="SIIM-like JPEG CR files")
    parser.add_argument("--dx", type=int, default=50, help="16-bit 2500x3000 DX files")
    parser.add_argument("--repeat", type=int, default=1, help="runs per receiver (median kept)")
    parser.add_argument("--skip-memory", action="store_true", help="no 200 MB peak-RSS run")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a listener setting, e.g. --set max_pdu=131072 (PNEUMONODE_MAX_PDU); repeatable",
    )
    args = parser.parse_args(argv)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--set needs NAME=VALUE, got {item!r}")
        LISTENER_ENV[f"PNEUMONODE_{name.strip().upper()}"] = value

    siim = sorted((args.data / "siim-sample" / "dicom").glob("*.dcm"))
    if not siim:
        print(f"no SIIM sample DICOMs under {args.data}; pass --data", file=sys.stderr)
        return 1
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} (dcmtk) not found", file=sys.stderr)
            return 1
    if not Path("/usr/sbin/Orthanc").is_file():
        print("/usr/sbin/Orthanc not found", file=sys.stderr)
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="pneumonode-ingest-"))
    try:
        started = time.perf_counter()
        datasets: list[tuple[str, list[Path], bool]] = []
        if args.cr > 0:
            cr = siim_like_cr(siim, tmp / "input" / "cr", args.cr)
            datasets.append((f"CR: {len(cr)} SIIM-like JPEG files", cr, True))
        if args.dx > 0:
            dx = synthetic_dx(tmp / "input" / "dx", args.dx)
            datasets.append((f"DX: {len(dx)} 16-bit 2500x3000 uncompressed", dx, False))
        big = None if args.skip_memory else big_dx(tmp / "input" / "big")
        for _, files, _ in datasets:
            warm_cache(files)
        os.sync()
        print(f"test data ready in {time.perf_counter() - started:.0f} s under {tmp}", flush=True)

        results: dict[str, list[Run]] = {}
        syncs: dict[str, Run] = {}
        for d, (title, files, jpeg) in enumerate(datasets):
            size = sum(p.stat().st_size for p in files) / len(files) / 1000
            print(f"{title} (~{size:.0f} kB each) ...", flush=True)
            results[title] = []
            kinds = (Storescp, Orthanc, BarePynetdicom, Pneumonode)
            runs: dict[str, list[Run]] = {kind.name: [] for kind in kinds}
            sync_times: dict[str, list[float]] = {kind.name: [] for kind in kinds}
            # rounds, each receiver once per round: the disk of a shared machine changes
            # speed over minutes, and every receiver should see the same mix of it
            for r in range(args.repeat):
                for kind in kinds:
                    work = tmp / f"run-{d}-{kind.name}-{r}"
                    run, sync_seconds = measure(kind, files, jpeg, work, args.keep)
                    runs[kind.name].append(run)
                    sync_times[kind.name].append(sync_seconds)
                    print(f"  {kind.name}: {run.seconds:.2f} s {'; '.join(run.notes)}", flush=True)
            for kind in kinds:
                chosen = median(runs[kind.name])
                results[title].append(chosen)
                if kind is Storescp:
                    extra = sync_times[kind.name][runs[kind.name].index(chosen)]
                    syncs[title] = Run(
                        "storescp + sync",
                        chosen.sent,
                        chosen.received,
                        chosen.seconds + extra,
                        chosen.nbytes,
                        ["sync(2) after the run, not in storescp's own time"],
                    )

        memory = None if big is None else peak_rss(big, tmp / "memory", args.keep)

        print("\nstorescu -R (one association, TCP_NODELAY=1) into each receiver on 127.0.0.1;")
        print(f"seconds = sender wall time; MB = 10^6 bytes; median of {args.repeat} run(s).")
        print("storescp and Orthanc (both DCMTK) also run with TCP_NODELAY=1.")
        print("pneumonode: fsync + rename + dir fsync + SQLite row (synchronous=FULL) per file;")
        print("Orthanc: SyncStorageArea=true (fdatasync per file, no folder fsync), SQLite index")
        print("  in WAL with commits not fsynced; storescp and pynetdicom bare: NO fsync at all.")
        if LISTENER_ENV:
            print("listener settings:", " ".join(f"{k}={v}" for k, v in LISTENER_ENV.items()))
        for title, runs in results.items():
            print_table(title, runs, syncs.get(title))

        passed = all(run.ok for runs in results.values() for run in runs)
        print("\ntargets (durability on):")
        for title, runs in results.items():
            named = {run.receiver: run for run in runs}
            ours = named.get("pneumonode")
            if title.startswith("CR"):
                text, ok = verdict(ours, named.get("Orthanc"), CR_TARGET_VS_ORTHANC)
                print(f"  CR pneumonode vs Orthanc:  {text}")
            else:
                text, ok = verdict(ours, named.get("storescp"), DX_TARGET_VS_STORESCP)
                print(f"  DX pneumonode vs storescp: {text}")
            passed &= ok
        if memory is not None:
            idle, after, run = memory
            ok = run.ok and 0 < after < RSS_LIMIT_MB * MB
            size = run.nbytes / MB
            print(
                f"  peak RSS receiving one {size:.0f} MB object: {after / MB:.0f} MB "
                f"(idle {idle / MB:.0f} MB; limit {RSS_LIMIT_MB} MB) {'PASS' if ok else 'FAIL'}"
                f"; {run.seconds:.2f} s, {run.mb_per_s:.0f} MB/s"
                + (f"; {'; '.join(run.notes)}" if run.notes else "")
            )
            passed &= ok
        return 0 if passed else 2
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
