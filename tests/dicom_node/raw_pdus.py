"""PDUs on a raw socket, for the scripted acceptors that test our requestor."""

from __future__ import annotations

import socket
import struct

__all__ = ["encode_pdu", "read_pdu"]


def encode_pdu(kind: int, body: bytes = bytes(4)) -> bytes:
    """A PDU of type ``kind`` around ``body`` (PS3.8 9.3.1: type, reserved, length)."""
    return struct.pack(">BBI", kind, 0, len(body)) + body


def read_pdu(connection: socket.socket) -> tuple[int, bytes] | None:
    """(type, body) of the next PDU; None when the peer has closed the connection."""
    header = connection.recv(6, socket.MSG_WAITALL)
    if len(header) < 6:
        return None
    return header[0], connection.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL)
