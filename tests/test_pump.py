"""tasks.pump: republishing parked deliveries, with a real Redis and no worker.

The producer (this process) is pointed at a Redis of the test's own, so the
republished messages stay in the ``webhooks`` queue for the test to read:
no worker consumes them.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from config.celery_app import app
from config.settings import Settings
from tasks.delivery import deliver_webhook
from tasks.pump import SETTLE_S, Pump
from testing.redis_server import RedisServer
from tests.support import make_event, release_slot
from webhooks import keys
from webhooks.endpoints import normalize_endpoint
from webhooks.errors import InvalidEvent
from webhooks.events import parse_event
from webhooks.parking import ParkedDelivery, ParkingLot
from webhooks.progress import Delivery
from webhooks.queues import RELEASED_QUEUE
from webhooks.ratelimit import Granted, Limiter, Limits, RateLimit

ROOMY = Limits(rate=RateLimit(1000, 60), max_concurrency=100)


@pytest.fixture
def broker_client(producer_settings: Settings) -> Iterator[redis.Redis]:
    """A Redis of the test's own, which the producer publishes to until the test ends.

    One per test, so the broker's lists hold only that test's messages.
    """
    with RedisServer() as server:
        connection = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
        app.configure(producer_settings.model_copy(update={"redis_url": server.url}))
        try:
            yield connection
        finally:
            app.amqp.producer_pool.force_close_all()
            app.pool.force_close_all()
            app.configure(producer_settings)
            connection.close()


@pytest.fixture
def lot(broker_client: redis.Redis) -> ParkingLot:
    return ParkingLot(broker_client)


@pytest.fixture
def endpoint() -> str:
    return normalize_endpoint(f"https://receiver.example/hook/{uuid.uuid4().hex}")


@dataclass(frozen=True)
class Published:
    """A ``deliver_webhook`` message as it sits in the broker's queue."""

    task: str
    task_id: str
    retries: int
    kwargs: dict[str, Any]


def queued(client: redis.Redis) -> list[Published]:
    """The queue's messages, oldest first (kombu LPUSHes, workers BRPOP)."""
    found = []
    for raw in reversed(client.lrange(RELEASED_QUEUE, 0, -1)):
        message = json.loads(raw)
        assert message["properties"]["body_encoding"] == "base64"
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        headers = message["headers"]
        found.append(Published(headers["task"], headers["id"], int(headers["retries"]), kwargs))
    return found


def parked(endpoint: str, **progress: Any) -> Delivery:
    return Delivery(
        event=make_event(),
        callback_url=endpoint,
        webhook_id=f"msg_{uuid.uuid4().hex}",
        attempt=progress.get("attempt", 1),
        retries=progress.get("retries", 0),
        waited_s=progress.get("waited_s", 0.0),
    )


def park_all(
    lot: ParkingLot, endpoint: str, count: int, limits: Limits = ROOMY, **progress: Any
) -> list[Delivery]:
    found = []
    for _ in range(count):
        item = parked(endpoint, **progress)
        lot.park(endpoint, item, limits, wait_s=0)
        found.append(item)
        time.sleep(0.002)  # a distinct millisecond each: the line's order is by time
    return found


def index_score(client: redis.Redis, endpoint: str) -> float | None:
    return client.zscore(keys.PARKED_ENDPOINTS, endpoint)


def now_ms() -> int:
    return int(time.time() * 1000)


def test_tick_republishes_parked_deliveries_with_their_progress(
    lot: ParkingLot, broker_client: redis.Redis, endpoint: str
) -> None:
    # Given three deliveries parked with progress: attempt 3, one retry used,
    # 4 s waited on 429s
    items = park_all(lot, endpoint, 3, attempt=3, retries=1, waited_s=4.0)
    places = {
        i.webhook_id: broker_client.zscore(keys.endpoint(endpoint).parked, i.webhook_id)
        for i in items
    }

    # When the pump ticks
    released = Pump(lot, owner="pump-a").tick()

    # Then all three are in the released queue, in line order, as deliver_webhook
    # tasks that carry the delivery's progress (the retry budget used in the
    # Celery `retries` header, the place in line for a park again)
    assert released == 3
    assert broker_client.llen(RELEASED_QUEUE) == 3
    messages = queued(broker_client)
    assert [m.task_id for m in messages] == [i.webhook_id for i in items]
    for item, message in zip(items, messages, strict=True):
        assert message.task == "deliver_webhook"
        assert message.retries == 1
        assert message.kwargs == {
            "event": parse_event(item.event).model_dump(mode="json"),
            "callback_url": endpoint,
            "webhook_id": item.webhook_id,
            "attempt": 3,
            "waited_s": 4.0,
            "place_ms": places[item.webhook_id],
            "sequence": None,
        }

    # And they are no longer parked; the endpoint is looked at again once the
    # batch has settled
    assert lot.backlog(endpoint) == 0
    assert broker_client.hlen(keys.endpoint(endpoint).payloads) == 0
    score = index_score(broker_client, endpoint)
    assert score is not None
    assert score > now_ms() + SETTLE_S * 1000 - 500


