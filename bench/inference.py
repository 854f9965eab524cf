"""Inference speed per backend: seconds/image, peak memory, and the ratio to this CPU's floor.

The real EfficientNet-B4 U-Net (random weights: speed does not depend on them), batch 1, all
cores this process may use. Each backend runs in a fresh subprocess (peak RSS is its VmHWM):
``Predictor.load`` + ``probabilities``, as served; for onnxruntime/openvino also the engine
alone on the cached ONNX export, a process that never imports torch. The floor is measured in
the same run: the CPU's peak convolution throughput (a 3x3 conv, 256 -> 256 channels on 128x128,
fp32 and bf16) and the model's FLOPs (torch's FlopCounterMode), floor = FLOPs / peak.

    .venv/bin/python bench/inference.py [--sizes 512 1024] [--runs 5]
    .venv/bin/python bench/inference.py --device cuda [--sizes 512 1024]

Targets (inference backends issue): the default CPU backend at 1024 <= 1.3x the bf16 floor; the
exact fp32 backend <= 1.5x the fp32 floor; the default backend's peak RSS <= 1 GiB at 1024; on a
GPU, >= 100 images/s at 1024.

``--device cuda`` measures the torch backend on the GPU instead: images/s of
``Predictor.probabilities`` (host array in, probabilities out: the transfers and the sigmoid
count) per precision and batch size, and the network alone on device-resident input.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENCODER = "efficientnet-b4"
ROWS = (
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def peak_kib() -> int:
    """This process's peak resident set (VmHWM), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def conv_peak_gflops(threads: int) -> dict[str, float]:
    """Achieved GFLOP/s of a large 3x3 convolution, fp32 and bf16, best memory layout."""
    import torch
    from torch.nn.functional import conv2d

    torch.set_num_threads(threads)
    flops = 2 * 256 * 256 * 3 * 3 * 128 * 128
    peak: dict[str, float] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(1, 256, 128, 128).to(dtype).contiguous(memory_format=layout)
            w = torch.randn(256, 256, 3, 3).to(dtype).contiguous(memory_format=layout)
            with torch.inference_mode():
                for _ in range(2):
                    conv2d(x, w, padding=1)
                for _ in range(8):
                    start = time.perf_counter()
                    conv2d(x, w, padding=1)
                    best = max(best, flops / (time.perf_counter() - start) / 1e9)
        peak[name] = best
    return peak


def model_gflops(size: int) -> float:
    """FLOPs (2 per multiply-add) of one image through the U-Net, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pneumonode.model.network import build_unet

    model = build_unet(ENCODER).eval().to("meta")
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.empty(1, 1, size, size, device="meta"))
    return float(counter.get_total_flops()) / 1e9


def make_checkpoint(folder: Path, size: int, export: bool = True) -> float:
    """A random-weights B4 checkpoint at ``size``, with its ONNX export unless ``export`` is
    false (the GPU runs torch); returns the export's seconds."""
    import torch

    from pneumonode.model.checkpoint import CheckpointConfig, InputSpec, save_checkpoint
    from pneumonode.model.network import build_unet
    from pneumonode.model.predictor import exported_onnx

    torch.manual_seed(0)
    save_checkpoint(build_unet(ENCODER), folder, CheckpointConfig(input=InputSpec(size=size)))
    start = time.perf_counter()
    if export:
        exported_onnx(folder)
    return time.perf_counter() - start


