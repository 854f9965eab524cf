"""Our requestor (dicom_node/requestor.py) against a fake acceptor on a real socket that breaks
the protocol: each way ends in a precise exception within the timeout, never a hang, and an
association it can no longer trust is aborted (A-ABORT sent) before the exception."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from raw_pdus import encode_pdu, read_pdu

from pneumonode.dicom_node.dimse import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    VERIFICATION,
    Status,
    c_store_rq,
    response_to,
)
from pneumonode.dicom_node.dimse import Command as DimseCommand
from pneumonode.dicom_node.pdu import (
    CONTEXT_ACCEPTED,
    PDV_COMMAND,
    PDV_LAST,
    AssociateAC,
    AssociateRQ,
    p_data_tf,
)
from pneumonode.dicom_node.pdu_items import (
    APPLICATION_CONTEXT,
    PresentationContextAC,
    UserInformation,
)
from pneumonode.dicom_node.requestor import (
    AssociationAbortedError,
    AssociationRejectedError,
    Requestor,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
TIMEOUT = 2.0

Script = Callable[[socket.socket, list[str]], None]


def _accept(connection: socket.socket, max_pdu: int = 16_384) -> None:
    """Read the A-ASSOCIATE-RQ and accept each proposed context with its transfer syntax."""
    request = read_pdu(connection)
    assert request is not None and request[0] == 0x01
    rq = AssociateRQ.decode(memoryview(request[1]))
    answers = [
        PresentationContextAC(c.context_id, CONTEXT_ACCEPTED, c.transfer_syntaxes[0])
        for c in rq.contexts
    ]
    user = UserInformation(max_length=max_pdu, implementation_class_uid="1.2.3.4")
    connection.sendall(
        AssociateAC(rq.called, rq.calling, APPLICATION_CONTEXT, answers, user).encode()
    )


def _command(connection: socket.socket) -> tuple[int, DimseCommand]:
    """(context id, command) of the next request's command set."""
    data = b""
    while True:
        pdu = read_pdu(connection)
        assert pdu is not None and pdu[0] == 0x04
        length, context_id, control = struct.unpack(">IBB", pdu[1][:6])
        data += pdu[1][6 : 4 + length]
        if control & PDV_LAST:
            return context_id, DimseCommand.decode(data)


def _drain(connection: socket.socket, seen: list[str]) -> None:
    """Note each PDU type the requestor still sends, then 'closed'."""
    connection.settimeout(TIMEOUT * 3)
    try:
        while (pdu := read_pdu(connection)) is not None:
            seen.append(f"PDU {pdu[0]:#04x}")
    except OSError:
        pass
    seen.append("closed")


@pytest.fixture
def acceptor() -> Iterator[Callable[[Script], tuple[int, list[str], threading.Thread]]]:
    """``acceptor(script)``: a one-connection fake acceptor running ``script(connection,
    seen)``; returns (port, seen, its thread)."""
    listeners: list[socket.socket] = []

    def start(script: Script) -> tuple[int, list[str], threading.Thread]:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        seen: list[str] = []

        def run() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(TIMEOUT * 3)
                script(connection, seen)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return listener.getsockname()[1], seen, thread

    yield start
    for listener in listeners:
        listener.close()


def _requestor(port: int, *contexts: tuple[str, str]) -> Requestor:
    return Requestor(
        "127.0.0.1",
        port,
        "FAKESCP",
        "PNEUMONODE",
        list(contexts) or [(VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN)],
        timeout=TIMEOUT,
    )


def _within_the_timeout(started: float) -> None:
    assert time.monotonic() - started < TIMEOUT * 2


def test_an_associate_rj_is_a_rejection_that_says_why(acceptor) -> None:
    def reject(connection: socket.socket, seen: list[str]) -> None:
        read_pdu(connection)
        connection.sendall(encode_pdu(0x03, bytes([0, 1, 1, 3])))  # permanent, user, calling AE
        _drain(connection, seen)

    port, seen, peer = acceptor(reject)
    requestor = _requestor(port)
    with pytest.raises(AssociationRejectedError, match="Rejected Permanent: Calling AE title"):
        requestor.open()
    assert requestor.established is False
    peer.join(TIMEOUT * 3)
    assert seen == ["closed"]  # AE-4: the requestor closes the connection


