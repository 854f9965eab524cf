"""The embedded broker: kombu's filesystem transport, with two of its flaws fixed.

kombu names a message file after ``monotonic()`` in milliseconds, not zero-padded, and takes
files in name order. When the machine's uptime gains a digit (at 1000 s, 10^4 s, ...) or after a
reboot (the queue survives, the clock restarts), newer messages sort before older ones, which
then wait until the queue is empty: minutes for some images in a burst. And it writes the file
in place, so a worker may take a half-written message. Here a message file is named after the
wall-clock time in nanoseconds, fixed width, and appears by an atomic rename when complete.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

__all__ = ["FilesystemTransport", "message_name"]


def message_name(queue: str, now_ns: int | None = None) -> str:
    """``<20-digit ns time>_<uuid>.<queue>.msg``: name order is sending order."""
    stamp = time.time_ns() if now_ns is None else now_ns
    return f"{stamp:020d}_{uuid.uuid4()}.{queue}.msg"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        folder = Path(self.data_folder_out)
        # a name without the queue's suffix: never taken before the rename
        partial = folder / f".{uuid.uuid4()}.part"
        try:
            partial.write_bytes(str_to_bytes(dumps(payload)))  # type: ignore[no-untyped-call]
            partial.rename(folder / message_name(queue))
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise ChannelError(f"cannot add a message to {folder}: {exc}") from exc


class FilesystemTransport(filesystem.Transport):
    Channel = Channel
