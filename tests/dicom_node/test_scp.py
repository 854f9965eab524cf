"""The listener against real dcmtk peers: what arrives, what is kept, what is refused."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from sqlalchemy import select

from dicom_factory import (
    DAMAGE,
    basic_text_sr,
    damage,
    make_dx,
    minimal_pdf,
    save,
    split_file,
    synthetic_chest,
)
from peers_harness import (
    dcmtk_env,
    echoscu,
    free_port,
    run_storescp,
    storescu,
    storescu_command,
    tool,
    wait_for_port,
)
from pneumonode.db.models import AuditEvent, Instance, Job
from pneumonode.db.session import Database
from pneumonode.dicom_node.incoming import encode_file_meta
from pneumonode.dicom_node.receive import dataset_offset

pytestmark = pytest.mark.integration


def dataset_bytes(path: Path) -> bytes:
    """Everything after the File Meta Information (which each receiver writes itself)."""
    return path.read_bytes()[dataset_offset(path) :]


def instances(database: Database) -> dict[str, Instance]:
    with database.session() as session:
        return {i.sop_uid: i for i in session.scalars(select(Instance))}


def jobs(database: Database) -> list[Job]:
    with database.session() as session:
        return list(session.scalars(select(Job)))


def events(database: Database, kind: str | None = None) -> list[AuditEvent]:
    with database.session() as session:
        query = select(AuditEvent).order_by(AuditEvent.id)
        if kind:
            query = query.where(AuditEvent.kind == kind)
        return list(session.scalars(query))


def spooled(node) -> list[Path]:
    return sorted(node.spool.glob("*/*.dcm"))


def incoming(node) -> list[Path]:
    return list((node.spool / ".incoming").iterdir())


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def store_one(port: int, path: Path) -> Dataset:
    """C-STORE one file with pynetdicom; returns the status dataset."""
    ae = AE(ae_title="STORESCU")
    meta = pydicom.filereader.read_file_meta_info(path)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMONODE")
    assert assoc.is_established
    try:
        return assoc.send_c_store(pydicom.dcmread(path))
    finally:
        assoc.release()


# ------------------------------------------------------------------------ acceptance


def test_real_files_arrive_byte_identical_with_rows_and_audit(
    node, siim_sample_dicoms: list[Path], format_refs: Path, tmp_path: Path
) -> None:
    """What storescu sends is kept bit for bit: dcmtk's storescp in bit-preserving mode, sent
    the same files, is the witness of what went over the wire."""
    refs = sorted(format_refs.glob("*.dcm"))
    with run_storescp(tmp_path / "witness", options=("+xa", "+B")) as witness:
        for files in (siim_sample_dicoms, *[[ref] for ref in refs]):
            for port, called in ((node.port, "PNEUMONODE"), (witness.port, "STORESCP")):
                result = storescu(files, port, called=called)
                assert result.returncode == 0 and "Failed" not in result.stderr, result.stderr
    sent = {sop_uid(p): dataset_bytes(p) for p in (tmp_path / "witness").iterdir()}
    rows = instances(node.database)
    assert len(rows) == len(siim_sample_dicoms) + len(refs) == len(sent)
    for source in (*siim_sample_dicoms, *refs):
        row = rows[sop_uid(source)]
        stored = node.spool / row.path
        assert dataset_bytes(stored) == sent[row.sop_uid], source.name
        assert row.size_bytes == len(sent[row.sop_uid])
        assert row.calling_ae == "STORESCU" and row.peer_address == "127.0.0.1"
        ts = pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert ts == pydicom.dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID
    skipped = {r.sop_uid: r.skip_reason for r in rows.values() if r.status == "skipped"}
    assert skipped == {  # dx_monochrome1.dcm (Body Part Examined THORAX) is analysed
        sop_uid(
            format_refs / "seg_cr_binary_reference.dcm"
        ): "not a radiograph (Segmentation Storage)",
    }
    assert len(jobs(node.database)) == len(rows) - 1
    received = events(node.database, "instance.received")
    assert len(received) == len(rows)
    assert {e.detail["transfer_syntax"] for e in received} >= {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.1",
    }
    assert len(events(node.database, "instance.skipped")) == 1
    accepted = events(node.database, "association.accepted")
    assert accepted and all(e.calling_ae == "STORESCU" for e in accepted)
    assert not incoming(node)


def test_echo_from_an_allowed_peer(node) -> None:
    result = echoscu(node.port)
    assert result.returncode == 0, result.stderr


def test_unknown_calling_ae_is_rejected_and_audited(node, siim_sample_dicoms) -> None:
    result = storescu(siim_sample_dicoms[:1], node.port, calling="INTRUDER")
    assert result.returncode != 0 and "Calling AE Title Not Recognized" in result.stderr
    rejected = events(node.database, "association.rejected")
    assert rejected[-1].calling_ae == "INTRUDER" and rejected[-1].peer_address == "127.0.0.1"
    assert "INTRUDER" in rejected[-1].message
    assert not spooled(node)
    assert storescu(siim_sample_dicoms[:1], node.port).returncode == 0  # next one works


def test_called_ae_mismatch_is_rejected(node) -> None:
    result = echoscu(node.port, called="SOMEBODYELSE")
    assert result.returncode != 0 and "Called AE Title Not Recognized" in result.stderr
    assert "SOMEBODYELSE" in events(node.database, "association.rejected")[-1].message


def test_peer_bound_to_a_host(node_factory, siim_sample_dicoms) -> None:
    elsewhere = node_factory(allowed_peers=["STORESCU@10.1.2.3"])
    assert storescu(siim_sample_dicoms[:1], elsewhere.port).returncode != 0
    here = node_factory(allowed_peers=["STORESCU@localhost"])
    assert storescu(siim_sample_dicoms[:1], here.port).returncode == 0


def test_promiscuous_mode_accepts_anybody(node_factory) -> None:
    lab = node_factory(allowed_peers=[], accept_any_peer=True)
    assert echoscu(lab.port, calling="ANYONE").returncode == 0
    closed = node_factory(allowed_peers=[])
    assert echoscu(closed.port, calling="ANYONE").returncode != 0


# ------------------------------------------------------------------- idempotence, UIDs


def test_resend_is_idempotent_and_changed_bytes_rerun_the_job(
    node, siim_sample_dicoms, tmp_path
) -> None:
    source = siim_sample_dicoms[0]
    assert storescu([source], node.port).returncode == 0
    assert storescu([source], node.port).returncode == 0
    assert len(jobs(node.database)) == 1
    resent = events(node.database, "instance.resent")
    assert len(resent) == 1 and resent[0].detail["changed"] is False

    with node.database.session() as session:  # the job ran meanwhile
        job = session.scalars(select(Job)).one()
        job.state = "done"
    changed = tmp_path / "changed.dcm"
    ds = pydicom.dcmread(source)
    ds.InstitutionName = "Changed Hospital"
    ds.save_as(changed)
    assert storescu([changed], node.port).returncode == 0
    [job] = jobs(node.database)
    assert job.state == "pending"
    row = instances(node.database)[str(ds.SOPInstanceUID)]
    assert row.times_received == 3
    assert dataset_bytes(node.spool / row.path) == dataset_bytes(changed)
    assert events(node.database, "instance.resent")[-1].detail["changed"] is True
    assert len(spooled(node)) == 1


def test_the_dispatcher_is_woken_after_the_response_not_before(node, siim_sample_dicoms) -> None:
    """Waking the dispatcher and the log line are not the peer's to wait for: they run once the
    C-STORE response is sent."""
    import threading

    answered = threading.Event()
    seen: list[tuple[int, bool]] = []

    def on_job(job_id: int) -> None:
        seen.append((job_id, answered.wait(10)))

    node.listener.receiver.on_job = on_job
    ae = AE(ae_title="STORESCU")
    meta = pydicom.filereader.read_file_meta_info(siim_sample_dicoms[0])
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PNEUMONODE")
    try:
        status = assoc.send_c_store(pydicom.dcmread(siim_sample_dicoms[0]))
        answered.set()
    finally:
        assoc.release()
    assert status.Status == 0x0000
    wait_until_true = time.monotonic() + 10
    while not seen and time.monotonic() < wait_until_true:
        time.sleep(0.01)
    assert seen == [(jobs(node.database)[0].id, True)]


@pytest.mark.parametrize(
    "uid", ["ID_4d6269d79", "../../../../tmp/escape", "1.2.3/../../4", ".hidden"]
)
def test_invalid_uids_are_stored_safely_inside_the_spool(
    node, siim_sample_dicoms, tmp_path, uid: str
) -> None:
    ds = pydicom.dcmread(siim_sample_dicoms[1])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID = uid
    path = tmp_path / "odd.dcm"
    ds.save_as(path)
    assert storescu([path], node.port).returncode == 0
    row = instances(node.database)[uid]
    stored = (node.spool / row.path).resolve()
    assert stored.is_relative_to(node.spool.resolve()) and stored.is_file()
    assert stored.parent.parent == node.spool.resolve()
    assert dataset_bytes(stored) == dataset_bytes(path)
    assert not list(tmp_path.parent.rglob("escape*"))


# ------------------------------------------------------------------------- bad input


def test_non_images_are_stored_and_skipped(node, tmp_path) -> None:
    basic_text_sr(tmp_path / "sr.dcm")
    pdf = minimal_pdf(tmp_path / "report.pdf")
    subprocess.run(
        [tool("pdf2dcm"), str(pdf), str(tmp_path / "pdf.dcm")],
        check=True,
        capture_output=True,
    )
    for path in (tmp_path / "sr.dcm", tmp_path / "pdf.dcm"):
        assert storescu([path], node.port).returncode == 0
    reasons = sorted(r.skip_reason for r in instances(node.database).values())
    assert reasons == [
        "not a radiograph (Basic Text SR Storage)",
        "not a radiograph (Encapsulated PDF Storage)",
    ]
    assert jobs(node.database) == []


def test_corrupt_dataset_gets_cannot_understand(node, siim_sample_dicoms, tmp_path) -> None:
    """A peer streams garbage after a valid file meta: 0xC210, nothing kept, next store works."""
    good = siim_sample_dicoms[2]
    corrupt = tmp_path / "corrupt.dcm"
    data = good.read_bytes()
    offset = dataset_offset(good)
    corrupt.write_bytes(data[:offset] + b"\x08\x00\x18\x00UI\xff\xff" + os.urandom(3000))
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are
    try:
        ae = AE(ae_title="STORESCU")
        meta = pydicom.filereader.read_file_meta_info(good)
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="PNEUMONODE")
        assert assoc.is_established
        status = assoc.send_c_store(corrupt)
        assert 0xC000 <= status.Status <= 0xCFFF, hex(status.Status)
        assert "cannot understand" in status.ErrorComment
        assert assoc.send_c_store(good).Status == 0x0000
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert len(instances(node.database)) == 1
    assert events(node.database, "instance.refused")[-1].message.startswith("refused: ")
    assert not incoming(node)


def _store_raw(port: int, path: Path) -> Dataset:
    """C-STORE ``path``'s dataset bytes as they are (pynetdicom does not decode them)."""
    ae = AE(ae_title="STORESCU")
    meta = pydicom.filereader.read_file_meta_info(path)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMONODE")
    assert assoc.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()


