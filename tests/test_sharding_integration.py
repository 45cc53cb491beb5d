"""Several broker groups: each conversation's deliveries travel through one.

Real parts: two broker redis-servers and one store, a real worker per group
(its WEBHOOKS_BROKER_URL is its group's broker), a trustme HTTPS receiver.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from config.celery_app import app
from config.settings import Settings
from config.wiring import conversation_store
from tasks import deliver_webhook
from testing.receiver import Receiver, Respond, TestCA
from testing.redis_server import RedisServer
from testing.worker import WorkerProcess
from tests.support import make_event, wait_until, worker_env
from webhooks.attempts import AttemptLog
from webhooks.outcomes import OutcomeStore
from webhooks.queues import QUEUE
from webhooks.sharding import broker_index

GROUPS = 2
PER_GROUP = 3  # conversations
EVENTS = 2  # per conversation


@dataclass(frozen=True)
class Groups:
    """A store and ``GROUPS`` brokers, all fresh: no other worker consumes them."""

    store: RedisServer
    brokers: list[RedisServer]
    client: redis.Redis  # of the store
    receiver: Receiver
    ca: TestCA
    settings: Settings  # the session producer's

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(b.url for b in self.brokers)

    def register(self, cid: str) -> None:
        conversation_store(self.client, self.settings).set(
            cid, {"config": {"callback_url": self.receiver.url(f"/hook/{cid}")}}
        )

    @contextmanager
    def producer(self, **update: Any) -> Iterator[None]:
        """This process publishes with the store and ``update``, for the block."""
        app.configure(self.settings.model_copy(update={"redis_url": self.store.url, **update}))
        try:
            yield
        finally:
            app.configure(self.settings)

    def worker(self, group: int) -> WorkerProcess:
        """Group ``group``'s worker, knowing every group."""
        env = worker_env(
            self.store.url,
            self.ca,
            WEBHOOKS_BROKER_URL=self.brokers[group].url,
            WEBHOOKS_BROKER_URLS=" ".join(self.urls),
        )
        return WorkerProcess(env, concurrency=1, name=f"group{group}")


@pytest.fixture
def groups(receiver: Receiver, test_ca: TestCA, producer_settings: Settings) -> Iterator[Groups]:
    with ExitStack() as stack:
        store = stack.enter_context(RedisServer())
        brokers = [stack.enter_context(RedisServer()) for _ in range(GROUPS)]
        client = redis.Redis.from_url(store.url, decode_responses=True, socket_timeout=5)
        stack.callback(client.close)
        yield Groups(store, brokers, client, receiver, test_ca, producer_settings)


def conversations_per_group() -> list[list[str]]:
    """``PER_GROUP`` fresh conversation ids that map to each group."""
    groups: list[list[str]] = [[] for _ in range(GROUPS)]
    while any(len(g) < PER_GROUP for g in groups):
        cid = str(uuid.uuid4())
        if len(groups[broker_index(cid, GROUPS)]) < PER_GROUP:
            groups[broker_index(cid, GROUPS)].append(cid)
    return groups


def queued_conversations(url: str) -> Counter[str]:
    """How many deliveries per conversation wait in this broker's queue."""
    found: Counter[str] = Counter()
    with redis.Redis.from_url(url, decode_responses=True) as client:
        for raw in client.lrange(QUEUE, 0, -1):
            _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
            found[kwargs["event"]["conversation_id"]] += 1
    return found


def test_each_conversation_is_published_to_and_delivered_by_its_group(groups: Groups) -> None:
    # Given two broker groups and conversations that map to each
    by_group = conversations_per_group()
    for cid in (c for g in by_group for c in g):
        groups.register(cid)
    first = by_group[0][0]
    groups.receiver.script(f"/hook/{first}", [Respond(500)])  # a worker publishes its retry

    # When events are published through delay() while no worker runs
    with groups.producer(broker_urls=groups.urls):
        sent = {
            str(deliver_webhook.delay(make_event(cid)).id): cid
            for cid in (c for g in by_group for c in g)
            for _ in range(EVENTS)
        }

        # Then each broker holds exactly its conversations' deliveries
        for group, broker in enumerate(groups.brokers):
            assert queued_conversations(broker.url) == dict.fromkeys(by_group[group], EVENTS)

        # And each group's worker delivers them, a retry included
        with ExitStack() as stack:
            for group in range(GROUPS):
                stack.enter_context(groups.worker(group))
            outcomes = OutcomeStore(groups.client, retention_s=3600)
            for webhook_id in sent:
                outcome = wait_until(lambda: outcomes.get(webhook_id), 20, webhook_id)  # noqa: B023
                assert outcome.state == "delivered"
    attempts = AttemptLog(groups.client, retention_s=3600)
    for group, cids in enumerate(by_group):
        records = [r for cid in cids for r in attempts.for_conversation(cid)]
        assert {r.worker.split("-", 1)[0] for r in records} == {f"group{group}"}
    assert len(attempts.for_conversation(first)) == EVENTS + 1
    assert {r.headers["webhook-id"] for r in groups.receiver.received()} == set(sent)


def test_a_worker_publishes_a_retry_to_the_conversations_group(groups: Groups) -> None:
    # Given a group-1 conversation's delivery on group 0's broker (its
    # producer did not know the groups), and only group 0's worker running
    cid = conversations_per_group()[1][0]
    groups.register(cid)
    groups.receiver.script(f"/hook/{cid}", [Respond(500)])
    with groups.producer(broker_url=groups.brokers[0].url):
        deliver_webhook.delay(make_event(cid))

    # When that worker's attempt fails
    with groups.worker(0):
        groups.receiver.wait_for(1, f"/hook/{cid}")

        # Then it publishes the retry to group 1's broker, where the conversation belongs
        retry = {cid: 1}
        wait_until(lambda: queued_conversations(groups.brokers[1].url) == retry, 10, "the retry")
