"""What a node process checks before it starts anything: the settings' outside world.

The settings object checks every value's form when it is read (``pneumonode.config``); what
only the machine can answer is checked here, before a listener, thread or child process
starts: the data folder can be written, the ports can be listened on, allowed peers' hosts
resolve, TLS files load. Each problem is one :class:`StartupError` whose message names the
setting, so that a node that cannot work stops at once with one line instead of a traceback.
"""

from __future__ import annotations

import errno
import socket
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass

from pneumonode.config import Settings

__all__ = ["NODE_PARTS", "StartupError", "check_startup", "listen_socket", "port_problem"]


class StartupError(RuntimeError):
    """A node process cannot start; the message is one line that names the setting."""


@dataclass(frozen=True)
class Parts:
    """What a command runs, and so what it needs."""

    listener: bool = False  # the DICOM listener (ports, allowed peers, the TLS listener)
    api: bool = False  # the HTTP API (its port)
    sender: bool = False  # sends results (TLS client files)


#: The node's commands and their parts (``serve`` runs the listener, API and a worker).
NODE_PARTS = {
    "serve": Parts(listener=True, api=True, sender=True),
    "dicom-listen": Parts(listener=True, sender=True),
    "api": Parts(api=True),
    "worker": Parts(sender=True),
    "dispatch": Parts(),
}


def check_startup(settings: Settings, command: str) -> None:
    """Check what ``command`` (a key of :data:`NODE_PARTS`) needs; raise :class:`StartupError`."""
    parts = NODE_PARTS[command]
    _check_data_dir(settings)
    if parts.listener:
        _check_peers(settings)
    _check_tls(settings, parts)
    ports: list[tuple[str, str, int]] = []  # (port setting, host setting, port)
    if parts.listener and settings.dicom_plaintext:
        ports.append(("dicom_port", "dicom_host", settings.dicom_port))
    if parts.listener and settings.dicom_tls_port is not None:
        ports.append(("dicom_tls_port", "dicom_host", settings.dicom_tls_port))
    if parts.api:
        ports.append(("api_port", "api_host", settings.api_port))
    _check_ports(settings, ports)


def _check_data_dir(settings: Settings) -> None:
    folder = settings.data_dir
    name = settings.name_of("data_dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise StartupError(
            f"{name}: cannot write in {folder} ({exc.strerror or type(exc).__name__})"
        ) from None


def _check_peers(settings: Settings) -> None:
    from pneumonode.addresses import PeerConfigError, PeerPolicy

    try:  # resolves each AE@host's host, as the listener will
        PeerPolicy.from_settings(settings.allowed_peers, settings.accept_any_peer)
    except PeerConfigError as exc:
        raise StartupError(f"{settings.name_of('allowed_peers')}: {exc}") from None


def _check_tls(settings: Settings, parts: Parts) -> None:
    from pneumonode.dicom_node.tls import TlsConfigError, TlsSettings

    listening = parts.listener and settings.dicom_tls_port is not None
    sending = parts.sender and bool(settings.tls_destinations)
    if not (listening or sending):
        return
    for setting in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        path = getattr(settings, setting)
        if path is not None and not path.is_file():
            raise StartupError(f"{settings.name_of(setting)}: {path} is not a file")
    tls = TlsSettings.from_settings(settings)
    try:
        if listening:
            tls.server_context()
        if sending:
            tls.client_context()
    except TlsConfigError as exc:
        raise StartupError(str(exc)) from None


def _check_ports(settings: Settings, ports: list[tuple[str, str, int]]) -> None:
    """Each port can be listened on (all held together, so that two settings naming the same
    port are caught too)."""
    taken: dict[tuple[str, int], str] = {}
    with ExitStack() as held:
        for port_setting, host_setting, port in ports:
            host = getattr(settings, host_setting)
            other = taken.get((host, port))
            if other is not None:
                raise StartupError(
                    f"{settings.name_of(port_setting)}: port {port} is "
                    f"{settings.name_of(other)} too; give each its own port"
                )
            held.enter_context(listen_socket(settings, port_setting, host_setting, port))
            taken[(host, port)] = port_setting


def listen_socket(
    settings: Settings, port_setting: str, host_setting: str, port: int
) -> socket.socket:
    """A socket bound to ``<host_setting>:port`` (not yet listening), or :class:`StartupError`
    naming the setting that is to blame."""
    host = str(getattr(settings, host_setting))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bound = socket.socket(family, socket.SOCK_STREAM)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as our listeners do
    try:
        bound.bind((host, port))
    except OSError as exc:
        bound.close()
        raise port_problem(settings, port_setting, host_setting, port, exc) from None
    return bound


def port_problem(
    settings: Settings, port_setting: str, host_setting: str, port: int, exc: OSError
) -> StartupError:
    """What a failed bind to ``<host_setting>:<port_setting>`` means, in one line."""
    host = getattr(settings, host_setting)
    if isinstance(exc, socket.gaierror):
        return StartupError(f"{settings.name_of(host_setting)}: unknown host {host!r}")
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"{settings.name_of(port_setting)}: port {port} on {host} is already in use by "
            "another program; stop that one or choose another port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(
            f"{settings.name_of(host_setting)}: {host} is not an address of this machine"
        )
    if exc.errno == errno.EACCES:
        return StartupError(
            f"{settings.name_of(port_setting)}: not allowed to listen on port {port}"
            + (" (below 1024 needs privileges)" if port < 1024 else "")
        )
    reason = exc.strerror or type(exc).__name__
    return StartupError(
        f"{settings.name_of(port_setting)}: cannot listen on {host}:{port} ({reason})"
    )
