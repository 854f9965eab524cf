"""The sending side against real peers: our SCU to dcmtk storescp and Orthanc, and deliveries
with retries, back-off, dead-letter and resend (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select

from peers_harness import Orthanc, free_port, run_orthanc, run_storescp
from pneumonode.addresses import parse_destination
from pneumonode.db.models import Delivery, DeliveryState, utcnow
from pneumonode.db.outbox import add_delivery, resend_dead
from pneumonode.db.repository import list_audit
from pneumonode.db.session import Database
from pneumonode.dicom_node.delivery import (
    DeliveryLoop,
    RetryPolicy,
    attempt_claimed,
    attempt_deliveries,
    queue_delivery,
    run_due,
)
from pneumonode.dicom_node.receive import dataset_offset
from pneumonode.dicom_node.scu import Failure, echo, send_files

if TYPE_CHECKING:
    from conftest import RunningNode

pytestmark = pytest.mark.integration

CALLING_AE = "PNEUMONODE"
#: tiny back-off and short timeouts: a whole retry cycle takes a fraction of a second
FAST = RetryPolicy(
    max_attempts=3, base_seconds=0.05, max_seconds=1.0, calling_ae=CALLING_AE, timeout=5
)
#: Back-off long enough to see "not due yet" on a loaded machine.
PATIENT = RetryPolicy(
    max_attempts=3, base_seconds=1.0, max_seconds=2.0, calling_ae=CALLING_AE, timeout=5
)
BIT_PRESERVING = ("+xa", "+B")  # storescp: accept every syntax, write the dataset as received
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

FORMAT_REFS = (
    "cr_jpeg2000_16bit_monochrome1.dcm",
    "dx_monochrome1.dcm",
    "siim_cr_monochrome1_variant.dcm",
    "seg_cr_binary_reference.dcm",
)


# ------------------------------------------------------------------ helpers


def _dataset_bytes(path: Path) -> bytes:
    """Everything after the File Meta Information: what travelled over the network."""
    return path.read_bytes()[dataset_offset(path) :]


def _sop_uid(path: Path) -> str:
    return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)


def _received(folder: Path) -> dict[str, Path]:
    """Files storescp wrote, by SOP Instance UID."""
    return {_sop_uid(p): p for p in folder.iterdir() if p.is_file()}


def _rows(database: Database, ids: list[int]) -> list[Delivery]:
    with database.session() as session:
        rows = session.scalars(select(Delivery).where(Delivery.id.in_(ids)).order_by(Delivery.id))
        return list(rows)


def _events(database: Database, *kinds: str) -> list[str]:
    """Kinds of the audit events, oldest first (only ``kinds`` when given)."""
    with database.session() as session:
        return [e.kind for e in list_audit(session, kinds=kinds)]


def _wait_until_due(rows: list[Delivery]) -> None:
    """Sleep past the latest next_attempt_at of ``rows`` (the back-off)."""
    latest = max(row.next_attempt_at for row in rows)
    time.sleep(max((latest - utcnow()).total_seconds(), 0) + 0.02)


@pytest.fixture
def format_ref_files(format_refs: Path) -> list[Path]:
    return [format_refs / name for name in FORMAT_REFS]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the module (it takes seconds to stop); tests empty it first."""
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def _emptied(orthanc: Orthanc) -> Orthanc:
    for orthanc_id in orthanc.rest("/instances"):  # type: ignore[attr-defined]
        url = f"http://127.0.0.1:{orthanc.http_port}/instances/{orthanc_id}"
        with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10):
            pass
    assert orthanc.instance_uids() == set()
    return orthanc


# ------------------------------------------------------------------ SCU to dcmtk storescp


