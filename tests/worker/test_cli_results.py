"""predict-dicom, results, and serve refusing to start without a model."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, text

from peers_harness import dciodvfy_errors
from pneumonode.cli import EXIT_ERROR, EXIT_OK, RESULT_COLUMNS, main
from pneumonode.db.models import (
    Base,
    Delivery,
    DeliveryState,
    Instance,
    InstanceStatus,
    Job,
    JobState,
    Result,
    Study,
)
from pneumonode.db.queries import ResultFilters, list_results, results_query
from pneumonode.db.session import Database


@pytest.mark.integration
def test_predict_dicom_writes_valid_results_offline(
    siim_sample_dicoms: list[Path],
    tiny_checkpoint: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    files = [str(p) for p in siim_sample_dicoms[:2]]
    code = main(
        [
            "predict-dicom",
            *files,
            "--out",
            str(out),
            "--weights",
            str(tiny_checkpoint(bias=20.0)),
            "--sc",
            "--backend",
            "torch",
        ]
    )
    assert code == EXIT_OK
    printed = capsys.readouterr().out
    assert printed.count("pneumothorax, ") == 2
    for path in siim_sample_dicoms[:2]:
        folder = out / str(pydicom.dcmread(path).SOPInstanceUID)
        names = {p.name for p in folder.iterdir()}
        assert {"seg.dcm", "sr.dcm", "sc.dcm", "image.png", "overlay.png", "mask.png"} <= names
        for name in ("seg.dcm", "sr.dcm", "sc.dcm"):
            assert dciodvfy_errors(folder / name) == [], name
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["version"] == "0.0.1-test"
    assert [p["present"] for p in summary["predictions"]] == [True, True]


def test_predict_dicom_reports_a_bad_file_in_one_line(
    tiny_checkpoint: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "not.dcm"
    bogus.write_bytes(b"not dicom at all" * 10)
    code = main(
        [
            "predict-dicom",
            str(bogus),
            "--out",
            str(tmp_path / "o"),
            "--weights",
            str(tiny_checkpoint()),
            "--backend",
            "torch",
        ]
    )
    assert code == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: not.dcm")


def test_serve_refuses_to_start_without_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PNEUMONODE_MODEL_PATH", str(tmp_path / "nowhere"))
    assert main(["serve"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PNEUMONODE_MODEL_PATH" in err[0]


def test_migrations_build_exactly_the_models(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def _fill(database: Database, count: int, seed: int = 0) -> datetime:
    """``count`` received images over 100 days: 10% skipped, 5% failed, the rest done (30%
    positive) with two deliveries each. Returns the newest received time."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    studies, instances, jobs, results, deliveries = [], [], [], [], []
    for i in range(count):
        study_id = i // 2 + 1
        if i % 2 == 0:
            studies.append(
                {
                    "id": study_id,
                    "study_uid": f"1.2.{study_id}",
                    "patient_id": f"P{study_id % 5000}",
                }
            )
        skipped = rng.random() < 0.1
        received = start + timedelta(seconds=i * 86.4)
        instances.append(
            {
                "id": i + 1,
                "study_id": study_id,
                "series_uid": f"1.2.{study_id}.1",
                "sop_uid": f"1.2.{study_id}.1.{i}",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
                "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                "path": f"x/{i}.dcm",
                "size_bytes": 1000,
                "status": InstanceStatus.SKIPPED if skipped else InstanceStatus.RECEIVED,
                "skip_reason": "view position LL, not frontal (PA/AP)" if skipped else None,
                "received_at": received,
                "updated_at": received,
                "times_received": 1,
            }
        )
        if skipped:
            continue
        failed = rng.random() < 0.05
        jobs.append(
            {
                "id": i + 1,
                "instance_id": i + 1,
                "state": JobState.FAILED if failed else JobState.DONE,
                "attempts": 1,
                "created_at": received,
            }
        )
        if failed:
            continue
        results.append(
            {
                "id": i + 1,
                "job_id": i + 1,
                "model_version": "1.0.0",
                "pneumothorax": rng.random() < 0.3,
                "max_probability": rng.random(),
                "area_pixels": 10,
                "area_mm2": 4.2,
                "side": "left",
                "side_assumed": False,
                "threshold": 0.5,
                "min_area_pixels": 0,
                "created_at": received,
            }
        )
        for kind in (0, 1):
            deliveries.append(
                {
                    "destination": "PACS@10.0.0.1:104",
                    "path": "/x",
                    "sop_uid": f"2.25.{i}.{kind}",
                    "sop_class_uid": "1.2",
                    "result_id": i + 1,
                    "state": DeliveryState.SENT,
                    "attempts": 1,
                    "next_attempt_at": received,
                    "created_at": received,
                }
            )
    with database.session() as session:
        for table, rows in (
            (Study, studies),
            (Instance, instances),
            (Job, jobs),
            (Result, results),
            (Delivery, deliveries),
        ):
            for chunk in range(0, len(rows), 5000):
                session.execute(insert(table), rows[chunk : chunk + 5000])
    return start + timedelta(seconds=(count - 1) * 86.4)


