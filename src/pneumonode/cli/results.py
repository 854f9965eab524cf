"""Results and records (operators): results, predict-dicom, deliveries, send, resend, audit,
prune."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from pneumonode.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    CliError,
    CommandGroup,
    days,
    destination,
    emit,
    load_predictor,
    open_database,
    positive_int,
    since,
    verdict,
    write_predictions,
)

if TYPE_CHECKING:
    from pneumonode.config import Settings
    from pneumonode.db.session import Database

__all__ = ["AUDIT_COLUMNS", "RESULT_COLUMNS", "add_commands"]

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
AUDIT_COLUMNS = ("at", "kind", "calling_ae", "peer_address", "study_uid", "sop_uid", "message")
DELIVERY_COLUMNS = (
    "id",
    "object",
    "state",
    "destination",
    "attempts",
    "next_attempt_at",
    "sop_uid",
    "last_error",
)


def add_commands(group: CommandGroup) -> None:
    results = group.add(
        "results",
        _cmd_results,
        help="list received images with their status, finding and delivery",
        description="One row per received image, newest first.",
    )
    results.add_argument("--study", metavar="STUDY_UID")
    results.add_argument("--patient", metavar="PATIENT_ID")
    results.add_argument("--since", type=since, help="ISO date/time, or an age: 30m, 2h, 7d")
    results.add_argument("--positive", action="store_true", help="only pneumothorax found")
    results.add_argument(
        "--status", choices=("pending", "queued", "running", "done", "failed", "skipped")
    )
    results.add_argument(
        "--own",
        action="store_true",
        help="also our own SEG/SR/SC that came back from the PACS (skipped by the loop guard)",
    )
    results.add_argument("--limit", type=positive_int, default=1000)
    results.add_argument("--format", choices=("table", "json", "csv"), default="table")

    predict_dicom = group.add(
        "predict-dicom",
        _cmd_predict_dicom,
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

    deliveries = group.add("deliveries", _cmd_deliveries, help="list deliveries and their state")
    deliveries.add_argument("--state", choices=("pending", "sent", "dead"))
    deliveries.add_argument("--limit", type=positive_int, default=100)
    deliveries.add_argument("--format", choices=("table", "json", "csv"), default="table")

    send = group.add(
        "send",
        _cmd_send,
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

    resend = group.add(
        "resend",
        _cmd_resend,
        help="retry dead-lettered deliveries now",
        description="Put dead-lettered deliveries back in the queue and attempt them at once.",
    )
    resend.add_argument("ids", nargs="*", type=positive_int, metavar="DELIVERY_ID")
    resend.add_argument("--all", action="store_true", help="every dead-lettered delivery")
    resend.add_argument("--destination", metavar="AE@host:port", help="only to this peer")

    audit = group.add("audit", _cmd_audit, help="print the audit trail")
    audit.add_argument("--study", metavar="STUDY_UID")
    audit.add_argument("--sop", metavar="SOP_INSTANCE_UID")
    audit.add_argument("--kind", action="append", default=[], help="event kind (repeatable)")
    audit.add_argument("--since", type=since, help="ISO date/time, or an age: 30m, 2h, 7d")
    audit.add_argument("--limit", type=positive_int, default=1000)
    audit.add_argument("--format", choices=("table", "json", "csv"), default="table")

    prune = group.add(
        "prune",
        _cmd_prune,
        help="delete old received images and result files (the audit trail stays)",
        description="Delete the spooled DICOM file and the result files of every instance "
        "received more than DAYS ago, except where a job is unfinished or a result still waits "
        "for delivery. Database rows and the audit trail stay. Default: "
        "PNEUMONODE_RETENTION_DAYS.",
    )
    prune.add_argument("--older-than", type=days, metavar="DAYS", help="age in days, e.g. 30")
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    prune.add_argument("--format", choices=("table", "json"), default="table")


def _cmd_results(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.db.queries import ResultFilters, list_results

    filters = ResultFilters(
        study_uid=args.study,
        patient_id=args.patient,
        since=args.since,
        positive=True if args.positive else None,
        status=args.status,
        limit=args.limit,
        own_output=args.own,
    )
    with open_database(settings).session() as session:
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
    emit(rows, args.format, columns)
    return EXIT_OK


def _cmd_predict_dicom(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.conversion import ConversionError
    from pneumonode.conversion.decode import read_dataset
    from pneumonode.dicom_node.spool import safe_component
    from pneumonode.results import iod_lookup
    from pneumonode.worker.pipeline import analyse, write_results

    iod_lookup.install()  # this process makes SEG, SR and SC objects
    predictor = load_predictor(settings, args)
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
        print(f"{path.name}: {verdict(finding)} -> {files.folder}")
    return write_predictions(args.out, predictor, summary, failed, len(args.files))


def _cmd_deliveries(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from pneumonode.db.models import Delivery
    from pneumonode.results import result_kind

    database = open_database(settings)
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
    emit(rows, args.format, DELIVERY_COLUMNS)
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

    to = str(destination(args.destination))
    database = open_database(settings)
    ids: list[int] = []
    unreadable = 0
    for path in _expand(args.files):
        try:
            ids.append(queue_delivery(database, path, to))
        except Exception as exc:  # not a DICOM file: say so and go on with the others
            print(
                f"error: {path}: not a DICOM file with file meta ({type(exc).__name__})",
                file=sys.stderr,
            )
            unreadable += 1
    policy = RetryPolicy.from_settings(settings)
    if args.tls:
        policy = dataclasses.replace(policy, tls_destinations=policy.tls_destinations | {to})
    attempt_deliveries(database, ids, policy)
    failed = _print_deliveries(database, ids, f"sent to {to}:") + unreadable
    if failed == 0:
        return EXIT_OK
    print(f"error: {failed} of {len(ids) + unreadable} not delivered (see above)", file=sys.stderr)
    return EXIT_ERROR if failed == len(ids) + unreadable else EXIT_PARTIAL


def _cmd_resend(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.db.models import Delivery
    from pneumonode.db.outbox import resend_dead
    from pneumonode.dicom_node.delivery import RetryPolicy, attempt_deliveries

    if not args.ids and not args.all:
        raise CliError("name delivery ids, or --all for every dead-lettered delivery")
    to = str(destination(args.destination)) if args.destination else None
    database = open_database(settings)
    ids = resend_dead(database, Delivery, args.ids, all_dead=args.all, destination=to)
    if not ids:
        print("no dead-lettered deliveries match")
        return EXIT_OK
    attempt_deliveries(database, ids, RetryPolicy.from_settings(settings))
    failed = _print_deliveries(database, ids, "resent:")
    if failed == 0:
        return EXIT_OK
    print(f"error: {failed} of {len(ids)} not delivered (see above)", file=sys.stderr)
    return EXIT_ERROR if failed == len(ids) else EXIT_PARTIAL


def _cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.db.repository import list_audit

    database = open_database(settings)
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
    emit(rows, args.format, columns)
    return EXIT_OK


def _cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    from pneumonode.retention import prune

    older_than = args.older_than if args.older_than is not None else settings.retention_days
    if not older_than and args.older_than is None:
        raise CliError(
            "no retention period: pass --older-than DAYS or set PNEUMONODE_RETENTION_DAYS"
        )
    database = open_database(settings)
    with tqdm(desc="pruning", unit="instance", disable=args.format == "json") as bar:
        report = prune(
            settings,
            database,
            timedelta(days=older_than),
            dry_run=args.dry_run,
            progress=bar.update,
        )
    if args.format == "json":
        print(json.dumps({**dataclasses.asdict(report), "cutoff": report.cutoff.isoformat()}))
    else:
        print(report.summary())
    return EXIT_OK
