"""The sending side of our DICOM upper layer (PS3.8): one association we request, on one
blocking socket, for C-ECHO and C-STORE as an SCU.

Why our own and not pynetdicom's requestor: pynetdicom runs two reactor threads per association
that pass every PDU through queues polled with 1 ms sleeps, and its sender races its reactor for
each response (pynetdicom issues 435 and 842). Sending a SEG and an SR to a PACS on the same
machine took 15 ms and 5.8 ms of CPU that way (association, two stores, release: 3 to 5 ms
each); here each step is one write and one read. The PDUs are encoded and decoded
by the codec the listener uses (:mod:`pneumonode.dicom_node.pdu`).

What is supported, as a requestor only: A-ASSOCIATE-RQ with up to 128 presentation contexts, one
transfer syntax each, user information with our maximum length, implementation class UID and
version name (no role selection, asynchronous operations or extended negotiation: the defaults
apply, one operation at a time); C-ECHO-RQ; C-STORE-RQ of a file's dataset as stored (streamed,
fragmented to the peer's maximum length) or of bytes given; A-RELEASE, a release collision
answered as PS3.8 says; A-ABORT on any failure. What each PDU that arrives calls for is looked
up in PS3.8's state transition table (``fsm.py``): an unexpected one is aborted (AA-8, from the
service provider), a failure of ours or a timeout aborted by us as the service user (AA-1).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pneumonode.dicom_node.dimse import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    VERIFICATION,
    Response,
    c_echo_rq,
    c_store_rq,
)
from pneumonode.dicom_node.fsm import Action, Event, InvalidEventError, StateMachine, pdu_event
from pneumonode.dicom_node.pdu import (
    ABORT_PROVIDER,
    ABORT_SERVICE_USER,
    CONTEXT_ACCEPTED,
    PDU_HEADER,
    PDV_COMMAND,
    PDV_LAST,
    REASON_NOT_SPECIFIED,
    REJECTED_PERMANENT,
    REJECTED_TRANSIENT,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    ae_title_field,
    p_data_tf,
    pdv_items,
    release_rp,
    release_rq,
)
from pneumonode.dicom_node.pdu_items import (
    APPLICATION_CONTEXT,
    IMPLEMENTATION_CLASS_UID,
    REASON_UNEXPECTED_PDU,
    PresentationContextRQ,
    ProtocolError,
    UserInformation,
)
from pneumonode.identity import IMPLEMENTATION_VERSION_NAME

__all__ = [
    "AssociationAbortedError",
    "AssociationRejectedError",
    "ConnectError",
    "Rejection",
    "Requestor",
    "Response",
]

#: Our maximum PDU length: responses are small, so the peer's fragments of them are too.
OUR_MAX_PDU = 16_384
#: Longest PDU other than P-DATA we read (an A-ASSOCIATE-AC).
MAX_CONTROL_PDU = 4 * 1024 * 1024
#: Fragment size when the peer states no maximum (0: unlimited).
UNLIMITED_FRAGMENT = 1 << 20

_RESULTS = {REJECTED_PERMANENT: "Rejected Permanent", REJECTED_TRANSIENT: "Rejected Transient"}
_REASONS = {
    1: {
        1: "No reason given",
        2: "Application context name not supported",
        3: "Calling AE title not recognised",
        7: "Called AE title not recognised",
    },
    2: {1: "No reason given", 2: "Protocol version not supported"},
    3: {1: "Temporary congestion", 2: "Local limit exceeded"},
}


class ConnectError(Exception):
    """No connection (refused, unreachable, timed out; or the TLS handshake failed)."""


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ: result (1 permanent, 2 transient), source and diagnostic."""

    result: int
    source: int
    diagnostic: int

    @property
    def permanent(self) -> bool:
        return self.result == REJECTED_PERMANENT

    def __str__(self) -> str:
        what = _RESULTS.get(self.result, f"result {self.result}")
        why = _REASONS.get(self.source, {}).get(self.diagnostic, f"diagnostic {self.diagnostic}")
        return f"{what}: {why}"


class AssociationRejectedError(Exception):
    def __init__(self, rejection: Rejection) -> None:
        super().__init__(str(rejection))
        self.rejection = rejection


class AssociationAbortedError(Exception):
    """The peer aborted, closed the connection or broke the protocol."""