@pytest.mark.parametrize(
    ("base", "how"),
    [
        *(("siim", how) for how in DAMAGE),
        ("native", "truncated inside the pixel data"),
        ("native", "a Pixel Data length past the end"),
    ],
)
def test_a_damaged_dataset_is_never_acknowledged(
    node_factory, siim_sample_dicoms: list[Path], tmp_path: Path, base: str, how: str
) -> None:
    """Issue 22: each of these was stored with Success (a job queued for the truncated one),
    and dcmdump could read none of the stored files. Now: 0xC210, nothing kept, no job, the
    refusal audited by tag (no value), and the same association stores the whole file."""
    node = node_factory()
    if base == "siim":
        source = siim_sample_dicoms[0]
    else:
        source = save(make_dx(synthetic_chest(200, 160, 12, seed=4), 12), tmp_path / "dx.dcm")
    meta, dataset = split_file(source)
    damaged = tmp_path / "damaged.dcm"
    damaged.write_bytes(meta + damage(dataset, how))
    status = _store_raw(node.port, damaged)
    assert status.Status == 0xC210, hex(status.Status)
    assert status.ErrorComment.startswith("cannot understand: damaged dataset")
    assert not spooled(node) and not incoming(node)
    assert not instances(node.database) and not jobs(node.database)
    [refused] = events(node.database, "instance.refused")
    assert refused.message.startswith("refused: damaged dataset: ")
    assert re.search(r"\([0-9A-F]{4},[0-9A-F]{4}\)", refused.message)  # the element, by tag
    assert refused.sop_uid == sop_uid(source) and refused.calling_ae == "STORESCU"
    identifiers = {str(pydicom.dcmread(source).PatientID), str(pydicom.dcmread(source).PatientName)}
    assert not any(i and i in f"{refused.message} {refused.detail}" for i in identifiers)
    assert _store_raw(node.port, source).Status == 0x0000
    assert len(instances(node.database)) == 1


