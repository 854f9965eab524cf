"""Training data (ML engineers): convert, convert-siim, inspect-dataset, prepare-training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from pneumonode.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    CliError,
    CommandGroup,
    positive_int,
)

if TYPE_CHECKING:
    from pneumonode.config import Settings

__all__ = ["add_commands"]


def add_commands(group: CommandGroup) -> None:
    convert = group.add(
        "convert",
        _cmd_convert,
        help="turn DICOM radiographs into the model's 8-bit PNG input",
        description="Decode, window and letterbox each DICOM file into OUT/<stem>.png.",
    )
    convert.add_argument("files", nargs="+", type=Path, metavar="FILE")
    convert.add_argument("--out", type=Path, required=True, help="output folder")
    convert.add_argument("--size", type=positive_int, default=None, help="side in pixels")

    siim = group.add(
        "convert-siim",
        _cmd_convert_siim,
        help="turn the SIIM-ACR DICOMs + RLE CSV into png_images/ + png_masks/",
        description="Convert the SIIM-ACR pneumothorax dataset into a PNG training set. "
        "Resumable: verified outputs of an earlier run are kept.",
    )
    siim.add_argument("--dicom-dir", type=Path, required=True, help="searched recursively")
    siim.add_argument("--rle-csv", type=Path, required=True, help="label file (.csv or .csv.gz)")
    siim.add_argument("--out", type=Path, required=True, help="output folder")
    siim.add_argument("--size", type=positive_int, default=None, help="side in pixels")
    siim.add_argument("--workers", type=positive_int, default=1, help="parallel processes")
    siim.add_argument("--no-progress", action="store_true", help="no progress bar")

    inspect_ds = group.add(
        "inspect-dataset",
        _cmd_inspect_dataset,
        help="check an image + mask training set and report on it (JSON + PNG plots)",
        description="Check DIR (png_images/ + png_masks/, or images/ + masks/; index.csv if "
        "present): unreadable files, missing pairs, blank images, empty and non-binary masks, "
        "class balance, lesion sizes, intensity, duplicates. Writes inspection.json, "
        "inspection_images.csv and plots. Exit 3 when problems are found.",
    )
    inspect_ds.add_argument("directory", type=Path, metavar="DIR")
    inspect_ds.add_argument("--out", type=Path, help="report folder (default DIR/inspection)")
    inspect_ds.add_argument("--workers", type=positive_int, default=1, help="parallel processes")
    inspect_ds.add_argument("--no-progress", action="store_true", help="no progress bar")

    prepare = group.add(
        "prepare-training",
        _cmd_prepare_training,
        help="split films of both classes by patient and write a training bundle",
        description="Join the --data folders (positives with masks, negatives without), split "
        "them by patient into training, validation and test (split.json; or reuse --split), "
        "and write the training and validation films in model space (bundle.json, "
        "samples.csv, images/, masks/) into --out for train-bundle.",
    )
    prepare.add_argument("--data", type=Path, action="append", required=True, help="repeatable")
    prepare.add_argument("--out", type=Path, required=True)
    prepare.add_argument("--size", type=positive_int, default=512)
    prepare.add_argument("--split", type=Path, help="an existing split.json to keep")
    prepare.add_argument("--val-fraction", type=float, default=0.15)
    prepare.add_argument("--test-fraction", type=float, default=0.15)
    prepare.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--workers", type=positive_int, default=2)
    prepare.add_argument("--no-progress", action="store_true")


def _cmd_convert(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.conversion import ConversionError, prepare_radiograph

    size = args.size or settings.image_size
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.files:
        try:
            prepared = prepare_radiograph(path, size, settings.window_percentiles)
        except ConversionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        (args.out / f"{path.stem}.png").write_bytes(prepared.png(settings.png_level))
        print(f"{path} -> {args.out / (path.stem + '.png')} ({prepared.lut.method})")
    if failed == len(args.files):
        return EXIT_ERROR
    return EXIT_PARTIAL if failed else EXIT_OK


def _cmd_convert_siim(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.conversion import RleError, read_siim_rle_csv
    from pneumonode.conversion.siim import convert_siim_dataset

    if not args.dicom_dir.is_dir():
        raise CliError(f"--dicom-dir {args.dicom_dir} is not a folder")
    try:
        labels = read_siim_rle_csv(args.rle_csv)
    except (OSError, RleError, UnicodeDecodeError, EOFError) as exc:
        raise CliError(f"cannot read --rle-csv {args.rle_csv}: {exc}") from None
    summary = convert_siim_dataset(
        args.dicom_dir,
        labels,
        args.out,
        size=args.size or settings.image_size,
        workers=args.workers,
        percentiles=settings.window_percentiles,
        png_level=settings.png_level,
        show_progress=not args.no_progress,
    )
    for line in summary.lines():
        print(line)
    print(f"written to {args.out} (index.csv, summary.json)")
    if summary.images_found == 0:
        raise CliError(f"no .dcm files found under {args.dicom_dir}")
    return EXIT_OK if summary.ok else EXIT_PARTIAL


def _cmd_inspect_dataset(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.inspect import (
        DatasetLayout,
        DatasetLayoutError,
        inspect_dataset,
        summary_lines,
        write_inspection_report,
    )

    try:
        layout = DatasetLayout.detect(args.directory)
        out = args.out or args.directory / "inspection"
        out.mkdir(parents=True, exist_ok=True)  # fail before the long pass, not after it
        inspection = inspect_dataset(
            layout, workers=args.workers, show_progress=not args.no_progress
        )
    except DatasetLayoutError as exc:
        raise CliError(str(exc)) from None
    written = write_inspection_report(inspection, out)
    for line in summary_lines(inspection):
        print(line)
    print(f"report: {written[0]} (+ {len(written) - 1} files in {out})")
    if inspection.usable:
        print("result: usable (exit 0)")
        return EXIT_OK
    print("result: problems found, see the problem lines above (exit 3)")
    return EXIT_PARTIAL


def _cmd_prepare_training(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.bundle import write_bundle
    from pneumonode.model.data import (
        DatasetLayoutError,
        discover_cohort,
        read_split,
        split_cohort,
        write_split,
    )

    try:
        samples = discover_cohort(args.data)
        if args.split is not None:
            sides = read_split(args.split, samples)
        else:
            train, val, test = split_cohort(
                samples, args.val_fraction, args.test_fraction, args.seed
            )
            sides = {"train": train, "validation": val, "test": test}
    except (DatasetLayoutError, ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    write_split(
        args.out / "split.json",
        sides["train"],
        sides["validation"],
        sides["test"],
        seed=args.seed,
        data=[str(d) for d in args.data],
    )
    bar = tqdm(total=len(sides["train"]) + len(sides["validation"]), unit="img",
               desc="prepare", disable=args.no_progress)  # fmt: skip

    def advance(done: int, total: int) -> None:
        bar.update(done - bar.n)

    described = write_bundle(
        {"train": sides["train"], "validation": sides["validation"]},
        args.size,
        args.out,
        workers=args.workers,
        progress=advance,
        info={"split": "split.json", "data": [str(d) for d in args.data]},
    )
    bar.close()
    for side in ("train", "validation", "test"):
        chosen = sides[side]
        positives = sum(s.positive for s in chosen)
        patients = len({s.patient_id or s.image_id for s in chosen})
        print(f"{side:10} {len(chosen):5} films {positives:5} positive {patients:5} patients")
    print(f"bundle: {args.out} ({described['size']} px); split: {args.out / 'split.json'}")
    return EXIT_OK
