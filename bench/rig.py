"""Real parts for benchmarks: a fresh Redis, a fast HTTPS receiver, a producer.

Also the few probes a benchmark reads: Redis command counts and CPU, a
process's resident memory, duplicate deliveries at the receiver.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from config.celery_app import app
from config.settings import Settings
from config.wiring import conversation_store
from tasks import deliver_webhook
from testing.receiver import Receiver, TestCA
from testing.redis_server import RedisServer
from webhooks.endpoints import normalize_endpoint

__all__ = [
    "NEVER_BINDS",
    "PATH",
    "UNACKED",
    "Rig",
    "busiest_window",
    "commandstats",
    "commandstats_usec",
    "cpu_s",
    "duplicates",
    "enqueue",
    "load_average",
    "machine",
    "message_event",
    "redis_cpu_s",
    "rig",
    "vmrss_kb",
    "wait_until",
    "write_report",
]

PATH = "/hook"
UNACKED = "unacked"  # kombu's hash of delivered, unacknowledged messages
#: Limits on, but too high ever to bind: a bench pays for them without waiting.
NEVER_BINDS = {"WEBHOOKS_RATE_LIMIT": "1000000/second", "WEBHOOKS_MAX_CONCURRENCY": "1000"}


@dataclass(frozen=True)
class Rig:
    client: redis.Redis  # the store
    receiver: Receiver
    conversation_id: str
    endpoint: str
    env: dict[str, str]
    broker: redis.Redis  # the same server as ``client`` unless asked for one of its own


@contextmanager
def rig(ca: TestCA, overrides: dict[str, str], *, own_broker: bool = False) -> Iterator[Rig]:
    """A fresh Redis and receiver, the producer pointed at them, one conversation.

    ``own_broker``: the broker on a second fresh Redis, so each one's cost is its own.
    """
    with ExitStack() as stack:
        server = stack.enter_context(RedisServer())
        broker = stack.enter_context(RedisServer()) if own_broker else server
        receiver = stack.enter_context(Receiver(ca.server_context()))
        settings = Settings(
            redis_url=server.url, broker_url=broker.url, allow_private_networks=True
        )
        app.configure(settings)
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=30)
        stack.callback(client.close)
        broker_client = client
        if own_broker:
            broker_client = redis.Redis.from_url(
                broker.url, decode_responses=True, socket_timeout=30
            )
            stack.callback(broker_client.close)
        cid = str(uuid.uuid4())
        url = receiver.url(PATH)
        conversation_store(client, settings).set(cid, {"config": {"callback_url": url}})
        env = {
            "WEBHOOKS_REDIS_URL": server.url,
            "WEBHOOKS_BROKER_URL": broker.url,
            "WEBHOOKS_CA_BUNDLE": str(ca.pem_path),
            "WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
            **overrides,
        }
        yield Rig(client, receiver, cid, normalize_endpoint(url), env, broker_client)


def message_event(conversation_id: str) -> dict[str, Any]:
    """A small valid message event for ``conversation_id``, with a fresh message id."""
    now = datetime.now(UTC).isoformat()
    message = {"content": "bench", "content_type": "TEXT", "type": "USER_INPUT",
               "channel": "API", "status": "RECEIVED", "created_by": "bench",
               "updated_by": "bench", "created_at": now, "updated_at": now}  # fmt: skip
    return {"conversation_id": conversation_id, "timestamp": now,
            "data": {"id": str(uuid.uuid4()), **message}}  # fmt: skip


def enqueue(r: Rig, count: int) -> list[str]:
    """Publish ``count`` events through ``delay()``; returns their webhook ids in order."""
    return [str(deliver_webhook.delay(message_event(r.conversation_id)).id) for _ in range(count)]


def commandstats(client: redis.Redis) -> Counter[str]:
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})
    del calls["config|resetstat"]
    return calls


def commandstats_usec(client: redis.Redis) -> Counter[str]:
    """Microseconds Redis spent executing each command since the last CONFIG RESETSTAT."""
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in stats.items()})


def redis_cpu_s(client: redis.Redis) -> float:
    cpu: dict[str, Any] = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def duplicates(receiver: Receiver) -> int:
    seen = Counter(r.headers.get("webhook-id") for r in receiver.received())
    return sum(n - 1 for n in seen.values() if n > 1)


def busiest_window(times: list[float], window_s: float) -> int:
    """The most requests any ``window_s`` sliding window saw."""
    ordered, start, best = sorted(times), 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def wait_until(done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s; is the worker stuck?")
        time.sleep(0.05)


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def vmrss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how shared the machine was."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(client_version: str) -> list[str]:
    """The facts a report's figures depend on, as markdown list items."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?"
    )
    return [
        f"- nproc: {len(os.sched_getaffinity(0))}; CPU: {model}",
        f"- Python {platform.python_version()}, Celery {version('celery')}, kombu "
        f"{version('kombu')}, redis-py {version('redis')}, redis-server {client_version}",
        f"- load average (1, 5, 15 min) at start: {load_average()}",
    ]


def write_report(lines: list[str], path: Path) -> None:
    """Print the report and write it as markdown (``bench-results/`` is git-ignored)."""
    text = "\n".join(lines) + "\n"
    print(text)
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    print(f"written to {path}")
