"""Our requestor (dicom_node/requestor.py) against a scripted acceptor on a raw socket: what a
well-behaved peer never does, answered as PS3.8 says."""

from __future__ import annotations

import socket
import struct
import threading

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from raw_pdus import encode_pdu, read_pdu

from pneumonode.dicom_node.requestor import Requestor

A_ASSOCIATE_AC, A_RELEASE_RQ, A_RELEASE_RP = 0x02, 0x05, 0x06
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _accept_verification(connection: socket.socket) -> None:
    """Read the A-ASSOCIATE-RQ and accept its context 1 (Verification, implicit VR)."""
    request = read_pdu(connection)
    assert request is not None and request[0] == 0x01
    titles = request[1][4:36]
    syntax = ImplicitVRLittleEndian.encode() + b"\x00"
    items = (
        _item(0x10, APPLICATION_CONTEXT)
        + _item(0x21, bytes([1, 0, 0, 0]) + _item(0x40, syntax))
        + _item(0x50, _item(0x51, struct.pack(">I", 16_384)))
    )
    connection.sendall(
        encode_pdu(A_ASSOCIATE_AC, struct.pack(">HH", 1, 0) + titles + bytes(32) + items)
    )


def _colliding_acceptor(listener: socket.socket, seen: list[str]) -> None:
    """An acceptor that asks for release just as the requestor does (a release collision),
    then plays the acceptor's side of PS3.8 9.2 (Sta10, Sta12, Sta13), noting what came."""
    connection, _ = listener.accept()
    with connection:
        connection.settimeout(10)
        _accept_verification(connection)
        for answer in (
            encode_pdu(A_RELEASE_RQ, bytes(4)),
            encode_pdu(A_RELEASE_RP, bytes(4)),
            None,
        ):
            pdu = read_pdu(connection)
            seen.append("closed" if pdu is None else f"PDU {pdu[0]:#04x}")
            if pdu is None or answer is None:
                return
            connection.sendall(answer)


def test_a_release_collision_is_answered_with_a_release_reply() -> None:
    """Both ends send A-RELEASE-RQ at once. PS3.8 9.2 (AR-8, AR-9, AR-3): the requestor answers
    the acceptor's request with A-RELEASE-RP, waits for the acceptor's A-RELEASE-RP and closes
    the connection. It used to send an A-ABORT."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []
    peer = threading.Thread(target=_colliding_acceptor, args=(listener, seen), daemon=True)
    peer.start()
    try:
        requestor = Requestor(
            "127.0.0.1",
            listener.getsockname()[1],
            "COLLIDER",
            "PNEUMONODE",
            [(Verification, ImplicitVRLittleEndian)],
            timeout=5,
        )
        requestor.open()
        assert requestor.established
        requestor.release()
        peer.join(timeout=10)
    finally:
        listener.close()
    assert seen == ["PDU 0x05", "PDU 0x06", "closed"]
    assert not requestor.established
