"""The HTTP server behind ``webhooks metrics-server``: auth, timeouts, a bounded pool.

The endpoint is an operations surface, so it is built not to be a way in or
a way down:

* optional auth (``bearer:TOKEN`` or ``basic:user:password``), compared in
  constant time, 401 without it;
* a connection costs no thread until it has sent a whole request head:
  accepted sockets wait in one selector, and only complete requests go to a
  small fixed pool, so 100 idle (or slowly dripping) sockets hold no thread;
* each connection has ``timeout_s`` from accept to a complete request head,
  and every write after that has the same timeout;
* at most ``max_connections`` are open at once; more are closed on accept.
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

__all__ = ["MetricsServer", "parse_auth", "serve"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: A longer request head is not a scrape.
MAX_HEAD_BYTES = 8192


def parse_auth(spec: str) -> tuple[str, str]:
    """``bearer:TOKEN`` or ``basic:user:password`` → (scheme, expected credentials).

    The credentials are what follows the scheme in ``Authorization``: the
    token itself, or base64 of ``user:password``.
    """
    scheme, _, rest = spec.partition(":")
    scheme = scheme.strip().lower()
    if scheme == "bearer" and rest:
        return "Bearer", rest
    if scheme == "basic" and ":" in rest and rest.split(":", 1)[0]:
        return "Basic", base64.b64encode(rest.encode()).decode()
    raise ValueError("expected 'bearer:TOKEN' or 'basic:user:password'")


def _authorized(header: str | None, expected: tuple[str, str] | None) -> bool:
    if expected is None:
        return True
    scheme, _, given = (header or "").strip().partition(" ")
    # Compare whatever was sent, so the time taken says nothing about the secret.
    same_scheme = scheme.lower() == expected[0].lower()
    same_credentials = hmac.compare_digest(given.strip().encode(), expected[1].encode())
    return same_scheme and same_credentials


class MetricsServer(HTTPServer):
    """Answers ``GET /metrics`` with ``scrape()``; ``serve_forever`` runs it.

    One loop thread accepts connections and reads their request heads without
    blocking; a head that is complete goes to the pool, which only scrapes and
    writes. A connection that has not sent a whole head within ``timeout_s``
    is closed, so neither idle sockets nor slow drips hold a thread.
    """

    def __init__(
        self,
        address: tuple[str, int],
        scrape: Callable[[], str],
        *,
        auth: tuple[str, str] | None = None,
        timeout_s: float = 10.0,
        threads: int = 4,
        max_connections: int = 256,
    ) -> None:
        # "::" or "::1" in WEBHOOKS_METRICS_BIND: an IPv6 socket
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.scrape = scrape
        self.auth = auth
        self.timeout_s = timeout_s
        self._max_connections = max_connections
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="metrics-http")
        # socket -> (deadline for its whole request head, bytes read so far)
        self._pending: dict[socket.socket, tuple[float, bytearray]] = {}
        self._heads: dict[socket.socket, bytes] = {}
        self._lock = threading.Lock()
        self._handling = 0
        self._stop = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stop.clear()
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop.is_set():
                    for key, _ in selector.select(min(poll_interval, self.timeout_s)):
                        if key.fileobj is self.socket:
                            self._accept(selector)
                        else:
                            self._read(selector, key.fileobj)  # type: ignore[arg-type]
                    self._expire(selector)
                for connection in list(self._pending):
                    self._drop(selector, connection)
        finally:
            self._stopped.set()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            connection, _ = self.socket.accept()
        except OSError:
            return
        with self._lock:
            open_now = len(self._pending) + self._handling
        if open_now >= self._max_connections:
            connection.close()
            return
        connection.setblocking(False)
        self._pending[connection] = (time.monotonic() + self.timeout_s, bytearray())
        selector.register(connection, selectors.EVENT_READ)

    def _read(self, selector: selectors.BaseSelector, connection: socket.socket) -> None:
        _, buffer = self._pending[connection]
        try:
            chunk = connection.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buffer += chunk
        if not chunk or len(buffer) > MAX_HEAD_BYTES:
            self._drop(selector, connection)
        elif b"\r\n\r\n" in buffer or b"\n\n" in buffer:
            selector.unregister(connection)
            del self._pending[connection]
            with self._lock:
                self._heads[connection] = bytes(buffer)
                self._handling += 1
            self._pool.submit(self._handle, connection)

    def _handle(self, connection: socket.socket) -> None:
        try:
            connection.setblocking(True)
            connection.settimeout(self.timeout_s)  # every write from here on
            self.finish_request(connection, connection.getpeername())
        except Exception:  # one bad connection must not end the server
            log.debug("metrics connection failed", exc_info=True)
        finally:
            with self._lock:
                self._heads.pop(connection, None)
                self._handling -= 1
            self.shutdown_request(connection)

    def take_head(self, connection: socket.socket) -> bytes:
        """The request head the loop read for ``connection``."""
        with self._lock:
            return self._heads.pop(connection, b"")

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for connection, (deadline, _) in list(self._pending.items()):
            if now >= deadline:
                self._drop(selector, connection)

    def _drop(self, selector: selectors.BaseSelector, connection: socket.socket) -> None:
        selector.unregister(connection)
        del self._pending[connection]
        connection.close()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BytesIO(self.server.take_head(self.connection))

    def do_GET(self) -> None:
        if not _authorized(self.headers.get("Authorization"), self.server.auth):
            self._unauthorized()
            return
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "try /metrics")
            return
        try:
            body = self.server.scrape().encode()
        except Exception:
            log.exception("scrape failed")
            self.send_error(503, "metrics unavailable (is Redis reachable?)")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _unauthorized(self) -> None:
        scheme = self.server.auth[0] if self.server.auth else "Bearer"
        body = b"authentication required\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", f'{scheme} realm="metrics"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve(
    host: str,
    port: int,
    scrape: Callable[[], str],
    *,
    auth: tuple[str, str] | None = None,
    timeout_s: float = 10.0,
    threads: int = 4,
) -> MetricsServer:
    """A metrics server bound to ``host:port``; not started (call ``serve_forever``)."""
    return MetricsServer((host, port), scrape, auth=auth, timeout_s=timeout_s, threads=threads)
