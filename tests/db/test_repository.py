"""The audit database on SQLite and on PostgreSQL: schema, idempotent receiving, the trail."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from received_item import received_instance
from sqlalchemy import bindparam, inspect, select, text

from pneumonode.cli import AUDIT_COLUMNS, main
from pneumonode.db.audit import audit
from pneumonode.db.direct import Direct, direct_insert
from pneumonode.db.jobs import record_result
from pneumonode.db.models import AuditEvent, Job, JobState, Result, Study, utcnow
from pneumonode.db.repository import (
    ReceivedInstance,
    ReceiveOutcome,
    find_known_instance,
    list_audit,
    record_received_instance,
)
from pneumonode.db.session import Database
from pneumonode.findings import AlgorithmInfo, Finding

ITEM = received_instance()


def receive(
    database: Database, item: ReceivedInstance, *, unchanged: bool = False
) -> tuple[ReceiveOutcome, int | None, str | None]:
    with database.session() as session:
        known = find_known_instance(session, item.sop_uid)
        record = record_received_instance(session, item, known, unchanged=unchanged)
        return record.outcome, record.job_id, record.job_state


def kinds(database: Database) -> list[str]:
    with database.session() as session:
        return [e.kind for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_schema_is_migrated_and_reopening_is_harmless(database: Database) -> None:
    tables = set(inspect(database.engine).get_table_names())
    assert {"studies", "instances", "jobs", "results", "deliveries", "audit_events"} <= tables
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pneumonode.db.session import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    Database.open(database.url).dispose()


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    database = Database.open(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with database.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    database.dispose()


def test_new_instance_creates_study_job_and_audit(database: Database) -> None:
    outcome, job_id, state = receive(database, ITEM)
    assert outcome is ReceiveOutcome.NEW and job_id is not None and state == JobState.PENDING
    with database.session() as session:
        study = session.scalars(select(Study)).one()
        assert (study.patient_id, study.accession_number) == ("PAT-1", "ACC-1")
        assert study.created_at.tzinfo is not None and study.created_at.utcoffset() == timedelta(0)
    assert kinds(database) == ["instance.received", "job.created"]


def test_identical_resend_is_idempotent(database: Database) -> None:
    _, first_job, _ = receive(database, ITEM)
    outcome, job_id, _ = receive(database, ITEM, unchanged=True)
    assert outcome is ReceiveOutcome.RESENT_IDENTICAL and job_id == first_job
    with database.session() as session:
        assert len(session.scalars(select(Job)).all()) == 1
    assert kinds(database)[-1] == "instance.resent"


def test_changed_resend_resets_the_job(database: Database) -> None:
    _, job_id, _ = receive(database, ITEM)
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state = JobState.DONE
    outcome, again, state = receive(database, replace(ITEM, sha256="b" * 64, size_bytes=2000))
    assert (
        outcome is ReceiveOutcome.RESENT_CHANGED and again == job_id and state == JobState.PENDING
    )
    assert kinds(database)[-2:] == ["instance.resent", "job.reset"]


def test_skipped_instance_has_no_job_and_says_why(database: Database) -> None:
    outcome, job_id, _ = receive(
        database, replace(ITEM, skip_reason="view position LL, not frontal")
    )
    assert outcome is ReceiveOutcome.NEW and job_id is None
    with database.session() as session:
        [event] = list_audit(session, kinds=["instance.skipped"])
        assert event.message == "skipped: view position LL, not frontal"
        assert event.patient_id == "PAT-1"  # kept for traceability, never in the message


def test_audit_filters_and_order(database: Database) -> None:
    with database.session() as session:
        for i in range(5):
            audit(session, "test.event", f"event {i}", study_uid="9.9" if i % 2 else "8.8")
    with database.session() as session:
        events = list_audit(session, kinds=["test.event"])
        assert [e.message for e in events] == [f"event {i}" for i in range(5)]
        assert [e.message for e in list_audit(session, study_uid="9.9")] == ["event 1", "event 3"]
        assert [e.message for e in list_audit(session, limit=2)] == ["event 3", "event 4"]
        future = datetime.now(UTC) + timedelta(hours=1)
        assert list_audit(session, since=future) == []


def test_audit_cli_formats(
    database: Database, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    receive(database, ITEM)
    monkeypatch.setenv("PNEUMONODE_DATABASE_URL", database.url)
    assert main(["audit", "--format", "json", "--study", "1.2.3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in rows] == ["instance.received", "job.created"]
    assert rows[0]["patient_id"] == "PAT-1" and rows[0]["detail"]["size_bytes"] == 1000
    assert main(["audit", "--format", "csv", "--since", "1h"]) == 0
    csv_out = capsys.readouterr().out.splitlines()
    assert csv_out[0].startswith("at,kind,") and len(csv_out) == 3
    assert main(["audit", "--kind", "job.created"]) == 0
    table = capsys.readouterr().out
    header, *lines = table.splitlines()
    assert header.split() == [column.upper() for column in AUDIT_COLUMNS]
    assert len(lines) == 1 and lines[0].index("job.created") == header.index("KIND")
    assert "job.created" in table and "instance.received" not in table
    assert "PAT-1" not in table  # the table view never shows patient identifiers


def test_direct_statements_store_what_sqlalchemy_would(database: Database) -> None:
    """The listener's statements run on the DBAPI cursor: values (datetimes, JSON, enums) and
    Python defaults arrive as the ORM reads them back, inside the connection's transaction."""
    insert_study = direct_insert(Study.__table__, Study.id)  # type: ignore[arg-type]
    insert_event = direct_insert(AuditEvent.__table__)  # type: ignore[arg-type]
    find_study = Direct(select(Study.id).where(Study.study_uid == bindparam("study_uid")))
    at = datetime(2026, 11, 28, 4, 5, 6, 789012, tzinfo=UTC)
    with database.engine.begin() as connection:
        study_id = insert_study.scalar(connection, {"study_uid": "9.8.7", "patient_id": "P-9"})
        insert_event.many(
            connection,
            [
                {"at": at, "kind": "instance.received", "message": "one", "detail": {"n": 1}},
                {"kind": "job.created", "message": "two", "study_uid": "9.8.7"},
            ],
        )
        assert find_study.scalar(connection, {"study_uid": "9.8.7"}) == study_id
    try:
        with database.engine.begin() as connection:  # rolled back: nothing stays
            insert_study.scalar(connection, {"study_uid": "6.5.4"})
            raise RuntimeError("abandon")
    except RuntimeError:
        pass
    with database.session() as session:
        study = session.get(Study, study_id)
        assert study is not None and study.patient_id == "P-9" and study.study_date is None
        assert abs((study.created_at - utcnow()).total_seconds()) < 60  # the Python default
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert [(e.kind, e.detail, e.study_uid) for e in events] == [
            ("instance.received", {"n": 1}, None),
            ("job.created", None, "9.8.7"),
        ]
        assert events[0].at == at
        assert session.scalar(select(Study).where(Study.study_uid == "6.5.4")) is None


def test_a_result_keeps_the_post_processing_it_was_made_with(database: Database) -> None:
    """threshold, growing (hysteresis) and minimum area are stored with the result, so the audit
    trail says how each mask was cut; a model without growing stores none (null)."""
    _, job_id, _ = receive(database, ITEM)
    finding = Finding(True, 0.97, 4200, 310.5, "right", False, probability=0.91, threshold=0.44)
    grown = AlgorithmInfo("m", "2.1.2", 0.6, 262, None, "Research only.", grow_threshold=0.3)
    plain = replace(grown, version="2.0.0", grow_threshold=None)
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for algorithm in (grown, plain):
            record_result(
                session,
                job,
                finding,
                algorithm,
                seg_sop_uid="1.2",
                sr_sop_uid="1.3",
                sc_sop_uid=None,
            )
    with database.session() as session:
        rows = session.scalars(select(Result).order_by(Result.model_version)).all()
        assert [
            (r.model_version, r.threshold, r.grow_threshold, r.min_area_pixels) for r in rows
        ] == [
            ("2.0.0", 0.6, None, 262),
            ("2.1.2", 0.6, 0.3, 262),
        ]
        assert rows[1].probability == 0.91 and rows[1].operating_point == 0.44
