"""A Sentinel group on free ports: a primary, a replica and three sentinels.

For the failover test: everything is a real ``redis-server`` process, the
sentinels with short timeouts so a killed primary is replaced in seconds.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from testing.redis_server import RedisServer, find_redis_server, free_port

__all__ = ["MASTER_NAME", "SentinelGroup"]

MASTER_NAME = "webhooks"
#: The primary is taken for dead after this long without an answer...
DOWN_AFTER_MS = 1000
#: ... and a failover that stalls is retried after this.
FAILOVER_TIMEOUT_MS = 3000


class SentinelGroup:
    """A primary, one replica (``--replicaof``) and three sentinels, quorum 2."""

    def __init__(self, *, sentinels: int = 3) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="webhooks-sentinel-")
        self.directory = Path(self._tmp.name)
        self.primary = RedisServer()
        self.replica: RedisServer | None = None
        self.sentinel_ports: list[int] = []
        self._count = sentinels
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The group as the service is configured with it (store and broker)."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def start(self) -> SentinelGroup:
        self.primary.start()
        self.replica = RedisServer(
            extra_args=("--replicaof", "127.0.0.1", str(self.primary.port))
        ).start()
        for index in range(self._count):
            self._start_sentinel(index)
        self._wait_settled()
        return self

    def _start_sentinel(self, index: int) -> None:
        for _ in range(5):
            port = free_port()
            config = self.directory / f"sentinel-{index}.conf"
            config.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            process = subprocess.Popen(
                [find_redis_server(), str(config), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._answers(port, process):
                self.sentinel_ports.append(port)
                self._sentinels.append(process)
                return
            process.kill()
            process.wait()
        raise RuntimeError("a sentinel did not start after 5 attempts")

    @staticmethod
    def _answers(port: int, process: subprocess.Popen[bytes]) -> bool:
        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    time.sleep(0.05)
            return False
        finally:
            client.close()

    def _wait_settled(self, timeout: float = 30.0) -> None:
        """Until the replica is in sync and every sentinel knows it and the
        other sentinels: only then can they agree on a failover."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._settled():
                return
            time.sleep(0.1)
        raise RuntimeError("the Sentinel group did not settle")

    def _settled(self) -> bool:
        if self.replica is None:
            return False
        replica = redis.Redis(port=self.replica.port, socket_timeout=1, decode_responses=True)
        try:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        finally:
            replica.close()
        for port in self.sentinel_ports:
            sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
            try:
                replicas: Any = sentinel.sentinel_slaves(MASTER_NAME)
                others: Any = sentinel.sentinel_sentinels(MASTER_NAME)
            finally:
                sentinel.close()
            if len(replicas) < 1 or len(others) < self._count - 1:
                return False
        return True

    def master_port(self) -> int:
        """The port the first answering sentinel names as the master's now."""
        for port in self.sentinel_ports:
            sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
            try:
                address: Any = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(address[1])
            except redis.RedisError:
                continue
            finally:
                sentinel.close()
        raise RuntimeError("no sentinel answers")

    def close(self) -> None:
        for process in self._sentinels:
            process.terminate()
        for process in self._sentinels:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._sentinels = []
        if self.replica is not None:
            self.replica.close()
        self.primary.close()
        self._tmp.cleanup()

    def __enter__(self) -> SentinelGroup:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
