"""The DIMSE command set (PS3.7 9.3 and Annex E) of the two services the node speaks, C-ECHO and
C-STORE, as pynetdicom's ``dimse_primitives.py`` and ``dsutils.py`` have them: the command
elements and statuses by name, one function per message to encode it, and ``Command`` to decode
one. A command set is group 0000 in Implicit VR Little Endian, always (PS3.7 6.3.1).

Statuses are ``Status`` members (an ``IntEnum``): ``Status.PROCESSING_FAILURE`` is 0x0110 and the
command element Message ID is ``MESSAGE_ID``, also 0x0110, so neither is written as a number.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from pneumonode.dicom_node.pdu_items import (
    REASON_INVALID_PARAMETER,
    ProtocolError,
    decode_text,
    encode_text,
    encode_uid,
)

__all__ = [
    "AFFECTED_SOP_CLASS_UID",
    "AFFECTED_SOP_INSTANCE_UID",
    "CANCEL",
    "COMMAND_DATA_SET_TYPE",
    "COMMAND_FIELD",
    "COMMAND_GROUP_LENGTH",
    "C_CANCEL_RQ",
    "C_ECHO_RQ",
    "C_ECHO_RSP",
    "C_STORE_RQ",
    "C_STORE_RSP",
    "DATASET_PRESENT",
    "ERROR_COMMENT",
    "FAILURE",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "MESSAGE_ID",
    "MESSAGE_ID_BEING_RESPONDED_TO",
    "NO_DATASET",
    "PENDING",
    "PRIORITY",
    "PRIORITY_MEDIUM",
    "STATUS",
    "SUCCESS",
    "VERIFICATION",
    "WARNING",
    "Command",
    "Response",
    "Status",
    "c_echo_rq",
    "c_store_rq",
    "code_to_category",
    "command_elements",
    "context_mismatch",
    "encode_command",
    "is_out_of_resources",
    "response_to",
]

#: The Verification SOP Class, the only abstract syntax of C-ECHO (PS3.4 A.4).
VERIFICATION = "1.2.840.10008.1.1"
#: The transfer syntax of every command set, and the default one (PS3.5 10.1).
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

# Command elements, group 0000 (PS3.7 E.1-1)
COMMAND_GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000

# Command Field values (PS3.7 E.1-1): a response is its request with bit 15 set
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
_RESPONSE_BIT = 0x8000

#: Command Data Set Type: no dataset follows; any other value means one does (PS3.7 E.1-1).
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0000
#: Priority MEDIUM (LOW is 0x0002, HIGH 0x0001).
PRIORITY_MEDIUM = 0x0000

_ELEMENT_HEADER = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_COMMAND_NAMES = {C_STORE_RQ: "C-STORE-RQ", C_ECHO_RQ: "C-ECHO-RQ", C_CANCEL_RQ: "C-CANCEL-RQ"}


class Status(IntEnum):
    """The DIMSE statuses the node sends or acts on (PS3.7 Annex C, PS3.4 B.2.3 for Storage)."""

    SUCCESS = 0x0000
    #: Failures of any service (PS3.7 C.4)
    PROCESSING_FAILURE = 0x0110
    INVALID_SOP_INSTANCE = 0x0117
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    UNRECOGNISED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    #: Storage failures (PS3.4 B.2.3): 0xA7xx refused, out of resources; 0xA9xx and 0xCxxx errors
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC210
    #: Storage warnings (PS3.4 B.2.3): stored, but not as sent
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    CANCEL = 0xFE00


#: Status categories (PS3.7 C.1), as pynetdicom's ``status.code_to_category`` names them.
SUCCESS, WARNING, FAILURE, CANCEL, PENDING = "Success", "Warning", "Failure", "Cancel", "Pending"


def code_to_category(code: int) -> str:
    """The category of a status code (PS3.7 C.1 to C.5, PS3.4 B.2.3): a warning is 0x0001,
    0x0107, 0x0116 or 0xBxxx; anything not success, warning, cancel or pending is a failure."""
    if code == Status.SUCCESS:
        return SUCCESS
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return WARNING
    if code == Status.CANCEL:
        return CANCEL
    if code in (0xFF00, 0xFF01):
        return PENDING
    return FAILURE


def is_out_of_resources(code: int) -> bool:
    """Refused: Out of Resources, 0xA7xx (PS3.4 B.2.3): the peer may take it later."""
    return Status.OUT_OF_RESOURCES <= code <= 0xA7FF


# --- encoding -------------------------------------------------------------------------------


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(0x0000, element, len(value)) + value


def _us(value: int) -> bytes:
    return _US.pack(value)


def encode_command(elements: Iterable[tuple[int, bytes]]) -> bytes:
    """A command set (group 0000, Implicit VR Little Endian) from (element, value) pairs, in
    element order, with its Command Group Length first."""
    body = b"".join(_element(element, value) for element, value in sorted(elements))
    return _element(COMMAND_GROUP_LENGTH, struct.pack("<I", len(body))) + body


def c_echo_rq(message_id: int) -> bytes:
    """C-ECHO-RQ (PS3.7 9.3.5.1)."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, encode_uid(VERIFICATION)),
            (COMMAND_FIELD, _us(C_ECHO_RQ)),
            (MESSAGE_ID, _us(message_id)),
            (COMMAND_DATA_SET_TYPE, _us(NO_DATASET)),
        ]
    )


