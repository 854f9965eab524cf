"""Association admission against hostile peers (issue 22, defects 1 and 2): slow-loris, idle
sockets, requests announced but never sent, one host opening many connections. Each test asserts
what a PACS relies on: its own association is served throughout, the listener's threads and
memory stay bounded, and every hostile connection is closed by the ARTIM deadline (PS3.8 9.1.4:
"no A-ASSOCIATE-RQ is received before the ARTIM Timer expires").

The listener runs in this process, so its threads and memory are this process's: they are
measured with ``threading.active_count()`` and the resident set size. Hostile sockets come from
other loopback addresses (127.0.0.2...) where a test needs peers apart from the PACS.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select as sql_select

from peers_harness import free_port
from pneumonode.db.models import AuditEvent
from pneumonode.dicom_node.upper import (
    ANSWERING_THREADS,
    MAX_ASSOCIATE_RQ_LENGTH,
    AssociationInfo,
)
from tls_certs import Certificates, make_certificates

if TYPE_CHECKING:
    from conftest import RunningNode

pytestmark = pytest.mark.integration

PACS = "127.0.0.1"  # the legitimate peer's address
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
A_ABORT_INVALID_PARAMETER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"  # provider, reason 6


def _hostile(index: int) -> str:
    """A loopback address other than the PACS's: 127.0.0.2 onwards."""
    return f"127.0.0.{2 + index}"


def _connect(port: int, source: str = PACS) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _closed(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether the listener has closed its end (what it sent before is read and dropped)."""
    deadline = time.monotonic() + wait
    while True:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            if not sock.recv(65536):
                return True
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False


def _recv_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _echo(port: int, tls: ssl.SSLContext | None = None) -> int | None:
    """A C-ECHO from the PACS's address: its status, or None when no association was made."""
    ae = AE(ae_title="ECHOSCU")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification, [ImplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="PNEUMONODE",
        bind_address=(PACS, 0),
        tls_args=(tls, "127.0.0.1") if tls is not None else None,
    )
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode() + b"\x00" * (len(uid) % 2)


def _associate_rq(
    contexts: list[tuple[int, str, list[str]]] | None = None, user: bytes = b""
) -> bytes:
    """An A-ASSOCIATE-RQ from ECHOSCU to PNEUMONODE (Verification, by default)."""
    items = _item(0x10, _uid(APPLICATION_CONTEXT))
    for context_id, abstract, syntaxes in contexts or [(1, Verification, [ImplicitVRLittleEndian])]:
        proposed = _item(0x30, _uid(abstract)) + b"".join(_item(0x40, _uid(s)) for s in syntaxes)
        items += _item(0x20, bytes([context_id, 0, 0, 0]) + proposed)
    items += _item(0x50, _item(0x51, struct.pack(">I", 16_384)) + user)
    body = struct.pack(">HH", 1, 0) + b"PNEUMONODE".ljust(16) + b"ECHOSCU".ljust(16)
    body += b"\x00" * 32 + items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    sock.settimeout(10)
    header = sock.recv(6, socket.MSG_WAITALL)
    assert len(header) == 6, "the connection closed"
    body = sock.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL)
    return header[0], body


def _context_results(accept: bytes) -> dict[int, int]:
    """Presentation context ID -> result, from an A-ASSOCIATE-AC's body."""
    results, offset = {}, 68
    while offset < len(accept):
        kind, length = accept[offset], struct.unpack_from(">H", accept, offset + 2)[0]
        if kind == 0x21:
            results[accept[offset + 4]] = accept[offset + 6]
        offset += 4 + length
    return results


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --------------------------------------------------------------------------- slow and idle


