"""Receiving one instance: the listener's handler for a dataset the upper layer has written into
the spool's ``.incoming`` folder. It composes three steps and answers a status:

1. **parse** (``parse.parse_received``): the structure is readable, the header's values match
   the request, the selection's verdict;
2. **spool** (``spool.IncomingFile``): fsync from the start, rename into place, hashes to
   compare a re-send;
3. **record** (``record.InstanceRecorder``): one database transaction, inside which the file
   is put in place; the answer waits until both are durable.

``InstanceReceiver.receive`` never raises: every failure becomes a DICOM status with a comment
(PS3.4 B.2.3: 0xA700 out of resources, 0xA900 data set does not match SOP Class, 0xC210 cannot
understand; 0x0110 processing failure). A dataset is acknowledged only once its whole structure
is known to be readable (``structure.check_structure``): a peer answered Success never sends it
again.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset
from sqlalchemy.exc import SQLAlchemyError

from pneumonode.db.audit import audit, audit_now
from pneumonode.db.repository import (
    ReceivedInstance,
    ReceiveOutcome,
    ReceiveRecord,
    find_instance,
)
from pneumonode.db.session import Database
from pneumonode.dicom_node import dimse
from pneumonode.dicom_node.parse import (
    HEADER_KEYWORDS,
    ParsedInstance,
    Problem,
    RefusedDatasetError,
    parse_received,
    read_values,
    text_value,
)
from pneumonode.dicom_node.record import InstanceRecorder
from pneumonode.dicom_node.spool import IncomingFile, Spool, dataset_offset
from pneumonode.dicom_node.structure import prepare_structure_check
from pneumonode.selection_rules import SelectionRules

__all__ = ["HEADER_KEYWORDS", "InstanceReceiver", "Status", "dataset_offset"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Status:
    """A C-STORE response status with an optional Error Comment (at most 64 characters), and
    what to do once the response is sent (``then``: never raises)."""

    code: int
    comment: str = ""
    then: Callable[[], None] | None = field(default=None, compare=False)

    def as_dataset(self) -> Dataset | int:
        if not self.comment:
            return self.code
        ds = Dataset()
        ds.Status = self.code
        ds.ErrorComment = self.comment[:64]
        return ds


#: The answer to each refusal of the parse step.
_REFUSED = {
    Problem.DAMAGED: Status(dimse.Status.CANNOT_UNDERSTAND, "cannot understand: damaged dataset"),
    Problem.TOO_LARGE_TO_CHECK: Status(
        dimse.Status.OUT_OF_RESOURCES, "out of resources: deflated dataset too large"
    ),
    Problem.NO_FILE_META_LENGTH: Status(
        dimse.Status.CANNOT_UNDERSTAND, "cannot understand: no file meta group length"
    ),
    Problem.UNREADABLE: Status(
        dimse.Status.CANNOT_UNDERSTAND, "cannot understand: unreadable dataset"
    ),
    Problem.SOP_CLASS_DIFFERS: Status(
        dimse.Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "data set does not match SOP Class: SOP Class UID differs",
    ),
    Problem.NO_STUDY_UID: Status(
        dimse.Status.CANNOT_UNDERSTAND, "cannot understand: no Study Instance UID"
    ),
    Problem.SOP_INSTANCE_DIFFERS: Status(
        dimse.Status.CANNOT_UNDERSTAND, "cannot understand: SOP Instance UID mismatch"
    ),
}


class InstanceReceiver:
    """Stores received instances in the spool and the database (parse, spool, record)."""

    def __init__(
        self,
        spool: Spool,
        database: Database,
        min_free_bytes: int,
        rules: SelectionRules,
        on_job: Callable[[int], None] | None = None,
    ) -> None:
        self.spool = spool
        self.recorder = InstanceRecorder(database)
        self.min_free_bytes = min_free_bytes
        self.rules = rules
        self.on_job = on_job

    @property
    def database(self) -> Database:
        """The database of the record step (and of the audit events of refusals)."""
        return self.recorder.database

    @database.setter
    def database(self, database: Database) -> None:
        self.recorder.database = database

    def disk_is_low(self) -> bool:
        return self.spool.free_bytes() < self.min_free_bytes

    def warm_up(self) -> None:
        """Make the first C-STORE as quick as the next ones: run the record step's statements
        once (rolled back), build the structure check's data dictionary table, and start the
        threads that fsync."""
        self.recorder.warm_up()
        prepare_structure_check()
        self.spool.start_threads()

    def receive(
        self,
        temp: Path,
        sop_class_uid: str,
        sop_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str | None,
        peer_address: str | None,
    ) -> Status:
        """Handle a dataset received into ``temp`` (a DICOM file in the spool's filesystem)."""
        who = {"calling_ae": calling_ae, "peer_address": peer_address, "sop_uid": sop_uid}
        try:
            if self.disk_is_low():
                self._audit_refusal("free disk space below the watermark", **who)
                return Status(dimse.Status.OUT_OF_RESOURCES, "out of resources: disk space low")
            # the disk works while we parse and query the database (a refused dataset is
            # fsynced for nothing: refusals are rare, stored datasets are not)
            incoming = IncomingFile(self.spool, temp)
            try:
                parsed = parse_received(
                    temp, sop_class_uid, sop_uid, transfer_syntax_uid, self.rules
                )
            except RefusedDatasetError as refused:
                self._audit_refusal(refused.reason, **who)
                return _REFUSED[refused.problem]
            item = self._item(
                parsed,
                sop_class_uid,
                sop_uid,
                transfer_syntax_uid,
                calling_ae=calling_ae,
                peer_address=peer_address,
            )
            return self._store(incoming, parsed.offset, item)
        except Exception:
            log.exception("unexpected failure while receiving an instance")
            return Status(dimse.Status.PROCESSING_FAILURE, "processing failure")

    def _item(
        self,
        parsed: ParsedInstance,
        sop_class_uid: str,
        sop_uid: str,
        transfer_syntax_uid: str,
        *,
        calling_ae: str | None,
        peer_address: str | None,
    ) -> ReceivedInstance:
        """What the record step stores of a parsed instance and its request."""
        kept = parsed.kept
        return ReceivedInstance(
            study_uid=parsed.study_uid,
            series_uid=kept["SeriesInstanceUID"],
            sop_uid=sop_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            modality=kept["Modality"],
            patient_id=kept["PatientID"],
            accession_number=kept["AccessionNumber"],
            study_date=kept["StudyDate"],
            path=str(self.spool.relative_path(parsed.study_uid, sop_uid)),
            size_bytes=parsed.size_bytes,
            sha256=None,
            calling_ae=calling_ae,
            peer_address=peer_address,
            skip_reason=parsed.skip_reason,
        )

    def _store(self, incoming: IncomingFile, offset: int, item: ReceivedInstance) -> Status:
        """The spool and record steps; the answer waits until both are durable, and a failed
        transaction removes a first arrival's file again."""
        try:
            item, record = self.recorder.record(item, incoming, offset)
            incoming.wait_until_durable()
        except SQLAlchemyError as exc:
            log.error("database unavailable: %s", type(exc).__name__)
            incoming.withdraw()  # never leave a file the database does not know about
            return Status(dimse.Status.OUT_OF_RESOURCES, "out of resources: database unavailable")
        except OSError as exc:
            reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or "I/O error")
            log.error("cannot write to the spool: %s", reason)
            return Status(dimse.Status.OUT_OF_RESOURCES, f"out of resources: {reason}")
        return Status(dimse.Status.SUCCESS, then=lambda: self._announce(item, record))

    def _announce(self, item: ReceivedInstance, record: ReceiveRecord) -> None:
        """After the response (the peer need not wait for it): wake the dispatcher, log."""
        fresh_job = record.outcome is not ReceiveOutcome.RESENT_IDENTICAL
        if record.job_id is not None and fresh_job and self.on_job is not None:
            self.on_job(record.job_id)
        log.info(
            "stored instance %d (%s, %d bytes): %s",
            record.instance_id,
            record.outcome,
            item.size_bytes,
            item.skip_reason or f"job {record.job_id}",
        )

    def sweep_incoming(self, older_than: float) -> None:
        """Tidy ``.incoming`` (files untouched for ``older_than`` seconds): first put in place
        the files whose rename an unclean stop undid after their rows had committed (see
        ``record``), then delete the rest, leftovers of interrupted transfers. With the
        database unavailable nothing is deleted: a file it knows might be among them."""
        stale = self.spool.stale_incoming(older_than)
        if not stale:
            return
        try:
            recovered = sum(self._recover(temp) for temp in stale)
        except SQLAlchemyError as exc:
            log.error(
                "cannot tidy the spool's incoming folder: database unavailable (%s)",
                type(exc).__name__,
            )
            return
        if recovered:
            log.warning("put %d received file(s) back in place after an unclean stop", recovered)
        self.spool.sweep_incoming(older_than)

    def _recover(self, temp: Path) -> bool:
        """Put ``temp`` in place if it is a whole received file the database holds, at a path
        where no file is (whether it is put in place)."""
        try:
            values, _, offset = read_values(temp)
        except Exception:  # a partial transfer (pydicom raises many types)
            return False
        study_uid = text_value(values, "StudyInstanceUID")
        sop_uid = text_value(values, "SOPInstanceUID")
        if not study_uid or not sop_uid:
            return False
        relative = str(self.spool.relative_path(study_uid, sop_uid))
        if (self.spool.root / relative).exists():
            return False
        with self.database.session() as session:
            instance = find_instance(session, sop_uid)
            size = temp.stat().st_size - offset
            if instance is None or instance.path != relative or instance.size_bytes != size:
                return False
            self.spool.commit(temp, study_uid, sop_uid)
            audit(
                session,
                "instance.recovered",
                "put in place at start-up: an unclean stop had undone its rename",
                study_uid=study_uid,
                sop_uid=sop_uid,
            )
        return True

    def _audit_refusal(self, reason: str, **who: str | None) -> None:
        log.warning("refused an instance: %s", reason)
        audit_now(self.database, "instance.refused", f"refused: {reason}", **who)
