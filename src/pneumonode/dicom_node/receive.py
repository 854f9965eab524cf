"""Receiving one instance: check its structure, parse the header, spool the bytes durably,
record it, answer a status.

``InstanceReceiver.receive`` never raises: every failure becomes a DICOM status with a comment
(PS3.4 B.2.3: 0xA700 out of resources, 0xA900 data set does not match SOP Class, 0xC210 cannot
understand; 0x0110 processing failure). A dataset is acknowledged only once its whole structure
is known to be readable (``structure.check_structure``): a peer answered Success never sends it
again.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import struct
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pneumonode.conversion.decode import BoundedReader, keep_dicom_values_out_of_logs
from pneumonode.db.repository import (
    KnownInstance,
    ReceivedInstance,
    ReceiveOutcome,
    ReceiveRecord,
    audit,
    find_instance,
    find_known_instance,
    record_received_instance,
)
from pneumonode.db.session import Database
from pneumonode.dicom_node.header import read_header
from pneumonode.dicom_node.selection import SELECTION_KEYWORDS, SelectionRules, skip_reason
from pneumonode.dicom_node.spool import Spool, Syncs
from pneumonode.dicom_node.structure import (
    DamagedDatasetError,
    TooLargeToCheckError,
    check_structure,
    prepare_structure_check,
)

__all__ = ["HEADER_KEYWORDS", "InstanceReceiver", "Status", "dataset_offset"]

log = logging.getLogger(__name__)

_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # little / big endian
#: Attributes recorded with each instance, and their column widths.
_KEPT = {
    "SeriesInstanceUID": 128,
    "Modality": 16,
    "PatientID": 64,
    "AccessionNumber": 64,
    "StudyDate": 8,
}
_HASH_CHUNK = 1 << 20
#: What ``receive`` reads from a dataset (the Conformance Statement lists them).
HEADER_KEYWORDS = (
    "SOPClassUID",
    "StudyInstanceUID",
    "SOPInstanceUID",
    *_KEPT,
    *SELECTION_KEYWORDS,
)


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


OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0x0110


def dataset_offset(path: Path) -> int:
    """Byte offset of the dataset in a DICOM file: after preamble, 'DICM' and the file meta."""
    with path.open("rb") as handle:
        head = handle.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("no File Meta Information Group Length at the start of the file")
    group_length: int = struct.unpack("<I", head[140:144])[0]
    return 144 + group_length


def _hash_dataset(path: Path, offset: int) -> str:
    """SHA-256 of the dataset bytes (after the file meta)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stored_hash(path: Path) -> str | None:
    try:
        return _hash_dataset(path, dataset_offset(path))
    except (OSError, ValueError):
        return None  # the stored file is gone or damaged: keep the new one


def _read_header(path: Path) -> tuple[dict[str, Any], bool, int]:
    """The values of the attributes ``receive`` uses (None when absent), whether pixel data
    follows them, and the dataset's offset in the file. A quick walk of the elements
    (``header.read_header``) where it can; pydicom where the walk leaves the file to it. A
    value that cannot be converted raises."""
    keep_dicom_values_out_of_logs()
    header = read_header(path, HEADER_KEYWORDS)
    if header is not None:
        return header.values, header.has_pixel_data, header.offset
    offset = dataset_offset(path)
    with BoundedReader(io.FileIO(str(path), "rb")) as handle:  # no 4 GiB read for a bad length
        ds = dcmread(handle, stop_before_pixels=True)
        has_pixels = handle.read(4) in _PIXEL_DATA_TAGS
    return {keyword: ds.get(keyword) for keyword in HEADER_KEYWORDS}, has_pixels, offset


def _text(values: dict[str, Any], keyword: str, limit: int) -> str | None:
    value = values.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip()[:limit] or None


