"""The audit trail's one writer: the row every audit event becomes, and the rule for its message.

Every audit event is built by :func:`audit_row`, whichever way it reaches the database: an ORM
session (:func:`audit`; :func:`audit_now` for an event that goes with no other write, in a
transaction of its own), or the listener's statements on the DBAPI cursor (:func:`audit_direct`,
no session per instance). The rule for a message:

- it is one line: line breaks and other control characters become spaces;
- it never holds the row's patient identifiers: the PatientID or Accession Number given with the
  event (kept in their own columns, for traceability) is replaced by :data:`REDACTED` where a
  message would repeat it;
- it fits its column: at most :data:`MESSAGE_LENGTH` characters, the cut marked with ``…``.

A kind longer than its column, or a field the table does not have, is a programming error and
raises at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, String
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from pneumonode.db.direct import direct_insert
from pneumonode.db.models import AuditEvent, utcnow
from pneumonode.db.session import Database

__all__ = [
    "FIELDS",
    "KIND_LENGTH",
    "MESSAGE_LENGTH",
    "REDACTED",
    "audit",
    "audit_direct",
    "audit_message",
    "audit_now",
    "audit_row",
]

log = logging.getLogger(__name__)


def _length(column: str) -> int:
    kind = AuditEvent.__table__.c[column].type
    assert isinstance(kind, String) and kind.length is not None
    return kind.length


#: The longest message and kind the table holds (characters).
MESSAGE_LENGTH = _length("message")
KIND_LENGTH = _length("kind")
#: What a message shows instead of a patient identifier given with the event.
REDACTED = "[redacted]"
#: The columns an event may give besides ``kind``, ``message`` and ``at``.
FIELDS = frozenset(
    column.key
    for column in AuditEvent.__table__.columns
    if column.key not in {"id", "at", "kind", "message"}
)
#: Identifiers shorter than this are not looked for in a message ("1" would blank out "job 1").
_MIN_IDENTIFIER = 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_INSERT = direct_insert(AuditEvent.__table__)  # type: ignore[arg-type]


def audit_message(message: str, identifiers: Sequence[str | None] = ()) -> str:
    """``message`` as the audit trail keeps it (the rule in the module's docstring).

    ``identifiers``: the patient identifiers of the event (PatientID, Accession Number), each
    replaced by :data:`REDACTED` where it appears in the message as a whole word.
    """
    text = _CONTROL.sub(" ", message) if not message.isprintable() else message
    for identifier in identifiers:
        value = (identifier or "").strip()
        if len(value) >= _MIN_IDENTIFIER and value in text:
            text = re.sub(rf"(?<![\w.]){re.escape(value)}(?![\w.])", REDACTED, text)
    if len(text) > MESSAGE_LENGTH:
        text = text[: MESSAGE_LENGTH - 1] + "…"
    return text


def audit_row(
    kind: str, message: str, *, at: datetime | None = None, **fields: Any
) -> dict[str, Any]:
    """One audit event as a row: every column but the id, the message as the rule makes it.

    ``message`` must not contain patient data; identifiers go in their own ``fields``
    (``study_uid``, ``sop_uid``, ``calling_ae``, ``peer_address``, ``patient_id``,
    ``accession_number``, ``detail``). ``at``: now (UTC) unless given.
    """
    if not 1 <= len(kind) <= KIND_LENGTH:
        raise ValueError(f"audit kind {kind!r}: must be 1-{KIND_LENGTH} characters")
    unknown = fields.keys() - FIELDS
    if unknown:
        raise TypeError(
            f"audit event fields {sorted(unknown)}: the audit table has {sorted(FIELDS)}"
        )
    row = dict.fromkeys(FIELDS)
    row.update(fields)
    row["at"] = at if at is not None else utcnow()
    row["kind"] = kind
    row["message"] = audit_message(message, (row["patient_id"], row["accession_number"]))
    return row


def audit(session: Session, kind: str, message: str, **fields: Any) -> AuditEvent:
    """Add one audit event to ``session`` (committed with the caller's transaction)."""
    event = AuditEvent(**audit_row(kind, message, **fields))
    session.add(event)
    return event


def audit_direct(db: Session | Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows made by :func:`audit_row` on the DBAPI cursor of ``db``'s connection, inside
    its transaction: the listener's fast path (no ORM session per instance; see ``db.direct``),
    and many events at once."""
    if rows:
        _INSERT.many(db.connection() if isinstance(db, Session) else db, rows)


def audit_now(database: Database, kind: str, message: str, **fields: Any) -> bool:
    """Write one audit event in a transaction of its own (an event that goes with no other
    write: a rejected association, a refused instance); False, logged, while the database is
    unavailable, so that the caller answers the peer all the same."""
    try:
        with database.session() as session:
            audit(session, kind, message, **fields)
    except SQLAlchemyError:
        log.error("could not write audit event %s: database unavailable", kind)
        return False
    return True
