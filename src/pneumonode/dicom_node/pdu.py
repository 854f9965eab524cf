"""The PDUs of the DICOM upper layer (PS3.8 9.3): their types, fields and codes, and one class
or function per PDU to encode it and decode its body, as pynetdicom's ``pdu.py`` has them. The
items inside the association PDUs are in ``pdu_items.py``.

Every PDU is a 6-byte header (type, reserved, 4-byte big-endian length) and a body. Decoding is
from the body (the header read by whoever reads the socket); encoding gives the whole PDU.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from pneumonode.dicom_node.admission import PDU_HEADER
from pneumonode.dicom_node.pdu_items import (
    APPLICATION_CONTEXT_ITEM,
    PRESENTATION_CONTEXT_AC,
    PRESENTATION_CONTEXT_RQ,
    REASON_INVALID_PARAMETER,
    USER_INFORMATION,
    PresentationContextAC,
    PresentationContextRQ,
    ProtocolError,
    UserInformation,
    decode_text,
    encode_item,
    encode_uid,
    items,
)

__all__ = [
    "ABORT_PROVIDER",
    "ABORT_SERVICE_USER",
    "ABSTRACT_SYNTAX_REFUSED",
    "ACSE_NO_REASON_GIVEN",
    "ACSE_PROTOCOL_VERSION_NOT_SUPPORTED",
    "ASSOCIATE_FIXED_LENGTH",
    "A_ABORT",
    "A_ASSOCIATE_AC",
    "A_ASSOCIATE_RJ",
    "A_ASSOCIATE_RQ",
    "A_RELEASE_RP",
    "A_RELEASE_RQ",
    "CONTEXT_ACCEPTED",
    "PDU_HEADER",
    "PDV_COMMAND",
    "PDV_LAST",
    "PRESENTATION_LOCAL_LIMIT_EXCEEDED",
    "PROTOCOL_VERSION",
    "P_DATA_TF",
    "REASON_NOT_SPECIFIED",
    "REASON_UNRECOGNISED_PDU",
    "REJECTED_PERMANENT",
    "REJECTED_TRANSIENT",
    "SOURCE_PROVIDER_ACSE",
    "SOURCE_PROVIDER_PRESENTATION",
    "SOURCE_SERVICE_USER",
    "TRANSFER_SYNTAXES_REFUSED",
    "USER_APPLICATION_CONTEXT_NOT_SUPPORTED",
    "Abort",
    "AssociateAC",
    "AssociateRJ",
    "AssociateRQ",
    "ae_title_field",
    "encode_pdu",
    "p_data_tf",
    "pdv_items",
    "release_rp",
    "release_rq",
]

# PDU types (PS3.8 9.3.1)
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

#: Protocol version of the A-ASSOCIATE-RQ and -AC: bit 0 set (PS3.8 9.3.2).
PROTOCOL_VERSION = 0x0001
#: The A-ASSOCIATE-RQ's and -AC's fixed fields (PS3.8 9.3.2, 9.3.3): protocol version,
#: reserved, called and calling AE titles, 32 reserved bytes; the variable items follow.
ASSOCIATE_FIXED_LENGTH = 68

# A-ASSOCIATE-RJ result, source and reason/diag. (PS3.8 9.3.4)
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02
SOURCE_SERVICE_USER, SOURCE_PROVIDER_ACSE, SOURCE_PROVIDER_PRESENTATION = 0x01, 0x02, 0x03
USER_APPLICATION_CONTEXT_NOT_SUPPORTED = 0x02
ACSE_NO_REASON_GIVEN, ACSE_PROTOCOL_VERSION_NOT_SUPPORTED = 0x01, 0x02
PRESENTATION_LOCAL_LIMIT_EXCEEDED = 0x02

# A-ABORT source and reason (PS3.8 9.3.8); REASON_INVALID_PARAMETER and REASON_UNEXPECTED_PDU
# are in pdu_items, whose decoding raises them
ABORT_SERVICE_USER, ABORT_PROVIDER = 0x00, 0x02
REASON_NOT_SPECIFIED, REASON_UNRECOGNISED_PDU = 0x00, 0x01

# Presentation context results (PS3.8 9.3.3.2)
CONTEXT_ACCEPTED, ABSTRACT_SYNTAX_REFUSED, TRANSFER_SYNTAXES_REFUSED = 0x00, 0x03, 0x04

# The message control header of a PDV (PS3.8 E.2): bit 0 command (else dataset), bit 1 last
PDV_COMMAND, PDV_LAST = 0x01, 0x02

_PDV_HEADER = struct.Struct(">IBB")


def encode_pdu(kind: int, body: bytes) -> bytes:
    """A PDU: its header, then ``body``."""
    return PDU_HEADER.pack(kind, 0, len(body)) + body


def ae_title_field(title: str) -> bytes:
    """An AE title as the A-ASSOCIATE-RQ's 16-byte field: ASCII, padded with spaces."""
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


# --- association PDUs -----------------------------------------------------------------------


