"""The items and sub-items of the association PDUs (PS3.8 9.3.2 to 9.3.3, PS3.7 D.3.3): one
class per item type, each with ``encode()`` (the whole item, header included) and ``decode(value)``
(from the item's value, its 4-byte header removed), as pynetdicom's ``pdu_items.py`` has them.

Every item is 1 byte of type, 1 reserved, 2 bytes of big-endian length, then its value. UIDs are
written padded to an even length with a NUL, as the rest of our upper layer writes them, and read
with any NUL or space padding removed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.uid import generate_uid

__all__ = [
    "ABSTRACT_SYNTAX",
    "APPLICATION_CONTEXT",
    "APPLICATION_CONTEXT_ITEM",
    "ASYNCHRONOUS_OPERATIONS_WINDOW",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_CLASS_UID_ITEM",
    "IMPLEMENTATION_VERSION_NAME_ITEM",
    "MAXIMUM_LENGTH",
    "PRESENTATION_CONTEXT_AC",
    "PRESENTATION_CONTEXT_RQ",
    "REASON_INVALID_PARAMETER",
    "ROLE_SELECTION",
    "SOP_CLASS_COMMON_EXTENDED_NEGOTIATION",
    "SOP_CLASS_EXTENDED_NEGOTIATION",
    "TRANSFER_SYNTAX",
    "USER_IDENTITY_AC",
    "USER_IDENTITY_RQ",
    "USER_INFORMATION",
    "AsynchronousOperationsWindow",
    "PresentationContextAC",
    "PresentationContextRQ",
    "ProtocolError",
    "RoleSelection",
    "UserIdentityAC",
    "UserIdentityRQ",
    "UserInformation",
    "decode_text",
    "encode_item",
    "encode_text",
    "encode_uid",
    "items",
]

#: The DICOM Application Context Name (PS3.7 A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: Our Implementation Class UID: a fixed UID under pydicom's root, derived from our name.
IMPLEMENTATION_CLASS_UID = str(generate_uid(entropy_srcs=["pneumonode DICOM upper layer"]))

# Item types of the A-ASSOCIATE-RQ and -AC (PS3.8 9.3.2, 9.3.3)
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ = 0x20
PRESENTATION_CONTEXT_AC = 0x21
ABSTRACT_SYNTAX = 0x30
TRANSFER_SYNTAX = 0x40
USER_INFORMATION = 0x50
# Sub-item types of the user information item (PS3.8 D.1, PS3.7 D.3.3)
MAXIMUM_LENGTH = 0x51
IMPLEMENTATION_CLASS_UID_ITEM = 0x52
ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
ROLE_SELECTION = 0x54
IMPLEMENTATION_VERSION_NAME_ITEM = 0x55
SOP_CLASS_EXTENDED_NEGOTIATION = 0x56
SOP_CLASS_COMMON_EXTENDED_NEGOTIATION = 0x57
USER_IDENTITY_RQ = 0x58
USER_IDENTITY_AC = 0x59

#: A-ABORT reason (PS3.8 9.3.8): invalid PDU parameter value.
REASON_INVALID_PARAMETER = 0x06
#: A-ABORT reason (PS3.8 9.3.8): unexpected PDU.
REASON_UNEXPECTED_PDU = 0x02

_ITEM_HEADER = struct.Struct(">BBH")


class ProtocolError(Exception):
    """The peer broke the protocol: the association is aborted with ``reason`` (an A-ABORT
    reason of PS3.8 9.3.8, from the service provider)."""

    def __init__(self, message: str, reason: int = REASON_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


# --- values ---------------------------------------------------------------------------------


def encode_uid(uid: str) -> bytes:
    """A UID's bytes, padded with a NUL to an even length."""
    data = uid.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def encode_text(text: str) -> bytes:
    """Text's bytes (non-ASCII replaced), padded with a space to an even length."""
    data = text.encode("ascii", "replace")
    return data + b" " if len(data) % 2 else data


def decode_text(value: bytes | memoryview) -> str:
    """A UID, AE title or name as text, without the padding (spaces and NULs) around it."""
    return bytes(value).decode("ascii", "replace").strip(" \x00")


def encode_item(kind: int, value: bytes) -> bytes:
    """An item: type, reserved, 2-byte length, value."""
    return _ITEM_HEADER.pack(kind, 0, len(value)) + value


def items(data: bytes | memoryview, start: int = 0) -> Iterator[tuple[int, memoryview]]:
    """(type, value) of each item from ``start`` to the end of ``data``; an item that runs past
    the end, or bytes left over, are a ``ProtocolError`` (invalid parameter)."""
    view = memoryview(data)
    offset = start
    while offset + 4 <= len(view):
        kind, length = view[offset], struct.unpack_from(">H", view, offset + 2)[0]
        end = offset + 4 + length
        if end > len(view):
            raise ProtocolError("an item runs past the end of its PDU", REASON_INVALID_PARAMETER)
        yield kind, view[offset + 4 : end]
        offset = end
    if offset != len(view):
        raise ProtocolError("trailing bytes after the last item", REASON_INVALID_PARAMETER)


