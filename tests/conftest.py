"""Shared real parts: one Redis per session, HTTPS receivers, worker processes.

Every integration test publishes through the real producer API into the
session's Redis and is delivered by a real ``celery worker`` subprocess to a
real TLS receiver. Tests isolate themselves by using fresh conversation ids
and receiver paths, so they can share the session's Redis and worker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis

from config.celery_app import app
from config.settings import Settings
from testing.receiver import Receiver, TestCA
from testing.redis_server import RedisServer
from testing.worker import WorkerProcess
from webhooks.conversations import ConversationStore
from webhooks.delivery import conversation_store
from webhooks.metrics import Metrics
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.store import connect

#: Short schedule for most tests; one test runs the real 4/8/10.
FAST_SCHEDULE = "0.3,0.6,0.9"
#: A logical database of the session's Redis for the metrics fixture.
METRICS_DB = 13


def make_event(conversation_id: str | None = None, **data: Any) -> dict[str, Any]:
    """A valid event in the guide's shape (its own test payload generator, completed)."""
    now = datetime.now(UTC).isoformat()
    return {
        "conversation_id": conversation_id or str(uuid.uuid4()),
        "data": {
            "id": str(uuid.uuid4()),
            "content": "Test message",
            "content_type": "TEXT",
            "type": "USER_INPUT",
            "channel": "API",
            "status": "RECEIVED",
            "created_by": "user123",
            "updated_by": "user123",
            "created_at": now,
            "updated_at": now,
            **data,
        },
        "timestamp": now,
    }


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def worker_env(redis_url: str, ca: TestCA, **overrides: str) -> dict[str, str]:
    env = {
        "WEBHOOKS_REDIS_URL": redis_url,
        "WEBHOOKS_CA_BUNDLE": str(ca.pem_path),
        # Receivers run on 127.0.0.1; the refusal itself has its own tests.
        "WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
        "WEBHOOKS_RETRY_SCHEDULE": FAST_SCHEDULE,
        "WEBHOOKS_TIMEOUT_S": "2",
        "WEBHOOKS_CONNECT_TIMEOUT_S": "2",
        "WEBHOOKS_VISIBILITY_TIMEOUT_S": "60",
    }
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def producer_settings(redis_server: RedisServer) -> Settings:
    """Point the producer side (this process) at the session's Redis."""
    settings = Settings(
        redis_url=redis_server.url,
        allow_private_networks=True,
        retry_schedule=FAST_SCHEDULE,
        timeout_s=2,
        connect_timeout_s=2,
        visibility_timeout_s=60,
    )
    app.configure(settings)
    return settings


@pytest.fixture(scope="session")
def worker(
    redis_server: RedisServer, test_ca: TestCA, producer_settings: Settings
) -> Iterator[WorkerProcess]:
    """The session's shared worker: fast schedule, private networks allowed."""
    with WorkerProcess(worker_env(redis_server.url, test_ca), concurrency=2) as process:
        yield process


@pytest.fixture
def start_worker(
    redis_server: RedisServer, test_ca: TestCA, producer_settings: Settings
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start extra workers with other settings; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(concurrency: int = 1, **overrides: str) -> WorkerProcess:
        process = WorkerProcess(
            worker_env(redis_server.url, test_ca, **overrides), concurrency=concurrency
        ).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def receiver(test_ca: TestCA) -> Iterator[Receiver]:
    with Receiver(test_ca.server_context()) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def conversations(redis_client: redis.Redis, producer_settings: Settings) -> ConversationStore:
    return conversation_store(redis_client, producer_settings)


@pytest.fixture
def outcomes(redis_client: redis.Redis) -> OutcomeStore:
    return OutcomeStore(redis_client, retention_s=3600)


@pytest.fixture
def wait_outcome(outcomes: OutcomeStore) -> Callable[..., Outcome]:
    """Poll until a delivery has a final outcome record."""

    def wait(webhook_id: str, timeout: float = 30.0) -> Outcome:
        return wait_until(lambda: outcomes.get(webhook_id), timeout, f"an outcome for {webhook_id}")

    return wait


def registered(
    conversations: ConversationStore, receiver: Receiver, path: str = "/hook"
) -> tuple[str, str]:
    """Register a fresh conversation whose callback is ``receiver`` at ``path``."""
    cid = str(uuid.uuid4())
    conversation = conversations.set(cid, {"config": {"callback_url": receiver.url(path)}})
    receiver.verify_with(path, conversation.secret)
    return cid, conversation.secret


def unique_path() -> str:
    return f"/hook/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test module's own: the session worker's pump would take
    whatever is parked in the shared one."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    """A client of ``own_redis``, emptied for each test (modules may override it)."""
    connection = redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=5)
    connection.flushall()
    yield connection
    connection.close()


@pytest.fixture
def metrics(redis_server: RedisServer) -> Iterator[Metrics]:
    """Metrics on a logical database of the session's Redis that no worker
    writes to, emptied first, so counts are exact (modules may override it)."""
    client = connect(redis_server.url.rsplit("/", 1)[0] + f"/{METRICS_DB}", socket_timeout_s=5)
    client.flushdb()
    yield Metrics(client)
    client.close()


@dataclass
class Broker:
    """A private Redis (broker and store) that the producer publishes to.

    For tests that kill workers, restart Redis or read kombu's keys: the
    session's shared worker never sees their messages.
    """

    server: RedisServer
    client: redis.Redis
    conversations: ConversationStore
    outcomes: OutcomeStore
    ca: TestCA

    def worker_env(self, **overrides: str) -> dict[str, str]:
        return worker_env(self.server.url, self.ca, **overrides)

    def wait_outcome(self, webhook_id: str, timeout: float = 60.0) -> Outcome:
        """Poll until the delivery has its final outcome record."""
        return wait_until(
            lambda: self.outcomes.get(webhook_id), timeout, f"an outcome for {webhook_id}"
        )

    def wait_outcomes(self, webhook_ids: list[str], timeout: float = 60.0) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        return [self.wait_outcome(i, max(0.1, deadline - time.monotonic())) for i in webhook_ids]


@contextmanager
def dedicated_broker(producer_settings: Settings, ca: TestCA) -> Iterator[Broker]:
    """Point the producer at a fresh Redis for the block, then back."""
    with RedisServer() as server:
        settings = producer_settings.model_copy(update={"redis_url": server.url})
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
        app.configure(settings)
        try:
            yield Broker(
                server=server,
                client=client,
                conversations=conversation_store(client, settings),
                outcomes=OutcomeStore(client, retention_s=3600),
                ca=ca,
            )
        finally:
            app.configure(producer_settings)
            client.close()


@pytest.fixture
def broker(producer_settings: Settings, test_ca: TestCA) -> Iterator[Broker]:
    with dedicated_broker(producer_settings, test_ca) as dedicated:
        yield dedicated


T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    For what real workers do a moment later: an outcome recorded, a queue
    drained, metrics and health flushed (every WEBHOOKS_METRICS_FLUSH_S).
    """
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s (last seen: {found!r})")
        time.sleep(0.05)
    return found


__all__ = [
    "FAST_SCHEDULE",
    "Broker",
    "dedicated_broker",
    "make_event",
    "registered",
    "unique_path",
    "wait_until",
    "worker_env",
]
