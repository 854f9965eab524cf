"""The ``pneumonode`` command line; each subcommand delegates to a package.

Exit codes: 0 success; 1 an error (one line on stderr); 2 a usage error; 3 some inputs failed
while the rest succeeded (details in the command's summary).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom.config
from pydantic import BaseModel
from tqdm import tqdm

from pneumonode import __version__
from pneumonode.config import ConfigError, Settings, load_settings, unknown_environment
from pneumonode.logs import configure_logging

if TYPE_CHECKING:
    from pneumonode.api.security import ApiToken
    from pneumonode.db.session import Database
    from pneumonode.dicom_node.peers import Destination
    from pneumonode.model.data import Sample
    from pneumonode.model.predictor import Predictor

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


def _add_option_flags(
    parser: argparse.ArgumentParser, options: type[BaseModel], skip: tuple[str, ...]
) -> None:
    """One ``--flag`` per field of a training options model (booleans as --x/--no-x)."""
    for name, field_info in options.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        if field_info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            help_text = f"{field_info.description}; " if field_info.description else ""
            parser.add_argument(flag, default=None, help=f"{help_text}default {field_info.default}")


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

    inspect_ds = sub.add_parser(
        "inspect-dataset",
        help="check an image + mask training set and report on it (JSON + PNG plots)",
        description="Check DIR (png_images/ + png_masks/, or images/ + masks/; index.csv if "
        "present): unreadable files, missing pairs, blank images, empty and non-binary masks, "
        "class balance, lesion sizes, intensity, duplicates. Writes inspection.json, "
        "inspection_images.csv and plots. Exit 3 when problems are found.",
    )
    inspect_ds.add_argument("directory", type=Path, metavar="DIR")
    inspect_ds.add_argument("--out", type=Path, help="report folder (default DIR/inspection)")
    inspect_ds.add_argument("--workers", type=_positive_int, default=1, help="parallel processes")
    inspect_ds.add_argument("--no-progress", action="store_true", help="no progress bar")

    predict = sub.add_parser(
        "predict",
        help="segment pneumothorax on DICOM, PNG or JPEG files",
        description="Write <stem>_mask.png (0/255, the source's size) and <stem>_overlay.png "
        "for each file, and predictions.json with the findings. AI result, not for clinical use.",
    )
    predict.add_argument("files", nargs="+", type=Path, metavar="FILE")
    predict.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="checkpoint folder or .pth (default: the configured model, PNEUMONODE_MODEL_PATH, "
        "else the shipped one)",
    )
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--tta", action="store_true", help="average with a horizontal flip")
    predict.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None)
    predict.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        default=None,
        help="inference engine (default: PNEUMONODE_INFERENCE_BACKEND, auto)",
    )

    train = sub.add_parser(
        "train",
        help="train the U-Net on png_images/ + png_masks/ (or images/ + masks/)",
        description="Train with BCE + focal Dice, Adam, warm-up, ReduceLROnPlateau and early "
        "stopping; writes best/ (checkpoint), last.pt, metrics.csv, curves.png, "
        "val_samples.png and split.json into --out. --resume continues from last.pt.",
    )
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--resume", action="store_true")
    train.add_argument("--no-progress", action="store_true")
    from pneumonode.model.train_config import FastTrainConfig, TrainConfig

    _add_option_flags(train, TrainConfig, skip=("data", "out"))

    prepare = sub.add_parser(
        "prepare-training",
        help="split films of both classes by patient and write a training bundle",
        description="Join the --data folders (positives with masks, negatives without), split "
        "them by patient into training, validation and test (split.json; or reuse --split), "
        "and write the training and validation films in model space (bundle.json, "
        "samples.csv, images/, masks/) into --out for train-bundle.",
    )
    prepare.add_argument("--data", type=Path, action="append", required=True, help="repeatable")
    prepare.add_argument("--out", type=Path, required=True)
    prepare.add_argument("--size", type=_positive_int, default=512)
    prepare.add_argument("--split", type=Path, help="an existing split.json to keep")
    prepare.add_argument("--val-fraction", type=float, default=0.15)
    prepare.add_argument("--test-fraction", type=float, default=0.15)
    prepare.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--workers", type=_positive_int, default=2)
    prepare.add_argument("--no-progress", action="store_true")

    fit = sub.add_parser(
        "train-bundle",
        help="train the triage model (U-Net + image-level head) on a training bundle",
        description="Positives and negatives drawn by a weighted sampler, augmented on the "
        "device, BCE + Dice (positives) + BCE on the image label, AdamW with a cosine schedule "
        "(over --time-limit minutes when given), a moving average of the weights. Writes "
        "best/, last/, metrics.csv, curves.png and log.txt into --out. Then: pneumonode "
        "calibrate.",
    )
    fit.add_argument("--bundle", type=Path, required=True)
    fit.add_argument("--out", type=Path, required=True)
    fit.add_argument("--no-progress", action="store_true")
    _add_option_flags(fit, FastTrainConfig, skip=("bundle", "out"))

    calibrate = sub.add_parser(
        "calibrate",
        help="fit the probability calibration and the operating point on the validation split",
        description="Runs the model on the validation films of --split and writes into the "
        "checkpoint's config.json: the image score (head or top pixel, the better ranking), "
        "its Platt scaling, the operating point (sensitivity >= --min-sensitivity, then the "
        "best specificity) and the pixel threshold and minimum area with the best Dice.",
    )
    calibrate.add_argument("--weights", type=Path, required=True)
    calibrate.add_argument("--data", type=Path, action="append", required=True)
    calibrate.add_argument("--split", type=Path, required=True)
    calibrate.add_argument("--min-sensitivity", type=float, default=0.9)
    calibrate.add_argument("--score", choices=("auto", "head", "max_pixel"), default="auto")
    calibrate.add_argument("--method", choices=("platt", "temperature"), default="platt")
    calibrate.add_argument("--no-progress", action="store_true")

    evaluate = sub.add_parser(
        "evaluate",
        help="how good a checkpoint is: ROC, sensitivity/specificity, Dice, calibration",
        description="A calibrated model (pneumonode calibrate) on films of both classes: "
        "evaluation.json/.csv, roc.png, reliability.png, worst_cases.png (sensitivity and "
        "specificity at the operating point with 95%% intervals, specificity on normal and "
        "abnormal films, Dice at the source's resolution, the SIIM score at 22%% prevalence). "
        "A model without an operating point: Dice/IoU/SIIM score; --tune searches threshold, "
        "minimum area and top-score gate and writes them into the checkpoint.",
    )
    evaluate.add_argument("--weights", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, action="append", required=True, help="repeatable")
    evaluate.add_argument("--split", type=Path, help="a split.json")
    evaluate.add_argument("--subset", choices=("train", "validation", "test"), default="validation")
    evaluate.add_argument("--out", type=Path, help="default: <weights>/evaluation")
    evaluate.add_argument("--tune", action="store_true")
    evaluate.add_argument("--tta", action="store_true")
    evaluate.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument(
        "--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default=None
    )
    evaluate.add_argument("--no-progress", action="store_true")

    card = sub.add_parser(
        "model-card",
        help="refresh a model card's measured tables from the measurements",
        description="Copies the summary of `pneumonode evaluate --subset test` (evaluation.json) "
        "and the predictions on the SIIM sample DICOMs into the model folder, then rewrites the "
        "tables between <!-- measured: NAME --> markers in its MODEL_CARD.md (calibration, test, "
        "siim); the prose around them is left alone.",
    )
    card.add_argument("--weights", type=Path, required=True, help="the model folder")
    card.add_argument("--evaluation", type=Path, help="an evaluate --out folder (test split)")
    card.add_argument("--siim-sample", type=Path, help="a folder with dicom/ and masks/")

    package = sub.add_parser(
        "package-model",
        help="copy a checkpoint for deployment (fp16 weights, new version/name)",
        description="Writes a checkpoint folder (config.json + model.safetensors) with its "
        "post-processing, training summary and metrics; fp16 halves the size.",
    )
    package.add_argument("--weights", type=Path, required=True)
    package.add_argument("--out", type=Path, required=True)
    package.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    package.add_argument("--version", default=None, help="default: the checkpoint's")
    package.add_argument("--name", default=None, help="default: the checkpoint's")

    sub.add_parser(
        "serve",
        help="run the node: DICOM listener, queue, a worker, result delivery, API and web page",
        description="Run everything on this machine until SIGTERM/SIGINT: the DICOM listener, "
        "the dispatcher that queues jobs, one worker process (restarted if it dies), the "
        "delivery of results and the HTTP API with the web page. Transfers and jobs in flight "
        "finish first.",
    )
    sub.add_parser(
        "dicom-listen",
        help="run the listener, dispatcher and deliveries without a worker (scale-out)",
        description="Like serve, without the worker: run `pneumonode worker` elsewhere against "
        "the same broker (PNEUMONODE_BROKER_URL) and database (PNEUMONODE_DATABASE_URL).",
    )
    dispatch = sub.add_parser(
        "dispatch",
        help="run only the dispatcher that queues received images (serve and dicom-listen "
        "start one themselves)",
        description="Look for received images every PNEUMONODE_DISPATCH_INTERVAL seconds and "
        "publish their jobs to the broker; re-queue jobs whose worker died. Until SIGTERM.",
    )
    dispatch.add_argument(
        "--wake-stdin",
        action="store_true",
        help="also look whenever a byte arrives on stdin, and stop when stdin ends (how "
        "serve and dicom-listen run it)",
    )
    sub.add_parser(
        "api",
        help="run only the HTTP API and web page (scale-out)",
        description="Serve the API on PNEUMONODE_API_HOST:PNEUMONODE_API_PORT until SIGTERM.",
    )
    worker = sub.add_parser(
        "worker",
        help="run a Celery worker that segments queued images",
        description="Load the model (PNEUMONODE_MODEL_PATH, default the shipped one) and "
        "process queued jobs until SIGTERM (the job in hand finishes).",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive_int,
        default=2,
        help="images in hand at once (default 2): threads sharing one model with the threads "
        "pool, processes with a model each with prefork",
    )
    worker.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: settings)")
    worker.add_argument(
        "--pool",
        choices=("threads", "prefork", "solo"),
        default="threads",
        help="Celery pool (default threads: the network runs one image at a time on all cores "
        "while the other image is decoded, turned into SEG + SR and sent)",
    )

    predict_dicom = sub.add_parser(
        "predict-dicom",
        help="segment DICOM files offline: SEG, SR, overlay PNGs (no PACS, no database)",
        description="Writes <out>/<SOPInstanceUID>/ with seg.dcm, sr.dcm (and sc.dcm with "
        "--sc), image.png, overlay.png and mask.png, and prints each finding.",
    )
    predict_dicom.add_argument("files", nargs="+", type=Path, metavar="FILE")
    predict_dicom.add_argument("--out", type=Path, default=Path("pneumonode-results"))
    predict_dicom.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="default: the configured model (PNEUMONODE_MODEL_PATH, else the shipped one)",
    )
    predict_dicom.add_argument("--sc", action="store_true", help="also a Secondary Capture")
    predict_dicom.add_argument("--tta", action="store_true")
    predict_dicom.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None
    )
    predict_dicom.add_argument("--device", default=None)
    predict_dicom.add_argument(
        "--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default=None
    )

    results = sub.add_parser(
        "results",
        help="list received images with their status, finding and delivery",
        description="One row per received image, newest first.",
    )
    results.add_argument("--study", metavar="STUDY_UID")
    results.add_argument("--patient", metavar="PATIENT_ID")
    results.add_argument("--since", type=_since, help="ISO date/time, or an age: 30m, 2h, 7d")
    results.add_argument("--positive", action="store_true", help="only pneumothorax found")
    results.add_argument(
        "--status", choices=("pending", "queued", "running", "done", "failed", "skipped")
    )
    results.add_argument("--limit", type=_positive_int, default=1000)
    results.add_argument("--format", choices=("table", "json", "csv"), default="table")

    echo = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    echo.add_argument("destination", metavar="AE@host:port")
    echo.add_argument("--timeout", type=float, default=30.0)
    echo.add_argument(
        "--tls",
        action="store_true",
        help="over DICOM TLS (PNEUMONODE_TLS_* certificates; implied for tls_destinations)",
    )

    send = sub.add_parser(
        "send",
        help="C-STORE files to a DICOM peer (recorded as deliveries)",
        description="Send files (folders: every file inside) with their own SOP class and "
        "transfer syntax. Failures that may pass stay queued: the running node retries them "
        "with back-off; `pneumonode resend` retries dead-lettered ones.",
    )
    send.add_argument("files", nargs="+", type=Path, metavar="FILE")
    send.add_argument("--to", required=True, metavar="AE@host:port", dest="destination")
    send.add_argument(
        "--tls",
        action="store_true",
        help="over DICOM TLS (the node's own retries use TLS for tls_destinations only)",
    )

    resend = sub.add_parser(
        "resend",
        help="retry dead-lettered deliveries now",
        description="Put dead-lettered deliveries back in the queue and attempt them at once.",
    )
    resend.add_argument("ids", nargs="*", type=_positive_int, metavar="DELIVERY_ID")
    resend.add_argument("--all", action="store_true", help="every dead-lettered delivery")
    resend.add_argument("--destination", metavar="AE@host:port", help="only to this peer")

    deliveries = sub.add_parser("deliveries", help="list deliveries and their state")
    deliveries.add_argument("--state", choices=("pending", "sent", "dead"))
    deliveries.add_argument("--limit", type=_positive_int, default=100)
    deliveries.add_argument("--format", choices=("table", "json", "csv"), default="table")

    prune = sub.add_parser(
        "prune",
        help="delete old received images and result files (the audit trail stays)",
        description="Delete the spooled DICOM file and the result files of every instance "
        "received more than DAYS ago, except where a job is unfinished or a result still waits "
        "for delivery. Database rows and the audit trail stay. Default: "
        "PNEUMONODE_RETENTION_DAYS.",
    )
    prune.add_argument("--older-than", type=_days, metavar="DAYS", help="age in days, e.g. 30")
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    prune.add_argument("--format", choices=("table", "json"), default="table")

    audit = sub.add_parser("audit", help="print the audit trail")
    audit.add_argument("--study", metavar="STUDY_UID")
    audit.add_argument("--sop", metavar="SOP_INSTANCE_UID")
    audit.add_argument("--kind", action="append", default=[], help="event kind (repeatable)")
    audit.add_argument("--since", type=_since, help="ISO date/time, or an age: 30m, 2h, 7d")
    audit.add_argument("--limit", type=_positive_int, default=1000)
    audit.add_argument("--format", choices=("table", "json", "csv"), default="table")
    return parser


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not days >= 0 or days == float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}")
    return days


def _since(text: str) -> datetime:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date/time or age: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _served_model(settings: Settings) -> dict[str, Any]:
    """The model the node would serve and the engine it would run on, from the checkpoint's
    config.json and this host (the weights are not loaded); ``error`` where either fails."""
    from pneumonode.model.checkpoint import CheckpointError, read_checkpoint_config
    from pneumonode.model.predictor import BackendUnavailableError, choose_backend

    served: dict[str, Any] = {
        "path": str(settings.model),
        "configured_by": "PNEUMONODE_MODEL_PATH" if settings.model_path else "shipped model",
    }
    try:
        config = read_checkpoint_config(settings.model)
    except CheckpointError as exc:
        return {**served, "error": str(exc)}
    operating_point = settings.operating_point
    if operating_point is None and config.decision is not None:
        operating_point = config.decision.threshold
    served |= {
        "name": config.name,
        "version": config.version,
        "input_size": config.input.size,
        "encoder": config.architecture.encoder,
        "calibrated": config.calibration is not None,
        "operating_point": operating_point,
        "operating_point_from": (
            "PNEUMONODE_OPERATING_POINT" if settings.operating_point is not None else "model"
        ),
        "backend_setting": settings.inference_backend,
        "device_setting": settings.device,
        "precision_setting": settings.inference_precision,
    }
    try:
        backend = choose_backend(
            settings.inference_backend, settings.device, settings.inference_precision
        )
    except BackendUnavailableError as exc:
        return {**served, "error": str(exc)}
    return served | {"backend": backend, "device": settings.device if backend == "torch" else "cpu"}


def _model_lines(served: dict[str, Any]) -> list[str]:
    """``info``'s table of the served model, one ``name value`` row each."""
    rows = [("path", f"{served['path']} ({served['configured_by']})")]
    if "name" in served:
        if not served["calibrated"]:
            probability = "none calibrated (the mask decides)"
        elif served["operating_point"] is None:
            probability = "calibrated"
        else:
            probability = (
                f"calibrated, positive from {served['operating_point']:g} "
                f"({served['operating_point_from']})"
            )
        rows += [
            ("name", served["name"]),
            ("version", served["version"]),
            ("input size", f"{served['input_size']} px (its config.json)"),
            ("encoder", served["encoder"]),
            ("probability", probability),
        ]
    if "backend" in served:
        device = "cuda when present, else cpu" if served["device"] == "auto" else served["device"]
        rows.append(
            (
                "engine",
                f"{served['backend']} on {device}, precision {served['precision_setting']} "
                f"(PNEUMONODE_INFERENCE_BACKEND={served['backend_setting']})",
            )
        )
    if "error" in served:
        rows.append(("error", served["error"]))
    return [f"  {name:20} {value}" for name, value in rows]