@dataclass
class AssociateRQ:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2). ``called``/``calling`` are the 16-byte AE title fields as
    sent (``called_ae``/``calling_ae`` give them as text), so that an answer can echo them."""

    called: bytes
    calling: bytes
    application_context: str = ""
    contexts: list[PresentationContextRQ] = field(default_factory=list)
    user: UserInformation = field(default_factory=UserInformation)
    protocol_version: int = PROTOCOL_VERSION

    @property
    def called_ae(self) -> str:
        return decode_text(self.called)

    @property
    def calling_ae(self) -> str:
        return decode_text(self.calling)

    def encode(self) -> bytes:
        return encode_pdu(
            A_ASSOCIATE_RQ,
            _associate_body(
                self.protocol_version,
                self.called,
                self.calling,
                self.application_context,
                [context.encode() for context in self.contexts],
                self.user,
            ),
        )

    @classmethod
    def decode(cls, body: bytes | memoryview) -> AssociateRQ:
        version, called, calling = _associate_fixed(body, "A-ASSOCIATE-RQ")
        request = cls(called, calling, protocol_version=version)
        for kind, value in items(body, ASSOCIATE_FIXED_LENGTH):
            if kind == APPLICATION_CONTEXT_ITEM:
                request.application_context = decode_text(value)
            elif kind == PRESENTATION_CONTEXT_RQ:
                request.contexts.append(PresentationContextRQ.decode(value))
            elif kind == USER_INFORMATION:
                request.user = UserInformation.decode(value)
        return request


@dataclass
class AssociateAC:
    """A-ASSOCIATE-AC (PS3.8 9.3.3). The AE title fields echo the request's (PS3.8 9.3.3: not
    to be tested)."""

    called: bytes
    calling: bytes
    application_context: str = ""
    contexts: list[PresentationContextAC] = field(default_factory=list)
    user: UserInformation = field(default_factory=UserInformation)
    protocol_version: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return encode_pdu(
            A_ASSOCIATE_AC,
            _associate_body(
                self.protocol_version,
                self.called,
                self.calling,
                self.application_context,
                [context.encode() for context in self.contexts],
                self.user,
            ),
        )

    @classmethod
    def decode(cls, body: bytes | memoryview) -> AssociateAC:
        version, called, calling = _associate_fixed(body, "A-ASSOCIATE-AC")
        answer = cls(called, calling, protocol_version=version)
        for kind, value in items(body, ASSOCIATE_FIXED_LENGTH):
            if kind == APPLICATION_CONTEXT_ITEM:
                answer.application_context = decode_text(value)
            elif kind == PRESENTATION_CONTEXT_AC:
                answer.contexts.append(PresentationContextAC.decode(value))
            elif kind == USER_INFORMATION:
                answer.user = UserInformation.decode(value)
        return answer


def _associate_fixed(body: bytes | memoryview, name: str) -> tuple[int, bytes, bytes]:
    if len(body) < ASSOCIATE_FIXED_LENGTH:
        raise ProtocolError(f"{name} too short", REASON_INVALID_PARAMETER)
    return struct.unpack_from(">H", body, 0)[0], bytes(body[4:20]), bytes(body[20:36])


def _associate_body(
    version: int,
    called: bytes,
    calling: bytes,
    application_context: str,
    contexts: list[bytes],
    user: UserInformation,
) -> bytes:
    head = struct.pack(">HH", version, 0) + called + calling + b"\x00" * 32
    context_item = encode_item(APPLICATION_CONTEXT_ITEM, encode_uid(application_context))
    return head + context_item + b"".join(contexts) + user.encode()


@dataclass(frozen=True)
class AssociateRJ:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source and reason/diag."""

    result: int
    source: int
    reason: int

    def encode(self) -> bytes:
        return encode_pdu(A_ASSOCIATE_RJ, bytes([0, self.result, self.source, self.reason]))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> AssociateRJ:
        if len(body) < 4:
            raise ProtocolError("A-ASSOCIATE-RJ too short", REASON_INVALID_PARAMETER)
        return cls(body[1], body[2], body[3])


# --- release and abort ----------------------------------------------------------------------


def release_rq() -> bytes:
    """A-RELEASE-RQ (PS3.8 9.3.6): four reserved bytes."""
    return encode_pdu(A_RELEASE_RQ, b"\x00" * 4)


def release_rp() -> bytes:
    """A-RELEASE-RP (PS3.8 9.3.7): four reserved bytes."""
    return encode_pdu(A_RELEASE_RP, b"\x00" * 4)


@dataclass(frozen=True)
class Abort:
    """A-ABORT (PS3.8 9.3.8): source (0 service user, 2 service provider) and reason."""

    source: int
    reason: int = REASON_NOT_SPECIFIED

    def encode(self) -> bytes:
        return encode_pdu(A_ABORT, bytes([0, 0, self.source, self.reason]))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> Abort:
        if len(body) < 4:
            raise ProtocolError("A-ABORT too short", REASON_INVALID_PARAMETER)
        return cls(body[2], body[3])


# --- data -----------------------------------------------------------------------------------


def p_data_tf(context_id: int, control: int, value: bytes | memoryview) -> bytes:
    """A P-DATA-TF (PS3.8 9.3.5) carrying one PDV: context ID, message control header
    (``PDV_COMMAND`` | ``PDV_LAST``), fragment."""
    return (
        PDU_HEADER.pack(P_DATA_TF, 0, len(value) + 6)
        + _PDV_HEADER.pack(len(value) + 2, context_id, control)
        + bytes(value)
    )


def pdv_items(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(presentation context ID, message control header, fragment) of each PDV of a P-DATA-TF's
    body; a PDV whose length is under 2 or runs past the body is a ``ProtocolError``."""
    offset = 0
    while offset < len(body):
        if offset + 6 > len(body):
            raise ProtocolError("truncated PDV item", REASON_INVALID_PARAMETER)
        length = struct.unpack_from(">I", body, offset)[0]
        end = offset + 4 + length
        if length < 2 or end > len(body):
            raise ProtocolError("PDV item length out of range", REASON_INVALID_PARAMETER)
        yield body[offset + 4], body[offset + 5], body[offset + 6 : end]
        offset = end
