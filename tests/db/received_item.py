"""A received instance as the listener hands it to ``db.repository`` (one CR, as sent)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pneumonode.db.repository import ReceivedInstance

__all__ = ["received_instance"]

_ITEM = ReceivedInstance(
    study_uid="1.2.3",
    series_uid="1.2.3.4",
    sop_uid="1.2.3.4.5",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    modality="CR",
    patient_id="PAT-1",
    accession_number="ACC-1",
    study_date="20260101",
    path="1.2.3/1.2.3.4.5.dcm",
    size_bytes=1000,
    sha256="a" * 64,
    calling_ae="MODALITY",
    peer_address="10.0.0.5",
    skip_reason=None,
)


def received_instance(**changes: Any) -> ReceivedInstance:
    """The instance, with ``changes`` (ReceivedInstance's fields) made."""
    return replace(_ITEM, **changes)