def _cmd_info(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.conversion import decoder_table

    decoders = decoder_table()
    served = _served_model(settings)
    if args.format == "json":
        payload = {
            "version": __version__,
            "model": served,
            "settings": json.loads(settings.model_dump_json()),
            "decoders": [{"name": n, "uid": u, "plugins": p} for n, u, p in decoders],
        }
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    print(f"pneumonode {__version__}")
    print("model served:")
    for line in _model_lines(served):
        print(line)
    print("settings:")
    for key, value in settings.model_dump().items():
        # the model reads images at its own size (above); this one is convert's
        note = " (convert, convert-siim)" if key == "image_size" else ""
        print(f"  {key:20} {value}{note}")
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


def _cmd_inspect_dataset(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.inspect import (
        DatasetLayout,
        DatasetLayoutError,
        inspect_dataset,
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
    for line in inspection.lines():
        print(line)
    print(f"report: {written[0]} (+ {len(written) - 1} files in {out})")
    if inspection.usable:
        print("result: usable (exit 0)")
        return EXIT_OK
    print("result: problems found, see the problem lines above (exit 3)")
    return EXIT_PARTIAL


def _load_predictor(settings: Settings, args: argparse.Namespace) -> Predictor:
    """The checkpoint ``--weights`` on the engine the options (or settings) ask for; without
    ``--weights`` the model the node serves, at its operating point (PNEUMONODE_OPERATING_POINT
    where set), so that its findings are the node's."""
    from pneumonode.model.checkpoint import CheckpointError
    from pneumonode.model.predictor import Predictor

    served = args.weights is None
    try:
        predictor = Predictor.load(
            settings.model if served else args.weights,
            device=args.device,
            precision=args.precision,
            tta=args.tta,
            backend=args.backend,
            cache_dir=settings.data_dir / "model-cache",
        )
    except (CheckpointError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if served and settings.operating_point is not None:
        try:
            predictor.set_operating_point(settings.operating_point)
        except ValueError as exc:
            raise CliError(f"PNEUMONODE_OPERATING_POINT: {exc}") from None
    return predictor


def _write_predictions(
    out: Path, predictor: Predictor, summary: list[dict[str, Any]], failed: int, total: int
) -> int:
    """Write ``predictions.json`` and return the exit code (all failed: 1, some: 3)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(
        json.dumps(
            {
                "model": predictor.config.name,
                "version": predictor.config.version,
                "note": predictor.config.intended_use,
                "backend": predictor.backend,
                "precision": predictor.precision,
                "device": predictor.device,
                "predictions": summary,
            },
            indent=2,
        )
    )
    if failed == total:
        return EXIT_ERROR
    return EXIT_PARTIAL if failed else EXIT_OK


def _verdict(finding: Any) -> str:
    area = (
        f"{finding.area_mm2:.0f} mm²"
        if finding.area_mm2 is not None
        else f"{finding.area_pixels} px"
    )
    verdict = f"pneumothorax, {finding.side}, {area}" if finding.present else "no pneumothorax"
    if finding.probability is None:
        return f"{verdict} (max pixel probability {finding.max_probability:.2f})"
    point = "" if finding.threshold is None else f", operating point {finding.threshold:.2f}"
    return f"{verdict} (probability {finding.probability:.2f}{point})"


def _cmd_predict(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.conversion import ConversionError, encode_png
    from pneumonode.results import render_overlay

    predictor = _load_predictor(settings, args)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: list[dict[str, Any]] = []
    failed = 0
    for path in tqdm(args.files, desc="predict", unit="img", disable=len(args.files) < 2):
        try:
            prediction = predictor.predict_path(path)
        except (ConversionError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        mask = prediction.mask
        (args.out / f"{path.stem}_mask.png").write_bytes(encode_png(mask.astype("uint8") * 255))
        background = prediction.prepared.source_pixels
        if background is None:
            background = prediction.prepared.letterbox.to_source(
                prediction.prepared.pixels, "linear"
            )
        overlay = render_overlay(background, mask)
        (args.out / f"{path.stem}_overlay.png").write_bytes(encode_png(overlay))
        finding = prediction.finding
        summary.append({"file": str(path), **dataclasses.asdict(finding)})
        print(f"{path.name}: {_verdict(finding)}")
    return _write_predictions(args.out, predictor, summary, failed, len(args.files))


def _cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from pydantic import ValidationError as ConfigError

    from pneumonode.model.data import DatasetLayoutError
    from pneumonode.model.train import train
    from pneumonode.model.train_config import TrainConfig

    values = {
        name: getattr(args, name)
        for name in TrainConfig.model_fields
        if getattr(args, name, None) is not None
    }
    try:
        config = TrainConfig(**values)
    except ConfigError as exc:
        error = exc.errors()[0]
        where = f"{error['loc'][0]}: " if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        raise CliError(f"invalid training option: {where}{message}") from None
    try:
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except DatasetLayoutError as exc:
        raise CliError(str(exc)) from None
    if result.checkpoint is None:
        raise CliError("no epoch finished; nothing was saved")
    note = " (stopped early)" if result.stopped_early else ""
    print(f"best epoch {result.best_epoch}{note}, validation loss {result.best_val_loss:.4f}")
    print(f"checkpoint: {result.checkpoint}; curves: {config.out / 'curves.png'}")
    return EXIT_OK


def _cohort_side(data: Sequence[Path], split: Path | None, subset: str) -> list[Sample]:
    from pneumonode.model.data import DatasetLayoutError, discover_cohort, read_split

    try:
        samples = discover_cohort(data)
        chosen = samples if split is None else read_split(split, samples)[subset]
    except (DatasetLayoutError, OSError) as exc:
        raise CliError(str(exc)) from None
    if not chosen:
        raise CliError(f"no {subset} images in {split}")
    return chosen


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


def _cmd_train_bundle(settings: Settings, args: argparse.Namespace) -> int:
    from pydantic import ValidationError as ConfigError

    from pneumonode.model.bundle import BundleError
    from pneumonode.model.fast_train import fast_train
    from pneumonode.model.train_config import FastTrainConfig

    values = {
        name: getattr(args, name)
        for name in FastTrainConfig.model_fields
        if getattr(args, name, None) is not None
    }
    if values.get("encoder_weights") in ("none", "None", ""):
        values["encoder_weights"] = None
    try:
        config = FastTrainConfig(**values)
    except ConfigError as exc:
        error = exc.errors()[0]
        where = f"{error['loc'][0]}: " if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        raise CliError(f"invalid training option: {where}{message}") from None
    try:
        best = fast_train(config, progress=not args.no_progress)
    except (BundleError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if "epoch" not in best:
        raise CliError("no epoch finished; nothing was saved")
    print(
        f"best epoch {best['epoch']}: validation AUC {best['val_auc']:.3f}, Dice (positives) "
        f"{best['val_dice_positives']:.3f}; {best['train_images_per_second']:.1f} images/s"
    )
    print(f"checkpoint: {config.out / 'best'}; curves: {config.out / 'curves.png'}")
    print(f"next: pneumonode calibrate --weights {config.out / 'best'} --split ... --data ...")
    return EXIT_OK


def _cmd_calibrate(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.assess import calibrate

    if not 0 < args.min_sensitivity < 1:
        raise CliError("--min-sensitivity must be between 0 and 1")
    samples = _cohort_side(args.data, args.split, "validation")
    predictor = _load_predictor_for(settings, args.weights)
    try:
        chosen = calibrate(
            predictor,
            samples,
            args.weights,
            min_sensitivity=args.min_sensitivity,
            score=args.score,
            method=args.method,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    calibration, decision = chosen["calibration"], chosen["decision"]
    figures = calibration["fitted_on"]
    print(
        f"score: {calibration['score']} (validation AUC "
        + ", ".join(f"{k} {v:.3f}" for k, v in figures["auc"].items())
        + ")"
    )
    print(
        f"calibration: {calibration['method']} a={calibration['a']:.4f} b={calibration['b']:.4f}"
        f"; log loss {figures['log_loss_raw']:.4f} -> {figures['log_loss_calibrated']:.4f}"
    )
    print(
        f"operating point: probability >= {decision['threshold']:.4f}; validation sensitivity "
        f"{decision['validation']['sensitivity']:.3f}, specificity "
        f"{decision['validation']['specificity']:.3f}"
    )
    post = chosen["postprocess"]
    print(
        f"pixels: threshold {post['threshold']}, minimum area {post['min_area_pixels']} px; "
        f"validation Dice (positives, model size) {chosen['validation_mean_dice_positives']:.3f}"
    )
    print(f"written into {args.weights}")
    return EXIT_OK


def _load_predictor_for(settings: Settings, weights: Path) -> Predictor:
    from pneumonode.model.checkpoint import CheckpointError
    from pneumonode.model.predictor import Predictor

    try:
        return Predictor.load(weights, backend="torch", precision="fp32")
    except (CheckpointError, ValueError) as exc:
        raise CliError(str(exc)) from None


def _cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.data import DatasetLayoutError
    from pneumonode.model.evaluate import evaluate, select_samples

    predictor = _load_predictor(settings, args)
    if predictor.config.decision is not None:
        return _evaluate_cohort(predictor, args)
    if len(args.data) != 1:
        raise CliError("a model without an operating point is evaluated on one --data folder")
    try:
        samples = select_samples(args.data[0], args.split, args.subset)
    except (DatasetLayoutError, ValueError, OSError, KeyError) as exc:
        raise CliError(str(exc)) from None
    if not samples:
        raise CliError("no images to evaluate")
    folder = args.weights if args.weights.is_dir() else args.weights.parent
    out = args.out or folder / "evaluation"
    result = evaluate(
        predictor,
        samples,
        out,
        do_tune=args.tune,
        weights=args.weights,
        progress=not args.no_progress,
    )
    summary = result.summary
    for key in (
        "images",
        "positives",
        "negatives",
        "mean_dice_positives",
        "mean_iou_positives",
        "siim_score",
        "auc_max_probability",
        "sensitivity",
        "specificity",
    ):
        value = summary[key]
        print(f"{key:22} {value:.4f}" if isinstance(value, float) else f"{key:22} {value}")
    print(
        f"post-processing        {summary['postprocess']}{' (tuned, saved)' if args.tune else ''}"
    )
    print(f"written to {out}")
    return EXIT_OK


def _evaluate_cohort(predictor: Predictor, args: argparse.Namespace) -> int:
    from pneumonode.model.assess import evaluate_cohort

    if args.tune:
        raise CliError("--tune is for models without an operating point; use pneumonode calibrate")
    samples = _cohort_side(args.data, args.split, args.subset)
    folder = args.weights if args.weights.is_dir() else args.weights.parent
    out = args.out or folder / "evaluation"
    summary = evaluate_cohort(predictor, samples, out, progress=not args.no_progress)

    def ratio(entry: dict[str, Any]) -> str:
        low, high = entry["ci95"]
        return f"{entry['value']:.3f} (95% CI {low:.3f}-{high:.3f}, n={entry['n']})"

    print(f"images                 {summary['images']} ({summary['positives']} positive)")
    print(f"AUC                    {summary['auc']:.4f}")
    print(f"operating point        probability >= {summary['operating_point']:.4f}")
    print(f"sensitivity            {ratio(summary['sensitivity'])}")
    print(f"specificity            {ratio(summary['specificity'])}")
    for group, entry in summary["specificity_by_group"].items():
        print(f"  on {group:19} {ratio(entry)}")
    print(f"mean Dice (positives)  {summary['mean_dice_positives']:.4f} (source resolution)")
    for bucket, entry in summary["dice_by_size"].items():
        value = "-" if entry["mean_dice"] is None else f"{entry['mean_dice']:.4f}"
        print(f"  {bucket:20} {value} (n={entry['images']})")
    print(
        f"SIIM score             {summary['siim_score_at_prevalence']:.4f} "
        f"(at {summary['prevalence']:.0%} prevalence)"
    )
    print(f"written to {out} (evaluation.json, roc.png, reliability.png, worst_cases.png)")
    return EXIT_OK


def _open_database(settings: Settings) -> Database:
    from sqlalchemy.exc import SQLAlchemyError

    from pneumonode.db.session import Database

    try:
        return Database.open(settings.database)
    except SQLAlchemyError as exc:
        raise CliError(
            f"cannot open the database: {type(exc).__name__}: {exc.args[0] if exc.args else ''}"
        ) from None


def _cmd_package_model(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    try:
        model, config = load_checkpoint(args.weights)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    update = {k: v for k, v in (("version", args.version), ("name", args.name)) if v is not None}
    written = save_checkpoint(model, args.out, config.model_copy(update=update), dtype=args.dtype)
    size = (args.out / written.weights_file).stat().st_size / 1e6
    print(f"{args.out}: {written.name} {written.version}, {args.dtype}, {size:.1f} MB")
    print(f"sha256 {written.weights_sha256}")
    return EXIT_OK


def _cmd_model_card(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.model.card import CardError, write_card
    from pneumonode.model.checkpoint import CheckpointError

    try:
        write_card(args.weights, evaluation=args.evaluation, siim_sample=args.siim_sample)
    except (CardError, CheckpointError, OSError, KeyError, ValueError) as exc:
        raise CliError(f"{args.weights}: {exc}") from None
    return EXIT_OK


def _require_model(settings: Settings) -> None:
    from pneumonode.model.checkpoint import CheckpointError, read_checkpoint_config

    try:
        config = read_checkpoint_config(settings.model)
    except CheckpointError as exc:
        raise CliError(
            f"{exc} (set PNEUMONODE_MODEL_PATH to a checkpoint folder or best_model.pth)"
        ) from None
    if settings.operating_point is not None and config.calibration is None:
        raise CliError(
            f"PNEUMONODE_OPERATING_POINT: the model {config.name} has no calibrated probability "
            "to set it on (pneumonode calibrate makes one)"
        )


def _api_token(settings: Settings) -> ApiToken:
    from pneumonode.api.security import TokenError, resolve_token

    try:
        return resolve_token(settings)
    except TokenError as exc:
        raise CliError(str(exc)) from None


def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.node import run_node

    everything = args.command == "serve"
    token = None
    if everything:
        _require_model(settings)
        token = _api_token(settings)
    from pneumonode.dicom_node.tls import TlsConfigError

    try:
        run_node(settings, _open_database(settings), with_worker=everything, token=token)
    except TlsConfigError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def _cmd_dispatch(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.node import run_dispatcher

    run_dispatcher(settings, _open_database(settings), wake_stdin=args.wake_stdin)
    return EXIT_OK


def _cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.node import run_api

    run_api(settings, _open_database(settings), _api_token(settings))
    return EXIT_OK


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.worker.tasks import QUEUE, configure, context

    if args.device:
        settings = settings.model_copy(update={"device": args.device})
    _require_model(settings)
    _open_database(settings).dispose()  # fail now, with one line, if it cannot be opened
    app = configure(settings)
    if args.pool != "prefork":
        # one process runs the tasks: load the model before taking any (prefork loads it in
        # each pool process, see pneumonode.worker.tasks)
        context()
    quiet = []
    if settings.log_format == "json":  # JSON lines only: no banner, no bare shutdown lines
        import celery.apps.worker

        quiet = ["--quiet"]
        celery.apps.worker.safe_say = lambda msg, f=None: log.info(msg.strip())
    app.worker_main(
        [
            *quiet,
            "worker",
            f"--concurrency={args.concurrency}",
            f"--pool={args.pool}",
            f"--loglevel={settings.log_level}",
            f"--queues={QUEUE}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return EXIT_OK


def _cmd_predict_dicom(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.conversion import ConversionError
    from pneumonode.conversion.decode import read_dataset
    from pneumonode.dicom_node.spool import safe_component
    from pneumonode.worker.pipeline import analyse, write_results

    predictor = _load_predictor(settings, args)
    failed = 0
    summary = []
    for path in tqdm(args.files, desc="predict-dicom", unit="img", disable=len(args.files) < 2):
        try:
            source = read_dataset(path)
            analysis = analyse(
                source,
                predictor,
                label=settings.result_label,
                with_capture=args.sc,
                with_overlay=True,
            )
        except (ConversionError, ValueError) as exc:
            print(f"error: {path.name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        folder = args.out / safe_component(str(source.SOPInstanceUID))
        files = write_results(analysis, folder, settings.png_level)
        finding = analysis.prediction.finding
        summary.append({"file": str(path), "results": str(folder), **dataclasses.asdict(finding)})
        print(f"{path.name}: {_verdict(finding)} -> {files.folder}")
    return _write_predictions(args.out, predictor, summary, failed, len(args.files))


RESULT_COLUMNS = (
    "received_at",
    "study_uid",
    "sop_uid",
    "status",
    "finding",
    "probability",
    "area",
    "side",
    "model_version",
    "delivery",
    "destinations",
)


def _cmd_results(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.db.queries import ResultFilters, list_results

    filters = ResultFilters(
        study_uid=args.study,
        patient_id=args.patient,
        since=args.since,
        positive=True if args.positive else None,
        status=args.status,
        limit=args.limit,
    )
    with _open_database(settings).session() as session:
        found = list_results(session, filters)
    rows = []
    for row in found:
        record = dataclasses.asdict(row)
        record["delivery"] = row.delivery
        record["received_at"] = row.received_at.isoformat(timespec="seconds")
        if row.area_mm2 is not None:
            record["area"] = f"{row.area_mm2:.0f} mm2"
        elif row.area_pixels is not None and row.finding is not None:
            record["area"] = f"{row.area_pixels} px"
        else:
            record["area"] = None
        if row.probability is not None:
            record["probability"] = round(row.probability, 3)
        if row.status == "skipped":
            record["status"] = f"skipped: {row.skip_reason}"
        elif row.status == "failed" and row.error:
            record["status"] = f"failed: {row.error}"
        rows.append(record)
    columns = (
        RESULT_COLUMNS
        if args.format == "table"
        else (
            *RESULT_COLUMNS,
            "patient_id",
            "accession_number",
            "area_mm2",
            "area_pixels",
            "seg_uid",
            "sr_uid",
            "sc_uid",
            "deliveries_sent",
            "deliveries_total",
        )
    )
    _emit(rows, args.format, columns)
    return EXIT_OK


def _destination(text: str) -> Destination:
    from pneumonode.dicom_node.peers import PeerConfigError, parse_destination

    try:
        return parse_destination(text)
    except PeerConfigError as exc:
        raise CliError(str(exc)) from None


def _cmd_echo(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.dicom_node.scu import echo
    from pneumonode.dicom_node.tls import TlsConfigError, TlsSettings

    destination = _destination(args.destination)
    tls = None
    if args.tls or str(destination) in settings.tls_destinations:
        try:
            tls = TlsSettings.from_settings(settings).client_context()
        except TlsConfigError as exc:
            raise CliError(str(exc)) from None
    result = echo(destination, settings.ae_title, args.timeout, tls)
    if not result.ok:
        raise CliError(result.reason)
    print(result.reason)
    return EXIT_OK


def _expand(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise CliError(f"{path}: no such file or folder")
    return files


def _print_deliveries(database: Database, ids: Sequence[int], header: str) -> int:
    from pneumonode.db.models import Delivery, DeliveryState

    with database.session() as session:
        rows = [session.get(Delivery, i) for i in ids]
    failed = 0
    print(header)
    for row in rows:
        if row is None:
            continue
        note = "" if row.state == DeliveryState.SENT else f": {row.last_error}"
        print(f"  {row.id:6d} {row.state:8} {Path(row.path).name}{note}")
        failed += row.state != DeliveryState.SENT
    return failed


def _cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.dicom_node.delivery import RetryPolicy, attempt_deliveries, queue_delivery

    destination = str(_destination(args.destination))
    database = _open_database(settings)
    ids: list[int] = []
    unreadable = 0
    for path in _expand(args.files):
        try:
            ids.append(queue_delivery(database, path, destination))
        except Exception as exc:  # not a DICOM file: say so and go on with the others
            print(
                f"error: {path}: not a DICOM file with file meta ({type(exc).__name__})",
                file=sys.stderr,
            )
            unreadable += 1
    policy = RetryPolicy.from_settings(settings)
    if args.tls:
        policy = dataclasses.replace(
            policy, tls_destinations=policy.tls_destinations | {destination}
        )
    attempt_deliveries(database, ids, policy)
    failed = _print_deliveries(database, ids, f"sent to {destination}:") + unreadable
    if failed == 0:
        return EXIT_OK
    print(f"error: {failed} of {len(ids) + unreadable} not delivered (see above)", file=sys.stderr)
    return EXIT_ERROR if failed == len(ids) + unreadable else EXIT_PARTIAL


def _cmd_resend(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.dicom_node.delivery import RetryPolicy, attempt_deliveries, resend

    if not args.ids and not args.all:
        raise CliError("name delivery ids, or --all for every dead-lettered delivery")
    destination = str(_destination(args.destination)) if args.destination else None
    database = _open_database(settings)
    ids = resend(database, args.ids, all_dead=args.all, destination=destination)
    if not ids:
        print("no dead-lettered deliveries match")
        return EXIT_OK
    attempt_deliveries(database, ids, RetryPolicy.from_settings(settings))
    failed = _print_deliveries(database, ids, "resent:")
    if failed == 0:
        return EXIT_OK
    print(f"error: {failed} of {len(ids)} not delivered (see above)", file=sys.stderr)
    return EXIT_ERROR if failed == len(ids) else EXIT_PARTIAL


def _emit(rows: list[dict[str, Any]], fmt: str, columns: Sequence[str]) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        for line in _table(rows, columns):
            print(line)


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """A header row of the column names in capitals, then one line per row, the columns
    aligned; a missing or empty value is ``-``, a line break inside a value a space."""

    def cell(value: Any) -> str:
        return " ".join(str("" if value is None else value).splitlines()) or "-"

    lines = [[name.upper() for name in columns]]
    lines += [[cell(row.get(name)) for name in columns] for row in rows]
    widths = [max(len(line[k]) for line in lines) for k in range(len(columns))]
    return [
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]


def _cmd_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from pneumonode.db.models import Delivery
    from pneumonode.results import result_kind

    database = _open_database(settings)
    with database.session() as session:
        query = select(Delivery).order_by(Delivery.id.desc()).limit(args.limit)
        if args.state:
            query = query.where(Delivery.state == args.state)
        rows = [
            {
                "id": d.id,
                "object": result_kind(d.sop_class_uid),
                "state": d.state,
                "destination": d.destination,
                "attempts": d.attempts,
                "next_attempt_at": d.next_attempt_at.isoformat(timespec="seconds"),
                "sop_uid": d.sop_uid,
                "last_error": d.last_error,
            }
            for d in session.scalars(query)
        ]
    _emit(
        rows,
        args.format,
        [
            "id",
            "object",
            "state",
            "destination",
            "attempts",
            "next_attempt_at",
            "sop_uid",
            "last_error",
        ],
    )
    return EXIT_OK


AUDIT_COLUMNS = ("at", "kind", "calling_ae", "peer_address", "study_uid", "sop_uid", "message")


def _cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.db.repository import list_audit

    database = _open_database(settings)
    with database.session() as session:
        events = list_audit(
            session,
            study_uid=args.study,
            sop_uid=args.sop,
            kinds=args.kind,
            since=args.since,
            limit=args.limit,
        )
        rows = [
            {
                "at": e.at.isoformat(timespec="milliseconds"),
                "kind": e.kind,
                "calling_ae": e.calling_ae,
                "peer_address": e.peer_address,
                "study_uid": e.study_uid,
                "sop_uid": e.sop_uid,
                "patient_id": e.patient_id,
                "accession_number": e.accession_number,
                "message": e.message,
                "detail": e.detail,
            }
            for e in events
        ]
    columns = (
        AUDIT_COLUMNS
        if args.format == "table"
        else (*AUDIT_COLUMNS, "patient_id", "accession_number", "detail")
    )
    _emit(rows, args.format, columns)
    return EXIT_OK


def _cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.retention import prune

    days = args.older_than if args.older_than is not None else settings.retention_days
    if not days and args.older_than is None:
        raise CliError(
            "no retention period: pass --older-than DAYS or set PNEUMONODE_RETENTION_DAYS"
        )
    database = _open_database(settings)
    with tqdm(desc="pruning", unit="instance", disable=args.format == "json") as bar:
        report = prune(
            settings, database, timedelta(days=days), dry_run=args.dry_run, progress=bar.update
        )
    if args.format == "json":
        print(json.dumps({**dataclasses.asdict(report), "cutoff": report.cutoff.isoformat()}))
    else:
        print(report.summary())
    return EXIT_OK


COMMANDS = {
    "info": _cmd_info,
    "convert": _cmd_convert,
    "convert-siim": _cmd_convert_siim,
    "inspect-dataset": _cmd_inspect_dataset,
    "predict": _cmd_predict,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "prepare-training": _cmd_prepare_training,
    "train-bundle": _cmd_train_bundle,
    "calibrate": _cmd_calibrate,
    "serve": _cmd_serve,
    "dicom-listen": _cmd_serve,
    "dispatch": _cmd_dispatch,
    "worker": _cmd_worker,
    "api": _cmd_api,
    "package-model": _cmd_package_model,
    "model-card": _cmd_model_card,
    "predict-dicom": _cmd_predict_dicom,
    "results": _cmd_results,
    "echo": _cmd_echo,
    "send": _cmd_send,
    "resend": _cmd_resend,
    "deliveries": _cmd_deliveries,
    "audit": _cmd_audit,
    "prune": _cmd_prune,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # echo/send/resend: their outcome is our one line on stderr
    configure_logging(settings, quiet_network=args.command in ("echo", "send", "resend"))
    for warning in unknown_environment():
        log.warning(warning)
    # pydicom's value validation warnings quote values, which may be patient data
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    inference_defaults = {
        "device": settings.device,
        "precision": settings.inference_precision,
        "backend": settings.inference_backend,
    }
    for name, value in inference_defaults.items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, value)
    from pneumonode.startup import NODE_PARTS, StartupError, check_startup

    try:
        if args.command in NODE_PARTS:  # before anything starts: the data folder, ports, ...
            check_startup(settings, args.command)
        return COMMANDS[args.command](settings, args)
    except (CliError, StartupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # the reader stopped early (`pneumonode results | head`): no error, as other tools;
        # stdout goes to /dev/null so that Python's flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:  # unwritable output folder, disk full, ...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
