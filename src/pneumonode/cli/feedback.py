"""Commands about what happened after a result: radiologists' feedback as training data
(``export-feedback``) and the alerts sent about results (``alerts list|resend``)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pneumonode.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    CliError,
    CommandGroup,
    emit,
    open_database,
    positive_int,
    since,
)
from pneumonode.config import Settings

__all__ = [
    "ALERT_COLUMNS",
    "ANNOTATE_COLUMNS",
    "ExportSummary",
    "add_commands",
    "export_feedback",
]

#: ``to_annotate.csv``: the films a reviewer marked missed, to be outlined by hand.
ANNOTATE_COLUMNS = (
    "ImageId", "study_uid", "source_path", "image", "reviewer", "reviewed_at", "comment",
)  # fmt: skip
ALERT_COLUMNS = (
    "id", "channel", "destination", "state", "attempts", "last_status", "latency_s",
    "created_at", "sent_at", "study_uid", "sop_uid", "last_error",
)  # fmt: skip


@dataclass
class ExportSummary:
    """What ``export-feedback`` wrote."""

    positives: int = 0
    negatives: int = 0
    to_annotate: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "positives": self.positives,
            "negatives": self.negatives,
            "to_annotate": self.to_annotate,
            "failed": len(self.failed),
            "failed_images": self.failed,
        }


def add_commands(group: CommandGroup) -> None:
    export = group.add(
        "export-feedback",
        _cmd_export_feedback,
        help="reviewed films as training data (convert-siim's layout) for fine-tuning",
        description="Writes OUT/png_images/, OUT/png_masks/ and OUT/index.csv as convert-siim "
        "does: films reviewed 'agree' on a positive call with the model's region as their "
        "mask, films reviewed 'disagree' (and 'agree' on a negative call) as negatives with an "
        "empty mask; films reviewed 'missed' go to OUT/to_annotate/ and OUT/to_annotate.csv "
        "to be outlined by hand. The newest verdict of each film counts.",
    )
    export.add_argument("--out", type=Path, required=True, metavar="DIR")
    export.add_argument("--since", type=since, help="received since: ISO date/time or 30d")
    export.add_argument("--size", type=positive_int, default=1024, help="side of the PNGs")

    alerts = group.add(
        "alerts",
        _cmd_alerts,
        help="list the HL7 and webhook alerts, or re-send dead-lettered ones",
        description="alerts list: newest first, with state, attempts and latency (image "
        "received to ACK). alerts resend ID... | --all: dead-lettered alerts go out again.",
    )
    alerts.add_argument("action", choices=("list", "resend"))
    alerts.add_argument("ids", nargs="*", type=positive_int, metavar="ID")
    alerts.add_argument("--all", action="store_true", help="resend: every dead-lettered alert")
    alerts.add_argument("--state", choices=("pending", "sent", "dead"))
    alerts.add_argument("--limit", type=positive_int, default=100)
    alerts.add_argument("--format", choices=("table", "json", "csv"), default="table")


def _write_png(path: Path, image: np.ndarray) -> None:
    from pneumonode.conversion.png import encode_png

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(encode_png(image, 1))
    tmp.replace(path)


def export_feedback(
    settings: Settings, out: Path, *, received_since: datetime | None = None, size: int = 1024
) -> ExportSummary:
    """Write the reviewed films under ``out`` (see ``export-feedback --help``)."""
    from pneumonode.conversion.errors import ConversionError
    from pneumonode.conversion.prepare import prepare_radiograph
    from pneumonode.conversion.siim import INDEX_COLUMNS, parse_age_years
    from pneumonode.db.feedback import films_in_period
    from pneumonode.dicom_node.spool import safe_component
    from pneumonode.model.checkpoint import CheckpointError, InputSpec, read_checkpoint_config

    try:
        percentiles = read_checkpoint_config(settings.model).input.window_percentiles
    except CheckpointError:
        percentiles = InputSpec().window_percentiles
    database = open_database(settings)
    try:
        with database.session() as session:
            films = films_in_period(session, received_since, None, reviewed_only=True)
    finally:
        database.dispose()
    for folder in ("png_images", "png_masks", "to_annotate"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    summary = ExportSummary()
    index: list[dict[str, Any]] = []
    annotate: list[dict[str, Any]] = []
    for film in films:
        image_id = safe_component(film.sop_uid)
        row: dict[str, Any] = dict.fromkeys(INDEX_COLUMNS, "")
        source = settings.spool_dir / film.path
        row.update(ImageId=image_id, source_path=str(source), status="ok")
        try:
            if film.pruned:
                raise ConversionError("retention deleted the image; send it again to export it")
            prepared = prepare_radiograph(source, size, percentiles, label=image_id)
            ds = _header(source)
            row.update(
                PatientID=str(ds.get("PatientID", "") or ""),
                ViewPosition=str(ds.get("ViewPosition", "") or ""),
                PatientSex=str(ds.get("PatientSex", "") or ""),
                PatientAgeYears=parse_age_years(ds.get("PatientAge")),
            )
            if film.verdict == "missed":
                _write_png(out / "to_annotate" / f"{image_id}.png", prepared.pixels)
                annotate.append(
                    {
                        "ImageId": image_id,
                        "study_uid": film.study_uid,
                        "source_path": str(source),
                        "image": f"to_annotate/{image_id}.png",
                        "reviewer": film.reviewer,
                        "reviewed_at": film.reviewed_at.isoformat() if film.reviewed_at else "",
                        "comment": film.comment or "",
                    }
                )
                summary.to_annotate += 1
                continue
            if film.verdict == "agree" and film.pneumothorax:
                results = settings.results_dir / safe_component(film.study_uid) / image_id
                source_mask = cv2.imread(str(results / "mask.png"), cv2.IMREAD_GRAYSCALE)
                if source_mask is None:
                    raise ConversionError("the model's mask.png is missing; re-run the job")
                mask = prepared.letterbox.mask_to_model((source_mask > 127).astype(np.uint8))
                mask = mask * np.uint8(255)
            else:  # disagree (no pneumothorax), or agreement with a negative call
                mask = np.zeros((size, size), np.uint8)
            positive = bool(mask.any())
            row.update(
                has_pneumothorax=int(positive),
                mask_pixels=int(np.count_nonzero(mask)),
                regions=int(positive),
            )
            _write_png(out / "png_masks" / f"{image_id}.png", mask)
            _write_png(out / "png_images" / f"{image_id}.png", prepared.pixels)
            summary.positives += positive
            summary.negatives += not positive
            index.append(row)
        except ConversionError as exc:
            summary.failed[image_id] = str(exc.args[0]) if exc.args else type(exc).__name__
    with (out / "index.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(index)
    with (out / "to_annotate.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=ANNOTATE_COLUMNS)
        writer.writeheader()
        writer.writerows(annotate)
    (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


def _header(path: Path) -> Any:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def _cmd_export_feedback(settings: Settings, args: argparse.Namespace) -> int:
    summary = export_feedback(settings, args.out, received_since=args.since, size=args.size)
    print(
        f"{summary.positives} positive(s) and {summary.negatives} negative(s) in {args.out}; "
        f"{summary.to_annotate} missed film(s) to annotate (to_annotate.csv)"
    )
    for image_id, reason in sorted(summary.failed.items()):
        print(f"error: {image_id}: {reason}", file=sys.stderr)
    if not summary.failed:
        return EXIT_OK
    written = summary.positives + summary.negatives + summary.to_annotate
    return EXIT_PARTIAL if written else EXIT_ERROR


def _alert_rows(settings: Settings, state: str | None, limit: int) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from pneumonode.alerts.outbox import shown_destination
    from pneumonode.db.models import Alert

    database = open_database(settings)
    try:
        with database.session() as session:
            query = select(Alert).order_by(Alert.id.desc()).limit(limit)
            if state:
                query = query.where(Alert.state == state)
            return [
                {
                    "id": row.id,
                    "channel": row.channel,
                    "destination": shown_destination(row.channel, row.destination),
                    "state": row.state,
                    "attempts": row.attempts,
                    "last_status": row.last_status or "",
                    "latency_s": (
                        f"{row.latency_seconds:.3f}" if row.latency_seconds is not None else ""
                    ),
                    "created_at": row.created_at.isoformat(timespec="seconds"),
                    "sent_at": row.sent_at.isoformat(timespec="seconds") if row.sent_at else "",
                    "study_uid": row.study_uid or "",
                    "sop_uid": row.sop_uid or "",
                    "last_error": row.last_error or "",
                }
                for row in session.scalars(query)
            ]
    finally:
        database.dispose()


def _cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "list":
        if args.ids or args.all:
            raise CliError("alerts list takes no ids and no --all (use --state dead)")
        emit(_alert_rows(settings, args.state, args.limit), args.format, ALERT_COLUMNS)
        return EXIT_OK
    from pneumonode.alerts.outbox import resend_alerts

    if not args.ids and not args.all:
        raise CliError("name alert ids, or --all for every dead-lettered alert")
    database = open_database(settings)
    try:
        ids = resend_alerts(database, args.ids, all_dead=args.all)
    finally:
        database.dispose()
    if not ids:
        print("no dead-lettered alerts match")
        return EXIT_OK if args.all else EXIT_ERROR
    print(f"re-queued: {', '.join(map(str, ids))} (the node's alert loop sends them)")
    return EXIT_OK
