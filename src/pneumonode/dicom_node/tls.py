"""DICOM TLS (PS3.15 Annex B.9): the SSL contexts of our listener and of our sending side.

Both follow the BCP 195 profile that dcmtk uses by default: TLS 1.2 or newer, the library's
strong cipher suites, certificates verified against ``tls_ca_file`` (or the system's CAs). The
listener asks for a client certificate and, unless ``tls_require_peer_cert`` is off, refuses a
client without one; the allow-list of calling AE titles applies on top.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from pathlib import Path

from pneumonode.config import Settings

__all__ = ["TlsConfigError", "TlsSettings"]


class TlsConfigError(ValueError):
    """A certificate, key or CA file cannot be used."""


@dataclass(frozen=True)
class TlsSettings:
    """What both sides need: our certificate and key, the CAs we trust."""

    cert_file: Path | None
    key_file: Path | None
    ca_file: Path | None
    require_peer_cert: bool = True
    check_hostname: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> TlsSettings:
        return cls(
            settings.tls_cert_file,
            settings.tls_key_file,
            settings.tls_ca_file,
            settings.tls_require_peer_cert,
            settings.tls_check_hostname,
        )

    def _load(self, context: ssl.SSLContext) -> ssl.SSLContext:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if self.ca_file is not None:
                context.load_verify_locations(cafile=str(self.ca_file))
            else:
                context.load_default_certs(
                    ssl.Purpose.CLIENT_AUTH
                    if context.protocol == ssl.PROTOCOL_TLS_SERVER
                    else ssl.Purpose.SERVER_AUTH
                )
            if self.cert_file is not None and self.key_file is not None:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(str(p) for p in (self.cert_file, self.key_file, self.ca_file) if p)
            raise TlsConfigError(f"cannot load the TLS certificates ({files}): {exc}") from None
        return context

    def server_context(self) -> ssl.SSLContext:
        """The listener's context (needs our certificate and key)."""
        if self.cert_file is None or self.key_file is None:
            raise TlsConfigError("the TLS listener needs tls_cert_file and tls_key_file")
        context = self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        context.verify_mode = ssl.CERT_REQUIRED if self.require_peer_cert else ssl.CERT_OPTIONAL
        return context

    def client_context(self) -> ssl.SSLContext:
        """The context we send with: verifies the peer; presents our certificate if we have one.
        Made once per process and settings (files are read then: a renewed certificate takes
        effect at the next start)."""
        return _client_context(self)


@functools.cache
def _client_context(tls: TlsSettings) -> ssl.SSLContext:
    context = tls._load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = tls.check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    return context