def c_store_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, priority: int = PRIORITY_MEDIUM
) -> bytes:
    """C-STORE-RQ (PS3.7 9.3.1.1); its dataset follows in data PDVs."""
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, encode_uid(sop_class_uid)),
            (COMMAND_FIELD, _us(C_STORE_RQ)),
            (MESSAGE_ID, _us(message_id)),
            (PRIORITY, _us(priority)),
            (COMMAND_DATA_SET_TYPE, _us(DATASET_PRESENT)),
            (AFFECTED_SOP_INSTANCE_UID, encode_uid(sop_instance_uid)),
        ]
    )


def response_to(request: Command, status: int, comment: str = "") -> bytes:
    """The response to ``request`` (C-ECHO-RSP, C-STORE-RSP or, for a request we do not provide,
    its command field with bit 15 set): ``status`` and, if any, its Error Comment (an LO: cut to
    64 characters)."""
    elements = [
        (COMMAND_FIELD, _us(request.field | _RESPONSE_BIT)),
        (MESSAGE_ID_BEING_RESPONDED_TO, _us(request.message_id)),
        (COMMAND_DATA_SET_TYPE, _us(NO_DATASET)),
        (STATUS, _us(status)),
    ]
    if request.sop_class_uid:
        elements.append((AFFECTED_SOP_CLASS_UID, encode_uid(request.sop_class_uid)))
    if request.field == C_STORE_RQ and request.sop_instance_uid:
        elements.append((AFFECTED_SOP_INSTANCE_UID, encode_uid(request.sop_instance_uid)))
    if comment:
        elements.append((ERROR_COMMENT, encode_text(comment[:64])))
    return encode_command(elements)


# --- decoding -------------------------------------------------------------------------------


def command_elements(data: bytes) -> dict[int, bytes]:
    """Element number -> value of a command set (group 0000, Implicit VR Little Endian); raises
    ``ProtocolError`` for an element of another group, one whose length runs past the end, or
    bytes left over."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = _ELEMENT_HEADER.unpack_from(data, offset)
        offset += 8
        if group != 0x0000 or offset + length > len(data):
            raise ProtocolError("malformed command set", REASON_INVALID_PARAMETER)
        values[element] = data[offset : offset + length]
        offset += length
    if offset != len(data):
        raise ProtocolError("malformed command set", REASON_INVALID_PARAMETER)
    return values


def _number(values: dict[int, bytes], element: int) -> int:
    value = values.get(element, b"")
    if len(value) != 2:
        raise ProtocolError(f"command element (0000,{element:04X}) missing or malformed")
    return int(_US.unpack(value)[0])


@dataclass(frozen=True)
class Command:
    """The elements we use of a request's command set."""

    field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_dataset: bool

    @classmethod
    def decode(cls, data: bytes) -> Command:
        """A command set's Command Field (required), Message ID, Affected SOP Class and Instance
        UIDs and whether a dataset follows (Command Data Set Type, required)."""
        values = command_elements(data)
        return cls(
            field=_number(values, COMMAND_FIELD),
            message_id=_number(values, MESSAGE_ID) if MESSAGE_ID in values else 0,
            sop_class_uid=decode_text(values.get(AFFECTED_SOP_CLASS_UID, b"")),
            sop_instance_uid=decode_text(values.get(AFFECTED_SOP_INSTANCE_UID, b"")),
            has_dataset=_number(values, COMMAND_DATA_SET_TYPE) != NO_DATASET,
        )


@dataclass(frozen=True)
class Response:
    """A DIMSE response as the requestor reads it: its status and Error Comment."""

    status: int
    comment: str = ""

    @classmethod
    def decode(cls, data: bytes, message_id: int) -> Response:
        """The response to the request ``message_id``; raises ``ProtocolError`` for one without
        a status, a dataset following it, or answering another request."""
        values = command_elements(data)
        field = _number(values, COMMAND_FIELD) if COMMAND_FIELD in values else _RESPONSE_BIT
        if not field & _RESPONSE_BIT:
            name = _COMMAND_NAMES.get(field, f"a request (command field {field:#06x})")
            raise ProtocolError(f"{name} instead of a response")
        if len(values.get(STATUS, b"")) != 2:
            raise ProtocolError("a response without a status")
        answered = values.get(MESSAGE_ID_BEING_RESPONDED_TO, b"")
        if len(answered) == 2 and _US.unpack(answered)[0] != message_id:
            raise ProtocolError("a response to another request")
        return cls(_number(values, STATUS), decode_text(values.get(ERROR_COMMENT, b"")))


# --- a command on its presentation context ----------------------------------------------------


def _shown_uid(uid: str) -> str:
    """A UID from the peer as a reason may show it (logged and audited): only a well-formed one."""
    if not uid:
        return "no SOP Class UID"
    return uid if len(uid) <= 64 and _UID.fullmatch(uid) else "an invalid UID"


def context_mismatch(command: Command, context_id: int, abstract: str) -> str | None:
    """Why a C-ECHO-RQ or C-STORE-RQ does not belong on its presentation context (PS3.7: the
    Affected SOP Class UID is the context's abstract syntax; Verification carries C-ECHO
    only), or None (other commands are answered "unrecognised operation"; a C-CANCEL-RQ names
    no SOP Class, PS3.7 9.3.2.3, and may come on any context)."""
    name = _COMMAND_NAMES.get(command.field)
    if name is None or command.field == C_CANCEL_RQ:
        return None
    where = f"presentation context {context_id} ({abstract})"
    if command.sop_class_uid != abstract:
        return f"{name} for {_shown_uid(command.sop_class_uid)} on {where}"
    if (command.field == C_ECHO_RQ) != (abstract == VERIFICATION):
        return f"{name} on {where}, which carries " + (
            "C-ECHO only" if abstract == VERIFICATION else "no C-ECHO"
        )
    return None
