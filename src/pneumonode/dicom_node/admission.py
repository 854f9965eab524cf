"""Association admission: a connection from accept to its complete A-ASSOCIATE-RQ, and from our
A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT to its close, held without a thread of its own.

PS3.8 9.2 calls these states Sta2 (transport connection open, awaiting A-ASSOCIATE-RQ) and Sta13
(awaiting transport connection close), and bounds both with the ARTIM timer: started when the
connection opens (AE-5) or when we send the refusal, release reply or abort (AE-6, AE-8, AR-4,
AA-1), stopped by a complete A-ASSOCIATE-RQ or by the close; when it expires the connection is
closed, with no A-ABORT (AA-2; 9.1.4 b and d). Here each connection gets one deadline when it
enters either state, and bytes arriving do not move it: a peer sending one byte a second holds its
connection for the ARTIM timeout and no longer.

One thread per listening socket runs a selector over it and over every connection in those
states: TLS handshake, PDU header and PDU body are read without blocking, into buffers that grow
as the bytes arrive. Whatever the number of sockets opened:

* at most ``max_connections`` connections are held at once, and ``max_per_address`` from one peer
  address. A newcomer is always let in: when a bound is reached, the oldest connection of the
  address holding the most is closed to make room (one already closing first). A host that opens
  many sockets closes its own; a peer with one request in flight is the last to lose it. (9.1.4
  note 1 allows closing a connection for a temporary lack of resources.)
* the first PDU's header is shown to ``screen`` before any of its body is read: the upper layer
  refuses other PDU types and lengths no A-ASSOCIATE-RQ needs, so nothing is allocated for them.
* no thread is started here: a complete request goes to ``on_request`` (the upper layer), which
  runs it in a thread of its own or refuses it; connections come back through ``linger`` for
  Sta13, and their thread ends.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import queue
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PDU_HEADER", "Admission", "Refusal"]

log = logging.getLogger(__name__)

#: A PDU's header (PS3.8 9.3.1): PDU-type, reserved, PDU-length (big endian).
PDU_HEADER = struct.Struct(">BBI")
#: Most bytes read from one connection at a time (the PDU body grows by at most this much).
_READ_CHUNK = 64 * 1024
#: Connections accepted per wake-up before the others get their turn.
_ACCEPT_BATCH = 64
#: After the process runs out of file descriptors, accepting pauses this long.
_ACCEPT_PAUSE = 0.1
#: Longest wait between looks at the deadlines (seconds).
_MAX_WAIT = 1.0
#: Callbacks that may block (audits) waiting for their thread; later ones are dropped.
_MAX_NOTICES = 256
#: Each kind of admission warning is logged at most once in this many seconds (with a count of
#: the others): a flood of connections must not become a flood of log lines.
_WARNING_INTERVAL = 10.0


@dataclass(frozen=True)
class Refusal:
    """What to do with a connection whose request we will not serve: send ``reply``, then wait
    for the peer to close (Sta13, ARTIM); an empty ``reply``: close at once (PS3.8 AA-2).
    ``reason`` is logged."""

    reply: bytes
    reason: str


#: (PDU type, PDU length) of the first PDU's header -> None to read its body, or a Refusal.
Screen = Callable[[int, int], "Refusal | None"]
#: (socket, peer address, PDU type, PDU body) -> None when the upper layer took the connection
#: (the socket is then its own, in blocking mode), or a Refusal.
OnRequest = Callable[[socket.socket, tuple[str, int], int, bytes], "Refusal | None"]


class _Stage(enum.Enum):
    HANDSHAKE = "TLS handshake"
    HEADER = "PDU header"
    BODY = "PDU body"
    CLOSING = "closing"  # Sta13


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    address: tuple[str, int]
    stage: _Stage
    deadline: float
    header: bytearray = field(default_factory=bytearray)
    body: bytearray = field(default_factory=bytearray)
    kind: int = 0
    length: int = 0
    events: int = 0  # what the selector watches for; 0: not registered

    @property
    def host(self) -> str:
        return self.address[0]


class _PeerClosedError(Exception):
    pass


class _Throttled:
    """A warning logged at most once per ``_WARNING_INTERVAL``; the next says how many were not."""

    def __init__(self) -> None:
        self._next = 0.0
        self._quiet = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._quiet += 1
            return
        if self._quiet:
            message += " (and %d more like it, from any address, in the last %g s)"
            args = (*args, self._quiet, _WARNING_INTERVAL)
        log.warning(message, *args)
        self._quiet, self._next = 0, now + _WARNING_INTERVAL


class _Notices:
    """Runs callbacks that may block (database audits) on one thread of their own, so that the
    admission loop never waits for them; at most ``_MAX_NOTICES`` wait, later ones are dropped."""

    def __init__(self, name: str) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(_MAX_NOTICES)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._dropped = 0

    def start(self) -> None:
        self._thread.start()

    def post(self, notice: Callable[[], None]) -> None:
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or not self._dropped % 1000:
                log.warning("%d admission notices dropped: too many at once", self._dropped)

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def _run(self) -> None:
        while (notice := self._queue.get()) is not None:
            try:
                notice()
            except Exception:
                log.exception("an admission notice failed")


class Admission:
    """Accepts connections on ``listener`` (bound and listening) and holds each until its first
    PDU is complete (then ``on_request``) or it is closed; see the module's docstring."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        screen: Screen,
        on_request: OnRequest,
        on_tls_refused: Callable[[str, str], None],
        artim_timeout: float,
        max_connections: int,
        max_per_address: int,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "dicom",
    ) -> None:
        self._listener = listener
        self._screen = screen
        self._on_request = on_request
        self._on_tls_refused = on_tls_refused
        self.artim_timeout = artim_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self._ssl_context = ssl_context
        self._name = name
        #: every connection held, oldest first (a dict as an ordered set)
        self._held: dict[_Connection, None] = {}
        self._per_host: Counter[str] = Counter()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._handed_back: queue.SimpleQueue[tuple[socket.socket, tuple[str, int]]] = (
            queue.SimpleQueue()
        )
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._accept_paused_until = 0.0
        self._evicted, self._expired, self._refused = _Throttled(), _Throttled(), _Throttled()
        self._tls_failed = _Throttled()
        self._notices = _Notices(f"{name}-admission-notices")
        self._thread = threading.Thread(target=self._run, name=f"{name}-admission", daemon=True)

    # -- from other threads

    def start(self) -> None:
        self._listener.setblocking(False)
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, self._listener)
        self._selector.register(self._wake_read, selectors.EVENT_READ, self._wake_read)
        self._notices.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close every connection held (the listening socket too)."""
        self._stopping.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._close_everything()
        self._notices.stop()

    def linger(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Take back a connection to which we sent an A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT:
        it is closed when the peer closes it or the ARTIM timeout passes (Sta13)."""
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # the peer reads what we sent, then its end
        if self._stopping.is_set():
            _close(sock)
            return
        self._handed_back.put((sock, address))
        self._wake()
        if self._stopped.is_set():  # stopped in between: nobody will take it
            self._close_handed_back()

    def held(self) -> int:
        """Connections held now (negotiating or closing)."""
        return len(self._held)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: it is awake already; closed: stopped
            self._wake_write.send(b"\x00")

    # -- the loop

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _mask in self._selector.select(self._wait()):
                    if key.data is self._listener:
                        self._accept()
                    elif key.data is self._wake_read:
                        self._drain_wake()
                    else:
                        self._advance_or_drop(key.data)
                self._take_handed_back()
                self._expire()
        except Exception:
            log.exception("the admission loop of %s failed", self._name)
        finally:
            self._stopped.set()
            self._close_everything()

    def _wait(self) -> float:
        now = time.monotonic()
        wait = _MAX_WAIT
        if self._accept_paused_until:
            wait = min(wait, self._accept_paused_until - now)
        for connection in self._held:
            wait = min(wait, connection.deadline - now)
        return max(0.0, wait)

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_read.recv(4096):
                pass

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept a connection: %s; pausing", exc.strerror)
                    self._selector.unregister(self._listener)
                    self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE
                elif not self._stopping.is_set():
                    log.warning("accepting a connection failed: %s", exc)
                return
            try:
                self._admit(sock, (str(address[0]), int(address[1])))
            except Exception:
                log.exception("admitting the connection from %s failed; closing it", address[0])
                _close(sock)

    def _admit(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stage = _Stage.HEADER
        if self._ssl_context is not None:
            try:
                sock = self._ssl_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
            except (OSError, ValueError) as exc:
                log.info("connection from %s lost before its TLS handshake: %s", address[0], exc)
                _close(sock)
                return
            stage = _Stage.HANDSHAKE
        connection = _Connection(sock, address, stage, time.monotonic() + self.artim_timeout)
        self._hold(connection)
        self._watch(connection, selectors.EVENT_READ)

    def _hold(self, connection: _Connection) -> None:
        """Hold ``connection``, first closing others if a bound says so."""
        host = connection.host
        while self._held and (
            len(self._held) >= self.max_connections or self._per_host[host] >= self.max_per_address
        ):
            if self._per_host[host] >= self.max_per_address:
                crowded = host
            else:
                crowded = max(self._per_host, key=lambda h: self._per_host[h])
            mine = [held for held in self._held if held.host == crowded]
            victim = next((c for c in mine if c.stage is _Stage.CLOSING), mine[0])
            if victim.stage is not _Stage.CLOSING:
                self._evicted.warning(
                    "closing a connection from %s that has not sent its A-ASSOCIATE-RQ (%s) to "
                    "make room: %d connections negotiating, %d of them from that address",
                    crowded,
                    victim.stage.value,
                    len(self._held),
                    self._per_host[crowded],
                )
            self._release(victim)
            _close(victim.sock)
        self._held[connection] = None
        self._per_host[host] += 1

    def _release(self, connection: _Connection) -> None:
        """Stop holding ``connection`` (the caller closes it or hands it on)."""
        if connection.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(connection.sock)
            connection.events = 0
        if connection in self._held:
            del self._held[connection]
            self._per_host[connection.host] -= 1
            if not self._per_host[connection.host]:
                del self._per_host[connection.host]

    def _watch(self, connection: _Connection, events: int) -> None:
        if connection.events == events:
            return
        if connection.events:
            self._selector.modify(connection.sock, events, connection)
        else:
            self._selector.register(connection.sock, events, connection)
        connection.events = events

    def _advance_or_drop(self, connection: _Connection) -> None:
        """``_advance``; a failure of ours closes this connection, never the loop."""
        try:
            self._advance(connection)
        except Exception:
            log.exception("admitting the connection from %s failed; closing it", connection.host)
            self._release(connection)
            _close(connection.sock)

    def _advance(self, connection: _Connection) -> None:
        """Do what ``connection``'s readiness allows: handshake, read, or (closing) discard."""
        try:
            if connection.stage is _Stage.CLOSING:
                if not connection.sock.recv(4096):
                    raise _PeerClosedError()
                return
            if connection.stage is _Stage.HANDSHAKE:
                self._handshake(connection)
            if connection.stage is _Stage.HEADER and not self._read_header(connection):
                return
            if connection.stage is _Stage.BODY and self._read_body(connection):
                self._release(connection)
                self._complete(connection)
        except ssl.SSLWantReadError:
            self._watch(connection, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._watch(connection, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            self._watch(connection, selectors.EVENT_READ)
        except (_PeerClosedError, OSError) as exc:
            if connection.stage is not _Stage.CLOSING:
                log.debug(
                    "connection from %s closed during its %s: %s",
                    connection.host,
                    connection.stage.value,
                    exc or "closed by the peer",
                )
            self._release(connection)
            _close(connection.sock)

    def _handshake(self, connection: _Connection) -> None:
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except (OSError, ValueError) as exc:
            reason = str(getattr(exc, "reason", None) or type(exc).__name__)
            self._tls_failed.warning("TLS handshake with %s failed: %s", connection.host, reason)
            host = connection.host
            self._notices.post(lambda: self._on_tls_refused(host, reason))
            raise _PeerClosedError() from exc
        connection.stage = _Stage.HEADER

    def _read_header(self, connection: _Connection) -> bool:
        """Read the rest of the first PDU's header; True once it is read and screened."""
        while len(connection.header) < PDU_HEADER.size:
            data = connection.sock.recv(PDU_HEADER.size - len(connection.header))
            if not data:
                raise _PeerClosedError()
            connection.header += data
        connection.kind, _, connection.length = PDU_HEADER.unpack(connection.header)
        refusal = self._screen(connection.kind, connection.length)
        if refusal is not None:
            self._refuse(connection, refusal)
            return False
        connection.stage = _Stage.BODY
        return True

    def _read_body(self, connection: _Connection) -> bool:
        """Read what has arrived of the first PDU's body; True once it is complete."""
        while len(connection.body) < connection.length:
            wanted = min(connection.length - len(connection.body), _READ_CHUNK)
            data = connection.sock.recv(wanted)
            if not data:
                raise _PeerClosedError()
            connection.body += data
        return True

    def _complete(self, connection: _Connection) -> None:
        """The first PDU is complete: the upper layer takes the connection, or refuses it."""
        sock = connection.sock
        try:
            sock.setblocking(True)
            refusal = self._on_request(
                sock, connection.address, connection.kind, bytes(connection.body)
            )
        except Exception:
            log.exception("handing over the connection from %s failed", connection.host)
            _close(sock)
            return
        if refusal is not None:
            sock.setblocking(False)
            connection.body = bytearray()
            self._hold(connection)
            self._refuse(connection, refusal)

    def _refuse(self, connection: _Connection, refusal: Refusal) -> None:
        """Send the refusal's reply and wait for the peer to close (Sta13); with no reply, close
        at once (PS3.8 AA-2)."""
        self._refused.warning(
            "refusing the connection from %s: %s", connection.host, refusal.reason
        )
        if not refusal.reply:
            self._release(connection)
            _close(connection.sock)
            return
        connection.header = connection.body = bytearray()
        with contextlib.suppress(OSError):  # best effort: the socket's buffer is empty
            connection.sock.send(refusal.reply)
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_WR)
        connection.stage = _Stage.CLOSING
        connection.deadline = time.monotonic() + self.artim_timeout
        self._held.pop(connection)  # now the newest: evicted before those still negotiating
        self._held[connection] = None
        self._watch(connection, selectors.EVENT_READ)

    def _take_handed_back(self) -> None:
        while True:
            try:
                sock, address = self._handed_back.get_nowait()
            except queue.Empty:
                return
            try:
                sock.setblocking(False)
                connection = _Connection(
                    sock, address, _Stage.CLOSING, time.monotonic() + self.artim_timeout
                )
                self._hold(connection)
                self._watch(connection, selectors.EVENT_READ)
            except (OSError, ValueError):  # closed meanwhile
                _close(sock)

    def _expire(self) -> None:
        now = time.monotonic()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ, self._listener)
        for connection in [c for c in self._held if c.deadline <= now]:
            if connection.stage is _Stage.CLOSING:
                log.debug("%s did not close the connection: closing it", connection.host)
            else:
                self._expired.warning(
                    "no complete A-ASSOCIATE-RQ from %s within %g s (ARTIM; %s): closing",
                    connection.host,
                    self.artim_timeout,
                    connection.stage.value,
                )
            self._release(connection)
            _close(connection.sock)

    # -- the end

    def _close_handed_back(self) -> None:
        while True:
            try:
                sock, _address = self._handed_back.get_nowait()
            except queue.Empty:
                return
            _close(sock)

    def _close_everything(self) -> None:
        for connection in list(self._held):
            self._release(connection)
            _close(connection.sock)
        self._close_handed_back()
        for sock in (self._listener, self._wake_read, self._wake_write):
            _close(sock)
        with contextlib.suppress(Exception):
            self._selector.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
