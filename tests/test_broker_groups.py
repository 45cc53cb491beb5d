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
from contextlib import ExitStack

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


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, list[RedisServer]]]:
    """A store and ``GROUPS`` brokers, all fresh: no other worker consumes them."""
    with ExitStack() as stack:
        store = stack.enter_context(RedisServer())
        yield store, [stack.enter_context(RedisServer()) for _ in range(GROUPS)]


def conversations_per_group() -> list[list[str]]:
    """``PER_GROUP`` fresh conversation ids that map to each group."""
    groups: list[list[str]] = [[] for _ in range(GROUPS)]
    while any(len(g) < PER_GROUP for g in groups):
        cid = str(uuid.uuid4())
        if len(groups[broker_index(cid, GROUPS)]) < PER_GROUP:
            groups[broker_index(cid, GROUPS)].append(cid)
    return groups


def queued_conversations(client: redis.Redis) -> Counter[str]:
    """How many deliveries per conversation wait in this broker's queue."""
    found: Counter[str] = Counter()
    for raw in client.lrange(QUEUE, 0, -1):
        _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        found[kwargs["event"]["conversation_id"]] += 1
    return found


def test_each_conversation_is_published_to_and_delivered_by_its_group(
    servers: tuple[RedisServer, list[RedisServer]],
    receiver: Receiver,
    test_ca: TestCA,
    producer_settings: Settings,
) -> None:
    # Given a store, two broker groups, and conversations that map to each
    store, brokers = servers
    urls = " ".join(b.url for b in brokers)
    settings = producer_settings.model_copy(
        update={"redis_url": store.url, "broker_urls": tuple(b.url for b in brokers)}
    )
    client = redis.Redis.from_url(store.url, decode_responses=True, socket_timeout=5)
    groups = conversations_per_group()
    registry = conversation_store(client, settings)
    for cid in (c for g in groups for c in g):
        registry.set(cid, {"config": {"callback_url": receiver.url(f"/hook/{cid}")}})
    first = groups[0][0]
    receiver.script(f"/hook/{first}", [Respond(500)])  # its retry is published by a worker
    app.configure(settings)
    try:
        # When events are published through delay() while no worker runs
        sent = {
            str(deliver_webhook.delay(make_event(cid)).id): cid
            for cid in (c for g in groups for c in g)
            for _ in range(EVENTS)
        }

        # Then each broker holds exactly its conversations' deliveries
        for group, broker in enumerate(brokers):
            with redis.Redis.from_url(broker.url, decode_responses=True) as queue:
                assert queued_conversations(queue) == dict.fromkeys(groups[group], EVENTS)

        # And each group's worker delivers them, a retry included
        with ExitStack() as stack:
            for group, broker in enumerate(brokers):
                env = worker_env(
                    store.url, test_ca, WEBHOOKS_BROKER_URL=broker.url, WEBHOOKS_BROKER_URLS=urls
                )
                stack.enter_context(WorkerProcess(env, concurrency=1, name=f"group{group}"))
            outcomes = OutcomeStore(client, retention_s=3600)
            for webhook_id in sent:
                outcome = wait_until(lambda: outcomes.get(webhook_id), 20, webhook_id)  # noqa: B023
                assert outcome.state == "delivered"
        attempts = AttemptLog(client, retention_s=3600)
        for group, cids in enumerate(groups):
            records = [r for cid in cids for r in attempts.for_conversation(cid)]
            assert {r.worker.split("-", 1)[0] for r in records} == {f"group{group}"}
        assert len(attempts.for_conversation(first)) == EVENTS + 1
        assert {r.headers["webhook-id"] for r in receiver.received()} == set(sent)
    finally:
        app.configure(producer_settings)
        client.close()