def test_an_abort_in_answer_to_the_request_is_an_abort(acceptor) -> None:
    def abort(connection: socket.socket, seen: list[str]) -> None:
        read_pdu(connection)
        connection.sendall(encode_pdu(0x07, bytes([0, 0, 2, 0])))
        _drain(connection, seen)

    port, _seen, _peer = acceptor(abort)
    with pytest.raises(AssociationAbortedError, match="abort"):
        _requestor(port).open()


def test_a_peer_abort_in_the_middle_of_a_dataset_ends_the_store(acceptor) -> None:
    """The acceptor takes the command and the first fragment of a 4 MiB dataset, then sends an
    A-ABORT and closes: the store fails at once, whether it was still sending or reading."""

    def abort_mid_dataset(connection: socket.socket, seen: list[str]) -> None:
        _accept(connection, max_pdu=16_384)
        _command(connection)
        fragment = read_pdu(connection)
        seen.append(f"PDU {fragment[0]:#04x}" if fragment else "closed")
        connection.sendall(encode_pdu(0x07, bytes([0, 0, 0, 0])))

    port, seen, peer = acceptor(abort_mid_dataset)
    requestor = _requestor(port, (CT, IMPLICIT_VR_LITTLE_ENDIAN))
    requestor.open()
    started = time.monotonic()
    with pytest.raises(AssociationAbortedError):
        requestor.store(CT, "1.2.3.4", IMPLICIT_VR_LITTLE_ENDIAN, bytes(4 * 1024 * 1024))
    _within_the_timeout(started)
    assert requestor.established is False
    peer.join(TIMEOUT * 3)
    assert seen == ["PDU 0x04"]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (encode_pdu(0x02, bytes(10)), "A-ASSOCIATE-AC"),  # shorter than its fixed fields
        (encode_pdu(0x0A, bytes(4)), "PDU type 10"),  # no such PDU type
        (b"\x02\x00\x7f\xff\xff\xff", "a PDU of"),  # announces 2 GiB
    ],
    ids=["short-associate-ac", "unknown-type", "huge-length"],
)
def test_a_malformed_answer_to_the_request_is_an_abort(acceptor, reply, message) -> None:
    def answer(connection: socket.socket, seen: list[str]) -> None:
        read_pdu(connection)
        connection.sendall(reply)
        _drain(connection, seen)

    port, _seen, _peer = acceptor(answer)
    started = time.monotonic()
    with pytest.raises(AssociationAbortedError, match=message):
        _requestor(port).open()
    _within_the_timeout(started)


def _echo_answered_with(reply: Callable[[int, DimseCommand], bytes]) -> Script:
    """An acceptor that accepts, reads a C-ECHO-RQ and sends ``reply(context id, command)``,
    then notes what the requestor sends."""

    def script(connection: socket.socket, seen: list[str]) -> None:
        _accept(connection)
        context_id, command = _command(connection)
        connection.sendall(reply(context_id, command))
        _drain(connection, seen)

    return script


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        # a PDV whose length runs past the end of its P-DATA-TF
        (lambda c, _: encode_pdu(0x04, struct.pack(">IBB", 100, c, 3) + b"\x00" * 4), "PDV"),
        # a request (C-STORE-RQ) where the C-ECHO-RSP belongs
        (
            lambda c, _: p_data_tf(c, PDV_COMMAND | PDV_LAST, c_store_rq(1, CT, "1.2.3")),
            "C-STORE-RQ",
        ),
        # the response to another message
        (
            lambda c, cmd: p_data_tf(
                c,
                PDV_COMMAND | PDV_LAST,
                response_to(
                    DimseCommand(cmd.field, cmd.message_id + 1, VERIFICATION, "", False), 0
                ),
            ),
            "another request",
        ),
        # a response on a context that was not proposed
        (
            lambda c, cmd: p_data_tf(
                c + 2, PDV_COMMAND | PDV_LAST, response_to(cmd, Status.SUCCESS)
            ),
            "another context",
        ),
        # a command set that is not group 0000 Implicit VR
        (
            lambda c, _: p_data_tf(
                c, PDV_COMMAND | PDV_LAST, b"\x08\x00\x16\x00\x02\x00\x00\x00CT"
            ),
            "malformed command set",
        ),
        # an A-ASSOCIATE-AC again (Sta6, Evt3: AA-8)
        (lambda c, _: encode_pdu(0x02, bytes(68)), "PDU type 2"),
    ],
    ids=[
        "pdv-overrun",
        "request-not-response",
        "other-message",
        "other-context",
        "not-a-command",
        "associate-ac",
    ],
)
def test_an_unexpected_or_malformed_response_aborts(acceptor, reply, message) -> None:
    port, seen, peer = acceptor(_echo_answered_with(reply))
    requestor = _requestor(port)
    requestor.open()
    started = time.monotonic()
    with pytest.raises(AssociationAbortedError, match=message):
        requestor.echo()
    _within_the_timeout(started)
    assert requestor.established is False
    peer.join(TIMEOUT * 4)
    assert seen == ["PDU 0x07", "closed"]  # A-ABORT, then the requestor closes


