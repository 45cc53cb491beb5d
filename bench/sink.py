"""``python -m bench.sink --cert PEM``: the fastest local HTTPS receiver we can write.

A benchmark of the sender needs a receiver that is never the bottleneck and
does not share a GIL with the code being timed. This one runs in its own
process: asyncio with TLS, HTTP/1.1 keep-alive, and per request only the
request line, the headers and a ``Content-Length`` body are read before
``200 OK`` with an empty body goes out. Each POST is recorded as ``(id,
arrival time.time())``: id = the ``webhook-id`` header, or else the JSON body's
``data.id`` (the message id, for senders that do not sign). ``GET /_count``
answers the number of POSTs so far, ``GET /_arrivals`` the JSON list of
``[id, t]`` pairs, so the bench polls it over HTTP and never touches Redis.

It prints its port on stdout once listening and exits on SIGTERM.
:class:`Sink` runs it from a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testing.receiver import TestCA

__all__ = ["Sink", "main"]

ROOT = Path(__file__).resolve().parent.parent
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def request_id(headers: dict[str, str], body: bytes) -> str:
    """The delivery's identity: ``webhook-id`` if signed, else the message id in the body."""
    if "webhook-id" in headers:
        return headers["webhook-id"]
    try:
        return str(json.loads(body)["data"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""


def answer(body: bytes, content_type: str) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class Server:
    """The connection handler and what it recorded."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError):
            pass  # the client went away or spoke no HTTP: nothing to answer
        except asyncio.CancelledError:
            pass  # SIGTERM: asyncio.run cancels open connections; a quiet exit, not a traceback
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection should close."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length") or 0))
        if method == "POST":
            self.arrivals.append((request_id(headers, body), time.time()))
            writer.write(OK)
        elif target == "/_count":
            writer.write(answer(str(len(self.arrivals)).encode(), "text/plain"))
        elif target == "/_arrivals":
            writer.write(answer(json.dumps(self.arrivals).encode(), "application/json"))
        else:
            writer.write(OK)
        await writer.drain()
        return headers.get("connection", "").lower() != "close"


async def serve(context: ssl.SSLContext) -> None:
    server = Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=context)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(listener.sockets[0].getsockname()[1], flush=True)
    async with listener:
        await stop.wait()


class Sink:
    """Runs ``python -m bench.sink`` with a certificate from ``ca``; a context manager."""

    def __init__(self, ca: TestCA, directory: Path) -> None:
        self._pem = directory / f"sink-{time.monotonic_ns()}.pem"
        leaf = ca.ca.issue_cert("localhost", "127.0.0.1")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(self._pem))
        self._client_context = ssl.create_default_context(cafile=str(ca.pem_path))
        self._process: subprocess.Popen[str] | None = None
        self._conn: http.client.HTTPSConnection | None = None
        self.port = 0

    def __enter__(self) -> Sink:
        # Own session: a terminal's Ctrl-C reaches the bench, which stops us in order.
        self._process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [sys.executable, "-m", "bench.sink", "--cert", str(self._pem)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            line = self._process.stdout.readline() if self._process.stdout else ""
            self.port = int(line)
        except BaseException:  # SIGTERM (SystemExit) while starting included
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._reset()
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._pem.unlink(missing_ok=True)

    @property
    def pid(self) -> int:
        return self._process.pid if self._process else 0

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def count(self) -> int:
        """POSTs received so far."""
        return int(self._get("/_count"))

    def arrivals(self) -> list[tuple[str, float]]:
        """Every POST so far as (id, arrival epoch seconds), in arrival order."""
        pairs: list[list[Any]] = json.loads(self._get("/_arrivals"))
        return [(str(i), float(t)) for i, t in pairs]

    def _get(self, path: str) -> bytes:
        """GET over one kept-alive connection: a poll every 10 ms is one small request."""
        try:
            return self._request(path)
        except (http.client.HTTPException, OSError):
            self._reset()
            return self._request(path)  # once more, on a fresh connection

    def _request(self, path: str) -> bytes:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=30, context=self._client_context
            )
        self._conn.request("GET", path)
        return self._conn.getresponse().read()

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cert", required=True, help="PEM with the certificate chain")
    parser.add_argument("--key", help="PEM with the private key, if not in --cert")
    args = parser.parse_args(argv)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(context))


if __name__ == "__main__":
    main()