def test_slow_loris_is_closed_at_the_artim_deadline_while_a_pacs_is_served(
    node_factory: Callable[..., RunningNode],
) -> None:
    """20 sockets sending a valid A-ASSOCIATE-RQ one byte a second: each is closed when the
    ARTIM timeout has passed since it connected (the bytes do not restart it), and a PACS's
    C-ECHO succeeds every time meanwhile. Before issue 22 the network timeout restarted on every
    byte, the 20 counted against the 16 associations, and the C-ECHO was rejected."""
    artim = 2.0
    node = node_factory(artim_timeout=artim, max_negotiating_per_address=32)
    request = _associate_rq()
    opened = {_connect(node.port, _hostile(0)): time.monotonic() for _ in range(20)}
    sent = dict.fromkeys(opened, 0)
    lasted: dict[socket.socket, float] = {}
    echoes: list[int | None] = []
    next_echo, give_up = 0.0, time.monotonic() + artim + 5
    try:
        while len(lasted) < len(opened) and time.monotonic() < give_up:
            for sock, since in opened.items():
                if sock in lasted:
                    continue
                if _closed(sock):
                    lasted[sock] = time.monotonic() - since
                    continue
                while sent[sock] <= time.monotonic() - since:  # one byte a second, from 0 s
                    with contextlib.suppress(OSError):  # closed meanwhile: seen next turn
                        sock.send(request[sent[sock] : sent[sock] + 1])
                    sent[sock] += 1
            if time.monotonic() >= next_echo and len(lasted) < len(opened):
                echoes.append(_echo(node.port))
                next_echo = time.monotonic() + 0.5
            time.sleep(0.05)
    finally:
        for sock in opened:
            sock.close()
    assert len(lasted) == 20, "slow-loris sockets still open after ARTIM + 5 s"
    assert all(artim - 0.1 < seconds < artim + 1.5 for seconds in lasted.values()), lasted
    assert max(sent.values()) >= 2  # they did keep sending
    assert len(echoes) >= 3 and echoes == [0x0000] * len(echoes)


def test_idle_sockets_hold_no_thread_and_one_address_holds_at_most_its_share(
    node_factory: Callable[..., RunningNode],
) -> None:
    """40 sockets that never send, from the PACS's own address: no thread each; that address
    keeps its 8 newest (PNEUMONODE_MAX_NEGOTIATING_PER_ADDRESS), the older ones are closed at
    once; the PACS's association (a newcomer from the same address) is served; the rest are
    closed at the ARTIM deadline without an A-ABORT (PS3.8 AA-2)."""
    artim = 1.5
    node = node_factory(artim_timeout=artim)
    threads = threading.active_count()
    idle = [_connect(node.port) for _ in range(40)]
    try:
        assert _wait_for(lambda: sum(not _closed(sock) for sock in idle) <= 8, 2.0)
        assert threading.active_count() - threads <= 1
        still_open = [sock for sock in idle if not _closed(sock)]
        assert still_open == idle[-8:]  # the oldest made room for the newer
        assert node.listener.servers["plain"].admission.held() == 8
        assert _echo(node.port) == 0x0000
        started = time.monotonic()
        assert all(_closed(sock, wait=artim + 2) for sock in still_open)
        assert time.monotonic() - started < artim + 1.5
    finally:
        for sock in idle:
            sock.close()
    with node.database.session() as session:  # no association was ever made with them
        assert session.scalars(
            sql_select(AuditEvent.kind).where(AuditEvent.kind == "association.accepted")
        ).all() == ["association.accepted"]


def test_the_most_crowded_address_makes_room_for_a_newcomer(
    node_factory: Callable[..., RunningNode],
) -> None:
    """All negotiating places taken by two hosts: the one that opens more closes its own oldest,
    never the other's; a PACS from a third address still gets in."""
    node = node_factory(artim_timeout=10.0, max_negotiating=8, max_negotiating_per_address=4)
    admission = node.listener.servers["plain"].admission
    first = [_connect(node.port, _hostile(0)) for _ in range(4)]
    other = [_connect(node.port, _hostile(1)) for _ in range(4)]
    try:
        assert _wait_for(lambda: admission.held() == 8, 2.0)
        second = [_connect(node.port, _hostile(0)) for _ in range(4)]
        assert all(_closed(sock, wait=2.0) for sock in first)
        assert not any(_closed(sock, wait=0.2) for sock in other + second)
        assert _echo(node.port) == 0x0000  # the pool was full: someone else's oldest made room
        assert _wait_for(lambda: admission.held() == 7, 2.0)  # the PACS's has closed
        closed = [sock for sock in other + second if _closed(sock, wait=0.2)]
        assert closed in ([other[0]], [second[0]])
    finally:
        for sock in first + other + second:
            sock.close()


