"""The listener's DICOM upper layer (PS3.8): associations, P-DATA, and the DIMSE services we
provide (Verification and Storage), one thread per association with blocking reads.

Until a connection has brought its whole A-ASSOCIATE-RQ, and after we have refused, released or
aborted it, it has no thread: ``admission.py`` holds it, under the ARTIM timer and bounds on how
many connections (in all and per peer address) may be negotiating at once. Only negotiated
associations count against the association limit; threads are started for at most that many
plus ``ANSWERING_THREADS`` requests being answered.

Why our own and not pynetdicom's acceptor: pynetdicom runs two reactor threads per association
that hand every PDU and primitive through queues polled with 1 ms sleeps, so each C-STORE costs
a few milliseconds of waiting whatever the object's size; that caps small-object ingest at about
half of Orthanc's rate on a 2-core machine. Here one thread reads a PDU, writes its dataset
fragments straight into the spool file and, after the last fragment, calls the handler and
answers: no queue, no sleep. Results go out through the requestor side (``requestor.py``).

Each PDU, timeout and refusal is an event of PS3.8's state machine, and what is done about it is
the action ``fsm.py``'s table gives (the association's ``fsm``); the command sets are encoded and
decoded by ``dimse.py``, the PDUs by ``pdu.py`` and the dataset files written by ``incoming.py``.

What is supported, as an acceptor only:

* A-ASSOCIATE-RQ of at most ``MAX_ASSOCIATE_RQ_LENGTH`` bytes (a longer one is aborted after its
  header, before any of it is read) with any number of presentation contexts; each is accepted
  with the first of the requestor's transfer syntaxes we support for its abstract syntax, or
  refused (abstract syntax or transfer syntaxes not supported). User information: maximum
  length, implementation class UID and version name are read and answered; SCP/SCU role
  selection, asynchronous operations, extended negotiation and user identity are ignored (the
  defaults apply: the requestor is the SCU, one operation at a time), as the standard allows.
* A-ASSOCIATE-RJ for a wrong protocol version or application context, for presentation context
  IDs that are even (PS3.8 9.3.2.2) or proposed twice (7.1.1.13; rejected permanent, by the UL
  service-provider's ACSE function, no reason given: PS3.8 9.2 AE-6 and 7.1.2.6), and for
  whatever ``Services.check`` refuses (called AE title, calling AE title, disk space, too many
  associations); and, transient, when ``ANSWERING_THREADS`` requests are being answered already.
* P-DATA-TF: commands in Implicit VR Little Endian, C-ECHO-RQ and C-STORE-RQ answered; any other
  command gets "unrecognised operation" (0x0211). A C-ECHO-RQ or C-STORE-RQ must match its
  presentation context (PS3.7): its Affected SOP Class UID is the context's abstract syntax, and
  the Verification context carries C-ECHO only; otherwise the association is aborted (A-ABORT
  from the service user, as storescp and Orthanc do and as pynetdicom does for a message it
  cannot place on a context) before any of its dataset is kept. Datasets stream to a file in
  ``incoming``, behind a File Meta Information we write; the dataset bytes are kept as received.
* A-RELEASE, A-ABORT, a peer that disappears, and silence longer than the network timeout
  (then we abort). A C-STORE cut short leaves no file behind. After our A-ASSOCIATE-RJ,
  A-RELEASE-RP or A-ABORT the peer has the ARTIM timeout to close the connection (Sta13).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pneumonode.dicom_node.admission import PDU_HEADER, Admission, Refusal
from pneumonode.dicom_node.dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    IMPLICIT_VR_LITTLE_ENDIAN,
    VERIFICATION,
    Command,
    Status,
    context_mismatch,
    response_to,
)
from pneumonode.dicom_node.fsm import (
    Action,
    Event,
    InvalidEventError,
    State,
    StateMachine,
    action_for,
    pdu_event,
)
from pneumonode.dicom_node.incoming import IncomingDataset, encode_file_meta
from pneumonode.dicom_node.pdu import (
    A_ABORT,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    ABORT_PROVIDER,
    ABORT_SERVICE_USER,
    ABSTRACT_SYNTAX_REFUSED,
    ACSE_NO_REASON_GIVEN,
    ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
    ASSOCIATE_FIXED_LENGTH,
    CONTEXT_ACCEPTED,
    P_DATA_TF,
    PDV_COMMAND,
    PDV_LAST,
    PRESENTATION_LOCAL_LIMIT_EXCEEDED,
    PROTOCOL_VERSION,
    REASON_NOT_SPECIFIED,
    REASON_UNRECOGNISED_PDU,
    REJECTED_PERMANENT,
    REJECTED_TRANSIENT,
    SOURCE_PROVIDER_ACSE,
    SOURCE_PROVIDER_PRESENTATION,
    SOURCE_SERVICE_USER,
    TRANSFER_SYNTAXES_REFUSED,
    USER_APPLICATION_CONTEXT_NOT_SUPPORTED,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    p_data_tf,
    pdv_items,
    release_rp,
)
from pneumonode.dicom_node.pdu_items import (
    APPLICATION_CONTEXT,
    IMPLEMENTATION_CLASS_UID,
    REASON_INVALID_PARAMETER,
    REASON_UNEXPECTED_PDU,
    PresentationContextAC,
    PresentationContextRQ,
    ProtocolError,
    UserInformation,
)
from pneumonode.identity import IMPLEMENTATION_VERSION_NAME

__all__ = [
    "ANSWERING_THREADS",
    "APPLICATION_CONTEXT",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "MAX_ASSOCIATE_RQ_LENGTH",
    "VERIFICATION",
    "Acceptor",
    "Answer",
    "AssociationInfo",
    "RejectionError",
    "Services",
    "StoreRequest",
    "encode_file_meta",
]

log = logging.getLogger(__name__)


#: Longest A-ASSOCIATE-RQ we read. The largest a peer plausibly sends is about 160 KiB: 128
#: presentation contexts (IDs 1 to 255, odd) each with a 64-character abstract syntax and ten
#: 64-character transfer syntaxes (128 x 756 bytes = 94 KiB), and a user information item at its
#: largest (its length is two bytes: 64 KiB, user identity with a Kerberos ticket or SAML
#: assertion included). Usual requests are 0.2 to 20 KiB; 4 MiB is never one.
MAX_ASSOCIATE_RQ_LENGTH = 256 * 1024
#: Longest A-RELEASE-RQ, A-RELEASE-RP or A-ABORT body we read: PS3.8 9.3.6 to 9.3.8 fix it at
#: 4 bytes; the rest is slack for odd peers. A longer one is refused before it is read.
_MAX_SHORT_PDU_BODY = 64
#: Threads for association requests being answered (checked, then accepted or rejected), on top
#: of one per negotiated association; beyond that a request is rejected (transient) at once.
ANSWERING_THREADS = 8
#: Longest command set we collect.
_MAX_COMMAND = 64 * 1024


class RejectionError(Exception):
    """Raised by ``Services.check`` to reject an association: A-ASSOCIATE-RJ (result, source,
    diagnostic), with ``reason`` for the audit trail."""

    def __init__(self, reason: str, result: int, source: int, diagnostic: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = (result, source, diagnostic)


@dataclass
class AssociationInfo:
    """What a requestor asked for, and what we agreed."""

    address: str
    port: int
    called_ae: str = ""
    calling_ae: str = ""
    peer_max_pdu: int = 0  # 0: no limit
    peer_implementation_uid: str = ""
    peer_implementation_version: str = ""
    tls: bool = False
    #: accepted presentation context id -> (abstract syntax, transfer syntax)
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreRequest:
    """A C-STORE request whose dataset has been received into ``path`` (a DICOM file)."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int  # dataset bytes received (after the File Meta Information)
    message_id: int


