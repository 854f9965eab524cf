"""Build the DICOM listener from the settings (the node module runs it with everything else)."""

from __future__ import annotations

from collections.abc import Callable

from pneumonode.config import Settings
from pneumonode.db.session import Database
from pneumonode.dicom_node.receive import InstanceReceiver
from pneumonode.dicom_node.scp import Listener
from pneumonode.dicom_node.spool import Spool

__all__ = ["build_listener"]


def build_listener(
    settings: Settings, database: Database, on_job: Callable[[int], None] | None = None
) -> Listener:
    """The Storage SCP; ``on_job(job_id)`` is called when a received image creates a job."""
    receiver = InstanceReceiver(
        Spool(settings.spool_dir),
        database,
        min_free_bytes=settings.min_free_disk_mb * 1024 * 1024,
        rules=settings.selection,
        on_job=on_job,
    )
    return Listener(settings, database, receiver)