def child(mode: str, backend: str, precision: str, checkpoint: Path, runs: int) -> int:
    """Measure one backend in this (fresh) process; print one JSON line."""
    import numpy as np

    from pneumonode.model import predictor as p

    threads = cores()
    start = time.perf_counter()
    if mode == "engine":
        onnx = checkpoint / "model.onnx"
        engine: p.InferenceEngine = (
            p.OnnxRuntimeEngine(onnx, threads=threads)
            if backend == "onnxruntime"
            else p.OpenVinoEngine(onnx, precision=precision, threads=threads)  # type: ignore[arg-type]
        )
        size = int(json.loads((checkpoint / "config.json").read_text())["input"]["size"])
        run = engine.logits

        chosen = (engine.backend, engine.precision)
    else:
        predictor = p.Predictor.load(
            checkpoint,
            device="cpu",
            backend=backend,  # type: ignore[arg-type]
            precision=precision,  # type: ignore[arg-type]
            threads=threads,
        )
        size = predictor.size
        run = predictor.probabilities
        chosen = (predictor.backend, predictor.precision)
    load_s = time.perf_counter() - start
    x = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    run(x)  # warm-up: primitive creation, allocator
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    result = {
        "backend": chosen[0],
        "precision": chosen[1],
        "load_s": load_s,
        "min_s": min(times),
        "median_s": statistics.median(times),
        "peak_mib": peak_kib() / 1024,
        "torch_imported": "torch" in sys.modules,
    }
    print(json.dumps(result))
    return 0