@dataclass(frozen=True)
class Answer:
    """A C-STORE's response: its status, Error Comment, and what to do once it is sent (work
    the peer need not wait for; must not raise)."""

    status: int
    comment: str = ""
    then: Callable[[], None] | None = None


class Services(Protocol):
    """What the listener does with associations and messages; each call must not raise
    (``check`` raises ``RejectionError`` to refuse)."""

    def check(self, info: AssociationInfo, active: int) -> None: ...
    def rejected(self, info: AssociationInfo, rejection: RejectionError) -> None: ...
    def accepted(self, info: AssociationInfo) -> None: ...
    def aborted(self, info: AssociationInfo, reason: str = "") -> None: ...
    def store(self, info: AssociationInfo, request: StoreRequest) -> Answer: ...
    def too_large(self, info: AssociationInfo, request: StoreRequest) -> Answer: ...
    def temporary_path(self) -> Path: ...
    def tls_refused(self, host: str, reason: str) -> None: ...


class _ClosedError(Exception):
    """The peer closed the connection."""


class _CommandRefusedError(Exception):
    """A DIMSE message we refuse as its service user (PS3.7): abort the association."""


# --- encoding -------------------------------------------------------------------------------


# --- association requests ------------------------------------------------------------------


def _context_id_error(contexts: list[PresentationContextRQ]) -> str | None:
    """Why the proposed presentation context IDs are not acceptable, or None: they are odd
    (PS3.8 9.3.2.2) and each names one context (7.1.1.13: an unused identifier for each)."""
    seen: set[int] = set()
    for context in contexts:
        context_id = context.context_id
        if not context_id % 2:
            return f"presentation context ID {context_id} is even"
        if context_id in seen:
            return f"presentation context ID {context_id} is proposed twice"
        seen.add(context_id)
    return None


