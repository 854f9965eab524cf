"""The outcome of one attempt to deliver an alert, whatever the channel."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AttemptOutcome"]


@dataclass(frozen=True)
class AttemptOutcome:
    """``reason`` goes to logs and the audit trail, so it never holds patient data; ``detail``
    (what the peer said, which may quote the message) is kept only on the alert's row."""

    ok: bool
    status: str | None = None  # the ACK code (AA, AE, AR) or the HTTP status
    reason: str = ""
    detail: str | None = None
    permanent: bool = False  # no retry can help (dead-lettered at once)

    @classmethod
    def sent(cls, status: str) -> AttemptOutcome:
        return cls(True, status)

    @classmethod
    def failed(
        cls,
        reason: str,
        *,
        status: str | None = None,
        detail: str | None = None,
        permanent: bool = False,
    ) -> AttemptOutcome:
        return cls(False, status, reason, detail, permanent)
