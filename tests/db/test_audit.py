"""One audit writer: the ORM path and the listener's cursor path keep the same message rule."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from received_item import received_instance
from sqlalchemy import select

from pneumonode.db.audit import (
    MESSAGE_LENGTH,
    REDACTED,
    audit,
    audit_direct,
    audit_message,
    audit_row,
)
from pneumonode.db.models import AuditEvent
from pneumonode.db.repository import find_known_instance, record_received_instance
from pneumonode.db.session import Database

ITEM = received_instance(patient_id="PAT-4711", accession_number="ACC-0815")
#: A skip reason that breaks the rule: two lines, patient identifiers (a corrupt dataset's).
REASON = "view position PAT-4711\nfrom ACC-0815"
#: A message too long for the column.
LONG = "refused: " + "x" * 600


def _messages(database: Database, kind: str) -> list[str]:
    with database.session() as session:
        query = select(AuditEvent.message).where(AuditEvent.kind == kind).order_by(AuditEvent.id)
        return list(session.scalars(query))


def test_the_rule_cuts_joins_lines_and_redacts() -> None:
    cut = audit_message(LONG)
    assert len(cut) == MESSAGE_LENGTH and cut == LONG[: MESSAGE_LENGTH - 1] + "…"
    assert audit_message("x" * MESSAGE_LENGTH) == "x" * MESSAGE_LENGTH  # fits: unchanged
    shown = audit_message(f"skipped: {REASON}", ("PAT-4711", "ACC-0815"))
    assert shown == f"skipped: view position {REDACTED} from {REDACTED}"
    # only whole identifiers, and not short ones that would blank out numbers
    assert audit_message("job 12 created", ("12",)) == "job 12 created"
    assert audit_message("PAT-47110 and PAT-4711", ("PAT-4711",)) == f"PAT-47110 and {REDACTED}"


def test_a_row_names_only_the_tables_columns() -> None:
    row = audit_row("job.created", "job 1 created", study_uid="1.2", detail={"job_id": 1})
    assert row["study_uid"] == "1.2" and row["patient_id"] is None and row["at"] is not None
    with pytest.raises(TypeError, match="patient_name"):
        audit_row("job.created", "job 1 created", patient_name="DOE^JOHN")
    with pytest.raises(ValueError, match="1-48 characters"):
        audit_row("k" * 49, "too long a kind")


def test_the_fast_path_and_the_session_path_store_the_same_message(database: Database) -> None:
    """A first arrival is recorded on the DBAPI cursor, a re-send and ``audit`` through the ORM
    session: each keeps the message as the rule makes it, the identifiers in their columns."""
    skipped = replace(ITEM, skip_reason=REASON)
    ids: dict[str, Any] = {"patient_id": ITEM.patient_id, "accession_number": ITEM.accession_number}
    with database.engine.begin() as connection:  # the listener's way: no session
        record_received_instance(connection, skipped)
        audit_direct(connection, [audit_row("test.long", LONG, **ids)])
    with database.session() as session:  # a changed re-send goes through the session
        known = find_known_instance(session, ITEM.sop_uid)
        record_received_instance(session, replace(skipped, sha256="b" * 64), known)
        audit(session, "instance.skipped", f"skipped: {REASON}", **ids)
        audit(session, "test.long", LONG, **ids)
    expected = audit_message(f"skipped: {REASON}", ("PAT-4711", "ACC-0815"))
    assert _messages(database, "instance.skipped") == [expected] * 3
    assert _messages(database, "test.long") == [audit_message(LONG)] * 2
    with database.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.kind != "job.created"))
        assert {(e.patient_id, e.accession_number) for e in events} == {("PAT-4711", "ACC-0815")}
        for event in session.scalars(select(AuditEvent)):
            assert "PAT-4711" not in event.message and "ACC-0815" not in event.message


def test_many_rows_at_once_on_a_session(database: Database) -> None:
    with database.session() as session:
        audit_direct(session, [audit_row("test.bulk", f"event {i}\r\n") for i in range(3)])
        audit_direct(session, [])
    assert _messages(database, "test.bulk") == ["event 0  ", "event 1  ", "event 2  "]