def test_a_good_response_after_all_that_still_works(acceptor) -> None:
    """The fake acceptor's happy path, so that the failures above are the replies' doing."""
    port, seen, peer = acceptor(
        _echo_answered_with(
            lambda c, cmd: p_data_tf(c, PDV_COMMAND | PDV_LAST, response_to(cmd, Status.SUCCESS))
        )
    )
    requestor = _requestor(port)
    requestor.open()
    assert requestor.echo().status == Status.SUCCESS
    requestor.abort()
    peer.join(TIMEOUT * 4)
    assert seen == ["PDU 0x07", "closed"]


def test_silence_after_the_connection_is_a_timeout(acceptor) -> None:
    def silent(connection: socket.socket, seen: list[str]) -> None:
        _drain(connection, seen)

    port, _seen, _peer = acceptor(silent)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _requestor(port).open()
    assert TIMEOUT * 0.9 < time.monotonic() - started < TIMEOUT * 2


def test_silence_after_a_request_is_a_timeout_and_an_abort(acceptor) -> None:
    def silent_after_the_command(connection: socket.socket, seen: list[str]) -> None:
        _accept(connection)
        _command(connection)
        _drain(connection, seen)

    port, seen, peer = acceptor(silent_after_the_command)
    requestor = _requestor(port)
    requestor.open()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        requestor.echo()
    assert TIMEOUT * 0.9 < time.monotonic() - started < TIMEOUT * 2
    assert requestor.established is False
    peer.join(TIMEOUT * 4)
    assert seen == ["PDU 0x07", "closed"]


def test_a_release_request_instead_of_a_response_aborts(acceptor) -> None:
    """The acceptor asks for release while a C-ECHO-RQ waits for its response (Sta6, Evt12):
    the operation cannot complete; the requestor aborts rather than wait."""
    port, seen, peer = acceptor(_echo_answered_with(lambda c, _: encode_pdu(0x05)))
    requestor = _requestor(port)
    requestor.open()
    with pytest.raises(AssociationAbortedError, match="PDU type 5"):
        requestor.echo()
    peer.join(TIMEOUT * 4)
    assert seen == ["PDU 0x07", "closed"]


def test_a_release_collision_without_the_acceptors_reply_ends_in_an_abort(acceptor) -> None:
    """A release collision (AR-8, AR-9: Sta11) in which the acceptor never sends its
    A-RELEASE-RP: release() gives up after the timeout with an A-ABORT, never hangs."""

    def collide_then_fall_silent(connection: socket.socket, seen: list[str]) -> None:
        _accept(connection)
        pdu = read_pdu(connection)
        seen.append(f"PDU {pdu[0]:#04x}" if pdu else "closed")
        connection.sendall(encode_pdu(0x05))  # our A-RELEASE-RQ too
        _drain(connection, seen)

    port, seen, peer = acceptor(collide_then_fall_silent)
    requestor = _requestor(port)
    requestor.open()
    started = time.monotonic()
    requestor.release()
    assert time.monotonic() - started < TIMEOUT * 2
    assert requestor.established is False
    peer.join(TIMEOUT * 4)
    # A-RELEASE-RQ, our A-RELEASE-RP to theirs (AR-9), then at the timeout an A-ABORT
    assert seen == ["PDU 0x05", "PDU 0x06", "PDU 0x07", "closed"]


def test_a_release_answered_by_an_abort_closes_quietly(acceptor) -> None:
    def abort_the_release(connection: socket.socket, seen: list[str]) -> None:
        _accept(connection)
        pdu = read_pdu(connection)
        seen.append(f"PDU {pdu[0]:#04x}" if pdu else "closed")
        connection.sendall(encode_pdu(0x07, bytes([0, 0, 2, 0])))
        _drain(connection, seen)

    port, seen, peer = acceptor(abort_the_release)
    requestor = _requestor(port)
    requestor.open()
    requestor.release()
    peer.join(TIMEOUT * 4)
    assert seen == ["PDU 0x05", "closed"]