def measure(mode: str, backend: str, precision: str, checkpoint: Path, runs: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, backend, precision, str(checkpoint)]
    done = subprocess.run(
        [*command, "--runs", str(runs)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def gpu_main(sizes: list[int], runs: int, batches: list[int]) -> int:
    """Images/s on the GPU: Predictor.probabilities per precision and batch, and the net alone."""
    import numpy as np
    import torch

    from pneumonode.model.predictor import Predictor

    if not torch.cuda.is_available():
        print("no CUDA device: --device cuda needs a GPU", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    print(f"{'precision':10} {'size':>5} {'batch':>5} {'img/s':>8} {'net alone':>10} {'GiB':>6}")
    best: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            folder = Path(tmp) / str(size)
            make_checkpoint(folder, size, export=False)
            for precision in ("bf16", "fp16"):
                predictor = Predictor.load(folder, device="cuda", precision=precision)  # type: ignore[arg-type]
                engine: Any = predictor.engine
                for batch in batches:
                    x = np.random.default_rng(0).random((batch, 1, size, size), dtype=np.float32)
                    torch.cuda.reset_peak_memory_stats()
                    predictor.probabilities(x)  # warm-up: cuDNN algorithm choice
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    for _ in range(runs):
                        predictor.probabilities(x)
                    served = batch * runs / (time.perf_counter() - start)
                    on_device = (
                        torch.from_numpy(x).cuda().contiguous(memory_format=torch.channels_last)
                    )
                    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
                    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                        engine.model(on_device)
                        torch.cuda.synchronize()
                        start = time.perf_counter()
                        for _ in range(runs):
                            engine.model(on_device)
                        torch.cuda.synchronize()
                    alone = batch * runs / (time.perf_counter() - start)
                    gib = torch.cuda.max_memory_allocated() / 2**30
                    best[size] = max(best.get(size, 0.0), served)
                    print(
                        f"{precision:10} {size:5} {batch:5} {served:8.1f} {alone:10.1f} {gib:6.1f}",
                        flush=True,
                    )
                del predictor, engine
                torch.cuda.empty_cache()
    print("img/s: Predictor.probabilities, host float32 in, probabilities out (as served)")
    if 1024 in best:
        print(f"best at 1024: {best[1024]:.1f} img/s; target >= 100 {verdict(best[1024] >= 100)}")
    return 0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per backend (after one)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "BACKEND", "PRECISION", "CKPT"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="cuda only")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        return gpu_main(args.sizes, args.runs, args.batches)
    if args.child:
        mode, backend, precision, checkpoint = args.child
        return child(mode, backend, precision, Path(checkpoint), args.runs)

    from pneumonode.model.predictor import Predictor, available_backends

    threads = cores()
    load_before = os.getloadavg()[0]
    peak = conv_peak_gflops(threads)
    print(f"{threads} threads, load average {load_before:.2f}", flush=True)
    gflop: dict[int, float] = {}
    results: dict[tuple[int, str, str], dict[str, Any]] = {}
    defaults: dict[str, tuple[str, str]] = {}
    installed = available_backends()
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = Path(tmp) / str(size)
            export_s = make_checkpoint(folder, size)
            gflop[size] = model_gflops(size)
            print(f"{size}: {gflop[size]:.1f} GFLOP/image, ONNX export {export_s:.1f} s")
            if not defaults:
                for label, precision in (("default", "auto"), ("exact", "fp32")):
                    chosen = Predictor.load(folder, device="cpu", precision=precision)  # type: ignore[arg-type]
                    defaults[label] = (chosen.backend, chosen.precision)
            for backend, precision in ROWS:
                if backend not in installed:
                    results[(size, backend, precision)] = {"error": "not installed"}
                    continue
                row = measure("predictor", backend, precision, folder, args.runs)
                if backend != "torch" and "error" not in row:
                    alone = measure("engine", backend, precision, folder, 1)
                    row["engine_peak_mib"] = alone.get("peak_mib")
                    assert not alone.get("torch_imported"), "the engine alone imported torch"
                results[(size, backend, precision)] = row
                print(f"  {backend} {precision}: {row}", flush=True)
    # Other load on the machine only slows a measurement: the best of two is the peak.
    again = conv_peak_gflops(threads)
    peak = {name: max(peak[name], again[name]) for name in peak}

    print(
        f"\n3x3 conv peak {peak['fp32']:.0f} GFLOP/s fp32, {peak['bf16']:.0f} GFLOP/s bf16; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"{'backend':18} {'size':>5} {'s/img min':>9} {'median':>7} {'x floor':>8} "
        f"{'RSS MiB':>8} {'no torch':>9}"
    )
    ratios: dict[tuple[int, str, str], float] = {}
    for size in args.sizes:
        for name in ("fp32", "bf16"):
            floor = gflop[size] / peak[name]
            print(f"{'floor ' + name:18} {size:5} {floor:9.3f} {'':7} {1.0:7.2f}x")
        for backend, precision in ROWS:
            label, row = f"{backend} {precision}", results[(size, backend, precision)]
            if "error" in row:
                print(f"{label:18} {size:5} {row['error']}")
                continue
            ratio = row["min_s"] / (gflop[size] / peak[precision])
            ratios[(size, backend, precision)] = ratio
            engine = row.get("engine_peak_mib")
            print(
                f"{label:18} {size:5} {row['min_s']:9.3f} {row['median_s']:7.3f} {ratio:7.2f}x "
                f"{row['peak_mib']:8.0f} " + (f"{engine:9.0f}" if engine else f"{'-':>9}")
            )
    print(
        "RSS MiB: peak resident memory (VmHWM) of a fresh process running Predictor.load + "
        "inference, as served (torch is imported only by the torch backend); "
        "no torch: the engine alone on the cached ONNX export, torch never imported."
    )

    size = max(args.sizes)
    for label, floor_name, limit in (("default", "bf16", 1.3), ("exact", "fp32", 1.5)):
        backend, precision = defaults[label]
        key = (size, backend, precision)
        if key not in ratios:
            print(f"{label} backend ({backend} {precision}) at {size}: not measured")
            continue
        row = results[key]
        ratio = row["min_s"] / (gflop[size] / peak[floor_name])
        print(
            f"{label} backend ({backend} {precision}) at {size}: {row['min_s']:.3f} s/img = "
            f"{ratio:.2f}x the {floor_name} floor; target <= {limit}x {verdict(ratio <= limit)}"
        )
        if label == "default":
            served, alone = row["peak_mib"], row.get("engine_peak_mib")
            print(
                f"default backend peak RSS at {size}: {served:.0f} MiB via Predictor.load "
                f"{verdict(served <= 1024)}"
                + (f", {alone:.0f} MiB without torch {verdict(alone <= 1024)}" if alone else "")
                + "; target <= 1024 MiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