class Requestor:
    """One association requested from ``host``:``port`` for ``contexts`` ((abstract syntax,
    transfer syntax) pairs, one presentation context each).

    ``open()`` raises ``ConnectError``, ``AssociationRejectedError``, ``AssociationAbortedError``
    or ``TimeoutError``; after it, ``accepted`` maps each accepted pair to its context id. The
    operations raise ``AssociationAbortedError`` or ``TimeoutError``, and abort the association
    first (it cannot be used after that)."""

    def __init__(
        self,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str,
        contexts: list[tuple[str, str]],
        *,
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not 0 < len(contexts) <= 128:
            raise ValueError("an association proposes 1 to 128 presentation contexts")
        self.host, self.port = host, port
        self.called_ae, self.calling_ae = called_ae, calling_ae
        self.proposed = {2 * index + 1: pair for index, pair in enumerate(contexts)}
        self.timeout = timeout
        self.tls = tls
        self.accepted: dict[tuple[str, str], int] = {}
        self.peer_max_pdu = 0
        self.established = False
        self.fsm = StateMachine(requestor=True)
        self._sock: socket.socket | None = None
        self._message_id = 0

    # -- association

    def open(self) -> None:
        self.fsm = StateMachine(requestor=True)
        self.fsm.event(Event.EVT1)  # AE-1: connect (Sta4)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            self._step(Event.EVT17)  # AA-4
            raise ConnectError(str(exc)) from exc
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except (OSError, ValueError) as exc:
                sock.close()
                self._step(Event.EVT17)  # AA-4
                raise ConnectError(f"TLS handshake: {exc}") from exc
        sock.settimeout(self.timeout)
        self._sock = sock
        self.fsm.event(Event.EVT2)  # AE-2: A-ASSOCIATE-RQ (Sta5)
        try:
            self._send(self._associate_rq())
            kind, body = self._read_pdu()
        except TimeoutError:
            self.abort()  # Evt15: AA-1
            raise
        except (OSError, ProtocolError) as exc:
            self._failed(exc)
            raise AssociationAbortedError(str(exc)) from exc
        action = self._step(pdu_event(kind))
        if action is Action.AE_3:
            try:
                self._accepted(body)
            except ProtocolError as exc:
                self.abort()
                raise AssociationAbortedError(str(exc)) from exc
            self.established = True
            return
        if action is Action.AE_4 and len(body) >= 4:
            self.close()
            rejected = AssociateRJ.decode(body)
            raise AssociationRejectedError(
                Rejection(rejected.result, rejected.source, rejected.reason)
            )
        if action is Action.AA_3:
            self.close()
            raise AssociationAbortedError("the peer aborted the association request")
        self._aborted_by_us(Action.AA_8, REASON_UNEXPECTED_PDU)
        raise AssociationAbortedError(f"answered the association request with PDU type {kind}")

    def _associate_rq(self) -> bytes:
        contexts = [
            PresentationContextRQ(context_id, abstract, [syntax])
            for context_id, (abstract, syntax) in self.proposed.items()
        ]
        user = UserInformation(
            max_length=OUR_MAX_PDU,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        return AssociateRQ(
            ae_title_field(self.called_ae),
            ae_title_field(self.calling_ae),
            APPLICATION_CONTEXT,
            contexts,
            user,
        ).encode()

    def _accepted(self, body: memoryview) -> None:
        answer = AssociateAC.decode(body)
        for context in answer.contexts:
            pair = self.proposed.get(context.context_id)
            if (
                context.result == CONTEXT_ACCEPTED
                and pair is not None
                and context.transfer_syntax == pair[1]
            ):
                self.accepted[pair] = context.context_id
        if answer.user.max_length is not None:
            self.peer_max_pdu = answer.user.max_length

    def release(self) -> None:
        """A-RELEASE-RQ, wait for the answer, close (an abort if the peer does not answer).

        A release collision (the peer asks for release too, PS3.8 9.2, AR-8): as the
        requestor we answer its A-RELEASE-RQ with A-RELEASE-RP (AR-9), then wait for its
        A-RELEASE-RP to ours and close the connection (AR-3)."""
        if not self.established:
            self.close()
            return
        self.established = False
        try:
            self.fsm.event(Event.EVT11)  # AR-1 (Sta7)
            self._send(release_rq())
            while True:
                kind, _body = self._read_pdu()
                action = self._step(pdu_event(kind))
                if action is Action.AR_6:  # a late response may still come first
                    continue
                if action is Action.AR_8:  # a release collision: Sta9, AR-9 (Sta11)
                    self.fsm.event(Event.EVT14)
                    self._send(release_rp())
                    continue
                if action not in (Action.AR_3, Action.AA_3):  # AA-8
                    self._aborted_by_us(Action.AA_8, REASON_UNEXPECTED_PDU)
                break
        except TimeoutError:
            self.abort()
        except (OSError, ProtocolError) as exc:
            self._failed(exc)
        self.close()

    def abort(self) -> None:
        """A-ABORT from us, the service user (Evt15: AA-1), then close."""
        self._aborted_by_us(self._step(Event.EVT15), REASON_NOT_SPECIFIED)

    def _failed(self, exc: OSError | ProtocolError) -> None:
        """The connection failed (Evt17: AA-4, close) or an invalid PDU came (Evt19: AA-8)."""
        if isinstance(exc, ProtocolError):
            self._aborted_by_us(self._step(Event.EVT19), exc.reason)
        else:
            self._step(Event.EVT17)
            self.close()

    def _aborted_by_us(self, action: Action | None, reason: int) -> None:
        """Carry out an abort action (Sta13 after it), then close: AA-1 sends an A-ABORT from
        the service user, AA-7 and AA-8 one from the service provider with ``reason``."""
        self.established = False
        if action is Action.AA_1:
            self._send_abort(ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
        elif action in (Action.AA_7, Action.AA_8):
            self._send_abort(ABORT_PROVIDER, reason)
        self.close()

    def _step(self, event: Event) -> Action | None:
        """The action of ``event`` in the current state (the machine moves on), or None where
        the table has none (the association is over)."""
        try:
            return self.fsm.event(event)
        except InvalidEventError:
            return None

    def close(self) -> None:
        self.established = False
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    # -- services

    def echo(self) -> Response:
        context_id = self.accepted[(VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN)]
        return self._request(context_id, c_echo_rq, None)

    def store(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: tuple[Path, int] | bytes,
    ) -> Response:
        """C-STORE the dataset: a file's bytes from an offset (as stored), or bytes given."""
        context_id = self.accepted[(sop_class_uid, transfer_syntax_uid)]

        def command(message_id: int) -> bytes:
            return c_store_rq(message_id, sop_class_uid, sop_instance_uid)

        return self._request(context_id, command, dataset)

    def _request(
        self,
        context_id: int,
        command: Callable[[int], bytes],
        dataset: tuple[Path, int] | bytes | None,
    ) -> Response:
        """Send the request ``command(message_id)`` and its dataset; read its response."""
        if not self.established:
            raise AssociationAbortedError("the association is no longer established")
        self._message_id = self._message_id % 0xFFFF + 1
        try:
            self._send_pdv(context_id, command(self._message_id), command=True)
            if isinstance(dataset, bytes):
                self._send_pdv(context_id, dataset, command=False)
            elif dataset is not None:
                path, offset = dataset
                with path.open("rb") as file:
                    file.seek(offset)
                    self._send_file(context_id, file)
            return self._response(context_id)
        except TimeoutError:
            self.abort()
            raise
        except (OSError, ProtocolError) as exc:
            if isinstance(exc, ProtocolError):
                self.abort()  # we cannot use what came: the service user aborts (AA-1)
            else:
                self._failed(exc)
            raise AssociationAbortedError(str(exc) or type(exc).__name__) from exc

    def _fragment(self) -> int:
        """Largest PDV value per P-DATA-TF PDU the peer accepts."""
        if not self.peer_max_pdu:
            return UNLIMITED_FRAGMENT
        return max(self.peer_max_pdu - 6, 2)

    def _send_pdv(self, context_id: int, data: bytes, *, command: bool) -> None:
        step = self._fragment()
        view = memoryview(data)
        chunks = [view[start : start + step] for start in range(0, len(view), step)] or [view]
        pdus = []
        for index, chunk in enumerate(chunks):
            last = PDV_LAST if index == len(chunks) - 1 else 0
            control = (PDV_COMMAND if command else 0) | last
            pdus.append(p_data_tf(context_id, control, chunk))
        self._send(b"".join(pdus))

    def _send_file(self, context_id: int, file: BinaryIO) -> None:
        step = self._fragment()
        chunk = file.read(step)
        while True:
            following = file.read(step)
            self._send(p_data_tf(context_id, 0 if following else PDV_LAST, chunk))
            if not following:
                return
            chunk = following

    def _response(self, context_id: int) -> Response:
        command = bytearray()
        while True:
            kind, body = self._read_pdu()
            action = self._step(pdu_event(kind))
            if action is Action.AA_3:
                self.close()
                raise AssociationAbortedError("the peer aborted the association")
            if action is Action.AA_8:
                self._aborted_by_us(action, REASON_UNEXPECTED_PDU)
                raise AssociationAbortedError(f"PDU type {kind} while waiting for a response")
            if action is not Action.DT_2:  # AR-2: a release asked for mid-operation
                raise ProtocolError(f"PDU type {kind} while waiting for a response")
            for pdv_context, control, value in pdv_items(body):
                if pdv_context != context_id or not control & PDV_COMMAND:
                    raise ProtocolError("a response on another context, or with a dataset")
                command += value
                if control & PDV_LAST:
                    return Response.decode(bytes(command), self._message_id)

    # -- PDUs

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def _send_abort(self, source: int, reason: int) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(Abort(source, reason).encode())

    def _recv_exactly(self, length: int) -> bytearray:
        assert self._sock is not None
        data = bytearray(length)
        view, got = memoryview(data), 0
        while got < length:
            n = self._sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionResetError("the peer closed the connection")
            got += n
        return data

    def _read_pdu(self) -> tuple[int, memoryview]:
        kind, _, length = PDU_HEADER.unpack(self._recv_exactly(6))
        if length > MAX_CONTROL_PDU:  # an A-ASSOCIATE-AC, or a response
            raise ProtocolError(f"a PDU of {length} bytes")
        return kind, memoryview(self._recv_exactly(length))