# --------------------------------------------------------------------------- large requests


def test_requests_announced_at_4_mib_but_never_sent_cost_nothing(
    node_factory: Callable[..., RunningNode],
) -> None:
    """200 sockets each send only a PDU header announcing a 4 MiB A-ASSOCIATE-RQ. Each is
    refused from its header, before any body is read: A-ABORT (service provider, invalid PDU
    parameter value), then our end closes. The listener gains no thread and no memory for them
    (before issue 22: 200 threads and 800 MB), and a PACS is served while they are all open."""
    node = node_factory(artim_timeout=10.0, max_negotiating=200)  # every one held: 25 x 8
    header = struct.pack(">BBI", 0x01, 0, 4 * 1024 * 1024)
    threads, rss = threading.active_count(), _rss_bytes()
    sockets = []
    try:
        for index in range(200):
            sock = _connect(node.port, _hostile(index % 25))
            sock.sendall(header)
            sockets.append(sock)
        time.sleep(0.3)
        assert threading.active_count() - threads <= 1
        assert _rss_bytes() - rss < 16 * 1024 * 1024
        replies = [_recv_until_closed(sock) for sock in sockets]
        assert replies == [A_ABORT_INVALID_PARAMETER] * 200
        assert node.listener.servers["plain"].admission.held() == 200  # each until it closes
        assert _echo(node.port) == 0x0000
    finally:
        for sock in sockets:
            sock.close()
    assert _wait_for(lambda: node.listener.servers["plain"].admission.held() == 0, 5.0)


