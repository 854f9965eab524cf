"""The alert receivers as fixtures (see tests/alert_receivers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from alert_receivers import (
    MllpListener,
    WebhookReceiver,
    run_mllp_listener,
    run_webhook_receiver,
)


@pytest.fixture
def mllp_listener() -> Iterator[MllpListener]:
    with run_mllp_listener() as listener:
        yield listener


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with run_webhook_receiver() as receiver:
        yield receiver
