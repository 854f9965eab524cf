"""A C-STORE's dataset as it comes in (PS3.8 P-DATA fragments): written to a file in the spool's
``incoming`` folder behind a File Meta Information we write (PS3.10 7.1), the dataset's bytes
kept as received; a transfer cut short leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from pathlib import Path

from pneumonode.dicom_node.dimse import Command
from pneumonode.dicom_node.pdu_items import IMPLEMENTATION_CLASS_UID, encode_text, encode_uid
from pneumonode.identity import IMPLEMENTATION_VERSION_NAME

__all__ = ["IncomingDataset", "encode_file_meta"]

log = logging.getLogger(__name__)


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str
) -> bytes:
    """Preamble, 'DICM' and File Meta Information (Explicit VR Little Endian)."""

    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        if vr == b"OB":
            return struct.pack("<HH2sHI", 0x0002, tag, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, tag, vr, len(value)) + value

    elements = [
        element(0x0001, b"OB", b"\x00\x01"),
        element(0x0002, b"UI", encode_uid(sop_class_uid)),
        element(0x0003, b"UI", encode_uid(sop_instance_uid)),
        element(0x0010, b"UI", encode_uid(transfer_syntax_uid)),
        element(0x0012, b"UI", encode_uid(IMPLEMENTATION_CLASS_UID)),
        element(0x0013, b"SH", encode_text(IMPLEMENTATION_VERSION_NAME)),
    ]
    if source_ae:
        elements.append(element(0x0016, b"AE", encode_text(source_ae)))
    body = b"".join(elements)
    return b"\x00" * 128 + b"DICM" + element(0x0000, b"UL", struct.pack("<I", len(body))) + body


class IncomingDataset:
    """The dataset of one C-STORE (``command``, on ``context_id``), arriving in fragments:
    written to ``path`` as they come, or only counted (``path`` None: a C-STORE over the size
    limit, or a dataset of a command that keeps none)."""

    def __init__(self, path: Path | None, command: Command, context_id: int) -> None:
        self.path = path
        self.command = command
        self.context_id = context_id
        self.size = 0
        self.fd: int | None = None
        if path is not None:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, data: memoryview) -> None:
        self.size += len(data)
        if self.fd is not None:
            os.write(self.fd, data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
                log.info("discarded the partial dataset of an interrupted transfer")