def _short(name: str) -> ProtocolError:
    return ProtocolError(f"{name} item too short", REASON_INVALID_PARAMETER)


def _uid_field(value: memoryview, offset: int) -> tuple[str, int]:
    """A UID preceded by its 2-byte length (role selection, extended negotiation); the offset
    after it."""
    if offset + 2 > len(value):
        raise ProtocolError("a UID field runs past its item", REASON_INVALID_PARAMETER)
    length = struct.unpack_from(">H", value, offset)[0]
    end = offset + 2 + length
    if end > len(value):
        raise ProtocolError("a UID field runs past its item", REASON_INVALID_PARAMETER)
    return decode_text(value[offset + 2 : end]), end


# --- presentation contexts ------------------------------------------------------------------


@dataclass
class PresentationContextRQ:
    """A proposed presentation context (item 0x20): its ID, abstract syntax (sub-item 0x30) and
    transfer syntaxes (sub-items 0x40), in the order proposed."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        body = bytes([self.context_id, 0, 0, 0]) + encode_item(
            ABSTRACT_SYNTAX, encode_uid(self.abstract_syntax)
        )
        for syntax in self.transfer_syntaxes:
            body += encode_item(TRANSFER_SYNTAX, encode_uid(syntax))
        return encode_item(PRESENTATION_CONTEXT_RQ, body)

    @classmethod
    def decode(cls, value: memoryview) -> PresentationContextRQ:
        if len(value) < 4:
            raise ProtocolError("presentation context item too short")
        context = cls(value[0], "")
        for kind, sub_value in items(value, 4):
            if kind == ABSTRACT_SYNTAX:
                context.abstract_syntax = decode_text(sub_value)
            elif kind == TRANSFER_SYNTAX:
                context.transfer_syntaxes.append(decode_text(sub_value))
        return context


@dataclass
class PresentationContextAC:
    """The answer to one proposed presentation context (item 0x21): its ID, the result (0
    acceptance, 1 user rejection, 2 no reason, 3 abstract syntax not supported, 4 transfer
    syntaxes not supported) and the transfer syntax (sub-item 0x40; left out when empty)."""

    context_id: int
    result: int
    transfer_syntax: str = ""

    def encode(self) -> bytes:
        body = bytes([self.context_id, 0, self.result, 0])
        if self.transfer_syntax:
            body += encode_item(TRANSFER_SYNTAX, encode_uid(self.transfer_syntax))
        return encode_item(PRESENTATION_CONTEXT_AC, body)

    @classmethod
    def decode(cls, value: memoryview) -> PresentationContextAC:
        if len(value) < 4:
            raise _short("presentation context")
        syntax = next((decode_text(v) for k, v in items(value, 4) if k == TRANSFER_SYNTAX), "")
        return cls(value[0], value[2], syntax)


# --- user information sub-items -------------------------------------------------------------


@dataclass
class AsynchronousOperationsWindow:
    """Sub-item 0x53 (PS3.7 D.3.3.3): operations invoked and performed at once, at most."""

    invoked: int
    performed: int

    def encode(self) -> bytes:
        return encode_item(
            ASYNCHRONOUS_OPERATIONS_WINDOW, struct.pack(">HH", self.invoked, self.performed)
        )

    @classmethod
    def decode(cls, value: memoryview) -> AsynchronousOperationsWindow:
        if len(value) != 4:
            raise _short("asynchronous operations window")
        invoked, performed = struct.unpack(">HH", value)
        return cls(invoked, performed)


@dataclass
class RoleSelection:
    """Sub-item 0x54 (PS3.7 D.3.3.4): the roles proposed or accepted for one SOP class."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool

    def encode(self) -> bytes:
        uid = self.sop_class_uid.encode("ascii")
        body = struct.pack(">H", len(uid)) + uid + bytes([self.scu_role, self.scp_role])
        return encode_item(ROLE_SELECTION, body)

    @classmethod
    def decode(cls, value: memoryview) -> RoleSelection:
        uid, offset = _uid_field(value, 0)
        if offset + 2 != len(value):
            raise _short("role selection")
        return cls(uid, bool(value[offset]), bool(value[offset + 1]))


