"""The Redis client every component shares, with timeouts on every call.

A ``redis+sentinel://`` URL names a Sentinel group instead of one server;
the client then asks the sentinels for the current master on every new
connection, so it follows a failover without a restart. A
``redis+cluster://`` (or TLS ``rediss+cluster://``) URL names some nodes of a
Redis Cluster; the client finds the rest and routes each command by its
key's hash slot (docs/cluster.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.client import Pipeline
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

__all__ = [
    "CLUSTER_SCHEME",
    "SENTINEL_SCHEME",
    "ClusterTarget",
    "SentinelTarget",
    "Store",
    "StorePipeline",
    "connect",
    "get_many",
    "is_cluster_url",
    "is_sentinel_url",
    "parse_cluster_url",
    "parse_sentinel_url",
    "redis_now_ms",
]

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379

#: The store's client: one server (or a Sentinel group's master), or a Cluster.
Store = redis.Redis | RedisCluster
#: A pipeline of either; a cluster's may span slots only without a transaction.
StorePipeline = Pipeline | ClusterPipeline


@dataclass(frozen=True)
class ClusterTarget:
    """Where a ``redis+cluster://`` URL points: some of the cluster's nodes
    (the client discovers the others), TLS or not, and the credentials."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # the password stays out of logs and errors
        return f"ClusterTarget(nodes={self.nodes!r}, tls={self.tls})"


def get_many(client: Store, names: Sequence[str]) -> list[Any]:
    """GET each key, in one round trip: MGET refuses keys of several Cluster slots."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(name)
    return list(pipe.execute())


def redis_now_ms(client: Store) -> int:
    """Redis' clock (ms), which limits and holds are kept by, whatever the
    machines' clocks say. Never in a pipeline: a cluster one refuses keyless
    commands."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in (CLUSTER_SCHEME, "rediss+cluster")


def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse ``redis+cluster://[[user]:password@]host[:port][,host[:port]…][/]``.

    A cluster has only database 0, so a path other than ``/`` or ``/0`` is an
    error. Raises ``ValueError`` naming what is wrong, never echoing the password.
    """
    scheme, _, rest = url.partition("://")
    if not is_cluster_url(url):
        raise ValueError(f"a Cluster URL starts with {CLUSTER_SCHEME}:// or rediss+cluster://")
    credentials, _, hosts_and_path = rest.rpartition("@")
    hosts, _, path = hosts_and_path.partition("/")
    nodes = tuple(
        _host_port(part, DEFAULT_REDIS_PORT, "node") for part in hosts.split(",") if part.strip()
    )
    if not nodes:
        raise ValueError("name at least one node: redis+cluster://host:6379,…/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, got /{path.strip('/')}")
    username, password = _credentials(credentials)
    return ClusterTarget(nodes, scheme.lower().startswith("rediss"), username, password)


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
    sentinels = tuple(
        _host_port(part, DEFAULT_SENTINEL_PORT, "sentinel")
        for part in hosts.split(",")
        if part.strip()
    )
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
    username, password = _credentials(credentials)
    return SentinelTarget(sentinels, unquote(parts[0]), db, username, password)


def _credentials(credentials: str) -> tuple[str | None, str | None]:
    if not credentials:
        return None, None
    user, has_password, secret = credentials.partition(":")
    return unquote(user) or None, unquote(secret) if has_password else None


def _host_port(part: str, default_port: int, what: str) -> tuple[str, int]:
    split = urlsplit(f"//{part.strip()}")
    try:
        port = split.port or default_port
    except ValueError:
        raise ValueError(f"bad {what} address {part.strip()!r}: expected host:port") from None
    if not split.hostname:
        raise ValueError(f"bad {what} address {part.strip()!r}: expected host:port")
    return split.hostname, port


def connect(
    url: str,
    *,
    socket_timeout_s: float,
    ca_bundle: Path | None = None,
    sentinel_password: str | None = None,
) -> Store:
    """A client whose calls fail within ``socket_timeout_s`` instead of hanging.

    Credentials come in the URL (``redis://user:password@host``); a
    ``rediss://`` URL is TLS with the server's certificate always verified,
    against ``ca_bundle`` if given, else the system's trust store. A
    ``redis+sentinel://`` URL gives a client of the group's current master;
    ``sentinel_password`` is the sentinels' own, if they require one. A
    ``redis+cluster://`` URL gives a :class:`RedisCluster` with the same
    timeouts, credentials and TLS checks.
    """
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
    }
    if is_sentinel_url(url):
        return _master_client(parse_sentinel_url(url), timeouts, sentinel_password)
    if is_cluster_url(url):
        return _cluster_client(parse_cluster_url(url), timeouts, ca_bundle)
    tls = _tls_options(ca_bundle) if url.startswith("rediss://") else {}
    return redis.Redis.from_url(
        url, health_check_interval=30, decode_responses=True, **timeouts, **tls
    )


def _node(host: str, port: int) -> ClusterNode:
    return ClusterNode(host, port)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


def _tls_options(ca_bundle: Path | None) -> dict[str, Any]:
    tls: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if ca_bundle is not None:
        tls["ssl_ca_certs"] = str(ca_bundle)
    return tls


def _cluster_client(
    target: ClusterTarget, timeouts: dict[str, Any], ca_bundle: Path | None
) -> RedisCluster:
    # RedisCluster drops health_check_interval (not among the options it
    # passes to its nodes' connections); a dead node shows as a timeout.
    tls = {"ssl": True, **_tls_options(ca_bundle)} if target.tls else {}
    try:
        return RedisCluster(
            startup_nodes=[_node(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            decode_responses=True,
            **timeouts,
            **tls,
        )
    except RedisClusterException as exc:
        # It asks the nodes for the slot map at once; no node answering is
        # a Redis that cannot be reached, as callers already handle it.
        raise redis.ConnectionError(f"no node of {target!r} answered: {exc}") from exc


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