def _provider_refusal(request: AssociateRQ) -> RejectionError | None:
    """Why the UL service provider (its ACSE function) cannot accept ``request`` (PS3.8 AE-6:
    A-ASSOCIATE-RJ, then Sta13), or None: its protocol version, or its context IDs."""
    if not request.protocol_version & PROTOCOL_VERSION:
        return RejectionError(
            "protocol version not supported",
            REJECTED_PERMANENT,
            SOURCE_PROVIDER_ACSE,
            ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
        )
    context_ids = _context_id_error(request.contexts)
    if context_ids is not None:
        return RejectionError(
            context_ids, REJECTED_PERMANENT, SOURCE_PROVIDER_ACSE, ACSE_NO_REASON_GIVEN
        )
    return None


#: A-ASSOCIATE-RJ: transient, by the UL service-provider (presentation related function), local
#: limit exceeded (PS3.8 9.3.4).
_REJECT_BUSY = AssociateRJ(
    REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, PRESENTATION_LOCAL_LIMIT_EXCEEDED
).encode()


def _screen_first_pdu(kind: int, length: int) -> Refusal | None:
    """What a new connection's first PDU header calls for in Sta2, before its body is read, as
    PS3.8's table says: None to read an A-ASSOCIATE-RQ of a plausible length (AE-6 follows);
    for an A-ABORT nothing but the close (AA-2); otherwise an A-ABORT (AA-1; an A-ASSOCIATE-RQ
    too short or too long to be one is Evt19). Before any association there is no service user
    to speak for: the A-ABORT names the service provider and the reason."""
    event = pdu_event(kind)
    if event is Event.EVT6:
        if length < ASSOCIATE_FIXED_LENGTH:
            reason = f"an A-ASSOCIATE-RQ of {length} bytes is too short"
        elif length > MAX_ASSOCIATE_RQ_LENGTH:
            reason = f"an A-ASSOCIATE-RQ of {length} bytes is longer than {MAX_ASSOCIATE_RQ_LENGTH}"
        else:
            return None
        event, diagnostic = Event.EVT19, REASON_INVALID_PARAMETER
    else:
        reason = f"expected an A-ASSOCIATE-RQ, got PDU type {kind:#04x}"
        diagnostic = REASON_UNRECOGNISED_PDU if event is Event.EVT19 else REASON_UNEXPECTED_PDU
    action = action_for(State.STA2, event)
    if action is Action.AA_2:
        return Refusal(b"", "an A-ABORT instead of an A-ASSOCIATE-RQ")
    assert action is Action.AA_1, action
    return Refusal(Abort(ABORT_PROVIDER, diagnostic).encode(), reason)


# --- one association ------------------------------------------------------------------------


