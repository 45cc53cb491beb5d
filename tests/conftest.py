"""Shared real parts: one Redis per session, HTTPS receivers, worker processes.

Every integration test publishes through the real producer API into the
session's Redis and is delivered by a real ``celery worker`` subprocess to a
real TLS receiver. Tests isolate themselves by using fresh conversation ids
and receiver paths, so they can share the session's Redis and worker.

Fixtures only: the helpers they and the tests use are in :mod:`tests.support`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from config.celery_app import app
from config.settings import Settings
from config.wiring import conversation_store
from testing.cluster import RedisCluster
from testing.receiver import Receiver, TestCA
from testing.redis_server import RedisServer
from testing.worker import WorkerProcess
from tests.support import FAST_SCHEDULE, Broker, dedicated_broker, wait_until, worker_env
from webhooks.conversations import ConversationStore
from webhooks.metrics import Metrics
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.sender import Sender
from webhooks.store import connect

#: A logical database of the session's Redis for the metrics fixture.
METRICS_DB = 13


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """Three cluster masters, formed once for the session (about 2 s)."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


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
def make_sender(test_ca: TestCA) -> Iterator[Callable[..., Sender]]:
    """Build senders that trust the test CA (2 s timeouts unless told); each is
    closed after the test."""
    made: list[Sender] = []

    def make(
        *, allow_private: bool = True, connect_timeout_s: float = 2, read_timeout_s: float = 2
    ) -> Sender:
        sender = Sender(
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            allow_private=allow_private,
            ca_bundle=test_ca.pem_path,
            user_agent="t",
        )
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()


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


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test module's own: the session worker's pump would take
    whatever is parked in the shared one."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    """A client of ``own_redis``, emptied for each test."""
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


@pytest.fixture
def broker(producer_settings: Settings, test_ca: TestCA) -> Iterator[Broker]:
    with dedicated_broker(producer_settings, test_ca) as dedicated:
        yield dedicated