def test_send_files_to_storescp_keeps_bytes_and_transfer_syntax(
    tmp_path: Path, siim_sample_dicoms: list[Path], format_ref_files: list[Path]
) -> None:
    sources = [*siim_sample_dicoms, *format_ref_files]
    with run_storescp(tmp_path / "scp", options=BIT_PRESERVING) as scp:
        outcomes = send_files(sources, parse_destination(scp.destination), CALLING_AE, timeout=5)

    assert [o.path for o in outcomes] == sources
    assert [(o.ok, o.status, o.reason) for o in outcomes] == [(True, 0x0000, "")] * len(sources)
    received = _received(scp.folder)
    assert len(received) == len(sources)
    odd = []
    for source in sources:
        copy = received[_sop_uid(source)]
        source_meta, copy_meta = read_file_meta_info(source), read_file_meta_info(copy)
        assert copy_meta.TransferSyntaxUID == source_meta.TransferSyntaxUID, source.name
        assert copy_meta.MediaStorageSOPClassUID == source_meta.MediaStorageSOPClassUID
        sent, got = _dataset_bytes(source), _dataset_bytes(copy)
        if len(sent) % 2 == 0:
            assert got == sent, f"{source.name}: dataset changed on the way"
            continue
        # An odd-length value (DICOM forbids them) cannot travel as stored: the SCU pads it by
        # one null byte and changes nothing else.
        odd.append(source.name)
        original, padded = dcmread(source), dcmread(copy)
        assert len(got) == len(sent) + 1
        assert padded.PixelData == original.PixelData + b"\x00"
        del original.PixelData, padded.PixelData
        assert padded == original
    assert odd == ["dx_monochrome1.dcm"]  # the one such file in the shared data


def _silent_peer(listener: socket.socket, stop: threading.Event) -> None:
    """Accept one association (every context, as proposed), then read and never answer."""
    from pneumonode.dicom_node.pdu import AssociateAC, AssociateRQ
    from pneumonode.dicom_node.pdu_items import (
        APPLICATION_CONTEXT,
        PresentationContextAC,
        UserInformation,
    )

    connection, _ = listener.accept()
    with connection:
        header = connection.recv(6, socket.MSG_WAITALL)
        body = connection.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL)
        request = AssociateRQ.decode(body)
        answers = [
            PresentationContextAC(context.context_id, 0, context.transfer_syntaxes[0])
            for context in request.contexts
        ]
        answer = AssociateAC(
            request.called,
            request.calling,
            APPLICATION_CONTEXT,
            answers,
            UserInformation(max_length=16_384),
        )
        connection.sendall(answer.encode())
        connection.settimeout(0.2)
        while not stop.is_set():  # take whatever comes, answer nothing
            with contextlib.suppress(TimeoutError):
                if not connection.recv(65_536):
                    return


