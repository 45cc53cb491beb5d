"""Helpers the tests share: plain functions and classes, no fixtures (those are in conftest)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis

from config.celery_app import app
from config.settings import Settings
from config.wiring import conversation_store
from testing.receiver import Receiver, TestCA
from testing.redis_server import RedisServer
from webhooks.conversations import ConversationStore
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.ratelimit import Limiter
from webhooks.store import Store, connect

__all__ = [
    "FAST_SCHEDULE",
    "Broker",
    "dedicated_broker",
    "make_event",
    "producer_using",
    "registered",
    "release_slot",
    "unique_path",
    "wait_until",
    "worker_env",
]

#: Short schedule for most tests; one test runs the real 4/8/10.
FAST_SCHEDULE = "0.3,0.6,0.9"

T = TypeVar("T")


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
def producer_using(producer_settings: Settings, **update: str) -> Iterator[tuple[Settings, Store]]:
    """Point the producer (this process) at other Redis URLs for the block, then
    back; yields its settings and a client of its store."""
    settings = producer_settings.model_copy(update=update)
    client = connect(settings.redis_url, socket_timeout_s=5)
    app.configure(settings)
    try:
        yield settings, client
    finally:
        app.configure(producer_settings)
        client.close()


@contextmanager
def dedicated_broker(producer_settings: Settings, ca: TestCA) -> Iterator[Broker]:
    """Point the producer at a fresh Redis for the block, then back."""
    with (
        RedisServer() as server,
        producer_using(producer_settings, redis_url=server.url) as (
            settings,
            client,
        ),
    ):
        assert isinstance(client, redis.Redis)
        yield Broker(
            server=server,
            client=client,
            conversations=conversation_store(client, settings),
            outcomes=OutcomeStore(client, retention_s=3600),
            ca=ca,
        )


def release_slot(
    limiter: Limiter, client: redis.Redis, endpoint: str, token: str, *, hold_s: float = 0.0
) -> bool:
    """Give a slot back as an attempt's end does (:meth:`Limiter.release_into`
    on a pipeline of its own); whether it should wake the endpoint's line."""
    pipe = client.pipeline(transaction=False)
    limiter.release_into(pipe, endpoint, token, hold_s=hold_s)
    return limiter.wakes_line(pipe.execute()[-1])
