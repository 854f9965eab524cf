"""The embedded broker takes messages in the order they were sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

from pneumonode.worker import broker
from pneumonode.worker.broker import FilesystemTransport, message_name


def connection(folder: Path) -> Connection:
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return Connection(
        "filesystem://",
        transport=FilesystemTransport,
        transport_options={
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": True,
            "control_folder": str(folder / "control"),
        },
    )


def test_names_sort_in_sending_order_across_a_digit_boundary() -> None:
    # kombu's own names (monotonic ms, not padded) put "1000_..." before "999_..."
    assert message_name("q", now_ns=999) < message_name("q", now_ns=1000)
    assert message_name("q", now_ns=999_999_999_999) < message_name("q", now_ns=10**12)


def test_messages_come_out_first_in_first_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([999, 1000, 10_000, 99_999, 100_000])
    monkeypatch.setattr(broker.time, "time_ns", lambda: next(clock))
    with connection(tmp_path) as conn:
        queue = conn.SimpleQueue("jobs")
        for job_id in range(5):
            queue.put({"job": job_id})
        assert not list((tmp_path / "queue").glob(".*.part"))  # every message complete
        taken = []
        for _ in range(5):
            message = queue.get(timeout=5)
            taken.append(message.payload["job"])
            message.ack()
        queue.close()
    assert taken == [0, 1, 2, 3, 4]
