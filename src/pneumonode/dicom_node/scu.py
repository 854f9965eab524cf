"""Sending: C-ECHO and C-STORE to a peer, streaming files with their exact SOP class and syntax."""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pneumonode.dicom_node.peers import Destination
from pneumonode.identity import IMPLEMENTATION_VERSION_NAME

__all__ = ["EchoResult", "Failure", "SendOutcome", "echo", "send_files"]

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # presentation contexts one association can propose


class Failure(enum.StrEnum):
    """How a send failed, which decides whether retrying can help."""

    TRANSIENT = "transient"  # connection refused/lost, transient rejection, out of resources
    PERMANENT = "permanent"  # rejected permanently, SOP class refused, bad file


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one file."""

    path: Path
    ok: bool
    status: int | None = None  # the peer's C-STORE status, when it answered
    failure: Failure | None = None
    reason: str = ""


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    reason: str


def _new_ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _associate(
    ae: AE, destination: Destination, tls: ssl.SSLContext | None
) -> tuple[Association, bool]:
    """Request an association (over TLS with a context); also says whether the connection was
    made at all (for TLS: the handshake too)."""
    connected: list[bool] = []
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True))],
        tls_args=(tls, destination.host) if tls is not None else None,
    )
    if assoc.is_established:
        _no_delay(assoc)
        _keep_responses_for_the_sender(assoc)
    return assoc, bool(connected)


def _keep_responses_for_the_sender(assoc: Association) -> None:
    """Give a response the association's reactor took back to the thread waiting for it.

    ``send_c_store`` pauses the association's reactor thread, sends, then waits for the response
    on the DIMSE queue. The pause is racy: the reactor may be between its checkpoint and taking
    the next message when the sender sees it "paused", and then it takes the response itself,
    logs "Received unexpected C-STORE service message" and drops it; the sender waits out the
    DIMSE timeout and aborts (pynetdicom issues 435, 842). It happens under load, with other
    threads busy: a worker's second job, the network's threads. The reactor of an association
    we requested has no use for a response, so it puts it back on the queue the sender reads.
    """
    serve = assoc._serve_request
    queue = assoc.dimse.msg_queue

    def serve_requests_only(msg: Any, context_id: int) -> None:
        if msg.is_valid_request:
            serve(msg, context_id)
        else:  # a response: the sender's
            queue.put((context_id, msg))

    assoc._serve_request = serve_requests_only  # type: ignore[method-assign]


def _no_delay(assoc: Association) -> None:
    """Nagle's algorithm off (pynetdicom leaves it on): a C-STORE is several writes, then a
    wait for the answer, and Nagle with delayed ACKs stalls each one by about 40 ms."""
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _contexts_refused(assoc: Association) -> bool:
    """The peer answered but accepted none of the proposed contexts (pynetdicom then aborts)."""
    return bool(assoc.rejected_contexts) and not assoc.accepted_contexts


def _association_failure(
    assoc: Association, destination: Destination, connected: bool, tls: bool = False
) -> tuple[Failure, str]:
    if assoc.is_rejected:
        rejection = getattr(assoc.acceptor, "primitive", None)
        result = getattr(rejection, "result", None)
        diagnostic = getattr(rejection, "diagnostic", None)
        what = getattr(rejection, "result_str", "rejected")
        why = getattr(rejection, "reason_str", "")
        permanent = result == 0x01
        reason = f"{destination} rejected the association ({what}: {why or diagnostic})"
        return (Failure.PERMANENT if permanent else Failure.TRANSIENT), reason
    if not connected:
        how = "refused or unreachable" + ("; or the TLS handshake failed" if tls else "")
        return Failure.TRANSIENT, f"cannot connect to {destination} ({how})"
    if _contexts_refused(assoc):
        return (
            Failure.PERMANENT,
            f"{destination} accepted none of the proposed SOP classes and transfer syntaxes",
        )
    if assoc.is_aborted:
        if tls:  # TLS 1.3: a refused client certificate shows only after the handshake
            return (
                Failure.TRANSIENT,
                f"{destination} aborted the association (over TLS: did it refuse our certificate?)",
            )
        return Failure.TRANSIENT, f"{destination} aborted the association"
    return Failure.TRANSIENT, f"{destination} did not answer the association request"


def echo(
    destination: Destination,
    calling_ae: str,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> EchoResult:
    """C-ECHO ``destination`` (over TLS with a context)."""
    ae = _new_ae(calling_ae, timeout)
    ae.add_requested_context(Verification)
    assoc, connected = _associate(ae, destination, tls)
    if not assoc.is_established:
        return EchoResult(
            False, _association_failure(assoc, destination, connected, tls is not None)[1]
        )
    try:
        status = assoc.send_c_echo()
        code = int(status.Status) if "Status" in status else None
    finally:
        assoc.release()
    if code == 0x0000:
        return EchoResult(True, f"{destination} answered C-ECHO")
    return EchoResult(False, f"{destination} answered C-ECHO with status {code}")


def _status_failure(code: int) -> Failure:
    return Failure.TRANSIENT if 0xA700 <= code <= 0xA7FF else Failure.PERMANENT


def send_files(
    paths: Sequence[Path],
    destination: Destination,
    calling_ae: str,
    timeout: float = 60.0,
    tls: ssl.SSLContext | None = None,
) -> list[SendOutcome]:
    """C-STORE each file over as few associations as possible (one per 128 contexts).

    The files are streamed as stored (no decoding), each proposed with its own SOP class and
    transfer syntax. A dataset of odd length (an element value of odd length, which DICOM
    forbids) cannot travel as stored: a peer aborts on its odd last fragment, taking the rest
    of the association with it. Such a file is read and re-encoded, which pads the value.
    With ``tls``, every association is made over DICOM TLS with that context.
    Never raises for network or peer problems: each file gets an outcome.
    """
    outcomes: dict[Path, SendOutcome] = {}
    contexts: dict[tuple[str, str], list[Path]] = {}
    odd_length: set[Path] = set()
    for path in paths:
        try:
            meta, offset = split_dataset(path)
            key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            if (path.stat().st_size - offset) % 2:
                odd_length.add(path)
        except Exception as exc:
            outcomes[path] = SendOutcome(
                path,
                False,
                failure=Failure.PERMANENT,
                reason=f"unreadable file ({type(exc).__name__})",
            )
            continue
        contexts.setdefault(key, []).append(path)

    _config.STORE_SEND_CHUNKED_DATASET = True  # stream from disk, memory independent of size
    keys = list(contexts)
    for start in range(0, len(keys), MAX_CONTEXTS):
        batch = keys[start : start + MAX_CONTEXTS]
        ae = _new_ae(calling_ae, timeout)
        for sop_class, syntax in batch:
            ae.add_requested_context(sop_class, syntax)
        batch_paths = [p for key in batch for p in contexts[key]]
        assoc, connected = _associate(ae, destination, tls)
        if not assoc.is_established:
            if connected and _contexts_refused(assoc):  # each file: its context was refused
                for key in batch:
                    for path in contexts[key]:
                        outcomes[path] = _store_one(assoc, path, key, set(), destination, False)
                continue
            failure, reason = _association_failure(assoc, destination, connected, tls is not None)
            for path in batch_paths:
                outcomes[path] = SendOutcome(path, False, failure=failure, reason=reason)
            continue
        try:
            accepted = {
                (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts
            }
            for key in batch:
                for path in contexts[key]:
                    outcomes[path] = _store_one(
                        assoc, path, key, accepted, destination, path in odd_length
                    )
        finally:
            if assoc.is_established:
                assoc.release()
    return [outcomes[path] for path in paths]


def _padded_dataset(path: Path) -> Dataset:
    """The file's dataset with every element converted, so that odd values are written padded.

    (pydicom writes elements it has not converted byte for byte, odd lengths included.)
    """
    dataset = dcmread(path)
    for _element in dataset.iterall():
        pass
    return dataset


def _store_one(
    assoc: Association,
    path: Path,
    key: tuple[str, str],
    accepted: set[tuple[str, str]],
    destination: Destination,
    re_encode: bool,
) -> SendOutcome:
    if key not in accepted:
        return SendOutcome(
            path,
            False,
            failure=Failure.PERMANENT,
            reason=f"{destination} does not accept SOP class {key[0]} in transfer syntax {key[1]}",
        )
    if not assoc.is_established:
        return SendOutcome(path, False, failure=Failure.TRANSIENT, reason="association lost")
    try:
        status = assoc.send_c_store(_padded_dataset(path) if re_encode else path)
    except Exception as exc:
        return SendOutcome(
            path, False, failure=Failure.TRANSIENT, reason=f"send failed ({type(exc).__name__})"
        )
    if "Status" not in status:
        return SendOutcome(
            path, False, failure=Failure.TRANSIENT, reason="no response (timeout or abort)"
        )
    code = int(status.Status)
    if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
        return SendOutcome(path, True, status=code)
    comment = str(status.get("ErrorComment", "") or "")
    return SendOutcome(
        path,
        False,
        status=code,
        failure=_status_failure(code),
        reason=f"{destination} answered 0x{code:04X}{': ' + comment if comment else ''}",
    )