class Association:
    """One association, run by ``run`` in its own thread from its complete A-ASSOCIATE-RQ on."""

    def __init__(
        self,
        acceptor: Acceptor,
        sock: socket.socket,
        address: tuple[str, int],
        request: bytes,
    ) -> None:
        self.acceptor = acceptor
        self.sock = sock
        self.info = AssociationInfo(
            address=address[0], port=address[1], tls=isinstance(sock, ssl.SSLSocket)
        )
        self.established = False
        #: Sta2 and Evt6: the admission has read the whole A-ASSOCIATE-RQ
        self.fsm = StateMachine(State.STA2, requestor=False)
        self._request = request  # the A-ASSOCIATE-RQ's body, read by the admission
        self._counted = False  # holds one of the acceptor's association slots
        self._aborting = False
        self._linger = False  # we sent A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT: Sta13 follows
        self._send_lock = threading.Lock()
        self._buffer = bytearray()  # P-DATA-TF PDUs, sized once the association is accepted
        self._command = bytearray()
        self._command_context = 0
        self._store: IncomingDataset | None = None

    # -- life cycle

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("unexpected failure in an association; aborting it")
            self._send_abort(ABORT_PROVIDER, REASON_NOT_SPECIFIED)
            self._ended(aborted=True)
        finally:
            if self._counted:
                self.acceptor._release_slot()
                self._counted = False
            if self._linger and not self._aborting:
                self.acceptor.admission.linger(self.sock, (self.info.address, self.info.port))
            else:
                with contextlib.suppress(OSError):
                    self.sock.close()
            self.acceptor._forget(self)

    def _run(self) -> None:
        timeout = self.acceptor.network_timeout
        self.sock.settimeout(timeout)
        try:
            if not self._negotiate():
                return
            self._serve()
        except _ClosedError:  # Evt17: AA-4 (A-P-ABORT indication), AA-5 or AR-5
            if self.established and not self._aborting:
                log.warning("peer %s closed the connection without release", self.info.address)
            self._step(Event.EVT17)
            self._linger = False
            self._ended(aborted=self.established)
        except TimeoutError:  # the network timeout: we abort, as the service user (Evt15)
            log.warning("no data from %s for %.0f s: aborting", self.info.address, timeout)
            self._abort_on(Event.EVT15, ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
            self._ended(aborted=self.established)
        except ProtocolError as exc:  # an unrecognised or invalid PDU (Evt19): AA-8 or AA-1
            log.warning("protocol error from %s: %s; aborting", self.info.address, exc)
            self._abort_on(Event.EVT19, ABORT_PROVIDER, exc.reason)
            self._ended(aborted=self.established)
        except _CommandRefusedError as exc:  # a message we refuse as its service user (Evt15)
            log.warning("refused from %s: %s; aborting", self.info.address, exc)
            self._abort_on(Event.EVT15, ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
            self._ended(aborted=True, reason=str(exc))
        except OSError as exc:  # Evt17: the connection is gone
            if not self._aborting:
                log.warning("connection to %s failed: %s", self.info.address, exc.strerror)
            self._step(Event.EVT17)
            self._linger = False
            self._ended(aborted=self.established)

    def _step(self, event: Event, *, acceptable: bool = True) -> Action | None:
        """The action of ``event`` in the current state (the machine moves on), or None where
        the table has none (a shutdown's abort got there first)."""
        try:
            return self.fsm.event(event, acceptable=acceptable)
        except InvalidEventError as exc:
            log.debug("association from %s: %s", self.info.address, exc)
            return None

    def _abort_on(self, event: Event, source: int, reason: int) -> None:
        """Step on an event that aborts; send the A-ABORT if the table's action sends one
        (AA-1, AA-7, AA-8: then Sta13, the peer closes within the ARTIM timeout)."""
        if self._step(event) in (Action.AA_1, Action.AA_7, Action.AA_8):
            self._send_abort(source, reason)

    def _ended(self, aborted: bool, reason: str = "") -> None:
        """Clean up after the association ends (released, aborted or dropped)."""
        if self._store is not None:
            self._store.discard()
            self._store = None
        was_established, self.established = self.established, False
        if aborted and was_established:
            self.acceptor.services.aborted(self.info, reason)

    def abort(self) -> None:
        """Abort from another thread (shutdown; Evt15): A-ABORT, then unblock the reader."""
        self._aborting = True
        self._abort_on(Event.EVT15, ABORT_SERVICE_USER, REASON_NOT_SPECIFIED)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # -- reading and writing PDUs

    def _recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise _ClosedError()
            got += n

    def _read_pdu(self) -> tuple[Event, memoryview]:
        """The next PDU of an established association, as its event: a P-DATA-TF of at most our
        maximum length, or a short one (A-RELEASE-RQ/-RP, A-ABORT); an A-ASSOCIATE PDU is
        unexpected in every state this thread reads in (AA-8), so its body is never read. An
        unrecognised type or a length over the limit is Evt19 (``ProtocolError``)."""
        header = memoryview(self._buffer)[:6]
        self._recv_into(header)
        kind, _, length = PDU_HEADER.unpack(header)
        event = pdu_event(kind)
        if event is Event.EVT19:
            raise ProtocolError(f"unknown PDU type {kind:#04x}", REASON_UNRECOGNISED_PDU)
        if kind == P_DATA_TF:
            limit = self.acceptor.max_pdu
        elif kind in (A_RELEASE_RQ, A_RELEASE_RP, A_ABORT):
            limit = _MAX_SHORT_PDU_BODY
        else:
            return event, memoryview(b"")
        if length > limit:
            raise ProtocolError(
                f"PDU type {kind:#04x} of {length} bytes is longer than our maximum {limit}",
                REASON_INVALID_PARAMETER,
            )
        body = memoryview(self._buffer)[6 : 6 + length]
        self._recv_into(body)
        return event, body

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _send_abort(self, source: int, reason: int) -> None:
        with contextlib.suppress(OSError):
            self._send(Abort(source, reason).encode())
            self._linger = True

    # -- association establishment

    def _negotiate(self) -> bool:
        request = AssociateRQ.decode(memoryview(self._request))
        self._request = b""
        info = self.info
        info.called_ae, info.calling_ae = request.called_ae, request.calling_ae
        info.peer_max_pdu = request.user.max_length or 0
        info.peer_implementation_uid = request.user.implementation_class_uid
        info.peer_implementation_version = request.user.implementation_version_name or ""
        refusal = _provider_refusal(request)
        self._step(Event.EVT6, acceptable=refusal is None)  # AE-6: Sta3, or Sta13 refused
        try:
            if refusal is not None:
                raise refusal
            if request.application_context != APPLICATION_CONTEXT:
                raise RejectionError(
                    "application context not supported",
                    REJECTED_PERMANENT,
                    SOURCE_SERVICE_USER,
                    USER_APPLICATION_CONTEXT_NOT_SUPPORTED,
                )
            active = self.acceptor._take_slot()
            self._counted = True
            self.acceptor.services.check(info, active)
        except RejectionError as rejection:
            if self._counted:
                self.acceptor._release_slot()
                self._counted = False
            self.acceptor.services.rejected(info, rejection)
            if self.fsm.state is State.STA3:
                self._step(Event.EVT8)  # AE-8: the service user rejects
            with contextlib.suppress(OSError):
                self._send(AssociateRJ(*rejection.code).encode())
                self._linger = True  # AE-8: the requestor closes, within the ARTIM timeout
            return False
        self._buffer = bytearray(self.acceptor.max_pdu + PDU_HEADER.size)
        self._step(Event.EVT7)  # AE-7: Sta6
        self._send(self._associate_ac(request))
        self.established = True
        self.acceptor.services.accepted(info)
        return True

    def _associate_ac(self, request: AssociateRQ) -> bytes:
        supported = self.acceptor.supported
        answers = []
        for context in request.contexts:
            abstract, proposed = context.abstract_syntax, context.transfer_syntaxes
            accepted_syntaxes = supported.get(abstract)
            chosen = ""
            if accepted_syntaxes is None:
                result = ABSTRACT_SYNTAX_REFUSED
            else:
                chosen = next((ts for ts in proposed if ts in accepted_syntaxes), "")
                result = CONTEXT_ACCEPTED if chosen else TRANSFER_SYNTAXES_REFUSED
            if chosen:
                self.info.contexts[context.context_id] = (abstract, chosen)
            syntax = chosen or (proposed[0] if proposed else IMPLICIT_VR_LITTLE_ENDIAN)
            answers.append(PresentationContextAC(context.context_id, result, syntax))
        user = UserInformation(
            max_length=self.acceptor.max_pdu,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        # the AE title fields echo the request's, byte for byte (PS3.8 9.3.3)
        return AssociateAC(
            request.called, request.calling, APPLICATION_CONTEXT, answers, user
        ).encode()

    # -- data transfer

    def _serve(self) -> None:
        """Sta6 on: each PDU's event, and the action the table gives it."""
        while True:
            event, body = self._read_pdu()
            action = self._step(event)
            if action is Action.DT_2:
                self._p_data(body)
            elif action is Action.AR_2:  # A-RELEASE indication; we answer at once (Evt14)
                if self._store is not None:  # Evt19 in Sta8: AA-8
                    raise ProtocolError("A-RELEASE-RQ in the middle of a dataset")
                self._step(Event.EVT14)  # AR-4: Sta13
                self._send(release_rp())
                self.established = False
                self._linger = True  # the requestor closes, within the ARTIM timeout
                return
            elif action is Action.AA_3:  # the peer aborted: Sta1, close
                log.info("association from %s aborted by the peer", self.info.address)
                self._ended(aborted=True)
                return
            else:  # AA-8: a PDU the table does not expect here; AA-6: aborted meanwhile
                if action is Action.AA_8:
                    log.warning("unexpected %s from %s; aborting", event, self.info.address)
                    self._send_abort(ABORT_PROVIDER, REASON_UNEXPECTED_PDU)
                self._ended(aborted=self.established)
                return

    def _p_data(self, body: memoryview) -> None:
        for context_id, control, data in pdv_items(body):
            if context_id not in self.info.contexts:
                raise ProtocolError(f"PDV on presentation context {context_id} not accepted")
            if control & PDV_COMMAND:
                self._command_fragment(context_id, data, last=bool(control & PDV_LAST))
            else:
                self._dataset_fragment(context_id, data, last=bool(control & PDV_LAST))

    def _command_fragment(self, context_id: int, data: memoryview, last: bool) -> None:
        if self._store is not None:
            raise ProtocolError("a command started before the previous dataset ended")
        if self._command and context_id != self._command_context:
            raise ProtocolError("command fragments on different presentation contexts")
        self._command_context = context_id
        self._command += data
        if len(self._command) > _MAX_COMMAND:
            raise ProtocolError("command set too long", REASON_INVALID_PARAMETER)
        if not last:
            return
        command = Command.decode(bytes(self._command))
        self._command.clear()
        abstract, syntax = self.info.contexts[context_id]
        mismatch = context_mismatch(command, context_id, abstract)
        if mismatch is not None:
            raise _CommandRefusedError(mismatch)
        if command.has_dataset:
            path = None
            if command.field == C_STORE_RQ:
                path = self.acceptor.services.temporary_path()
            self._store = IncomingDataset(path, command, context_id)
            if path is not None:
                meta = encode_file_meta(
                    abstract, command.sop_instance_uid, syntax, self.info.calling_ae
                )
                assert self._store.fd is not None
                os.write(self._store.fd, meta)
        else:
            self._answer(context_id, command, None)

    def _dataset_fragment(self, context_id: int, data: memoryview, last: bool) -> None:
        store = self._store
        if store is None or context_id != store.context_id:
            raise ProtocolError("dataset fragment without its command")
        limit = self.acceptor.max_object_bytes
        if store.fd is not None and store.size + len(data) > limit:
            store.discard()  # keep reading, answer "too large" at the end
            store.fd, store.path = None, None
        store.write(data)
        if last:
            self._store = None
            store.close()
            self._answer(context_id, store.command, store)

    def _answer(self, context_id: int, command: Command, store: IncomingDataset | None) -> None:
        if command.field == C_CANCEL_RQ:
            return  # nothing runs asynchronously: nothing to cancel
        if command.field == C_ECHO_RQ:
            answer = Answer(Status.SUCCESS)
        elif command.field == C_STORE_RQ and store is not None:
            abstract, syntax = self.info.contexts[context_id]
            request = StoreRequest(
                path=store.path if store.path is not None else Path(),
                sop_class_uid=abstract,  # the command's, checked against its context
                sop_instance_uid=command.sop_instance_uid,
                transfer_syntax_uid=syntax,
                size=store.size,
                message_id=command.message_id,
            )
            if store.path is None:
                answer = self.acceptor.services.too_large(self.info, request)
            else:
                answer = self.acceptor.services.store(self.info, request)
        else:
            answer = Answer(Status.UNRECOGNISED_OPERATION)
        self._send_command(context_id, response_to(command, answer.status, answer.comment))
        if answer.then is not None:
            try:
                answer.then()
            except Exception:
                log.exception("the work after a C-STORE response failed")

    def _send_command(self, context_id: int, command: bytes) -> None:
        """P-DATA-TF PDU(s) carrying a command, fragmented to the peer's maximum length (DT-1)."""
        self._step(Event.EVT9)
        peer_max = self.info.peer_max_pdu
        step = len(command) if not peer_max else max(1, min(len(command), peer_max - 6))
        pdus = []
        for start in range(0, len(command), step):
            chunk = command[start : start + step]
            last = PDV_LAST if start + step >= len(command) else 0
            pdus.append(p_data_tf(context_id, PDV_COMMAND | last, chunk))
        self._send(b"".join(pdus))


# --- the server -----------------------------------------------------------------------------


class Acceptor:
    """Listens on one address: connections are admitted without threads (``admission.py``);
    each complete A-ASSOCIATE-RQ runs in a thread of its own, for at most ``max_associations``
    negotiated associations plus ``ANSWERING_THREADS`` requests being answered."""

    def __init__(
        self,
        address: tuple[str, int],
        services: Services,
        supported: dict[str, frozenset[str]],
        *,
        max_pdu: int,
        network_timeout: float,
        max_object_bytes: int,
        max_associations: int,
        artim_timeout: float,
        max_negotiating: int,
        max_negotiating_per_address: int,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "dicom",
    ) -> None:
        self.services = services
        self.supported = supported
        self.max_pdu = max_pdu
        self.network_timeout = network_timeout
        self.max_object_bytes = max_object_bytes
        self.max_threads = max_associations + ANSWERING_THREADS
        self.ssl_context = ssl_context
        self.name = name
        self._lock = threading.Lock()
        self._associations: set[Association] = set()
        self._slots = 0  # negotiated associations (and those being checked against the limit)
        self._counter = itertools.count(1)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.admission = Admission(
            sock,
            screen=_screen_first_pdu,
            on_request=self._on_request,
            on_tls_refused=services.tls_refused,
            artim_timeout=artim_timeout,
            max_connections=max_negotiating,
            max_per_address=max_negotiating_per_address,
            ssl_context=ssl_context,
            name=name,
        )

    def start(self) -> None:
        self.admission.start()

    def _on_request(
        self, sock: socket.socket, address: tuple[str, int], kind: int, body: bytes
    ) -> Refusal | None:
        """A complete A-ASSOCIATE-RQ (from the admission loop): a thread answers it, unless
        ``max_threads`` are running already (then A-ASSOCIATE-RJ, transient, at once)."""
        with self._lock:
            if len(self._associations) >= self.max_threads:
                return Refusal(_REJECT_BUSY, f"{self.max_threads} association threads are busy")
            association = Association(self, sock, address, body)
            self._associations.add(association)
        thread = threading.Thread(
            target=association.run,
            name=f"{self.name}-association-{next(self._counter)}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # the system refused another thread
            self._forget(association)
            return Refusal(_REJECT_BUSY, "no thread could be started for it")
        return None

    def _forget(self, association: Association) -> None:
        with self._lock:
            self._associations.discard(association)

    def _take_slot(self) -> int:
        """Count one more negotiated association; returns how many there are, this one included
        (``Services.check`` rejects the request when that is over the limit)."""
        with self._lock:
            self._slots += 1
            return self._slots

    def _release_slot(self) -> None:
        with self._lock:
            self._slots -= 1

    def active_count(self) -> int:
        """Negotiated associations (and requests being checked against the limit)."""
        with self._lock:
            return self._slots

    @property
    def associations(self) -> list[Association]:
        """The associations that have a thread (from their complete request on)."""
        with self._lock:
            return list(self._associations)

    def stop_accepting(self) -> None:
        """Close the listening socket and every connection still negotiating: new connections
        are refused from now on; running associations carry on."""
        self.admission.stop()