def test_results_filters_and_formats(
    database: Database, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    newest = _fill(database, 400)
    with database.session() as session:
        everything = list_results(session, ResultFilters(limit=10_000))
        assert len(everything) == 400
        assert everything[0].received_at == newest  # newest first
        positive = list_results(session, ResultFilters(positive=True, limit=10_000))
        assert positive and all(r.finding == "present" for r in positive)
        skipped = list_results(session, ResultFilters(status="skipped", limit=10_000))
        assert skipped and all(r.skip_reason for r in skipped)
        failed = list_results(session, ResultFilters(status="failed", limit=10_000))
        assert failed and all(r.finding is None for r in failed)
        assert len(positive) + len(skipped) + len(failed) < 400
        one = list_results(session, ResultFilters(study_uid="1.2.7"))
        assert {r.sop_uid for r in one} == {"1.2.7.1.12", "1.2.7.1.13"}
        recent = list_results(session, ResultFilters(since=newest - timedelta(hours=1)))
        assert 0 < len(recent) < 50
        done = [r for r in everything if r.status == "done"]
        assert {r.delivery for r in done} == {"sent"} and done[
            0
        ].destinations == "PACS@10.0.0.1:104"
        with pytest.raises(ValueError, match="unknown status"):
            list_results(session, ResultFilters(status="finished"))

    monkeypatch.setenv("PNEUMONODE_DATABASE_URL", database.url)
    assert main(["results", "--positive", "--format", "csv", "--limit", "5"]) == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 5 and {r["finding"] for r in rows} == {"present"}
    assert rows[0]["area"] == "4 mm2" and rows[0]["delivery"] == "sent"
    assert main(["results", "--status", "skipped", "--limit", "3"]) == EXIT_OK
    header, *table = capsys.readouterr().out.strip().splitlines()
    assert header.split() == [column.upper() for column in RESULT_COLUMNS]
    assert len(table) == 3 and all("skipped: view position LL" in line for line in table)
    # aligned: every column starts where its name starts in the header
    assert all(line.index(" skipped") == header.index(" STATUS") for line in table)


@pytest.mark.slow
def test_results_on_100k_images_use_the_indexes(tmp_path: Path) -> None:
    database = Database.open(f"sqlite:///{tmp_path / 'big.sqlite3'}")
    _fill(database, 100_000)
    with database.session() as session:
        page = list_results(session, ResultFilters(limit=50))
        assert len(page) == 50
        by_patient = list_results(session, ResultFilters(patient_id="P42"))
        assert by_patient and all(r.patient_id == "P42" for r in by_patient)
        # the plans: newest-first paging walks the received_at index; a patient is an index seek
        from sqlalchemy.dialects import sqlite

        for filters, index in (
            (ResultFilters(limit=50), "ix_instances_received_at"),
            (ResultFilters(patient_id="P42"), "ix_studies_patient_id"),
        ):
            statement = results_query(filters)
            compiled = statement.compile(
                dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
            )
            plan = " ".join(
                str(row) for row in session.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
            )
            assert index in plan, plan
    database.dispose()


def test_results_into_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    """`pneumonode results | head`: when the reader goes, the command stops quietly (the exit
    status of a process ended by SIGPIPE), with no error on stderr."""
    database_url = f"sqlite:///{tmp_path / 'node.sqlite3'}"
    database = Database.open(database_url)
    _fill(database, 400)  # about 100 kB of CSV: more than a pipe holds
    database.dispose()
    command = subprocess.Popen(
        [sys.executable, "-m", "pneumonode", "results", "--format", "csv", "--limit", "400"],
        env={**os.environ, "PNEUMONODE_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert command.stdout is not None and command.stderr is not None
    assert command.stdout.readline().startswith(b"received_at,")
    command.stdout.close()
    assert command.wait(timeout=60) == 128 + signal.SIGPIPE
    assert command.stderr.read() == b""
