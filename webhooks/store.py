"""The Redis client every component shares, with timeouts on every call.

A ``redis+sentinel://`` URL names a Sentinel group instead of one server;
the client then asks the sentinels for the current master on every new
connection, so it follows a failover without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

__all__ = ["SENTINEL_SCHEME", "SentinelTarget", "connect", "is_sentinel_url", "parse_sentinel_url"]

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """Where a ``redis+sentinel://`` URL points: its sentinels, the master's
    name, the database and the credentials of the master and replicas."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # the password stays out of logs and errors
        return f"SentinelTarget(sentinels={self.sentinels!r}, master={self.master!r}, db={self.db})"


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in (SENTINEL_SCHEME, "rediss+sentinel")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master[/db]``.

    Raises ``ValueError`` naming what is wrong, never echoing the password.
    """
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "rediss+sentinel":
        raise ValueError("TLS through Sentinel (rediss+sentinel://) is not supported")
    if scheme.lower() != SENTINEL_SCHEME:
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}://")
    credentials, _, hosts_and_path = rest.rpartition("@")
    hosts, _, path = hosts_and_path.partition("/")
    sentinels = tuple(_host_port(part) for part in hosts.split(",") if part.strip())
    if not sentinels:
        raise ValueError("name at least one sentinel: redis+sentinel://host:26379,…/master")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError("give the master's name, and optionally a db: …/mymaster/0")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"the database must be a number, got {parts[1]!r}")
        db = int(parts[1])
    username, password = None, None
    if credentials:
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    return SentinelTarget(sentinels, unquote(parts[0]), db, username, password)


def _host_port(part: str) -> tuple[str, int]:
    split = urlsplit(f"//{part.strip()}")
    try:
        port = split.port or DEFAULT_SENTINEL_PORT
    except ValueError:
        raise ValueError(f"bad sentinel address {part.strip()!r}: expected host:port") from None
    if not split.hostname:
        raise ValueError(f"bad sentinel address {part.strip()!r}: expected host:port")
    return split.hostname, port


def connect(
    url: str,
    *,
    socket_timeout_s: float,
    ca_bundle: Path | None = None,
    sentinel_password: str | None = None,
) -> redis.Redis:
    """A client whose calls fail within ``socket_timeout_s`` instead of hanging.

    Credentials come in the URL (``redis://user:password@host``); a
    ``rediss://`` URL is TLS with the server's certificate always verified,
    against ``ca_bundle`` if given, else the system's trust store. A
    ``redis+sentinel://`` URL gives a client of the group's current master;
    ``sentinel_password`` is the sentinels' own, if they require one.
    """
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
    }
    if is_sentinel_url(url):
        return _master_client(parse_sentinel_url(url), timeouts, sentinel_password)
    tls: dict[str, Any] = {}
    if url.startswith("rediss://"):
        tls["ssl_cert_reqs"] = "required"
        if ca_bundle is not None:
            tls["ssl_ca_certs"] = str(ca_bundle)
    return redis.Redis.from_url(
        url, health_check_interval=30, decode_responses=True, **timeouts, **tls
    )


def _master_client(
    target: SentinelTarget, timeouts: dict[str, Any], sentinel_password: str | None
) -> redis.Redis:
    # The sentinels get the same timeouts: a dead sentinel must not hang the
    # look-up of the master.
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={**timeouts, "password": sentinel_password},
        **timeouts,
    )
    client: redis.Redis = sentinel.master_for(
        target.master,
        db=target.db,
        username=target.username,
        password=target.password,
        health_check_interval=30,
        decode_responses=True,
    )
    return client