def test_a_peer_that_stops_answering_fails_each_file_transiently_within_the_timeout(
    siim_sample_dicoms: list[Path],
) -> None:
    """A peer that accepts the association and then answers nothing: the first store waits
    out the timeout (no longer), the association is aborted, and every file of it gets a
    transient failure, to be retried."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    peer = threading.Thread(target=_silent_peer, args=(listener, stop), daemon=True)
    peer.start()
    destination = parse_destination(f"SILENT@127.0.0.1:{listener.getsockname()[1]}")
    started = time.monotonic()
    try:
        outcomes = send_files(siim_sample_dicoms[:3], destination, CALLING_AE, timeout=1)
    finally:
        stop.set()
        peer.join(timeout=5)
        listener.close()
    assert time.monotonic() - started < 4
    assert [(o.ok, o.failure) for o in outcomes] == [(False, Failure.TRANSIENT)] * 3
    assert [o.reason for o in outcomes] == [
        "no response (timeout or abort)",
        "association lost",
        "association lost",
    ]


def test_a_peer_with_a_small_maximum_pdu_gets_every_byte(
    tmp_path: Path, siim_sample_dicoms: list[Path]
) -> None:
    """storescp reading at most 4096 bytes per PDU: each dataset goes in many fragments and
    arrives unchanged."""
    sources = siim_sample_dicoms[:3]
    options = (*BIT_PRESERVING, "--max-pdu", "4096")
    with run_storescp(tmp_path / "scp", options=options) as scp:
        outcomes = send_files(sources, parse_destination(scp.destination), CALLING_AE, timeout=5)
    assert [(o.ok, o.status) for o in outcomes] == [(True, 0x0000)] * len(sources)
    received = _received(scp.folder)
    for source in sources:
        assert _dataset_bytes(received[_sop_uid(source)]) == _dataset_bytes(source)


def test_peer_refusing_a_transfer_syntax_fails_that_file_only(
    database: Database, tmp_path: Path, siim_sample_dicoms: list[Path], format_refs: Path
) -> None:
    """storescp without options accepts uncompressed syntaxes only: JPEG files are refused
    permanently (one attempt, no retries) while the uncompressed SEG in the batch arrives."""
    jpeg, j2k = siim_sample_dicoms[0], format_refs / "cr_jpeg2000_16bit_monochrome1.dcm"
    seg = format_refs / "seg_cr_binary_reference.dcm"
    with run_storescp(tmp_path / "scp", options=()) as scp:
        ids = [queue_delivery(database, path, scp.destination) for path in (jpeg, seg, j2k)]
        assert run_due(database, FAST) == 1
        time.sleep(0.1)  # past any back-off: nothing is attempted again
        assert run_due(database, FAST) == 0

    jpeg_row, seg_row, j2k_row = _rows(database, ids)
    assert (seg_row.state, seg_row.attempts, seg_row.last_error) == (DeliveryState.SENT, 1, None)
    for row, syntax in ((jpeg_row, JPEG_BASELINE), (j2k_row, "1.2.840.10008.1.2.4.91")):
        assert (row.state, row.attempts) == (DeliveryState.DEAD, 1)
        assert row.last_error is not None
        assert f"does not accept SOP class {row.sop_class_uid}" in row.last_error
        assert f"in transfer syntax {syntax}" in row.last_error
    assert set(_received(scp.folder)) == {seg_row.sop_uid}
    assert sorted(_events(database, "delivery.sent", "delivery.failed", "delivery.dead")) == [
        "delivery.dead",
        "delivery.dead",
        "delivery.sent",
    ]


def test_peer_refusing_every_context_is_a_permanent_failure(
    tmp_path: Path, siim_sample_dicoms: list[Path]
) -> None:
    """An association on which nothing proposed was accepted: a permanent failure, with the
    reason per file, not a transient one that would be retried."""
    files = siim_sample_dicoms[:2]
    with run_storescp(tmp_path / "scp", options=()) as scp:
        outcomes = send_files(files, parse_destination(scp.destination), CALLING_AE, timeout=5)
    for outcome in outcomes:
        assert (outcome.ok, outcome.failure) == (False, Failure.PERMANENT)
        assert f"in transfer syntax {JPEG_BASELINE}" in outcome.reason
    assert _received(scp.folder) == {}


# ------------------------------------------------------------------ deliveries to Orthanc


def test_deliveries_to_orthanc(
    database: Database, orthanc: Orthanc, siim_sample_dicoms: list[Path]
) -> None:
    pacs = _emptied(orthanc)
    ids = [queue_delivery(database, path, pacs.destination) for path in siim_sample_dicoms]
    assert _events(database) == ["delivery.queued"] * 10

    assert sorted(attempt_deliveries(database, ids[:4], FAST)) == ids[:4]  # only those named
    assert [row.state for row in _rows(database, ids)] == ["sent"] * 4 + ["pending"] * 6
    assert run_due(database, FAST) == 6  # the rest
    assert run_due(database, FAST) == 0  # sent rows are never sent again

    expected = {_sop_uid(path) for path in siim_sample_dicoms}
    assert pacs.instance_uids() == expected
    rows = _rows(database, ids)
    for row, path in zip(rows, siim_sample_dicoms, strict=True):
        assert (row.state, row.attempts, row.last_error) == (DeliveryState.SENT, 1, None)
        assert (row.last_status, row.path, row.sop_uid) == (0, str(path), _sop_uid(path))
        assert row.sent_at is not None
    with database.session() as session:
        sent = list_audit(session, kinds=["delivery.sent"])
    assert {event.sop_uid for event in sent} == expected
    assert {event.detail["delivery_id"] for event in sent} == set(ids)  # type: ignore[index]
    assert {event.detail["destination"] for event in sent} == {pacs.destination}  # type: ignore[index]


def test_echo_orthanc_and_a_closed_port(orthanc: Orthanc) -> None:
    answer = echo(parse_destination(orthanc.destination), CALLING_AE, timeout=5)
    assert answer.ok, answer.reason
    assert answer.reason == f"{orthanc.destination} answered C-ECHO"

    closed = parse_destination(f"NOBODY@127.0.0.1:{free_port()}")
    started = time.monotonic()
    answer = echo(closed, CALLING_AE, timeout=5)
    assert not answer.ok
    assert answer.reason == f"cannot connect to {closed} (refused or unreachable)"
    assert time.monotonic() - started < 2  # a refused connection does not wait for the timeout


# ------------------------------------------------------------------ retries and dead-letter


def test_destination_down_retries_with_back_off_then_dead_letter_then_resend(
    database: Database, tmp_path: Path, siim_sample_dicoms: list[Path]
) -> None:
    port = free_port()  # nothing listens here yet
    destination = f"STORESCP@127.0.0.1:{port}"
    files = siim_sample_dicoms[:2]
    ids = [queue_delivery(database, path, destination) for path in files]

    for attempt in range(1, PATIENT.max_attempts):
        assert run_due(database, PATIENT) == 0
        rows = _rows(database, ids)
        for row in rows:
            assert (row.state, row.attempts) == (DeliveryState.PENDING, attempt)
            assert row.last_error == f"cannot connect to {destination} (refused or unreachable)"
            assert row.next_attempt_at > utcnow()  # backing off
        assert run_due(database, PATIENT) == 0  # not due yet: no attempt
        assert [row.attempts for row in _rows(database, ids)] == [attempt] * 2
        _wait_until_due(rows)
    assert run_due(database, PATIENT) == 0  # the last allowed attempt

    rows = _rows(database, ids)
    assert [(row.state, row.attempts) for row in rows] == [(DeliveryState.DEAD, 3)] * 2
    assert all(row.last_error and "cannot connect" in row.last_error for row in rows)
    failed, dead = _events(database, "delivery.failed"), _events(database, "delivery.dead")
    assert (len(failed), len(dead)) == (2 * (PATIENT.max_attempts - 1), 2)
    time.sleep(0.1)
    assert run_due(database, PATIENT) == 0  # dead rows wait for a resend
    assert [row.attempts for row in _rows(database, ids)] == [3, 3]

    with run_storescp(tmp_path / "scp", port=port) as scp:
        assert sorted(resend_dead(database, Delivery, all_dead=True)) == ids
        rows = _rows(database, ids)
        assert [(row.state, row.attempts) for row in rows] == [(DeliveryState.PENDING, 0)] * 2
        assert run_due(database, PATIENT) == 2
    rows = _rows(database, ids)
    assert [(row.state, row.attempts, row.last_error) for row in rows] == [
        (DeliveryState.SENT, 1, None)
    ] * 2
    assert set(_received(scp.folder)) == {_sop_uid(path) for path in files}
    assert (
        _events(database, "delivery.resend", "delivery.sent")
        == ["delivery.resend"] * 2 + ["delivery.sent"] * 2
    )
    assert resend_dead(database, Delivery, all_dead=True) == []  # nothing dead any more


def test_rows_queued_as_claimed_are_left_to_their_sender_until_the_claim_ends(
    database: Database, tmp_path: Path, siim_sample_dicoms: list[Path]
) -> None:
    """The worker queues its results as taken (it sends them at once, recording the outcomes
    and its own timings together): the delivery loop does not send them meanwhile, and does
    once the claim has run out (the worker died before sending)."""
    files = siim_sample_dicoms[:3]
    with run_storescp(tmp_path / "scp") as scp:
        with database.session() as session:
            ids = [
                add_delivery(
                    session,
                    path,
                    scp.destination,
                    sop_uid=_sop_uid(path),
                    sop_class_uid=str(read_file_meta_info(path).MediaStorageSOPClassUID),
                    claim_seconds=60 if index < 2 else 0.3,
                )
                for index, path in enumerate(files)
            ]
        assert run_due(database, FAST) == 0  # all claimed
        recorded: list[int] = []
        sent = attempt_claimed(
            database,
            _rows(database, ids[:2]),
            FAST,
            then=lambda session: recorded.append(len(list_audit(session, kinds=["delivery.sent"]))),
        )
        assert sent == ids[:2]
        assert recorded == [2]  # ``then`` ran in the transaction that recorded the outcomes
        _wait_until_due(_rows(database, ids[2:]))
        assert run_due(database, FAST) == 1  # the abandoned one, once its claim ran out
        assert run_due(database, FAST) == 0
    assert set(_received(scp.folder)) == {_sop_uid(path) for path in files}
    assert [row.state for row in _rows(database, ids)] == [DeliveryState.SENT] * 3


def test_delivery_loop_sends_in_the_background(
    database: Database, tmp_path: Path, siim_sample_dicoms: list[Path]
) -> None:
    with run_storescp(tmp_path / "scp") as scp:
        loop = DeliveryLoop(database, FAST, interval=0.05)
        loop.start()
        try:
            ids = [queue_delivery(database, p, scp.destination) for p in siim_sample_dicoms[:3]]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if all(row.state == DeliveryState.SENT for row in _rows(database, ids)):
                    break
                time.sleep(0.05)
        finally:
            loop.stop()
    assert [(row.state, row.attempts) for row in _rows(database, ids)] == [("sent", 1)] * 3
    assert len(_received(scp.folder)) == 3


def test_resend_chooses_by_id_and_destination(
    database: Database, siim_sample_dicoms: list[Path]
) -> None:
    down = [f"STORESCP@127.0.0.1:{free_port()}", f"OTHER@127.0.0.1:{free_port()}"]
    once = RetryPolicy(max_attempts=1, base_seconds=0.05, calling_ae=CALLING_AE, timeout=5)
    first, second, third = (
        queue_delivery(database, path, down[i % 2]) for i, path in enumerate(siim_sample_dicoms[:3])
    )
    assert run_due(database, once) == 0
    assert {row.state for row in _rows(database, [first, second, third])} == {"dead"}

    assert resend_dead(database, Delivery) == []  # neither ids nor all_dead: nothing
    assert resend_dead(database, Delivery, [second]) == [second]
    assert resend_dead(database, Delivery, [second]) == []  # pending now, not dead
    assert resend_dead(database, Delivery, all_dead=True, destination=down[1]) == []
    assert sorted(resend_dead(database, Delivery, all_dead=True, destination=down[0])) == [
        first,
        third,
    ]


def test_rejected_calling_ae_is_dead_after_one_attempt(
    database: Database,
    node_factory: Callable[..., RunningNode],
    siim_sample_dicoms: list[Path],
) -> None:
    """A peer that rejects our AE title permanently causes no retry storm."""
    receiver = node_factory(allowed_peers=["SOMEONE"])
    destination = f"{receiver.settings.ae_title}@127.0.0.1:{receiver.port}"
    patient = RetryPolicy(max_attempts=6, base_seconds=0.05, calling_ae=CALLING_AE, timeout=5)
    ids = [queue_delivery(database, path, destination) for path in siim_sample_dicoms[:2]]

    assert run_due(database, patient) == 0
    for _ in range(3):
        time.sleep(0.06)  # past the first back-off
        assert run_due(database, patient) == 0
    rows = _rows(database, ids)
    assert [(row.state, row.attempts) for row in rows] == [(DeliveryState.DEAD, 1)] * 2
    for row in rows:
        assert row.last_error is not None
        assert row.last_error == (
            f"{destination} rejected the association "
            "(Rejected Permanent: Calling AE title not recognised)"
        )
    assert _events(database, "delivery.failed", "delivery.dead") == ["delivery.dead"] * 2

    # both rows went in one association, which the receiver rejected once, naming us
    with receiver.database.session() as session:
        rejected = list_audit(session, kinds=["association.rejected"])
    assert [event.calling_ae for event in rejected] == [CALLING_AE]
    assert list(receiver.spool.rglob("*.dcm")) == []

    answer = echo(parse_destination(destination), CALLING_AE, timeout=5)
    assert not answer.ok
    assert "rejected the association" in answer.reason


def test_a_malformed_destination_is_dead_at_once_with_its_reason(
    database: Database, siim_sample_dicoms: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A row whose destination does not parse (queued before the settings were checked) was
    claimed again and again with 0 attempts ("delivery loop failed; retrying"); now it is one
    permanent failure, dead-lettered with the parser's reason."""
    path = siim_sample_dicoms[0]
    with database.session() as session:
        bad = add_delivery(
            session,
            path,
            "ORTHANC@127.0.0.1",  # no port: what `pneumonode echo` refuses
            sop_uid=_sop_uid(path),
            sop_class_uid=str(read_file_meta_info(path).MediaStorageSOPClassUID),
        )
    loop = DeliveryLoop(database, FAST, interval=0.05)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while _rows(database, [bad])[0].state != DeliveryState.DEAD:
            assert time.monotonic() < deadline, "not dead-lettered"
            time.sleep(0.05)
        time.sleep(0.2)  # a few more looks: nothing more happens to it
    finally:
        loop.stop()
    (row,) = _rows(database, [bad])
    assert (row.state, row.attempts) == (DeliveryState.DEAD, 1)
    assert row.last_error == "destination 'ORTHANC@127.0.0.1': expected AE@host:port"
    assert _events(database, "delivery.failed", "delivery.dead") == ["delivery.dead"]
    assert "delivery loop failed" not in caplog.text
