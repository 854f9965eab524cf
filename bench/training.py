"""Training speed on this machine: images/s and effective GFLOP/s per encoder, size, precision.

Each row is one training step as ``pneumonode train-bundle`` runs it (U-Net with the image head,
batch 8, channels-last, AdamW, random weights: speed does not depend on them), timed over a few
steps after two warm-up steps, all cores this process may use. Its FLOPs (forward + backward,
torch's FlopCounterMode) over its time give the effective GFLOP/s, printed against the 3x3
convolution peak measured in the same run (``bench/inference.py``'s): how far the step is from
what the cores can do on the friendliest layer.

A second table compares the data side per image at one size: the seed's loader (JPEG decode
cached, albumentations per film in the loader) against the bundle's device-side batch
augmentation (``device_augment``); the network's step is the same for both.

    .venv/bin/python bench/training.py [--sizes 256 384] [--encoders timm-tf_efficientnet_lite2
        efficientnet-b4] [--precisions bf16 fp32] [--steps 4]
        [--accelerations none freeze-depthwise fold-bn both stages-2 all all-3]

``--accelerations`` times train-bundle's CPU shortcuts (``pneumonode.model.acceleration``:
depthwise kernels frozen, the encoder's BatchNorm folded into its convolutions, the stem and
first two stages frozen; ``all-3``: the first three) against the plain step in the same run
("vs none").

Not a test: it prints ratios measured in the same run, it asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from inference import conv_peak_gflops, cores  # noqa: E402

ACCELERATIONS = {  # name: (freeze_depthwise, fold_batchnorm, freeze_stages), as train-bundle's
    "none": (False, False, 0),
    "freeze-depthwise": (True, False, 0),
    "fold-bn": (False, True, 0),
    "both": (True, True, 0),
    "stages-2": (False, False, 2),
    "all": (True, True, 2),
    "all-3": (True, True, 3),
}


def step_speed(
    encoder: str, size: int, precision: str, batch: int, steps: int, acceleration: str = "none"
) -> dict[str, float]:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch.utils.flop_counter import FlopCounterMode

    from pneumonode.model.acceleration import fold_batchnorm, freeze_depthwise, freeze_stages
    from pneumonode.model.network import build_unet

    torch.manual_seed(0)
    model = build_unet(encoder, classification_head=True)
    depthwise, fold, stages = ACCELERATIONS[acceleration]
    if depthwise:
        freeze_depthwise(model)
    if stages:
        freeze_stages(model, stages)
    if fold:
        fold_batchnorm(model)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.rand(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size, size) > 0.95).float()
    label = y.amax(dim=(1, 2, 3))
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, image = model(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        loss = loss + F.binary_cross_entropy_with_logits(image.float()[:, 0], label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = float(counter.get_total_flops())
    step()
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return {"images_per_s": batch / best, "gflops": flops / best / 1e9, "gflop_step": flops / 1e9}


def data_speed(size: int, batch: int, batches: int) -> dict[str, float]:
    """Images/s of the two data paths at ``size`` (decoding excluded: both start from pixels in
    memory)."""
    import numpy as np
    import torch

    from pneumonode.model.data import augmentations
    from pneumonode.model.fast_train import device_augment
    from pneumonode.model.train_config import Augment

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (batch * batches, size, size), dtype=np.uint8)
    masks = (rng.random((batch * batches, size, size)) > 0.97).astype(np.uint8)
    positive, _ = augmentations(0)
    start = time.perf_counter()
    for i in range(len(images)):
        out = positive(image=images[i], mask=masks[i])
        torch.from_numpy(out["image"].astype(np.float32) / 255)
    seed_loader = len(images) / (time.perf_counter() - start)

    held = torch.from_numpy(images)
    held_masks = torch.from_numpy(masks)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for b in range(batches):
        index = torch.arange(b * batch, (b + 1) * batch)
        x = held[index][:, None].float() / 255
        m = held_masks[index][:, None].float()
        device_augment(x, m, Augment(), generator)
    device = len(images) / (time.perf_counter() - start)
    return {"seed_loader": seed_loader, "device_augment": device}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=["timm-tf_efficientnet_lite0", "timm-tf_efficientnet_lite2", "efficientnet-b4"],
    )
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    parser.add_argument(
        "--accelerations",
        nargs="+",
        choices=list(ACCELERATIONS),
        default=["none"],
        help="train-bundle's --freeze-depthwise / --fold-batchnorm (none, either, both) / "
        "--freeze-stages 2 (stages-2; all three: all; with 3 stages: all-3)",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)

    import torch

    threads = cores()
    torch.set_num_threads(threads)
    peak = conv_peak_gflops(threads)
    print(f"{threads} threads; 3x3 conv peak {peak['fp32']:.0f} GFLOP/s fp32, "
          f"{peak['bf16']:.0f} GFLOP/s bf16")  # fmt: skip
    print(
        "\n| encoder | size | precision | acceleration | images/s | vs none | GFLOP/step "
        "| GFLOP/s | of the peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for encoder in args.encoders:
        for size in args.sizes:
            for precision in args.precisions:
                reference = None
                for acceleration in args.accelerations:
                    row = step_speed(encoder, size, precision, args.batch, args.steps, acceleration)
                    if acceleration == "none":
                        reference = row["images_per_s"]
                    ratio = f"{row['images_per_s'] / reference:.2f}x" if reference else "-"
                    share = row["gflops"] / peak[precision]
                    print(
                        f"| {encoder} | {size} | {precision} | {acceleration} | "
                        f"{row['images_per_s']:.2f} | {ratio} | {row['gflop_step']:.0f} | "
                        f"{row['gflops']:.0f} | {share:.1%} |",
                        flush=True,
                    )
    print("\n| size | seed loader (albumentations per film) | device_augment (batch) | ratio |")
    print("|---|---|---|---|")
    for size in args.sizes:
        data = data_speed(size, args.batch, 4)
        print(
            f"| {size} | {data['seed_loader']:.0f} images/s | {data['device_augment']:.0f} "
            f"images/s | {data['device_augment'] / data['seed_loader']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
