"""Real alert receivers on loopback for tests: an MLLP listener (hl7apy's MLLPServer, which
parses and validates what arrives and answers with an ACK built by hl7apy) and an HTTP server
that records each webhook. Both run in threads of the test process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

SB, EB, CR = "\x0b", "\x1c", "\r"


@dataclass
class MllpListener:
    """What the listener received (parsed, validated v2.5.1 messages) and how it answers:
    ``ack_codes`` in turn (AA, AE or AR), then ``ack_code``; ``silent`` never answers (until the
    test ends)."""

    host: str = "127.0.0.1"
    port: int = 0
    ack_code: str = "AA"
    ack_codes: list[str] = field(default_factory=list)
    silent: bool = False
    messages: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def destination(self) -> str:
        return f"{self.host}:{self.port}"

    def received(self) -> int:
        return len(self.messages) + len(self.errors)


def _ack(listener: MllpListener, incoming: Message) -> str:
    code = listener.ack_codes.pop(0) if listener.ack_codes else listener.ack_code
    ack = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    ack.msh.msh_3 = "TEST_RIS"
    ack.msh.msh_5 = incoming.msh.msh_3.to_er7()
    ack.msh.msh_7 = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = f"ACK{len(listener.messages)}"
    ack.msh.msh_11 = "P"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = incoming.msh.msh_10.to_er7()
    if code != "AA":
        ack.msa.msa_3 = "unknown patient (test)"
    ack.validate()
    return str(ack.to_er7())


class _OruHandler(AbstractHandler):  # type: ignore[misc]
    def __init__(self, message: str, listener: MllpListener) -> None:
        super().__init__(message)
        self.listener = listener

    def reply(self) -> str:
        try:
            parsed = parse_message(
                self.incoming_message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
            )
            parsed.validate()
        except Exception as exc:  # recorded for the test to show; the sender gets no ACK
            self.listener.errors.append(f"{type(exc).__name__}: {exc}")
            raise
        self.listener.messages.append(parsed)
        if self.listener.silent:
            self.listener.released.wait(30)
            raise ConnectionAbortedError("silent listener")
        return SB + _ack(self.listener, parsed) + EB + CR


@contextmanager
def run_mllp_listener() -> Iterator[MllpListener]:
    listener = MllpListener()
    server = MLLPServer(listener.host, 0, {"ORU^R01^ORU_R01": (_OruHandler, listener)}, timeout=10)
    server.daemon_threads = True
    listener.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield listener
    finally:
        listener.released.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class WebhookPost:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """What the HTTP server received, and the status it answers with."""

    host: str = "127.0.0.1"
    port: int = 0
    status: int = 200
    posts: list[WebhookPost] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks/pneumothorax/s3cr3t-path"


@contextmanager
def run_webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            receiver.posts.append(WebhookPost(self.path, dict(self.headers.items()), body))
            self.send_response(receiver.status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok" if receiver.status < 300 else b"no (test)")

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer((receiver.host, 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
