"""Recording a received instance: the last of the listener's three steps (parse, spool, record).

One database transaction per instance, on a connection (a first arrival runs Core statements
only, on the driver's cursor: ``db.direct``; no ORM session), inside which the spool step puts
the file in place. A first arrival takes three waits for the disk, overlapped where they can
be: its rows are written while the file's fsync runs; then the file is renamed into place, and
the transaction commits while the folder's fsync runs (the caller waits for that fsync before
it answers). A power cut between that commit and the end of the folder's fsync may undo the
rename: the file is then still in ``.incoming``, fsynced, and the listener's sweep puts it in
place at the next start. A re-send commits only after its file is in place.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pneumonode.db.audit import audit
from pneumonode.db.repository import (
    ReceivedInstance,
    ReceiveRecord,
    find_known_instance,
    record_received_instance,
)
from pneumonode.db.session import Database
from pneumonode.dicom_node.spool import IncomingFile

__all__ = ["InstanceRecorder"]

log = logging.getLogger(__name__)


class InstanceRecorder:
    """Records received instances in the database, putting their files in place meanwhile."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def record(
        self, item: ReceivedInstance, incoming: IncomingFile, offset: int
    ) -> tuple[ReceivedInstance, ReceiveRecord]:
        """Record ``item`` (its dataset at ``offset`` in ``incoming``) and put its file in
        place, in one transaction; the item as recorded (a re-send's with its hash) and the
        record. Raises SQLAlchemy's errors (the file of a first arrival is then still in
        place: :meth:`IncomingFile.withdraw` removes it) and ``OSError`` from the disk."""
        for attempt in range(2):
            try:
                with self.database.engine.begin() as connection:
                    known = find_known_instance(connection, item.sop_uid)
                    if known is None:
                        record = record_received_instance(connection, item)
                        incoming.place_new(item.study_uid, item.sop_uid)
                        return item, record
                    sha256, unchanged = incoming.replace_if_changed(
                        offset, item.study_uid, item.sop_uid, known.sha256, known.path
                    )
                    item = replace(item, sha256=sha256)
                    record = record_received_instance(connection, item, known, unchanged=unchanged)
                    return item, record
            except IntegrityError:
                if attempt == 1:
                    raise  # another association stored the same instance at the same time
        raise AssertionError("unreachable: the second attempt returns or raises")

    def warm_up(self) -> None:
        """Run what recording one instance writes (its statements and an audit event) once, in
        a transaction that is rolled back: the first image used to take about 30 ms more while
        SQLAlchemy configured its mappers and compiled these statements."""
        item = ReceivedInstance(
            study_uid="2.25.1",
            series_uid="2.25.2",
            sop_uid="2.25.3",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="DX",
            patient_id=None,
            accession_number=None,
            study_date=None,
            path="warm-up",
            size_bytes=0,
            sha256=None,
            calling_ae=None,
            peer_address=None,
            skip_reason=None,
        )
        try:
            with self.database.sessions() as session, session.begin() as transaction:
                connection = session.connection()
                record_received_instance(connection, item, find_known_instance(connection, ""))
                audit(session, "warm-up", "rolled back")
                session.flush()
                transaction.rollback()
        except SQLAlchemyError as exc:  # the first C-STORE will say what is wrong
            log.warning("could not warm up the database statements: %s", type(exc).__name__)
