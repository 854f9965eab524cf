"""The durable spool: received files at ``spool/<StudyUID>/<SOPInstanceUID>.dcm``.

A file is first written elsewhere in the same filesystem (``spool/.incoming``), then fsynced,
renamed into place and its directory fsynced: after ``commit`` returns (or ``place``'s folder
fsyncs have finished), the file survives a power cut, and no half-written file is ever visible
under its final name. UIDs are sanitised before they become path components, so no UID can leave
the spool directory.

:class:`IncomingFile` is the listener's spool step (of parse, spool, record): one received file
from its arrival in ``.incoming`` to its durable place, hashed when a re-send is compared.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

__all__ = [
    "IncomingFile",
    "Spool",
    "Syncs",
    "dataset_offset",
    "hash_dataset",
    "safe_component",
]

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")
_MAX_COMPONENT = 128
_HASH_CHUNK = 1 << 20


def safe_component(uid: str) -> str:
    """A file-name-safe form of a UID, distinct for distinct inputs.

    UIDs made of letters, digits, '.', '_' and '-' (every valid UID, and SIIM's 'ID_4d6269d79')
    are kept as they are. Anything else (slashes, '..', a leading dot, control characters,
    over-long or empty values) gets its unsafe characters replaced and a short hash of the
    original appended, so no name leaves the folder and two different UIDs never share a file.
    """
    text = uid.strip().rstrip("\x00")
    if (
        text
        and len(text) <= _MAX_COMPONENT
        and not text.startswith(".")
        and not _UNSAFE.search(text)
    ):
        return text
    cleaned = _UNSAFE.sub("_", text).lstrip(".")[:_MAX_COMPONENT] or "uid"
    digest = hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{cleaned}-{digest}"


_SYNC_THREADS = 4
_SYNC_POOL = ThreadPoolExecutor(max_workers=_SYNC_THREADS, thread_name_prefix="spool-fsync")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Syncs:
    """fsyncs running in the background; ``result`` waits for them all (and raises the first
    failure)."""

    def __init__(self, futures: list[Future[None]]) -> None:
        self.futures = futures

    def result(self) -> None:
        for future in self.futures:
            future.result()


class Spool:
    """Where received instances are kept."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study_uid: str, sop_uid: str) -> Path:
        return Path(safe_component(study_uid)) / f"{safe_component(sop_uid)}.dcm"

    def path_of(self, relative: str | Path) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"{relative} is outside the spool")
        return path

    def start_sync(self, temp: Path) -> Future[None]:
        """fsync ``temp`` in the background (the disk works while the caller parses)."""
        return _SYNC_POOL.submit(_fsync_file, temp)

    def place(
        self, temp: Path, study_uid: str, sop_uid: str, synced: Future[None] | None = None
    ) -> tuple[Path, Syncs]:
        """Rename ``temp`` (in the same filesystem, fsynced: ``synced`` is ``start_sync(temp)``
        when the caller started that earlier) to its final place, replacing an existing file of
        the same instance. Returns the path relative to the spool root and the fsyncs of the
        folders that changed (the study's; the spool's too when the study's folder is new),
        running in the background: the new name is durable once they have finished, so the
        caller can do other work first (a database transaction that must not commit before
        it)."""
        relative = self.relative_path(study_uid, sop_uid)
        final = self.root / relative
        study_dir = final.parent
        new_folder = not study_dir.is_dir()
        if new_folder:
            study_dir.mkdir(parents=True, exist_ok=True)
        if synced is None:
            _fsync_file(temp)
        else:
            synced.result()
        temp.replace(final)
        syncs = [_SYNC_POOL.submit(_fsync_dir, study_dir)]
        if new_folder:
            syncs.append(_SYNC_POOL.submit(_fsync_dir, self.root))
        return relative, Syncs(syncs)

    def commit(self, temp: Path, study_uid: str, sop_uid: str) -> Path:
        """``place``, and wait until the file survives a power cut; returns the path relative
        to the spool root."""
        relative, folder_synced = self.place(temp, study_uid, sop_uid)
        folder_synced.result()
        return relative

    @staticmethod
    def start_threads() -> None:
        """Start the fsync threads now rather than with the first file."""
        started = [_SYNC_POOL.submit(time.sleep, 0.01) for _ in range(_SYNC_THREADS)]
        for future in started:
            future.result()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def stale_incoming(self, older_than: float) -> list[Path]:
        """Files in ``.incoming`` untouched for ``older_than`` seconds, oldest first."""
        cutoff = time.time() - older_than
        found = []
        for path in self.incoming.iterdir():
            try:
                modified = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if modified < cutoff and path.is_file():
                found.append((modified, path))
        return [path for _, path in sorted(found)]

    def sweep_incoming(self, older_than: float) -> int:
        """Delete leftovers of interrupted transfers untouched for ``older_than`` seconds."""
        removed = 0
        for path in self.stale_incoming(older_than):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed %d partial file(s) of interrupted transfers", removed)
        return removed


