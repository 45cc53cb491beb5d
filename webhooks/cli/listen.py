"""``webhooks listen``: a local HTTPS receiver that checks each request's signature.

For receiver developers, as ``stripe listen`` is: point a conversation at it,
send events (``webhooks send-test``), and see each request's event, headers
and signature verdict, one block per request. ``--status`` rehearses retries.
The certificate is a throwaway one from a fresh CA (its PEM path is printed,
for the worker's ``WEBHOOKS_CA_BUNDLE``), or the ``--cert``/``--key`` given.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from config.wiring import conversation_store
from webhooks.cli.context import EXIT_INVALID, EXIT_NOT_FOUND, Context
from webhooks.cli.terminal import printable
from webhooks.errors import SignatureMismatch
from webhooks.signing import verify

__all__ = ["Listener", "add_parser", "run", "verdict"]

#: Larger requests are refused unread (the service caps events at 256 KiB).
MAX_BODY_BYTES = 1024 * 1024
#: Headers shown in each block; the rest are transport detail.
SHOWN_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type")


def add_parser(commands: Any) -> None:
    listen = commands.add_parser("listen", help="local HTTPS receiver that verifies signatures")
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument("--port", type=int, default=8443)
    which = listen.add_mutually_exclusive_group()
    which.add_argument("--conversation", help="verify with this conversation's secrets")
    which.add_argument("--secret", help="verify with this whsec_ secret")
    listen.add_argument("--status", type=int, default=200, help="answer with this HTTP status")
    listen.add_argument("--cert", type=Path, help="PEM certificate (default: a throwaway one)")
    listen.add_argument("--key", type=Path, help="PEM private key of --cert")


def verdict(secrets: list[str], headers: dict[str, str], body: bytes) -> str:
    """What a receiver would conclude: valid, invalid (why), or not checked."""
    if not secrets:
        return "not checked (give --conversation or --secret)"
    reasons = []
    for secret in secrets:
        try:
            verify(secret, headers, body)
        except SignatureMismatch as exc:
            reasons.append(str(exc))
        else:
            return "valid"
    return f"INVALID: {reasons[0]}"


class Listener(ThreadingHTTPServer):
    """The HTTPS server; each request becomes one printed block."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        context: ssl.SSLContext,
        *,
        secrets: list[str],
        status: int,
        out: TextIO,
    ) -> None:
        super().__init__(address, _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.secrets = secrets
        self.status = status
        self.out = out
        self.lock = threading.Lock()

    def report(self, path: str, headers: dict[str, str], body: bytes) -> None:
        lowered = {k.lower(): v for k, v in headers.items()}
        when = datetime.now(UTC).isoformat(timespec="milliseconds")
        lines = [f"── POST {path}  {when}  → {self.status}"]
        lines += [f"{h}: {lowered[h]}" for h in SHOWN_HEADERS if h in lowered]
        try:
            lines += json.dumps(json.loads(body), indent=2, ensure_ascii=False).split("\n")
        except ValueError:
            lines.append(repr(body[:2000]))
        lines.append(f"signature: {verdict(self.secrets, headers, body)}")
        with self.lock:
            self.out.write("\n".join(printable(line) for line in lines) + "\n\n")
            self.out.flush()


class _Handler(BaseHTTPRequestHandler):
    server: Listener

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.send_error(413)
            return
        body = self.rfile.read(length)
        self.server.report(self.path, dict(self.headers.items()), body)
        answer = b'{"received":true}'
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the block printed per request says it all."""


def _context(args: argparse.Namespace) -> tuple[ssl.SSLContext, Path | None]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if args.cert:
        context.load_cert_chain(args.cert, args.key)
        return context, None
    import trustme  # noqa: PLC0415 - only a throwaway certificate needs it

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost", args.host).configure_cert(context)
    pem = Path(tempfile.mkdtemp(prefix="webhooks-listen-")) / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return context, pem


def run(args: argparse.Namespace, context: Context) -> int:
    if bool(args.cert) != bool(args.key):
        sys.stderr.write("error: give --cert and --key together\n")
        return EXIT_INVALID
    secrets: list[str] = [args.secret] if args.secret else []
    if args.conversation:
        found = conversation_store(context.store, context.settings).get(args.conversation)
        if found is None:
            sys.stderr.write(f"error: conversation {args.conversation} is not registered\n")
            return EXIT_NOT_FOUND
        secrets = [found.secret, *(p.secret for p in found.previous_secrets)]
    tls, ca_pem = _context(args)
    server = Listener(
        (args.host, args.port), tls, secrets=secrets, status=args.status, out=sys.stdout
    )
    url = f"https://{args.host}:{server.server_address[1]}/"
    sys.stdout.write(f"listening on {url}, answering {args.status}\n")
    if ca_pem is not None:
        sys.stdout.write(f"throwaway CA: {ca_pem} (a worker trusts it with WEBHOOKS_CA_BUNDLE)\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
