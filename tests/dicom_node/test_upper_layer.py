"""Our DICOM upper layer (dicom_node/upper.py) against pynetdicom as the requestor, and raw bytes
where a well-behaved peer cannot go: negotiation, fragmentation, protocol errors, timeouts."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    CTImageStorage,
    Verification,
)
from sqlalchemy import select

from pneumonode.db.models import AuditEvent
from pneumonode.dicom_node.receive import dataset_offset

pytestmark = pytest.mark.integration


def _requestor(*contexts: tuple[str, list[str]]) -> AE:
    ae = AE(ae_title="STORESCU")
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae


def _recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_each_context_gets_the_first_transfer_syntax_we_support(node) -> None:
    ae = _requestor(
        (CTImageStorage, [JPEG2000Lossless, ExplicitVRLittleEndian]),
        ("1.2.3.4.5.6", [ExplicitVRLittleEndian]),  # not a storage class we know
        (ComputedRadiographyImageStorage, ["1.2.3.999"]),  # a transfer syntax nobody knows
        (Verification, [JPEGBaseline8Bit]),  # Verification takes uncompressed syntaxes only
        (Verification, [ImplicitVRLittleEndian]),
    )
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PNEUMONODE")
    assert assoc.is_established
    try:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        assert accepted == {
            (CTImageStorage, JPEG2000Lossless),
            (Verification, ImplicitVRLittleEndian),
        }
        refused = sorted((cx.abstract_syntax, cx.result) for cx in assoc.rejected_contexts)
        assert refused == sorted(
            [
                ("1.2.3.4.5.6", 0x03),  # abstract syntax not supported
                (ComputedRadiographyImageStorage, 0x04),  # transfer syntaxes not supported
                (Verification, 0x04),
            ]
        )
        assert assoc.acceptor.maximum_length == node.settings.max_pdu
        assert assoc.acceptor.implementation_version_name.startswith("PNEUMONODE")
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_a_dataset_split_over_many_small_pdus_arrives_intact(
    node_factory, siim_sample_dicoms: list[Path]
) -> None:
    node = node_factory(max_pdu=16_384)
    path = siim_sample_dicoms[0]
    meta = pydicom.filereader.read_file_meta_info(path)
    ae = _requestor((meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID]))
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PNEUMONODE")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    finally:
        assoc.release()
    [stored] = node.spool.glob("*/*.dcm")
    sent = path.read_bytes()[dataset_offset(path) :]
    assert len(sent) > 5 * 16_384  # really fragmented
    assert stored.read_bytes()[dataset_offset(stored) :] == sent
    written = pydicom.filereader.read_file_meta_info(stored)
    assert written.TransferSyntaxUID == meta.TransferSyntaxUID
    assert written.MediaStorageSOPInstanceUID == meta.MediaStorageSOPInstanceUID
    assert written.SourceApplicationEntityTitle == "STORESCU"


def test_an_unknown_pdu_gets_an_abort_and_the_listener_carries_on(node) -> None:
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(b"\x09\x00" + struct.pack(">I", 4) + b"\x00" * 4)
        reply = _recv_all(sock)
    assert reply[:1] == b"\x07"  # A-ABORT
    assert reply[8:10] == b"\x02\x01"  # from the provider: unrecognised PDU
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(b"\x04\x00" + struct.pack(">I", 8) + b"\x00" * 8)  # P-DATA first
        assert _recv_all(sock)[:1] == b"\x07"
    _echo(node.port)


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode() + b"\x00" * (len(uid) % 2)


def _associate_rq(
    context: str = "1.2.840.10008.3.1.1.1",
    version: int = 1,
    presentation: tuple[tuple[int, str, str], ...] = ((1, Verification, ImplicitVRLittleEndian),),
) -> bytes:
    """An A-ASSOCIATE-RQ from STORESCU to PNEUMONODE proposing ``presentation`` ((context id,
    abstract syntax, transfer syntax), by default Verification)."""
    items = _item(0x10, context.encode())
    for context_id, abstract, syntax in presentation:
        proposed = _item(0x30, _uid(abstract)) + _item(0x40, _uid(syntax))
        items += _item(0x20, bytes([context_id, 0, 0, 0]) + proposed)
    items += _item(0x50, _item(0x51, struct.pack(">I", 16_384)))
    body = struct.pack(">HH", version, 0) + b"PNEUMONODE".ljust(16) + b"STORESCU".ljust(16)
    body += b"\x00" * 32 + items
    return b"\x01\x00" + struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("request_pdu", "source_reason", "why"),
    [
        (_associate_rq(context="1.2.3.4"), b"\x01\x02", "application context"),
        (_associate_rq(version=2), b"\x02\x02", "protocol version"),
    ],
)
def test_a_wrong_protocol_version_or_application_context_is_rejected(
    node_factory, request_pdu: bytes, source_reason: bytes, why: str
) -> None:
    node = node_factory()
    assert _associate_rq()[:1] == b"\x01"
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(request_pdu)
        reply = _recv_all(sock)
    assert reply[:1] == b"\x03"  # A-ASSOCIATE-RJ
    assert reply[7:8] == b"\x01" and reply[8:10] == source_reason  # permanent
    with node.database.session() as session:
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "association.rejected")
        ).all()
    assert why in event.message and event.calling_ae == "STORESCU"
    with socket.create_connection(("127.0.0.1", node.port)) as sock:  # the right one works
        sock.sendall(_associate_rq())
        sock.settimeout(10)
        assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC


def test_silence_before_the_request_is_closed_at_the_artim_timeout(node_factory) -> None:
    """PS3.8 Sta2 + ARTIM expired: the connection is closed, no A-ABORT (AA-2)."""
    node = node_factory(artim_timeout=1.0, network_timeout=30.0)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        reply = _recv_all(sock)
    assert reply == b""
    assert 0.9 < time.monotonic() - started < 5
    _echo(node.port)


def test_silence_inside_an_association_is_aborted_after_the_network_timeout(
    node_factory,
) -> None:
    node = node_factory(network_timeout=1.0, artim_timeout=30.0)
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(_associate_rq())
        assert _read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
        started = time.monotonic()
        reply = _recv_all(sock)
    assert reply[:1] == b"\x07"  # A-ABORT, then our end of the connection is closed
    assert 0.9 < time.monotonic() - started < 5
    _echo(node.port)


def _echo(port: int) -> None:
    """A C-ECHO from pynetdicom succeeds."""
    assoc = _requestor((Verification, [ImplicitVRLittleEndian])).associate(
        "127.0.0.1", port, ae_title="PNEUMONODE"
    )
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_associations_over_the_limit_are_rejected_as_busy(node_factory) -> None:
    node = node_factory(max_associations=1)
    first = _requestor((Verification, [ImplicitVRLittleEndian]))
    held = first.associate("127.0.0.1", node.port, ae_title="PNEUMONODE")
    assert held.is_established
    try:
        second = _requestor((Verification, [ImplicitVRLittleEndian]))
        refused = second.associate("127.0.0.1", node.port, ae_title="PNEUMONODE")
        assert refused.is_rejected
        assert (refused.acceptor.primitive.result, refused.acceptor.primitive.diagnostic) == (
            0x02,  # transient
            0x02,  # local limit exceeded
        )
    finally:
        held.release()
    with node.database.session() as session:
        kinds = session.scalars(select(AuditEvent.message)).all()
    assert any("more than 1 associations" in message for message in kinds)
    _echo(node.port)


def test_a_peer_that_vanishes_mid_dataset_leaves_nothing(
    node, siim_sample_dicoms: list[Path]
) -> None:
    """Half of a C-STORE (command, then part of the dataset), then the socket closes."""
    path = siim_sample_dicoms[0]
    meta = pydicom.filereader.read_file_meta_info(path)
    ae = _requestor((meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID]))
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PNEUMONODE")
    assert assoc.is_established
    sock = assoc.dul.socket.socket  # type: ignore[union-attr]
    context_id = assoc.accepted_contexts[0].context_id
    command = _store_command(
        str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)
    )
    half = path.read_bytes()[dataset_offset(path) :][:50_000]
    for control, data in ((0x03, command), (0x00, half)):
        pdv = struct.pack(">IBB", len(data) + 2, context_id, control) + data
        sock.sendall(b"\x04\x00" + struct.pack(">I", len(pdv)) + pdv)
    deadline = time.monotonic() + 10
    incoming = node.spool / ".incoming"
    while not any(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(incoming.iterdir()), "the partial dataset never reached the spool"
    sock.shutdown(socket.SHUT_RDWR)
    assoc.abort()
    while any(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(incoming.iterdir()) and not list(node.spool.glob("*/*.dcm"))
    with node.database.session() as session:
        aborted = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "association.aborted")
        ).all()
    assert len(aborted) == 1
    _echo(node.port)


def _command_set(ds: Dataset) -> bytes:
    """``ds`` as a command set: Implicit VR Little Endian, led by its Command Group Length."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    encoded = body.getvalue()
    return b"\x00\x00\x00\x00\x04\x00\x00\x00" + struct.pack("<I", len(encoded)) + encoded