def dataset_offset(path: Path) -> int:
    """Byte offset of the dataset in a DICOM file: after preamble, 'DICM' and the file meta."""
    with path.open("rb") as handle:
        head = handle.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("no File Meta Information Group Length at the start of the file")
    group_length: int = struct.unpack("<I", head[140:144])[0]
    return 144 + group_length


def hash_dataset(path: Path, offset: int) -> str:
    """SHA-256 (hex) of the dataset bytes of a DICOM file: from ``offset`` (after the File
    Meta Information) to the end."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class IncomingFile:
    """A received file (``temp``, in ``.incoming``) on its way to its place in the spool.

    Its fsync starts at once, so that the disk works while the header is read and the database
    queried. A first arrival is put in place by :meth:`place_new` while its rows wait to commit;
    a re-send is compared with the stored file by :meth:`replace_if_changed`.
    """

    def __init__(self, spool: Spool, temp: Path) -> None:
        self.spool = spool
        self.temp = temp
        self.synced = spool.start_sync(temp)
        self._new: Path | None = None  # a file of ours that no other file was in place of
        self._folder_synced: Syncs | None = None

    def place_new(self, study_uid: str, sop_uid: str) -> None:
        """Rename the file into place (once its fsync is done); the folders' fsyncs run on
        until :meth:`wait_until_durable`, so that a transaction can commit meanwhile."""
        relative, self._folder_synced = self.spool.place(self.temp, study_uid, sop_uid, self.synced)
        self._new = self.spool.root / relative

    def replace_if_changed(
        self, offset: int, study_uid: str, sop_uid: str, stored_sha256: str | None, stored: str
    ) -> tuple[str, bool]:
        """For a SOP Instance UID held already (its file at ``stored``, relative to the spool,
        with ``stored_sha256`` when known): the dataset's hash, and whether it is unchanged.
        Different bytes replace the stored file, durably before this returns (before the
        transaction that records them may commit); identical ones leave it."""
        new = hash_dataset(self.temp, offset)
        old = stored_sha256 or self._stored_hash(self.spool.root / stored)
        final = self.spool.root / self.spool.relative_path(study_uid, sop_uid)
        unchanged = new == old and final.is_file()
        if not unchanged:
            _, folder_synced = self.spool.place(self.temp, study_uid, sop_uid, self.synced)
            folder_synced.result()
        return new, unchanged

    @staticmethod
    def _stored_hash(path: Path) -> str | None:
        try:
            return hash_dataset(path, dataset_offset(path))
        except (OSError, ValueError):
            return None  # the stored file is gone or damaged: keep the new one

    def wait_until_durable(self) -> None:
        """Wait for the fsyncs of the folders :meth:`place_new` changed."""
        if self._folder_synced is not None:
            self._folder_synced.result()

    def withdraw(self) -> None:
        """Remove a first arrival's file again (its transaction failed): the spool never keeps
        a file the database does not know."""
        if self._new is not None:
            self._new.unlink(missing_ok=True)
            self._new = None