class InstanceReceiver:
    """Stores received instances in the spool and the database."""

    def __init__(
        self,
        spool: Spool,
        database: Database,
        min_free_bytes: int,
        rules: SelectionRules,
        on_job: Callable[[int], None] | None = None,
    ) -> None:
        self.spool = spool
        self.database = database
        self.min_free_bytes = min_free_bytes
        self.rules = rules
        self.on_job = on_job

    def disk_is_low(self) -> bool:
        return self.spool.free_bytes() < self.min_free_bytes

    def warm_up(self) -> None:
        """Make the first C-STORE as quick as the next ones: run what receiving one writes to
        the database (the instance's statements and an audit event) once, in a transaction that
        is rolled back, build the structure check's data dictionary table, and start the
        threads that fsync. The first image used to take about 30 ms more while SQLAlchemy
        configured its mappers and compiled these statements."""
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
                return Status(OUT_OF_RESOURCES, "out of resources: disk space low")
            # the disk works while we read the header and query the database (a refused
            # dataset is fsynced for nothing: refusals are rare, stored datasets are not)
            synced = self.spool.start_sync(temp)
            try:
                check_structure(temp, dataset_offset(temp), transfer_syntax_uid)
            except DamagedDatasetError as exc:  # names elements by tag, never a value
                self._audit_refusal(f"damaged dataset: {exc}", **who)
                return Status(CANNOT_UNDERSTAND, "cannot understand: damaged dataset")
            except TooLargeToCheckError as exc:
                self._audit_refusal(str(exc), **who)
                return Status(OUT_OF_RESOURCES, "out of resources: deflated dataset too large")
            except ValueError:  # no File Meta Information Group Length (an upload)
                self._audit_refusal("no File Meta Information Group Length", **who)
                return Status(CANNOT_UNDERSTAND, "cannot understand: no file meta group length")
            try:
                # a malformed element (a length that does not fit its VR, an unknown VR)
                # raises when its value is converted: every value we use is converted here,
                # so that such a dataset is refused, not a processing failure
                values, has_pixels, offset = _read_header(temp)
                dataset_class = _text(values, "SOPClassUID", 128)
                study_uid = _text(values, "StudyInstanceUID", 128)
                dataset_sop = _text(values, "SOPInstanceUID", 128)
                kept = {keyword: _text(values, keyword, limit) for keyword, limit in _KEPT.items()}
                reason = skip_reason(
                    values, sop_class_uid, has_pixel_data=has_pixels, rules=self.rules
                )
            except Exception as exc:  # pydicom raises many types on corrupt input
                self._audit_refusal(f"unreadable dataset ({type(exc).__name__})", **who)
                return Status(CANNOT_UNDERSTAND, "cannot understand: unreadable dataset")
            if dataset_class != sop_class_uid:
                self._audit_refusal("the dataset's SOP Class UID differs from the request's", **who)
                return Status(
                    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    "data set does not match SOP Class: SOP Class UID differs",
                )
            if not study_uid:
                self._audit_refusal("no Study Instance UID", **who)
                return Status(CANNOT_UNDERSTAND, "cannot understand: no Study Instance UID")
            if dataset_sop != sop_uid:
                self._audit_refusal("SOP Instance UID differs from the C-STORE request", **who)
                return Status(CANNOT_UNDERSTAND, "cannot understand: SOP Instance UID mismatch")
            item = ReceivedInstance(
                study_uid=study_uid,
                series_uid=kept["SeriesInstanceUID"],
                sop_uid=sop_uid,
                sop_class_uid=sop_class_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                modality=kept["Modality"],
                patient_id=kept["PatientID"],
                accession_number=kept["AccessionNumber"],
                study_date=kept["StudyDate"],
                path=str(self.spool.relative_path(study_uid, sop_uid)),
                size_bytes=temp.stat().st_size - offset,
                sha256=None,
                calling_ae=calling_ae,
                peer_address=peer_address,
                skip_reason=reason,
            )
            return self._store(temp, offset, item, synced)
        except Exception:
            log.exception("unexpected failure while receiving an instance")
            return Status(PROCESSING_FAILURE, "processing failure")

    def _store(
        self, temp: Path, offset: int, item: ReceivedInstance, synced: Future[None]
    ) -> Status:
        """Spool the file and record it in one database transaction; the answer waits until
        both are durable, and a failed commit removes the file again.

        A first arrival (the common case) takes three waits for the disk, overlapped where
        they can be: its rows are written while the file's fsync runs; then the file is
        renamed into place, and the transaction commits while the folder's fsync runs. A
        power cut between that commit and the end of the folder's fsync may undo the rename:
        the file is then still in ``.incoming``, fsynced, and ``sweep_incoming`` puts it in
        place at the next start. A re-send commits only after its file is in place.
        """
        final = self.spool.root / item.path
        placed = False  # a new file of ours is in the spool
        folder_synced: Syncs | None = None
        try:
            for attempt in range(2):
                try:
                    # a connection, not an ORM session: the new-instance path is Core only
                    with self.database.engine.begin() as connection:
                        known = find_known_instance(connection, item.sop_uid)
                        if known is None:
                            record = record_received_instance(connection, item)
                            _, folder_synced = self.spool.place(
                                temp, item.study_uid, item.sop_uid, synced
                            )
                            placed = True
                        else:
                            item, record = self._record_resend(
                                connection, temp, offset, item, known, synced
                            )
                    break
                except IntegrityError:
                    if attempt == 1:
                        raise  # another association stored the same instance at the same time
            if folder_synced is not None:
                folder_synced.result()
        except SQLAlchemyError as exc:
            log.error("database unavailable: %s", type(exc).__name__)
            if placed:  # never leave a file the database does not know about
                final.unlink(missing_ok=True)
            return Status(OUT_OF_RESOURCES, "out of resources: database unavailable")
        except OSError as exc:
            reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or "I/O error")
            log.error("cannot write to the spool: %s", reason)
            return Status(OUT_OF_RESOURCES, f"out of resources: {reason}")

        def announce() -> None:
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

        return Status(0x0000, then=announce)

    def _record_resend(
        self,
        connection: Connection,
        temp: Path,
        offset: int,
        item: ReceivedInstance,
        known: KnownInstance,
        synced: Future[None],
    ) -> tuple[ReceivedInstance, ReceiveRecord]:
        """A SOP Instance UID we hold already: compare the bytes; different ones replace the
        stored file (durably, before the transaction may commit)."""
        new = _hash_dataset(temp, offset)
        old = known.sha256 or _stored_hash(self.spool.root / known.path)
        item = replace(item, sha256=new)
        unchanged = new == old and (self.spool.root / item.path).is_file()
        if not unchanged:
            _, folder_synced = self.spool.place(temp, item.study_uid, item.sop_uid, synced)
            folder_synced.result()
        return item, record_received_instance(connection, item, known, unchanged=unchanged)

    def sweep_incoming(self, older_than: float) -> None:
        """Tidy ``.incoming`` (files untouched for ``older_than`` seconds): first put in place
        the files whose rename an unclean stop undid after their rows had committed (see
        ``_store``), then delete the rest, leftovers of interrupted transfers. With the
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
            values, _, offset = _read_header(temp)
        except Exception:  # a partial transfer (pydicom raises many types)
            return False
        study_uid = _text(values, "StudyInstanceUID", 128)
        sop_uid = _text(values, "SOPInstanceUID", 128)
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
        try:
            with self.database.session() as session:
                audit(session, "instance.refused", f"refused: {reason}", **who)
        except SQLAlchemyError:
            log.error("could not audit a refused instance: database unavailable")