def test_requests_within_the_cap_left_unfinished_hold_bounded_memory(
    node_factory: Callable[..., RunningNode],
) -> None:
    """200 sockets from 25 addresses each announce an A-ASSOCIATE-RQ of the largest length we
    read and send 1 KiB of it. At most PNEUMONODE_MAX_NEGOTIATING are held, each with what it
    sent (buffers grow as bytes arrive: nothing is allocated for the announced length); no
    thread is started for any; a PACS is served; all are closed by the ARTIM deadline."""
    artim = 2.0
    node = node_factory(artim_timeout=artim, max_negotiating=32)
    start = struct.pack(">BBI", 0x01, 0, MAX_ASSOCIATE_RQ_LENGTH) + b"\x00\x01" + b"\x00" * 1022
    threads, rss = threading.active_count(), _rss_bytes()
    sockets = []
    try:
        for index in range(200):
            sock = _connect(node.port, _hostile(index % 25))
            sock.sendall(start)
            sockets.append(sock)
        time.sleep(0.3)
        assert threading.active_count() - threads <= 1
        assert _rss_bytes() - rss < 16 * 1024 * 1024
        admission = node.listener.servers["plain"].admission
        assert admission.held() == 32
        assert _echo(node.port) == 0x0000
        assert all(_closed(sock, wait=artim + 2) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    assert admission.held() == 0


def test_a_request_one_byte_over_the_cap_is_refused_from_its_header(
    node_factory: Callable[..., RunningNode],
) -> None:
    node = node_factory()
    with _connect(node.port) as sock:
        sock.sendall(struct.pack(">BBI", 0x01, 0, MAX_ASSOCIATE_RQ_LENGTH + 1))
        assert _recv_until_closed(sock) == A_ABORT_INVALID_PARAMETER


def test_an_a_abort_instead_of_a_request_closes_the_connection_at_once(
    node_factory: Callable[..., RunningNode],
) -> None:
    """PS3.8 Sta2 + A-ABORT PDU received: AA-2, the connection is closed, nothing is sent."""
    node = node_factory(artim_timeout=30.0)
    with _connect(node.port) as sock:
        sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # its 4 bytes of body were not read
            assert sock.recv(4096) == b""
    assert _wait_for(lambda: node.listener.servers["plain"].admission.held() == 0, 1.0)


def test_the_largest_plausible_request_is_accepted(
    node_factory: Callable[..., RunningNode],
) -> None:
    """128 presentation contexts (every odd ID) of 64-character UIDs with ten transfer
    syntaxes each, and a user identity item carrying a 60 KB SAML assertion: about 150 KiB,
    inside the cap. The contexts we do not know are refused; Verification is accepted."""
    node = node_factory()
    uid = "1.2.826.0.1.3680043.10.1234." + "1" * 36  # 64 characters
    assert len(uid) == 64
    syntaxes = [uid[:-1] + str(n) for n in range(9)] + [ImplicitVRLittleEndian]
    contexts = [(1, Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    contexts += [(context_id, uid, syntaxes) for context_id in range(3, 256, 2)]
    assertion = b"x" * 60_000  # PS3.7 D.3.3.7: type 4 (SAML), primary field, no secondary
    identity = bytes([4, 0]) + struct.pack(">H", len(assertion)) + assertion + b"\x00\x00"
    request = _associate_rq(contexts, _item(0x58, identity))
    assert 140 * 1024 < len(request) <= MAX_ASSOCIATE_RQ_LENGTH
    with _connect(node.port) as sock:
        sock.sendall(request)
        kind, body = _read_pdu(sock)
        assert kind == 0x02  # A-ASSOCIATE-AC
        results = _context_results(body)
        assert len(results) == 128 and results[1] == 0x00  # Verification accepted
        assert set(results.values()) == {0x00, 0x03}  # the others: abstract syntax refused
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert _read_pdu(sock)[0] == 0x06


def test_an_announced_release_request_of_4_mib_is_aborted_unread(
    node_factory: Callable[..., RunningNode],
) -> None:
    """Inside an association, a PDU other than P-DATA longer than its fixed 4 bytes is refused
    from its header (nothing is allocated for it)."""
    node = node_factory()
    with _connect(node.port) as sock:
        sock.sendall(_associate_rq())
        assert _read_pdu(sock)[0] == 0x02
        sock.sendall(struct.pack(">BBI", 0x05, 0, 4 * 1024 * 1024))
        assert _recv_until_closed(sock) == A_ABORT_INVALID_PARAMETER


# --------------------------------------------------------------------------- Sta13


@pytest.mark.parametrize("ending", ["released", "rejected"])
def test_a_peer_that_never_closes_holds_no_thread_and_is_closed_at_the_artim_deadline(
    node_factory: Callable[..., RunningNode], ending: str
) -> None:
    """After our A-RELEASE-RP or A-ASSOCIATE-RJ the peer should close (PS3.8 AR-4, AE-8: ARTIM
    started, Sta13). One that does not is held without a thread and closed at the deadline."""
    artim = 1.0
    node = node_factory(artim_timeout=artim)
    server = node.listener.servers["plain"]
    with _connect(node.port) as sock:
        if ending == "released":
            sock.sendall(_associate_rq())
            assert _read_pdu(sock)[0] == 0x02
            sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
            expected = 0x06  # A-RELEASE-RP
        else:
            request = bytearray(_associate_rq())
            request[10:26] = b"SOMEONE ELSE".ljust(16)  # the called AE title
            sock.sendall(request)
            expected = 0x03  # A-ASSOCIATE-RJ
        assert _read_pdu(sock)[0] == expected
        assert _recv_until_closed(sock) == b""  # our end is closed at once: the peer may go
        assert _wait_for(lambda: not server.associations, 1.0)  # its thread has ended
        assert _wait_for(lambda: server.admission.held() == 1, 0.5)  # handed back, held
        started = time.monotonic()
        assert _wait_for(lambda: server.admission.held() == 0, artim + 1.5)
        assert time.monotonic() - started > artim - 0.5


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _client_context(certs: Certificates, identity: str = "client") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    pair = getattr(certs, identity)
    context.load_cert_chain(str(pair.cert), str(pair.key))
    return context


def test_tls_handshakes_are_admitted_without_a_thread_and_bounded_by_artim(
    node_factory: Callable[..., RunningNode], certs: Certificates
) -> None:
    """On the TLS port: sockets that never start their handshake, and one that sends half a
    ClientHello a byte at a time, are closed at the ARTIM deadline (the handshake counts in
    it); a stranger's certificate is refused and audited; a PACS with a good certificate is
    served throughout."""
    artim = 1.5
    node = node_factory(
        artim_timeout=artim,
        dicom_tls_port=free_port(),
        tls_cert_file=certs.server.cert,
        tls_key_file=certs.server.key,
        tls_ca_file=certs.ca,
    )
    port = node.listener.tls_port
    threads = threading.active_count()
    silent = [_connect(port, _hostile(0)) for _ in range(3)]
    hello = _connect(port, _hostile(1))
    hello.sendall(b"\x16\x03\x01\x02\x00\x01")  # a TLS record header and the first byte
    try:
        assert threading.active_count() - threads <= 1
        assert _echo(port, tls=_client_context(certs)) == 0x0000
        assert _echo(port, tls=_client_context(certs, "stranger")) is None
        started = time.monotonic()
        assert all(_closed(sock, wait=artim + 2) for sock in [*silent, hello])
        assert time.monotonic() - started < artim + 1.5
        assert _echo(port, tls=_client_context(certs)) == 0x0000
    finally:
        for sock in [*silent, hello]:
            sock.close()

    def refused() -> list[AuditEvent]:
        with node.database.session() as session:
            return list(
                session.scalars(
                    sql_select(AuditEvent).where(AuditEvent.kind == "association.rejected")
                )
            )

    assert _wait_for(lambda: len(refused()) == 1, 5.0)
    [event] = refused()
    assert event.message.startswith("rejected: TLS handshake failed")
    assert event.peer_address == PACS


def test_complete_requests_beyond_the_answering_threads_are_rejected_as_busy(
    node_factory: Callable[..., RunningNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of complete A-ASSOCIATE-RQs while the checks are slow (a database that stalls):
    threads are started for max_associations + ANSWERING_THREADS of them; the next is rejected
    at once, transient, local limit exceeded (PS3.8 9.3.4), without a thread; once the checks
    go on, those waiting are answered."""
    node = node_factory(max_associations=1, artim_timeout=10.0)
    services = node.listener.services
    go_on = threading.Event()
    check = services.check

    def stalled_check(info: AssociationInfo, active: int) -> None:
        go_on.wait(10)
        check(info, active)

    monkeypatch.setattr(services, "check", stalled_check)
    server = node.listener.servers["plain"]
    threads = threading.active_count()
    waiting = []
    try:
        for index in range(1 + ANSWERING_THREADS):
            sock = _connect(node.port, _hostile(index))
            sock.sendall(_associate_rq())
            waiting.append(sock)
        assert _wait_for(lambda: len(server.associations) == 1 + ANSWERING_THREADS, 2.0)
        with _connect(node.port, _hostile(20)) as refused:
            refused.sendall(_associate_rq())
            kind, body = _read_pdu(refused)
            assert (kind, body[1:4]) == (0x03, b"\x02\x03\x02")  # A-ASSOCIATE-RJ, transient
        assert threading.active_count() - threads == 1 + ANSWERING_THREADS
        go_on.set()
        answers = sorted(_read_pdu(sock)[0] for sock in waiting)
        assert answers == [0x02] + [0x03] * ANSWERING_THREADS  # one accepted, the rest busy
    finally:
        go_on.set()
        for sock in waiting:
            sock.close()
