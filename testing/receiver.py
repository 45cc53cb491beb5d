"""A real HTTPS webhook receiver with scripted behaviour per path.

Each path answers from a script: respond with a status (after a delay),
hang, or drop the connection. Every request is recorded with its arrival
time, headers and body, and its signature checked with the independent
``standardwebhooks`` package when the path has a secret.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import trustme
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["Drop", "Hang", "Raw", "ReceivedRequest", "Receiver", "Respond", "TestCA", "http_head"]


@dataclass(frozen=True)
class Respond:
    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Accept the request and say nothing for ``seconds`` (or until stopped)."""

    seconds: float = 3600.0


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer."""


@dataclass(frozen=True)
class Raw:
    """Write ``data`` as the answer, ``chunk_bytes`` at a time (0: at once)
    every ``interval_s``, then close the connection or hang on it.

    Misbehaving answers are made of it: a status line trickled a byte at a
    time, a 200 whose body stalls or is cut, garbage, a compression bomb.
    """

    data: bytes
    chunk_bytes: int = 0
    interval_s: float = 0.0
    then: Literal["close", "hang"] = "close"
    head: bytes = b""  # written at once before ``data``
    #: ``data`` is written this many times: hundreds of MiB streamed from a
    #: small buffer, for answers too large to hold.
    repeat: int = 1


def http_head(
    status: int, headers: dict[str, str] | None = None, *, content_length: int | None = None
) -> bytes:
    """A status line and headers, for :class:`Raw` answers."""
    lines = [f"HTTP/1.1 {status} Whatever"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


Behaviour = Respond | Hang | Drop | Raw


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    signature_ok: bool | None


class TestCA:
    """A throwaway certificate authority and its PEM file for the sender to trust."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.pem_path = directory / "webhooks-test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.pem_path))

    def server_context(self, *hostnames: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*(hostnames or ("localhost", "127.0.0.1"))).configure_cert(context)
        return context


class Receiver:
    """An HTTPS server on 127.0.0.1; ``url(path)`` is what to register."""

    def __init__(self, context: ssl.SSLContext, *, host: str = "127.0.0.1") -> None:
        self._scripts: dict[str, deque[Behaviour]] = defaultdict(deque)
        self._secrets: dict[str, str] = {}
        self._defaults: dict[str, Behaviour] = {}
        self._received: list[ReceivedRequest] = []
        self._in_flight: dict[str, int] = defaultdict(int)
        self._peak_in_flight: dict[str, int] = defaultdict(int)
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"https://{self.host}:{self.port}{path}"

    def script(self, path: str, behaviours: Iterable[Behaviour]) -> None:
        """Answer the next requests to ``path`` in order, then 200 OK."""
        with self._lock:
            self._scripts[path].extend(behaviours)

    def always(self, path: str, behaviour: Behaviour) -> None:
        """Answer requests to ``path`` this way once its script is used up."""
        with self._lock:
            self._defaults[path] = behaviour

    def verify_with(self, path: str, secret: str) -> None:
        with self._lock:
            self._secrets[path] = secret

    def peak_in_flight(self, path: str) -> int:
        """The most requests to ``path`` this server was answering at once."""
        with self._lock:
            return self._peak_in_flight[path]

    def _enter(self, path: str) -> None:
        with self._lock:
            self._in_flight[path] += 1
            self._peak_in_flight[path] = max(self._peak_in_flight[path], self._in_flight[path])

    def _leave(self, path: str) -> None:
        with self._lock:
            self._in_flight[path] -= 1

    def received(self, path: str | None = None) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = 30.0
    ) -> list[ReceivedRequest]:
        """Block until ``count`` requests arrived (on ``path``); raise on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self._received if path is None or r.path == path]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {count} request(s) on {path or 'any path'}, got {len(found)}"
                    )
                self._lock.wait(remaining)

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> Behaviour:
        secret = self._secrets.get(path)
        signature_ok: bool | None = None
        if secret is not None:
            try:
                Webhook(secret).verify(body, headers)
                signature_ok = True
            except WebhookVerificationError:
                signature_ok = False
        with self._lock:
            self._received.append(ReceivedRequest(path, headers, body, time.time(), signature_ok))
            self._lock.notify_all()
            script = self._scripts.get(path)
            return script.popleft() if script else self._defaults.get(path, Respond())

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, each
            # answer waits ~40 ms for the client's delayed ACK.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._enter(self.path)
                try:
                    self._answer(receiver._record(self.path, headers, body))
                finally:
                    receiver._leave(self.path)

            def _answer(self, behaviour: Behaviour) -> None:
                if isinstance(behaviour, Drop):
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(behaviour, Hang):
                    receiver._stopping.wait(behaviour.seconds)
                    self.close_connection = True
                    return
                if isinstance(behaviour, Raw):
                    self._write_raw(behaviour)
                    return
                if behaviour.delay_s:
                    time.sleep(behaviour.delay_s)
                self.send_response(behaviour.status)
                for name, value in behaviour.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(behaviour.body)))
                self.end_headers()
                self.wfile.write(behaviour.body)

            def _write_raw(self, raw: Raw) -> None:
                self.close_connection = True
                step = raw.chunk_bytes or len(raw.data) or 1
                try:
                    if raw.head:
                        self.wfile.write(raw.head)
                    for _ in range(raw.repeat):
                        for start in range(0, len(raw.data), step):
                            if start and raw.interval_s and receiver._stopping.wait(raw.interval_s):
                                return
                            self.wfile.write(raw.data[start : start + step])
                            self.wfile.flush()
                    if raw.then == "hang":
                        receiver._stopping.wait(3600)
                except OSError:
                    return  # the sender gave up on us, as it should

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler
