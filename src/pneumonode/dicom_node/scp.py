"""The DICOM listener: Verification and Storage SCP for every storage SOP class.

The protocol runs in ``upper.py`` (our upper layer: connections are admitted without threads by
``admission.py`` under the ARTIM timer, then one thread per association, datasets streamed into
the spool's ``incoming`` folder); this module decides who may associate, audits, and hands each
received file to ``InstanceReceiver``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pydicom.config

from pneumonode.addresses import PeerPolicy
from pneumonode.config import Settings
from pneumonode.db.audit import audit_now
from pneumonode.db.session import Database
from pneumonode.dicom_node import dimse
from pneumonode.dicom_node.contexts import ACCEPTED_TRANSFER_SYNTAXES, storage_sop_classes
from pneumonode.dicom_node.receive import InstanceReceiver, Status
from pneumonode.dicom_node.spool import Spool
from pneumonode.dicom_node.tls import TlsSettings
from pneumonode.dicom_node.upper import (
    VERIFICATION,
    Acceptor,
    Answer,
    AssociationInfo,
    RejectionError,
    StoreRequest,
)

__all__ = ["Listener"]

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user, called AE not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, provider, local limit exceeded


def supported_contexts() -> dict[str, frozenset[str]]:
    """Abstract syntax -> the transfer syntaxes we accept for it."""
    storage = frozenset(str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES)
    contexts = {str(sop_class): storage for sop_class in storage_sop_classes()}
    contexts[VERIFICATION] = frozenset(str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES[:4])
    return contexts


class ListenerServices:
    """What the upper layer asks of us: admission, audit, and storing received files."""

    def __init__(self, settings: Settings, receiver: InstanceReceiver) -> None:
        self.settings = settings
        self.receiver = receiver
        self.policy = PeerPolicy.from_settings(settings.allowed_peers, settings.accept_any_peer)
        self.max_bytes = settings.max_instance_mb * 1024 * 1024

    @property
    def database(self) -> Database:
        return self.receiver.database  # tests swap the receiver's database

    def _audit_peer(
        self, info: AssociationInfo, kind: str, message: str, detail: dict[str, Any] | None = None
    ) -> None:
        """An audit event naming the peer (calling AE title and address)."""
        audit_now(
            self.database,
            kind,
            message,
            calling_ae=info.calling_ae[:16],
            peer_address=info.address,
            detail=detail,
        )

    def check(self, info: AssociationInfo, active: int) -> None:
        """Accept or reject an association request (called AE, calling AE, address, load, disk)."""
        reason, rejection = None, REJECT_CALLING_AE
        if info.called_ae != self.settings.ae_title:
            reason, rejection = f"called AE title {info.called_ae!r} is not ours", REJECT_CALLED_AE
        elif not self.policy.allows(info.calling_ae, info.address):
            reason = f"calling AE title {info.calling_ae!r} from {info.address} is not allowed"
        elif active > self.settings.max_associations:  # negotiated ones, this one included
            limit = self.settings.max_associations
            reason, rejection = f"more than {limit} associations", REJECT_BUSY
        elif self.receiver.disk_is_low():
            reason, rejection = "free disk space below the watermark", REJECT_BUSY
        if reason is not None:
            raise RejectionError(reason, *rejection)

    def rejected(self, info: AssociationInfo, rejection: RejectionError) -> None:
        log.warning("rejecting association: %s", rejection.reason)
        self._audit_peer(
            info,
            "association.rejected",
            f"rejected: {rejection.reason}",
            {"called_ae": info.called_ae[:16]},
        )

    def accepted(self, info: AssociationInfo) -> None:
        log.info(
            "association accepted from %s at %s%s",
            info.calling_ae,
            info.address,
            " (TLS)" if info.tls else "",
        )
        self._audit_peer(
            info,
            "association.accepted",
            "association accepted" + (" over TLS" if info.tls else ""),
            {"tls": info.tls},
        )

    def aborted(self, info: AssociationInfo, reason: str = "") -> None:
        """The association was aborted (by the peer, by us, or dropped); ``reason`` when we
        aborted it for a reason of its own (tags and UIDs only, never a value)."""
        message = f"association aborted: {reason}" if reason else "association aborted"
        self._audit_peer(info, "association.aborted", message)

    def temporary_path(self) -> Path:
        return self.receiver.spool.incoming / f"{uuid.uuid4().hex}.part"

    def store(self, info: AssociationInfo, request: StoreRequest) -> Answer:
        """C-STORE: hand the received file to the receiver; never raises."""
        try:
            status = self.receiver.receive(
                request.path,
                sop_class_uid=request.sop_class_uid,
                sop_uid=request.sop_instance_uid,
                transfer_syntax_uid=request.transfer_syntax_uid,
                calling_ae=info.calling_ae,
                peer_address=info.address,
            )
        except Exception:
            log.exception("unexpected failure in the C-STORE handler")
            status = Status(dimse.Status.PROCESSING_FAILURE, "processing failure")
        finally:
            request.path.unlink(missing_ok=True)  # refused: nothing stays in incoming
        return Answer(status.code, status.comment, status.then)

    def too_large(self, info: AssociationInfo, request: StoreRequest) -> Answer:
        """The dataset passed the size limit: it was not kept; answer out of resources."""
        size, limit = request.size, self.max_bytes
        reason = f"object of {size} bytes is larger than the limit of {limit} bytes"
        log.warning("refused a C-STORE from %s: %s", info.calling_ae, reason)
        self._audit_peer(
            info, "instance.refused", f"refused: {reason}", {"size": size, "limit": limit}
        )
        # Error Comment is an LO: 64 characters at most
        return Answer(dimse.Status.OUT_OF_RESOURCES, f"too large: {size} > limit {limit} bytes")

    def tls_refused(self, host: str, reason: str) -> None:
        audit_now(
            self.database,
            "association.rejected",
            f"rejected: TLS handshake failed ({reason[:80]})",
            peer_address=host,
            detail={"tls": True},
        )


class Listener:
    """Our Storage SCP on ``settings.dicom_host:dicom_port`` (plaintext) and, when
    ``dicom_tls_port`` is set, the same service over DICOM TLS on that port."""

    def __init__(self, settings: Settings, database: Database, receiver: InstanceReceiver) -> None:
        self.settings = settings
        self.database = database
        self.receiver = receiver
        self.spool: Spool = receiver.spool
        self.services = ListenerServices(settings, receiver)
        self.servers: dict[str, Acceptor] = {}  # "plain" / "tls"
        self.tls_context = None
        if settings.dicom_tls_port is not None:  # refuse bad certificates before listening
            self.tls_context = TlsSettings.from_settings(settings).server_context()
        self._sweeper_stop = threading.Event()

    def _acceptor(self, port: int, tls: bool) -> Acceptor:
        return Acceptor(
            (self.settings.dicom_host, port),
            self.services,
            supported_contexts(),
            max_pdu=self.settings.max_pdu,
            network_timeout=self.settings.network_timeout,
            max_object_bytes=self.services.max_bytes,
            max_associations=self.settings.max_associations,
            artim_timeout=self.settings.artim_timeout,
            max_negotiating=self.settings.max_negotiating,
            max_negotiating_per_address=self.settings.max_negotiating_per_address,
            ssl_context=self.tls_context if tls else None,
            name="dicom-tls" if tls else "dicom",
        )

    def start(self) -> None:
        """Start listening (returns at once; associations run in their own threads)."""
        # Never validate (and so never log) element values of what we receive: they may be
        # patient data, and we keep the bytes as they came anyway.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        self.receiver.sweep_incoming(older_than=0)
        self.receiver.warm_up()
        host = self.settings.dicom_host
        if self.settings.dicom_plaintext:
            self.servers["plain"] = self._acceptor(self.settings.dicom_port, tls=False)
        if self.tls_context is not None and self.settings.dicom_tls_port is not None:
            self.servers["tls"] = self._acceptor(self.settings.dicom_tls_port, tls=True)
        for kind, server in self.servers.items():
            server.start()
            log.info(
                "listening as %s on %s:%d%s",
                self.settings.ae_title,
                host,
                server.address[1],
                " (TLS)" if kind == "tls" else "",
            )
        threading.Thread(target=self._sweep_loop, name="spool-sweeper", daemon=True).start()

    def _port(self, kind: str) -> int:
        server = self.servers.get(kind)
        if server is None:
            raise RuntimeError(f"the {kind} listener is not running")
        return int(server.address[1])

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
            self.receiver.sweep_incoming(older_than=2 * self.settings.network_timeout)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let transfers in flight finish for ``grace`` seconds, then abort."""
        if not self.servers:
            return
        servers = list(self.servers.values())
        self.servers = {}
        grace = self.settings.shutdown_grace if grace is None else grace
        for server in servers:
            server.stop_accepting()  # no new associations; running ones carry on
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            running = [a for server in servers for a in server.associations]
            for association in running:
                if not association.established:  # connected, but never asked for anything
                    association.abort()
            if not any(a.established for a in running):
                break
            time.sleep(0.05)
        for association in (a for server in servers for a in server.associations):
            if association.established:
                log.warning("aborting an association still running after %.0f s", grace)
            association.abort()
        deadline = time.monotonic() + 5  # let the aborted ones discard their partial files
        while any(server.associations for server in servers) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._sweeper_stop.set()
        self.receiver.sweep_incoming(older_than=0)
        log.info("listener stopped")
