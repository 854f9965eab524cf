"""Where alerts go: MLLP listeners (``host:port``) and webhook URLs, parsed and named safely.

No imports from the rest of pneumonode: the settings check these values with the same parsers
the senders use (as they check DICOM destinations with ``pneumonode echo``'s).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "AlertTargetError",
    "MllpTarget",
    "check_webhook_url",
    "parse_mllp_target",
    "redact_url",
]


class AlertTargetError(ValueError):
    """An alert destination that cannot be used; the message names it (a URL redacted)."""


@dataclass(frozen=True)
class MllpTarget:
    """An HL7 v2 receiver (an interface engine, a RIS) that listens for MLLP."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_mllp_target(text: str) -> MllpTarget:
    """Parse ``host:port`` (an IPv6 host in brackets: ``[::1]:2575``)."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise AlertTargetError(f"HL7 destination {text!r}: expected host:port")
    if any(c.isspace() for c in host) or "/" in host:
        raise AlertTargetError(f"HL7 destination {text!r}: {host!r} is not a host name")
    try:
        port = int(port_text)
    except ValueError:
        raise AlertTargetError(
            f"HL7 destination {text!r}: port {port_text!r} is not a number"
        ) from None
    if not 1 <= port <= 65535:
        raise AlertTargetError(f"HL7 destination {text!r}: port {port} is not 1-65535")
    return MllpTarget(host, port)


def redact_url(url: str) -> str:
    """``url`` as logs and the audit trail may show it: scheme, host and port only (a chat
    service's webhook URL carries its secret in the path or query)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unparsable URL)"
    host = f"[{host}]" if ":" in host else host
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def check_webhook_url(url: str) -> str:
    """``url`` stripped, when it is an absolute http(s) URL with a host; else
    :class:`AlertTargetError` naming it redacted."""
    text = url.strip()
    shown = redact_url(text)
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on a port that is not a number or out of range
    except ValueError:
        raise AlertTargetError(f"webhook URL {shown}: not a URL with a valid port") from None
    if parts.scheme not in ("http", "https"):
        raise AlertTargetError(f"webhook URL {shown}: must start with http:// or https://")
    if not parts.hostname:
        raise AlertTargetError(f"webhook URL {shown}: no host")
    if parts.username or parts.password:
        raise AlertTargetError(
            f"webhook URL {shown}: no user or password in the URL (the signature authenticates us)"
        )
    return text
