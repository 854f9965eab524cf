"""The DICOM listener: Verification and Storage SCP for every storage SOP class.

Handlers are small functions bound to pynetdicom events with their dependencies passed in; the
work is done by ``InstanceReceiver`` (storage) and the audit repository (associations).
"""

from __future__ import annotations

import logging
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pydicom.config
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from pneumonode.config import Settings
from pneumonode.db.repository import audit
from pneumonode.db.session import Database
from pneumonode.dicom_node.contexts import ACCEPTED_TRANSFER_SYNTAXES, storage_sop_classes
from pneumonode.dicom_node.peers import PeerPolicy
from pneumonode.dicom_node.receive import InstanceReceiver, Status
from pneumonode.dicom_node.spool import Spool
from pneumonode.dicom_node.tls import TlsSettings
from pneumonode.identity import IMPLEMENTATION_VERSION_NAME

__all__ = ["Listener"]

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user, called AE not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, provider, local limit exceeded


def _requestor(event: evt.Event) -> tuple[str, str]:
    """Calling AE title and address (the AE title is read from the request: during
    EVT_REQUESTED pynetdicom has not copied it to the requestor yet)."""
    requestor = event.assoc.requestor
    primitive = requestor.primitive
    calling = primitive.calling_ae_title if primitive is not None else requestor.ae_title
    return str(calling).strip(), str(requestor.address)


def _audit(database: Database, kind: str, message: str, **fields: Any) -> None:
    try:
        with database.session() as session:
            audit(session, kind, message, **fields)
    except SQLAlchemyError:
        log.error("could not write audit event %s: database unavailable", kind)


def handle_requested(
    event: evt.Event, policy: PeerPolicy, ae_title: str, receiver: InstanceReceiver
) -> None:
    """Accept or reject an association request (calling AE, address, called AE, disk)."""
    calling_ae, address = _requestor(event)
    primitive = event.assoc.requestor.primitive
    called_ae = str(primitive.called_ae_title).strip() if primitive is not None else ""
    reason, rejection = None, REJECT_CALLING_AE
    if called_ae != ae_title:
        reason, rejection = f"called AE title {called_ae!r} is not ours", REJECT_CALLED_AE
    elif not policy.allows(calling_ae, address):
        reason = f"calling AE title {calling_ae!r} from {address} is not allowed"
    elif receiver.disk_is_low():
        reason, rejection = "free disk space below the watermark", REJECT_BUSY
    if reason is None:
        return
    log.warning("rejecting association: %s", reason)
    _audit(
        receiver.database,
        "association.rejected",
        f"rejected: {reason}",
        calling_ae=calling_ae[:16],
        peer_address=address,
        detail={"called_ae": called_ae[:16]},
    )
    event.assoc.acse.send_reject(*rejection)
    event.assoc.kill()  # as pynetdicom does: wait until the rejection has gone out


def _over_tls(event: evt.Event) -> bool:
    transport = getattr(getattr(event.assoc, "dul", None), "socket", None)
    return isinstance(getattr(transport, "socket", None), ssl.SSLSocket)


def handle_accepted(event: evt.Event, database: Database) -> None:
    calling_ae, address = _requestor(event)
    tls = _over_tls(event)
    log.info("association accepted from %s at %s%s", calling_ae, address, " (TLS)" if tls else "")
    _audit(
        database,
        "association.accepted",
        "association accepted" + (" over TLS" if tls else ""),
        calling_ae=calling_ae,
        peer_address=address,
        detail={"tls": tls},
    )


def handle_aborted(event: evt.Event, database: Database) -> None:
    calling_ae, address = _requestor(event)
    _discard_partial(event)
    _audit(
        database,
        "association.aborted",
        "association aborted",
        calling_ae=calling_ae,
        peer_address=address,
    )


def handle_closed(event: evt.Event) -> None:
    _discard_partial(event)


