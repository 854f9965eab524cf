"""The listener's three steps one by one (parse, spool, record) and the handler that composes
them, on real SIIM files and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from pneumonode.db.models import AuditEvent, Instance
from pneumonode.db.repository import ReceivedInstance, ReceiveOutcome
from pneumonode.db.session import Database
from pneumonode.dicom_node.parse import Problem, RefusedDatasetError, parse_received
from pneumonode.dicom_node.receive import InstanceReceiver
from pneumonode.dicom_node.record import InstanceRecorder
from pneumonode.dicom_node.spool import IncomingFile, Spool, dataset_offset, hash_dataset
from pneumonode.selection_rules import SelectionRules


def _incoming(spool: Spool, source: Path, name: str = "a.dcm") -> Path:
    temp = spool.incoming / name
    shutil.copyfile(source, temp)
    return temp


def _request(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)


def _item(path: Path, spool: Spool) -> tuple[ReceivedInstance, int]:
    sop_class, sop_uid, syntax = _request(path)
    parsed = parse_received(path, sop_class, sop_uid, syntax, SelectionRules())
    item = ReceivedInstance(
        study_uid=parsed.study_uid,
        series_uid=parsed.kept["SeriesInstanceUID"],
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=syntax,
        modality=parsed.kept["Modality"],
        patient_id=parsed.kept["PatientID"],
        accession_number=parsed.kept["AccessionNumber"],
        study_date=parsed.kept["StudyDate"],
        path=str(spool.relative_path(parsed.study_uid, sop_uid)),
        size_bytes=parsed.size_bytes,
        sha256=None,
        calling_ae="STORESCU",
        peer_address="127.0.0.1",
        skip_reason=parsed.skip_reason,
    )
    return item, parsed.offset


def test_parse_reads_what_the_node_keeps_and_refuses_by_problem(
    siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    source = siim_sample_dicoms[0]
    sop_class, sop_uid, syntax = _request(source)
    parsed = parse_received(source, sop_class, sop_uid, syntax, SelectionRules())
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    assert parsed.study_uid == ds.StudyInstanceUID and parsed.kept["PatientID"] == ds.PatientID
    assert parsed.skip_reason is None and parsed.offset == dataset_offset(source)
    assert parsed.size_bytes == source.stat().st_size - parsed.offset
    with pytest.raises(RefusedDatasetError) as refused:
        parse_received(source, sop_class, "1.2.3", syntax, SelectionRules())
    assert refused.value.problem is Problem.SOP_INSTANCE_DIFFERS
    with pytest.raises(RefusedDatasetError) as refused:
        parse_received(source, "1.2.840.10008.5.1.4.1.1.1.1", sop_uid, syntax, SelectionRules())
    assert refused.value.problem is Problem.SOP_CLASS_DIFFERS
    headless = tmp_path / "headless.dcm"
    headless.write_bytes(source.read_bytes()[132:])  # no preamble, no 'DICM'
    with pytest.raises(RefusedDatasetError) as refused:
        parse_received(headless, sop_class, sop_uid, syntax, SelectionRules())
    assert refused.value.problem is Problem.NO_FILE_META_LENGTH


def test_the_spool_step_places_withdraws_and_compares(
    siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    source = siim_sample_dicoms[0]
    offset = dataset_offset(source)
    incoming = IncomingFile(spool, _incoming(spool, source))
    incoming.place_new("1.2.3", "1.2.3.4")
    incoming.wait_until_durable()
    final = spool.root / spool.relative_path("1.2.3", "1.2.3.4")
    assert final.read_bytes() == source.read_bytes() and not incoming.temp.exists()

    again = IncomingFile(spool, _incoming(spool, source, "b.dcm"))
    stored = str(spool.relative_path("1.2.3", "1.2.3.4"))
    sha256, unchanged = again.replace_if_changed(offset, "1.2.3", "1.2.3.4", None, stored)
    assert unchanged and sha256 == hash_dataset(final, offset) and again.temp.exists()

    other = IncomingFile(spool, _incoming(spool, siim_sample_dicoms[1], "c.dcm"))
    other_offset = dataset_offset(other.temp)
    _, unchanged = other.replace_if_changed(other_offset, "1.2.3", "1.2.3.4", sha256, stored)
    assert not unchanged and final.read_bytes() == siim_sample_dicoms[1].read_bytes()

    fresh = IncomingFile(spool, _incoming(spool, source, "d.dcm"))
    fresh.place_new("1.2.3", "9.9")
    fresh.withdraw()  # its transaction failed
    assert not (spool.root / spool.relative_path("1.2.3", "9.9")).exists()


def test_the_record_step_writes_rows_and_places_the_file_in_one_transaction(
    database: Database, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    recorder = InstanceRecorder(database)
    temp = _incoming(spool, siim_sample_dicoms[0])
    item, offset = _item(temp, spool)
    _, record = recorder.record(item, IncomingFile(spool, temp), offset)
    assert record.outcome is ReceiveOutcome.NEW and record.job_id is not None
    assert (spool.root / item.path).is_file()
    resent = _incoming(spool, siim_sample_dicoms[0], "again.dcm")
    item_again, record_again = recorder.record(item, IncomingFile(spool, resent), offset)
    assert record_again.outcome is ReceiveOutcome.RESENT_IDENTICAL
    assert item_again.sha256 == hash_dataset(spool.root / item.path, offset)
    with database.session() as session:
        instance = session.scalars(select(Instance)).one()
        assert instance.times_received == 2 and instance.path == item.path


def test_the_handler_answers_each_refusal_with_its_status(
    database: Database, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    receiver = InstanceReceiver(spool, database, min_free_bytes=0, rules=SelectionRules())
    source = siim_sample_dicoms[0]
    sop_class, sop_uid, syntax = _request(source)
    temp = _incoming(spool, source)
    status = receiver.receive(temp, sop_class, "1.2.3", syntax, "STORESCU", "127.0.0.1")
    assert (status.code, status.comment) == (
        0xC210,
        "cannot understand: SOP Instance UID mismatch",
    )
    status = receiver.receive(temp, sop_class, sop_uid, syntax, "STORESCU", "127.0.0.1")
    assert status.code == 0x0000 and status.then is not None
    with database.session() as session:
        kinds = list(session.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)))
        refusal = session.scalars(
            select(AuditEvent.message).where(AuditEvent.kind == "instance.refused")
        ).one()
    assert kinds == ["instance.refused", "instance.received", "job.created"]
    assert refusal == f"refused: {Problem.SOP_INSTANCE_DIFFERS.value}"