@dataclass
class UserIdentityRQ:
    """Sub-item 0x58 (PS3.7 D.3.3.7): identity type (1 username, 2 username and passcode, 3
    Kerberos, 4 SAML, 5 JWT), whether a response is asked for, primary and secondary fields."""

    identity_type: int
    response_requested: bool
    primary: bytes
    secondary: bytes = b""

    def encode(self) -> bytes:
        body = (
            bytes([self.identity_type, self.response_requested])
            + struct.pack(">H", len(self.primary))
            + self.primary
            + struct.pack(">H", len(self.secondary))
            + self.secondary
        )
        return encode_item(USER_IDENTITY_RQ, body)

    @classmethod
    def decode(cls, value: memoryview) -> UserIdentityRQ:
        if len(value) < 6:
            raise _short("user identity")
        primary_end = 4 + struct.unpack_from(">H", value, 2)[0]
        if primary_end + 2 > len(value):
            raise _short("user identity")
        secondary_end = primary_end + 2 + struct.unpack_from(">H", value, primary_end)[0]
        if secondary_end != len(value):
            raise ProtocolError("user identity item lengths disagree", REASON_INVALID_PARAMETER)
        return cls(
            value[0],
            bool(value[1]),
            bytes(value[4:primary_end]),
            bytes(value[primary_end + 2 : secondary_end]),
        )


@dataclass
class UserIdentityAC:
    """Sub-item 0x59 (PS3.7 D.3.3.7.2): the server response to a user identity."""

    server_response: bytes

    def encode(self) -> bytes:
        body = struct.pack(">H", len(self.server_response)) + self.server_response
        return encode_item(USER_IDENTITY_AC, body)

    @classmethod
    def decode(cls, value: memoryview) -> UserIdentityAC:
        if len(value) < 2 or 2 + struct.unpack_from(">H", value, 0)[0] != len(value):
            raise ProtocolError("user identity response lengths disagree", REASON_INVALID_PARAMETER)
        return cls(bytes(value[2:]))


@dataclass
class UserInformation:
    """The user information item (0x50) and the sub-items we know.

    Reading is lenient, as the acceptor's negotiation is: a maximum length whose value is not 4
    bytes is left at 0 (no limit), and an optional sub-item we cannot read, or do not know
    (extended negotiation 0x56/0x57 included), is kept in ``other`` as (type, value), in order,
    and written back after the others. Written in the order: maximum length, implementation
    class UID and version name (as most peers send them), then the optional ones."""

    max_length: int | None = None  # None: no sub-item; 0: no limit
    implementation_class_uid: str = ""
    implementation_version_name: str | None = None
    asynchronous_operations: AsynchronousOperationsWindow | None = None
    role_selections: list[RoleSelection] = field(default_factory=list)
    user_identity: UserIdentityRQ | None = None
    user_identity_response: UserIdentityAC | None = None
    other: list[tuple[int, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        parts = []
        if self.max_length is not None:
            parts.append(encode_item(MAXIMUM_LENGTH, struct.pack(">I", self.max_length)))
        if self.implementation_class_uid:
            uid = encode_uid(self.implementation_class_uid)
            parts.append(encode_item(IMPLEMENTATION_CLASS_UID_ITEM, uid))
        if self.implementation_version_name is not None:
            name = self.implementation_version_name.encode("ascii")
            parts.append(encode_item(IMPLEMENTATION_VERSION_NAME_ITEM, name))
        if self.asynchronous_operations is not None:
            parts.append(self.asynchronous_operations.encode())
        parts += [role.encode() for role in self.role_selections]
        if self.user_identity is not None:
            parts.append(self.user_identity.encode())
        if self.user_identity_response is not None:
            parts.append(self.user_identity_response.encode())
        parts += [encode_item(kind, value) for kind, value in self.other]
        return encode_item(USER_INFORMATION, b"".join(parts))

    @classmethod
    def decode(cls, value: memoryview) -> UserInformation:
        user = cls()
        for kind, sub_value in items(value):
            if kind == MAXIMUM_LENGTH:
                user.max_length = struct.unpack(">I", sub_value)[0] if len(sub_value) == 4 else 0
            elif kind == IMPLEMENTATION_CLASS_UID_ITEM:
                user.implementation_class_uid = decode_text(sub_value)
            elif kind == IMPLEMENTATION_VERSION_NAME_ITEM:
                user.implementation_version_name = decode_text(sub_value)
            else:
                try:
                    user._optional(kind, sub_value)
                except ProtocolError:
                    user.other.append((kind, bytes(sub_value)))
        return user

    def _optional(self, kind: int, value: memoryview) -> None:
        if kind == ASYNCHRONOUS_OPERATIONS_WINDOW:
            self.asynchronous_operations = AsynchronousOperationsWindow.decode(value)
        elif kind == ROLE_SELECTION:
            self.role_selections.append(RoleSelection.decode(value))
        elif kind == USER_IDENTITY_RQ:
            self.user_identity = UserIdentityRQ.decode(value)
        elif kind == USER_IDENTITY_AC:
            self.user_identity_response = UserIdentityAC.decode(value)
        else:
            self.other.append((kind, bytes(value)))
