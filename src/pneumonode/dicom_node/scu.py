"""Sending: C-ECHO and C-STORE to a peer, streaming files with their exact SOP class and syntax."""

from __future__ import annotations

import enum
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import UID
from pynetdicom.dsutils import encode, split_dataset

from pneumonode.addresses import Destination
from pneumonode.dicom_node.dimse import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    SUCCESS,
    VERIFICATION,
    WARNING,
    code_to_category,
    is_out_of_resources,
)
from pneumonode.dicom_node.requestor import (
    AssociationAbortedError,
    AssociationRejectedError,
    ConnectError,
    Requestor,
)

__all__ = ["EchoResult", "Failure", "SendOutcome", "echo", "send_files"]


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


def _failure(exc: Exception, destination: Destination, tls: bool) -> tuple[Failure, str]:
    """What a failed association request means, and whether retrying can help."""
    if isinstance(exc, AssociationRejectedError):
        rejection = exc.rejection
        failure = Failure.PERMANENT if rejection.permanent else Failure.TRANSIENT
        return failure, f"{destination} rejected the association ({rejection})"
    if isinstance(exc, ConnectError):
        how = "refused or unreachable" + ("; or the TLS handshake failed" if tls else "")
        return Failure.TRANSIENT, f"cannot connect to {destination} ({how})"
    if isinstance(exc, AssociationAbortedError):
        if tls:  # TLS 1.3: a refused client certificate shows only after the handshake
            return (
                Failure.TRANSIENT,
                f"{destination} aborted the association (over TLS: did it refuse our certificate?)",
            )
        return Failure.TRANSIENT, f"{destination} aborted the association"
    return Failure.TRANSIENT, f"{destination} did not answer the association request"


def _requestor(
    destination: Destination,
    calling_ae: str,
    contexts: list[tuple[str, str]],
    timeout: float,
    tls: ssl.SSLContext | None,
) -> Requestor:
    return Requestor(
        destination.host,
        destination.port,
        destination.ae_title,
        calling_ae,
        contexts,
        timeout=timeout,
        tls=tls,
    )


_ASSOCIATION_ERRORS = (
    ConnectError,
    AssociationRejectedError,
    AssociationAbortedError,
    TimeoutError,
)


def echo(
    destination: Destination,
    calling_ae: str,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> EchoResult:
    """C-ECHO ``destination`` (over TLS with a context)."""
    association = _requestor(
        destination, calling_ae, [(VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN)], timeout, tls
    )
    try:
        association.open()
    except _ASSOCIATION_ERRORS as exc:
        return EchoResult(False, _failure(exc, destination, tls is not None)[1])
    if not association.accepted:
        association.release()
        return EchoResult(False, f"{destination} does not accept C-ECHO (Verification)")
    try:
        code = association.echo().status
    except (AssociationAbortedError, TimeoutError):
        return EchoResult(False, f"{destination} did not answer C-ECHO")
    association.release()
    if code_to_category(code) == SUCCESS:
        return EchoResult(True, f"{destination} answered C-ECHO")
    return EchoResult(False, f"{destination} answered C-ECHO with status {code}")


def _status_failure(code: int) -> Failure:
    return Failure.TRANSIENT if is_out_of_resources(code) else Failure.PERMANENT


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    offset: int  # where the dataset starts, after the File Meta Information
    odd_length: bool

    @property
    def key(self) -> tuple[str, str]:
        return (self.sop_class_uid, self.transfer_syntax_uid)


def _read_meta(path: Path) -> _File:
    meta, offset = split_dataset(path)
    return _File(
        path,
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
        offset,
        (path.stat().st_size - offset) % 2 == 1,
    )


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
    contexts: dict[tuple[str, str], list[_File]] = {}
    for path in paths:
        try:
            found = _read_meta(path)
        except Exception as exc:
            outcomes[path] = SendOutcome(
                path,
                False,
                failure=Failure.PERMANENT,
                reason=f"unreadable file ({type(exc).__name__})",
            )
            continue
        contexts.setdefault(found.key, []).append(found)

    keys = list(contexts)
    for start in range(0, len(keys), MAX_CONTEXTS):
        batch = keys[start : start + MAX_CONTEXTS]
        files = [found for key in batch for found in contexts[key]]
        association = _requestor(destination, calling_ae, batch, timeout, tls)
        try:
            association.open()
        except _ASSOCIATION_ERRORS as exc:
            failure, reason = _failure(exc, destination, tls is not None)
            for found in files:
                outcomes[found.path] = SendOutcome(
                    found.path, False, failure=failure, reason=reason
                )
            continue
        try:
            for found in files:
                outcomes[found.path] = _store_one(association, found, destination)
        finally:
            association.release()
    return [outcomes[path] for path in paths]


def _padded_dataset(path: Path) -> Dataset:
    """The file's dataset with every element converted, so that odd values are written padded.

    (pydicom writes elements it has not converted byte for byte, odd lengths included.)
    """
    dataset = dcmread(path)
    for _element in dataset.iterall():
        pass
    return dataset


def _encoded(dataset: Dataset, transfer_syntax_uid: str) -> bytes:
    """``dataset`` encoded in ``transfer_syntax_uid`` (its pixel data as it is)."""
    syntax = UID(transfer_syntax_uid)
    data = encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    if data is None:
        raise ValueError("the dataset cannot be encoded in its transfer syntax")
    return data


def _store_one(association: Requestor, found: _File, destination: Destination) -> SendOutcome:
    path = found.path
    if found.key not in association.accepted:
        return SendOutcome(
            path,
            False,
            failure=Failure.PERMANENT,
            reason=(
                f"{destination} does not accept SOP class {found.sop_class_uid} in transfer "
                f"syntax {found.transfer_syntax_uid}"
            ),
        )
    if not association.established:
        return SendOutcome(path, False, failure=Failure.TRANSIENT, reason="association lost")
    try:
        dataset: tuple[Path, int] | bytes = (
            _encoded(_padded_dataset(path), found.transfer_syntax_uid)
            if found.odd_length
            else (path, found.offset)
        )
        response = association.store(
            found.sop_class_uid, found.sop_instance_uid, found.transfer_syntax_uid, dataset
        )
    except TimeoutError:
        return SendOutcome(
            path, False, failure=Failure.TRANSIENT, reason="no response (timeout or abort)"
        )
    except AssociationAbortedError:
        return SendOutcome(
            path, False, failure=Failure.TRANSIENT, reason="no response (timeout or abort)"
        )
    except Exception as exc:
        return SendOutcome(
            path, False, failure=Failure.TRANSIENT, reason=f"send failed ({type(exc).__name__})"
        )
    code = response.status
    if code_to_category(code) in (SUCCESS, WARNING):
        return SendOutcome(path, True, status=code)
    comment = response.comment
    return SendOutcome(
        path,
        False,
        status=code,
        failure=_status_failure(code),
        reason=f"{destination} answered 0x{code:04X}{': ' + comment if comment else ''}",
    )