def test_a_tick_on_an_emptied_line_forgets_the_endpoint(
    lot: ParkingLot, broker_client: redis.Redis, endpoint: str
) -> None:
    # Given an endpoint whose line the pump has emptied
    park_all(lot, endpoint, 1)
    pump = Pump(lot, owner="pump-a")
    assert pump.tick() == 1

    # When it is due again and the pump ticks
    broker_client.zadd(keys.PARKED_ENDPOINTS, {endpoint: now_ms()})
    assert pump.tick() == 0

    # Then the endpoint is no longer indexed, and nothing more was published
    assert index_score(broker_client, endpoint) is None
    assert broker_client.llen(RELEASED_QUEUE) == 1


def test_tick_releases_only_what_the_endpoint_has_room_for(
    lot: ParkingLot, broker_client: redis.Redis, endpoint: str
) -> None:
    # Given a cap of 3 at once, one attempt in flight, five deliveries parked
    limits = Limits(rate=RateLimit(1000, 60), max_concurrency=3)
    assert isinstance(Limiter(broker_client, lease_s=30).acquire(endpoint, limits), Granted)
    items = park_all(lot, endpoint, 5, limits)

    # When the pump ticks
    released = Pump(lot, owner="pump-a").tick()

    # Then the first two are republished and the other three stay in line
    assert released == 2
    assert [m.task_id for m in queued(broker_client)] == [i.webhook_id for i in items[:2]]
    assert lot.backlog(endpoint) == 3


def test_an_endpoint_without_room_is_rescheduled_not_emptied(
    lot: ParkingLot, broker_client: redis.Redis, endpoint: str
) -> None:
    # Given a cap of 1, the slot held (lease 20 s), and two deliveries parked
    limits = Limits(rate=RateLimit(1000, 60), max_concurrency=1)
    assert isinstance(Limiter(broker_client, lease_s=20).acquire(endpoint, limits), Granted)
    park_all(lot, endpoint, 2, limits)
    assert endpoint in lot.due()

    # When the pump ticks
    before = now_ms()
    released = Pump(lot, owner="pump-a").tick()

    # Then nothing is published, both stay parked, and the endpoint is looked
    # at again when the holder's lease would run out, not before
    assert released == 0
    assert broker_client.llen(RELEASED_QUEUE) == 0
    assert lot.backlog(endpoint) == 2
    score = index_score(broker_client, endpoint)
    assert score is not None
    assert before + 19_000 < score <= now_ms() + 20_000
    assert endpoint not in lot.due()


def test_an_endpoint_with_a_full_window_waits_for_it(
    lot: ParkingLot, broker_client: redis.Redis, endpoint: str
) -> None:
    # Given 2 per second, both used, and a delivery parked
    limits = Limits(rate=RateLimit(2, 1), max_concurrency=10)
    limiter = Limiter(broker_client, lease_s=20)
    for _ in range(2):
        grant = limiter.acquire(endpoint, limits)
        assert isinstance(grant, Granted)
        release_slot(limiter, broker_client, endpoint, grant.token)
    (item,) = park_all(lot, endpoint, 1, limits)
    pump = Pump(lot, owner="pump-a")

    # When the pump ticks now
    # Then nothing is released and the endpoint is due within the window
    assert pump.tick() == 0
    score = index_score(broker_client, endpoint)
    assert score is not None
    assert score <= now_ms() + 1000

    # When it ticks once the window has room
    time.sleep(max(0.0, (score - now_ms()) / 1000) + 0.01)
    assert pump.tick() == 1

    # Then the delivery is published
    assert [m.task_id for m in queued(broker_client)] == [item.webhook_id]