def test_a_dataset_of_another_sop_class_than_its_c_store_is_refused(
    node_factory, siim_sample_dicoms: list[Path], tmp_path: Path
) -> None:
    """Issue 22: a Secondary Capture dataset sent as a CT C-STORE (on a CT context) was stored
    with Success, the file meta saying CT and the dataset SC. PS3.4 B.2.3: 0xA900, "Data Set
    does not match SOP Class"."""
    node = node_factory()
    source = siim_sample_dicoms[0]
    _, dataset = split_file(source)
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    meta = encode_file_meta(
        "1.2.840.10008.5.1.4.1.1.2",
        str(ds.SOPInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
        source_ae="",
    )
    mismatched = tmp_path / "ct.dcm"
    mismatched.write_bytes(meta + dataset)
    status = _store_raw(node.port, mismatched)
    assert status.Status == 0xA900, hex(status.Status)
    assert "SOP Class" in status.ErrorComment
    assert not spooled(node) and not incoming(node) and not instances(node.database)
    [refused] = events(node.database, "instance.refused")
    assert "SOP Class UID" in refused.message
    assert _store_raw(node.port, source).Status == 0x0000


def test_disk_watermark_refuses_then_recovers(node, siim_sample_dicoms) -> None:
    receiver = node.listener.receiver
    receiver.min_free_bytes = 1 << 62  # more than any disk has
    result = storescu(siim_sample_dicoms[:1], node.port)
    assert result.returncode != 0 and "Rejected Transient" in result.stderr
    assert "disk space" in events(node.database, "association.rejected")[-1].message

    # an association opened before the disk filled up gets 0xA700 for its C-STORE
    receiver.min_free_bytes = 0
    ae = AE(ae_title="STORESCU")
    meta = pydicom.filereader.read_file_meta_info(siim_sample_dicoms[0])
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PNEUMONODE")
    assert assoc.is_established
    receiver.min_free_bytes = 1 << 62
    status = assoc.send_c_store(pydicom.dcmread(siim_sample_dicoms[0]))
    assert status.Status == 0xA700 and "disk" in status.ErrorComment
    receiver.min_free_bytes = 0
    assert assoc.send_c_store(pydicom.dcmread(siim_sample_dicoms[0])).Status == 0x0000
    assoc.release()
    assert len(spooled(node)) == 1 and not incoming(node)
    assert storescu(siim_sample_dicoms[1:3], node.port).returncode == 0


def test_an_object_over_the_size_limit_is_refused_and_deleted(
    node_factory, siim_sample_dicoms, tmp_path
) -> None:
    node = node_factory(max_instance_mb=1)
    big = save(make_dx(synthetic_chest(1200, 1000, 16, seed=3), 16), tmp_path / "big.dcm")
    assert big.stat().st_size > 1024 * 1024
    status = store_one(node.port, big)
    assert status.Status == 0xA700 and status.ErrorComment.startswith("too large")
    refused = events(node.database, "instance.refused")[-1]
    assert refused.detail is not None and refused.detail["limit"] == 1024 * 1024
    assert not spooled(node) and not incoming(node)
    assert store_one(node.port, siim_sample_dicoms[0]).Status == 0x0000  # smaller: fine


def test_database_down_answers_out_of_resources_and_keeps_no_file(node, siim_sample_dicoms) -> None:
    receiver = node.listener.receiver
    working = receiver.database
    receiver.database = Database(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    try:
        status = store_one(node.port, siim_sample_dicoms[0])
        assert status.Status == 0xA700 and "database" in status.ErrorComment
    finally:
        receiver.database.dispose()
        receiver.database = working
    assert not spooled(node) and not incoming(node)
    assert storescu(siim_sample_dicoms[:1], node.port).returncode == 0
    assert len(spooled(node)) == 1


def test_a_rename_undone_by_an_unclean_stop_is_redone_at_the_next_start(
    node_factory, database_url: str, siim_sample_dicoms: list[Path]
) -> None:
    """A first arrival's row commits while the spool folder's fsync still runs. Should a power
    cut undo the rename, the fsynced file is still in .incoming and the next start puts it in
    place; what the database does not hold (a cut transfer, an uncommitted one) is deleted."""
    node = node_factory(database_url=database_url)
    assert storescu(siim_sample_dicoms[:2], node.port).returncode == 0
    kept, lost = spooled(node)
    content = lost.read_bytes()
    node.listener.stop(grace=5)
    node.database.dispose()
    folder = node.spool / ".incoming"
    lost.rename(folder / "3b1fd0.part")  # what the power cut left
    (folder / "cut.part").write_bytes(content[: len(content) // 2])  # a transfer cut half-way
    uncommitted = folder / "uncommitted.part"
    uncommitted.write_bytes(siim_sample_dicoms[2].read_bytes())  # its rows never committed

    again = node_factory(
        database_url=database_url, data_dir=node.settings.data_dir, dicom_port=free_port()
    )
    assert spooled(again) == [kept, lost] and lost.read_bytes() == content
    assert not incoming(again)
    recovered = events(again.database, "instance.recovered")
    assert [event.sop_uid for event in recovered] == [sop_uid(lost)]
    assert len(instances(again.database)) == 2


def test_the_incoming_folder_is_kept_while_the_database_is_down(node, tmp_path) -> None:
    """Tidying .incoming asks the database which files are received ones: without it, it
    deletes nothing (a file the database holds may be among them)."""
    receiver = node.listener.receiver
    leftover = node.spool / ".incoming" / "left.part"
    leftover.write_bytes(b"\0" * 200)
    working = receiver.database
    receiver.database = Database(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    whole = node.spool / ".incoming" / "whole.part"
    save(make_dx(synthetic_chest(64, 64, 12, seed=3), 12), whole)
    try:
        receiver.sweep_incoming(older_than=0)
        assert whole.is_file() and leftover.is_file()
    finally:
        receiver.database.dispose()
        receiver.database = working
    receiver.sweep_incoming(older_than=0)
    assert not incoming(node)


def test_association_aborted_mid_dataset_leaves_nothing(node_factory, tmp_path) -> None:
    """storescu killed half-way through a large object: no partial file, no row, no job."""
    node = node_factory()
    big = save(make_dx(synthetic_chest(6000, 5000, 16, seed=5), 16), tmp_path / "big.dcm")
    args = storescu_command([big], node.port)
    process = subprocess.Popen(
        args,
        env={**dcmtk_env(), "TCP_NODELAY": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        partial = [p.stat().st_size for p in incoming(node) if p.exists()]
        if partial and max(partial) > 5_000_000:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while incoming(node) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not incoming(node), "the partial dataset was not discarded"
    assert not spooled(node) and not instances(node.database) and not jobs(node.database)
    assert echoscu(node.port).returncode == 0


@pytest.mark.slow
def test_a_200_mb_object_is_received_intact(node_factory, tmp_path) -> None:
    node = node_factory()
    pixels = np.random.default_rng(1).integers(0, 4096, size=(10000, 10000), dtype=np.uint16)
    big = save(make_dx(pixels, 12), tmp_path / "huge.dcm")
    del pixels
    assert big.stat().st_size > 200_000_000
    result = storescu([big], node.port, timeout=300)
    assert result.returncode == 0, result.stderr
    [row] = instances(node.database).values()
    stored = node.spool / row.path
    assert stored.stat().st_size - dataset_offset(stored) == big.stat().st_size - dataset_offset(
        big
    )
    assert dataset_bytes(stored) == dataset_bytes(big)


# ------------------------------------------------------------------ graceful shutdown


@pytest.mark.slow
def test_sigterm_finishes_transfers_in_flight(tmp_path, siim_sample_dicoms) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PNEUMONODE_DATA_DIR": str(tmp_path / "data"),
        "PNEUMONODE_DICOM_PORT": str(port),
        "PNEUMONODE_ALLOWED_PEERS": "STORESCU",
    }
    listener = subprocess.Popen(
        [str(Path(sys.executable).parent / "pneumonode"), "dicom-listen"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port)
        # several large objects, so that the association is still sending when SIGTERM lands
        # (over 200 MB: a fraction of a second even on a starved machine)
        big = [
            save(make_dx(synthetic_chest(5000, 4000, 16, seed=9 + i), 16), tmp_path / f"big{i}.dcm")
            for i in range(6)
        ]
        files = [*big, *siim_sample_dicoms]
        args = storescu_command(files, port)
        sender = subprocess.Popen(
            args,
            env={**dcmtk_env(), "TCP_NODELAY": "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        spool_in = tmp_path / "data" / "spool" / ".incoming"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(spool_in.glob("*")):
            time.sleep(0.002)  # the first dataset has started to arrive
        listener.send_signal(signal.SIGTERM)
        # a new association is refused while the running one finishes
        refused_at = time.monotonic() + 3
        while time.monotonic() < refused_at:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the listener still accepts connections after SIGTERM")
        assert sender.poll() is None, "the transfer in flight should still be running"
        sender_output, _ = sender.communicate(timeout=120)
        assert sender.returncode == 0 and "Failed" not in sender_output, sender_output
        output, _ = listener.communicate(timeout=60)
        assert listener.returncode == 0, output
    finally:
        listener.kill()
    stored = sorted((tmp_path / "data" / "spool").glob("*/*.dcm"))
    assert len(stored) == len(files)
    assert not list(spool_in.iterdir())
