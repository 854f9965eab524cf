"""The network addresses the settings name, parsed and checked: the DICOM peers we accept
(calling AE titles, optionally bound to hosts), the DICOM destinations we send to, and where
alerts go (HL7 v2 receivers listening for MLLP, webhook URLs, named safely in logs).

It imports nothing of pneumonode's, so that ``config`` checks these settings with the same
parsers the DICOM node and the alerts use, and neither package is imported by ``config``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "AlertTargetError",
    "Destination",
    "MllpTarget",
    "PeerConfigError",
    "PeerPolicy",
    "PeerRule",
    "check_webhook_url",
    "parse_destination",
    "parse_mllp_target",
    "redact_url",
]

# DICOM peers and destinations


class PeerConfigError(ValueError):
    """A peer or destination in the settings is malformed."""


def _check_ae(ae_title: str, what: str) -> str:
    ae_title = ae_title.strip()
    if not 1 <= len(ae_title) <= 16 or "\\" in ae_title or not ae_title.isprintable():
        raise PeerConfigError(f"{what}: AE title must be 1-16 printable characters: {ae_title!r}")
    return ae_title


@dataclass(frozen=True)
class Destination:
    """A DICOM peer we send to."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """Parse ``AE@host:port`` (IPv6 hosts in brackets: ``AE@[::1]:104``)."""
    ae_title, sep, address = text.strip().rpartition("@")
    if not sep:
        raise PeerConfigError(f"destination {text!r}: expected AE@host:port")
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise PeerConfigError(f"destination {text!r}: expected AE@host:port")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise PeerConfigError(f"destination {text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise PeerConfigError(f"destination {text!r}: port {port} out of range")
    return Destination(_check_ae(ae_title, f"destination {text!r}"), host, port)


@dataclass(frozen=True)
class PeerRule:
    """A calling AE title, optionally only from some addresses."""

    ae_title: str
    addresses: frozenset[str] | None  # None: from anywhere

    @classmethod
    def parse(cls, text: str) -> PeerRule:
        ae_title, sep, host = text.strip().partition("@")
        ae_title = _check_ae(ae_title, f"allowed peer {text!r}")
        if not sep:
            return cls(ae_title, None)
        return cls(ae_title, frozenset(_resolve(host.strip().strip("[]"), text)))

    def allows(self, calling_ae: str, address: str) -> bool:
        if calling_ae.strip() != self.ae_title:
            return False
        return self.addresses is None or _normalise(address) in self.addresses


def _normalise(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _resolve(host: str, text: str) -> set[str]:
    try:
        return {_normalise(str(info[4][0])) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise PeerConfigError(f"allowed peer {text!r}: cannot resolve host {host!r}") from None


class PeerPolicy:
    """The association acceptance rule: an allow-list, or anybody in promiscuous mode."""

    def __init__(self, rules: Iterable[PeerRule], accept_any: bool = False) -> None:
        self.rules = tuple(rules)
        self.accept_any = accept_any

    @classmethod
    def from_settings(cls, allowed_peers: Iterable[str], accept_any: bool) -> PeerPolicy:
        return cls((PeerRule.parse(text) for text in allowed_peers), accept_any)

    def allows(self, calling_ae: str, address: str) -> bool:
        return self.accept_any or any(rule.allows(calling_ae, address) for rule in self.rules)


# Alert targets


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