def _discard_partial(event: evt.Event) -> None:
    """Delete the temporary file of a C-STORE cut off mid-dataset (aborted or dropped link)."""
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    handle = getattr(message, "_data_set_file", None)
    if handle is None:
        return
    try:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)
        log.info("discarded the partial dataset of an interrupted transfer")
    except OSError:
        pass


def handle_echo(event: evt.Event) -> int:
    return 0x0000


def handle_store(event: evt.Event, receiver: InstanceReceiver, max_bytes: int) -> Any:
    """C-STORE: hand the chunked-received file to the receiver; never raises."""
    try:
        request = cast(C_STORE, event.request)
        calling_ae, address = _requestor(event)
        received = Path(event.dataset_path)
        size = received.stat().st_size
        if size > max_bytes:
            received.unlink(missing_ok=True)
            reason = f"object of {size} bytes is larger than the limit of {max_bytes} bytes"
            log.warning("refused a C-STORE from %s: %s", calling_ae, reason)
            _audit(
                receiver.database,
                "instance.refused",
                f"refused: {reason}",
                calling_ae=calling_ae[:16],
                peer_address=address,
                detail={"size": size, "limit": max_bytes},
            )
            # Error Comment is an LO: 64 characters at most
            return Status(0xA700, f"too large: {size} > limit {max_bytes} bytes").as_dataset()
        status = receiver.receive(
            received,
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            calling_ae=calling_ae,
            peer_address=address,
        )
    except Exception:
        log.exception("unexpected failure in the C-STORE handler")
        status = Status(0x0110, "processing failure")
    return status.as_dataset()


class TlsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved out of the accept loop.

    pynetdicom wraps each accepted socket in the thread that accepts connections, on a socket
    without a timeout: one peer that connects to the TLS port and never speaks would hold up
    every later connection. Here the handshake runs in the association's own thread, bounded
    by the network timeout. A failed handshake is reported to ``on_failure(host, reason)``.
    """

    on_failure: Callable[[str, str], None] | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock = cast(socket.socket, self.socket)
        client, address = sock.accept()
        return client, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        context = self.ssl_context
        if context is None or not isinstance(request, socket.socket):
            super().process_request_thread(request, client_address)
            return
        try:
            request.settimeout(self.ae.network_timeout)
            wrapped = context.wrap_socket(request, server_side=True)
            wrapped.settimeout(None)  # as pynetdicom expects: it waits with select()
        except (OSError, ValueError) as exc:
            host = client_address[0] if isinstance(client_address, tuple) else client_address
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning("TLS handshake with %s failed: %s", host, reason)
            self.shutdown_request(request)
            if self.on_failure is not None:
                self.on_failure(str(host), str(reason))
            return
        super().process_request_thread(wrapped, client_address)


class Listener:
    """Our Storage SCP on ``settings.dicom_host:dicom_port`` (plaintext) and, when
    ``dicom_tls_port`` is set, the same service over DICOM TLS on that port."""

    def __init__(self, settings: Settings, database: Database, receiver: InstanceReceiver) -> None:
        self.settings = settings
        self.database = database
        self.receiver = receiver
        self.spool: Spool = receiver.spool
        self.policy = PeerPolicy.from_settings(settings.allowed_peers, settings.accept_any_peer)
        self.servers: dict[str, ThreadedAssociationServer] = {}  # "plain" / "tls"
        self.tls_context: ssl.SSLContext | None = None
        if settings.dicom_tls_port is not None:  # refuse bad certificates before listening
            self.tls_context = TlsSettings.from_settings(settings).server_context()
        self._sweeper_stop = threading.Event()
        self._previous_tempdir: str | None = None

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = self.settings.max_pdu
        ae.maximum_associations = self.settings.max_associations
        ae.network_timeout = self.settings.network_timeout
        ae.acse_timeout = self.settings.network_timeout
        ae.dimse_timeout = self.settings.network_timeout
        ae.require_called_aet = True
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES[:4])
        return ae

    def start(self) -> None:
        """Start listening (returns at once; associations run in their own threads)."""
        # Received datasets stream to a temporary file in the spool's filesystem, so that
        # keeping them is a rename, and memory does not grow with the object size.
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.LOG_HANDLER_LEVEL = "none"  # its standard handlers log identifiers
        # Never validate (and so never log) element values of what we receive: they may be
        # patient data, and we keep the bytes as they came anyway.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        self._previous_tempdir = tempfile.tempdir
        tempfile.tempdir = str(self.spool.incoming)
        self.spool.sweep_incoming(older_than=0)
        ae = self._application_entity()
        handlers: list[EventHandlerType] = [
            (
                evt.EVT_REQUESTED,
                handle_requested,
                [self.policy, self.settings.ae_title, self.receiver],
            ),
            (evt.EVT_ACCEPTED, handle_accepted, [self.database]),
            (evt.EVT_ABORTED, handle_aborted, [self.database]),
            (evt.EVT_CONN_CLOSE, handle_closed),
            (evt.EVT_C_ECHO, handle_echo),
            (
                evt.EVT_C_STORE,
                handle_store,
                [self.receiver, self.settings.max_instance_mb * 1024 * 1024],
            ),
        ]
        host = self.settings.dicom_host
        if self.settings.dicom_plaintext:
            server = ae.start_server(
                (host, self.settings.dicom_port), block=False, evt_handlers=handlers
            )
            assert server is not None  # not blocking: returns the running server
            self.servers["plain"] = server
            log.info("listening as %s on %s:%d", self.settings.ae_title, host, self.port)
        if self.tls_context is not None and self.settings.dicom_tls_port is not None:
            tls_server = ae.make_server(  # a TlsAssociationServer, as server_class says
                (host, self.settings.dicom_tls_port),
                evt_handlers=handlers,
                ssl_context=self.tls_context,
                server_class=TlsAssociationServer,
            )
            cast(TlsAssociationServer, tls_server).on_failure = self._tls_refused
            ae._servers.append(tls_server)  # as start_server does: shutdown() removes it there
            threading.Thread(
                target=tls_server.serve_forever, name="dicom-tls-acceptor", daemon=True
            ).start()
            self.servers["tls"] = tls_server
            log.info("listening as %s on %s:%d (TLS)", self.settings.ae_title, host, self.tls_port)
        threading.Thread(target=self._sweep_loop, name="spool-sweeper", daemon=True).start()

    def _tls_refused(self, host: str, reason: str) -> None:
        _audit(
            self.database,
            "association.rejected",
            f"rejected: TLS handshake failed ({reason[:80]})",
            peer_address=host,
            detail={"tls": True},
        )

    def _port(self, kind: str) -> int:
        server = self.servers.get(kind)
        if server is None:
            raise RuntimeError(f"the {kind} listener is not running")
        return int(server.server_address[1])

    @property
    def port(self) -> int:
        """The plaintext port (the real one when the settings asked for port 0)."""
        return self._port("plain")

    @property
    def tls_port(self) -> int:
        return self._port("tls")

    def _sweep_loop(self) -> None:
        interval = max(5.0, self.settings.network_timeout)
        while not self._sweeper_stop.wait(interval):
            self.spool.sweep_incoming(older_than=2 * self.settings.network_timeout)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let transfers in flight finish for ``grace`` seconds, then abort."""
        if not self.servers:
            return
        servers = list(self.servers.values())
        self.servers = {}
        grace = self.settings.shutdown_grace if grace is None else grace
        for server in servers:
            server.shutdown()  # no new associations; running ones carry on
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            running = [a for server in servers for a in server.active_associations]
            for association in running:
                if not association.is_established:  # connected, but never asked for anything
                    association.abort()
            if not any(a.is_established for a in running):
                break
            time.sleep(0.05)
        for association in (a for server in servers for a in server.active_associations):
            log.warning("aborting an association still running after %.0f s", grace)
            association.abort()
        self._sweeper_stop.set()
        self.spool.sweep_incoming(older_than=0)
        tempfile.tempdir = self._previous_tempdir
        log.info("listener stopped")