def test_a_claimed_endpoint_is_left_to_its_pump(
    lot: ParkingLot, broker_client: redis.Redis, endpoint: str
) -> None:
    # Given an endpoint another pump is releasing right now
    park_all(lot, endpoint, 2)
    assert lot.claim(endpoint, "pump-a", ttl_s=10)

    # When a second pump ticks
    released = Pump(lot, owner="pump-b").tick()

    # Then it leaves the endpoint alone
    assert released == 0
    assert broker_client.llen(RELEASED_QUEUE) == 0
    assert lot.backlog(endpoint) == 2


def test_two_pumps_ticking_at_once_never_publish_a_delivery_twice(
    lot: ParkingLot, broker_client: redis.Redis
) -> None:
    # Given 20 endpoints with 20 deliveries each, all due
    endpoints = [normalize_endpoint(f"https://r{i}.example/{uuid.uuid4().hex}") for i in range(20)]
    expected = {d.webhook_id for e in endpoints for d in park_all(lot, e, 20)}

    # When two pumps (two workers) tick concurrently, over and over
    start = threading.Barrier(2)
    counts: dict[str, int] = {}
    errors: list[BaseException] = []

    def run(owner: str) -> None:
        pump = Pump(ParkingLot(broker_client), owner=owner)
        start.wait()
        total = 0
        try:
            for _ in range(10):
                for endpoint in endpoints:  # make every endpoint due again
                    broker_client.zadd(keys.PARKED_ENDPOINTS, {endpoint: now_ms()}, lt=True)
                total += pump.tick()
        except BaseException as exc:
            errors.append(exc)
        counts[owner] = total

    threads = [threading.Thread(target=run, args=(o,)) for o in ("pump-a", "pump-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # Then every delivery is published exactly once, and none is left parked
    assert errors == []
    published = [m.task_id for m in queued(broker_client)]
    assert sorted(published) == sorted(expected)
    assert len(published) == len(set(published)) == 400
    assert counts["pump-a"] + counts["pump-b"] == 400
    assert all(lot.backlog(e) == 0 for e in endpoints)


def test_a_delivery_parked_again_before_the_pump_is_done_is_kept(
    lot: ParkingLot, broker_client: redis.Redis, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two parked deliveries, and a worker so quick that each republished
    # task runs, finds no room after all, and parks again before the pump has
    # finished its pass (stubbed: the publish parks the delivery again at once,
    # as the task would)
    items = park_all(lot, endpoint, 2)
    publish = deliver_webhook.apply_async
    again: list[str] = []

    def publish_then_park_again(*args: Any, **options: Any) -> Any:
        result = publish(*args, **options)
        kwargs = options["kwargs"]
        lot.park(endpoint, Delivery(**kwargs, retries=options["retries"]), ROOMY, wait_s=0)
        broker_client.rpop(RELEASED_QUEUE)  # the worker consumed the message
        again.append(kwargs["webhook_id"])
        return result

    monkeypatch.setattr(deliver_webhook, "apply_async", publish_then_park_again)

    # When the pump ticks
    Pump(lot, owner="pump-a").tick()

    # Then both deliveries are still parked, in their places: the queue has no
    # copy of them, so removing them now would lose them for good
    assert again == [i.webhook_id for i in items]
    assert broker_client.llen(RELEASED_QUEUE) == 0
    assert lot.backlog(endpoint) == 2
    assert [p.delivery.webhook_id for p in lot.take(endpoint, max_batch=10).deliveries] == again


def test_a_failed_publish_loses_nothing(
    lot: ParkingLot, broker_client: redis.Redis, endpoint: str
) -> None:
    # Given three parked deliveries, the second of which cannot be published
    first, broken, third = park_all(lot, endpoint, 3)
    broker_client.hset(
        keys.endpoint(endpoint).payloads,
        broken.webhook_id,
        ParkedDelivery(
            Delivery({"conversation_id": "not a uuid"}, broken.webhook_id, endpoint), "p1"
        ).to_json(),
    )

    # When the pump ticks and the publish fails midway
    with pytest.raises(InvalidEvent):
        Pump(lot, owner="pump-a").tick()

    # Then what was published left the line, and what was not is still in it
    assert [m.task_id for m in queued(broker_client)] == [first.webhook_id]
    assert lot.backlog(endpoint) == 2
    assert set(broker_client.hkeys(keys.endpoint(endpoint).payloads)) == {
        broken.webhook_id,
        third.webhook_id,
    }
    assert lot.claim(endpoint, "pump-b", ttl_s=1)  # the failed pass let go of it
