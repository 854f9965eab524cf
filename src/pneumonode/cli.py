"""The ``pneumonode`` command line; each subcommand delegates to a package.

Exit codes: 0 success; 1 an error (one line on stderr); 2 a usage error; 3 some inputs failed
while the rest succeeded (details in the command's summary).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from pneumonode import __version__
from pneumonode.config import ConfigFileError, Settings

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

log = logging.getLogger("pneumonode")


class CliError(Exception):
    """An error reported as one line on stderr with exit code 1."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumonode",
        description="A DICOM node that finds pneumothorax on chest radiographs.",
    )
    parser.add_argument("--version", action="version", version=f"pneumonode {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (overrides PNEUMONODE_CONFIG_FILE)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="show the configuration and the installed pixel decoders")
    info.add_argument("--format", choices=("table", "json"), default="table")

    convert = sub.add_parser(
        "convert",
        help="turn DICOM radiographs into the model's 8-bit PNG input",
        description="Decode, window and letterbox each DICOM file into OUT/<stem>.png.",
    )
    convert.add_argument("files", nargs="+", type=Path, metavar="FILE")
    convert.add_argument("--out", type=Path, required=True, help="output folder")
    convert.add_argument("--size", type=_positive_int, default=None, help="side in pixels")

    siim = sub.add_parser(
        "convert-siim",
        help="turn the SIIM-ACR DICOMs + RLE CSV into png_images/ + png_masks/",
        description="Convert the SIIM-ACR pneumothorax dataset into a PNG training set. "
        "Resumable: verified outputs of an earlier run are kept.",
    )
    siim.add_argument("--dicom-dir", type=Path, required=True, help="searched recursively")
    siim.add_argument("--rle-csv", type=Path, required=True, help="label file (.csv or .csv.gz)")
    siim.add_argument("--out", type=Path, required=True, help="output folder")
    siim.add_argument("--size", type=_positive_int, default=None, help="side in pixels")
    siim.add_argument("--workers", type=_positive_int, default=1, help="parallel processes")
    siim.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _cmd_info(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.conversion import decoder_table

    decoders = decoder_table()
    if args.format == "json":
        payload = {
            "version": __version__,
            "settings": json.loads(settings.model_dump_json()),
            "decoders": [{"name": n, "uid": u, "plugins": p} for n, u, p in decoders],
        }
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    print(f"pneumonode {__version__}")
    for key, value in settings.model_dump().items():
        print(f"  {key:20} {value}")
    print("pixel data decoders (in order of preference):")
    for name, uid, plugins in decoders:
        print(f"  {name[:56]:56} {uid:24} {plugins}")
    return EXIT_OK


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


COMMANDS = {
    "info": _cmd_info,
    "convert": _cmd_convert,
    "convert-siim": _cmd_convert_siim,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _build_parser().parse_args(argv)
    try:
        settings = Settings(config_file=args.config) if args.config else Settings()
    except (ConfigFileError, ValidationError) as exc:
        first = str(exc).strip().splitlines()
        print(f"error: invalid configuration: {' '.join(first[:3])}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](settings, args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # unwritable output folder, disk full, ...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