def _store_command(sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE-RQ command set, Implicit VR Little Endian, as pynetdicom would encode it."""
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = 0x0001
    ds.MessageID = 7
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = sop_instance
    return _command_set(ds)


# ------------------------------------------- PS3.7 and PS3.8 checks (issue 22)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    sock.settimeout(10)
    header = sock.recv(6, socket.MSG_WAITALL)
    assert len(header) == 6, "the connection closed"
    body = sock.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL)
    return header[0], body


def _p_data(context_id: int, control: int, data: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return b"\x04\x00" + struct.pack(">I", len(pdv)) + pdv


def _echo_command() -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = Verification
    ds.CommandField = 0x0030
    ds.MessageID = 3
    ds.CommandDataSetType = 0x0101
    return _command_set(ds)


#: Verification on context 1, Secondary Capture (JPEG Baseline) on context 3.
_CONTEXTS = (
    (1, Verification, ImplicitVRLittleEndian),
    (3, SECONDARY_CAPTURE, JPEGBaseline8Bit),
)


@pytest.mark.parametrize(
    ("context_id", "command", "why"),
    [
        pytest.param(
            3,
            _store_command(CTImageStorage, "1.2.3.4"),
            f"C-STORE-RQ for {CTImageStorage} on presentation context 3 ({SECONDARY_CAPTURE})",
            id="CT on a Secondary Capture context",
        ),
        pytest.param(
            1,
            _store_command(SECONDARY_CAPTURE, "1.2.3.4"),
            f"C-STORE-RQ for {SECONDARY_CAPTURE} on presentation context 1 ({Verification})",
            id="C-STORE on the Verification context",
        ),
        pytest.param(
            1,
            _store_command(Verification, "1.2.3.4"),
            f"C-STORE-RQ on presentation context 1 ({Verification}), which carries C-ECHO only",
            id="C-STORE of Verification",
        ),
        pytest.param(
            3,
            _echo_command(),
            f"C-ECHO-RQ for {Verification} on presentation context 3 ({SECONDARY_CAPTURE})",
            id="C-ECHO on a storage context",
        ),
    ],
)
def test_a_command_that_does_not_match_its_presentation_context_is_aborted(
    node_factory, context_id: int, command: bytes, why: str
) -> None:
    """PS3.7 (and issue 22): a DIMSE message belongs to its context's abstract syntax, and the
    Verification context carries C-ECHO only. storescp and Orthanc abort such an association;
    so do we (A-ABORT from the service user, as pynetdicom's ``Association.abort()``), before
    any dataset is kept, and the audit trail says why."""
    node = node_factory()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(_associate_rq(presentation=_CONTEXTS))
        kind, _ = _read_pdu(sock)
        assert kind == 0x02  # A-ASSOCIATE-AC
        sock.sendall(_p_data(context_id, 0x03, command))
        reply = _recv_all(sock)
    assert reply[:1] == b"\x07", reply[:16]  # A-ABORT, then the connection closes
    assert reply[8:9] == b"\x00"  # source: the DICOM UL service-user
    assert not list(node.spool.glob("*/*.dcm")) and not any((node.spool / ".incoming").iterdir())
    with node.database.session() as session:
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "association.aborted")
        ).all()
    assert event.message == f"association aborted: {why}"
    ae = _requestor((Verification, [ImplicitVRLittleEndian]))
    assoc = ae.associate("127.0.0.1", node.port, ae_title="PNEUMONODE")  # the next one works
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


@pytest.mark.parametrize(
    ("context_ids", "why"),
    [
        ((2,), "presentation context ID 2 is even"),
        ((1, 3, 1), "presentation context ID 1 is proposed twice"),
    ],
)
def test_even_or_duplicate_presentation_context_ids_are_rejected(
    node_factory, context_ids: tuple[int, ...], why: str
) -> None:
    """PS3.8 9.3.2.2: context IDs are odd; 7.1.1.13: each is unused by the others. A duplicate
    used to replace the earlier context silently. The request is not acceptable to the service
    provider: A-ASSOCIATE-RJ (rejected permanent, UL service-provider (ACSE related function),
    no reason given), as PS3.8 9.2 AE-6 and 7.1.2.6 say."""
    node = node_factory()
    presentation = tuple((i, Verification, ImplicitVRLittleEndian) for i in context_ids)
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(_associate_rq(presentation=presentation))
        reply = _recv_all(sock)
    assert reply[:1] == b"\x03" and reply[7:10] == b"\x01\x02\x01", reply[:10]
    with node.database.session() as session:
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "association.rejected")
        ).all()
    assert why in event.message
    with socket.create_connection(("127.0.0.1", node.port)) as sock:  # odd and unique: fine
        sock.sendall(_associate_rq(presentation=((1, Verification, ImplicitVRLittleEndian),)))
        assert _read_pdu(sock)[0] == 0x02


def _cancel_command(message_id: int) -> bytes:
    """A C-CANCEL-RQ command set (PS3.7 9.3.2.3): Message ID Being Responded To, no dataset."""
    ds = Dataset()
    ds.CommandField = 0x0FFF
    ds.MessageIDBeingRespondedTo = message_id
    ds.CommandDataSetType = 0x0101
    return _command_set(ds)


def test_a_c_cancel_gets_no_answer_and_the_association_goes_on(node_factory) -> None:
    """PS3.7 9.3.2.3: C-CANCEL-RQ has no response of its own. Nothing runs asynchronously here
    (a C-STORE is answered when its last fragment arrives), so there is nothing to cancel: the
    listener neither answers nor aborts, and the next C-ECHO on the association is answered."""
    node = node_factory()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(_associate_rq(presentation=_CONTEXTS))
        assert _read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
        sock.sendall(_p_data(1, 0x03, _cancel_command(2)))
        sock.sendall(_p_data(1, 0x03, _echo_command()))
        kind, body = _read_pdu(sock)  # the echo's response is the first thing to come back
        assert kind == 0x04, body[:16]  # P-DATA-TF
        assert b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x80" in body  # (0000,0100) C-ECHO-RSP
        assert b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00" in body  # (0000,0900) Success
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert _read_pdu(sock)[0] == 0x06  # A-RELEASE-RP
