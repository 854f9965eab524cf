"""Run the listener (and the delivery loop) until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from pneumonode.config import Settings
from pneumonode.db.session import Database
from pneumonode.dicom_node.delivery import DeliveryLoop, RetryPolicy
from pneumonode.dicom_node.receive import InstanceReceiver
from pneumonode.dicom_node.scp import Listener
from pneumonode.dicom_node.spool import Spool

__all__ = ["build_listener", "run_until_signalled"]

log = logging.getLogger(__name__)


def build_listener(settings: Settings, database: Database) -> Listener:
    receiver = InstanceReceiver(
        Spool(settings.spool_dir), database, min_free_bytes=settings.min_free_disk_mb * 1024 * 1024
    )
    return Listener(settings, database, receiver)


def run_until_signalled(settings: Settings, database: Database, *, deliveries: bool) -> None:
    """Start the listener (plus the delivery loop when ``deliveries``), block until a signal."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing transfers in flight", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    listener = build_listener(settings, database)
    loop = DeliveryLoop(database, RetryPolicy.from_settings(settings)) if deliveries else None
    try:
        listener.start()
        if loop is not None:
            loop.start()
        print(
            f"pneumonode listening as {settings.ae_title} on "
            f"{settings.dicom_host}:{listener.port} (data in {settings.data_dir})",
            flush=True,
        )
        if settings.accept_any_peer:
            print(
                "warning: PNEUMONODE_ACCEPT_ANY_PEER is on: any calling AE is accepted", flush=True
            )
        elif not settings.allowed_peers:
            print(
                "note: no peer is allowed yet; set PNEUMONODE_ALLOWED_PEERS=AE or AE@host "
                "(comma separated) for your PACS and modalities",
                flush=True,
            )
        else:
            print(f"allowed peers: {', '.join(settings.allowed_peers)}", flush=True)
        stop.wait()
    finally:
        listener.stop()
        if loop is not None:
            loop.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
