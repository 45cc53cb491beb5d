"""tasks.routing: which queue a delivery is published to, with a real Redis and no worker.

The producer (this process) is pointed at a Redis of the test's own for
each test and back afterwards. Router tests build a fresh
:class:`EndpointRouter` so no cache survives from another test; publishing
tests go through the app's registered router, as a producer does. Cache
expiry is driven by a fake monotonic clock where a test needs to see a
stale answer, so no test depends on how fast this machine is.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from config.celery_app import app
from config.settings import Settings
from config.wiring import conversation_store
from tasks import routing
from tasks.delivery import deliver_webhook
from tasks.pump import Pump
from tasks.routing import EndpointRouter
from testing.redis_server import RedisServer, free_port
from tests.support import make_event
from webhooks import keys
from webhooks.conversations import ConversationStore
from webhooks.endpoints import normalize_endpoint
from webhooks.health import HealthPolicy, HealthStore
from webhooks.parking import ParkingLot
from webhooks.progress import Delivery
from webhooks.queues import QUEUE, RELEASED_QUEUE, SLOW_QUEUE
from webhooks.ratelimit import Limits, RateLimit

#: Commands of the test's own client while it measures, not the router's.
MEASURING = {"info", "config|resetstat"}
#: What redis-py sends when it opens a connection (protocol, name, health check).
CONNECTION_SETUP = {"hello", "client|setinfo", "ping"}


class Clock:
    """Stands in for ``time`` in tasks.routing: ``monotonic()`` moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def point_at(
    producer_settings: Settings, own_redis: RedisServer
) -> Iterator[Callable[..., Settings]]:
    """Configure the app for the test's Redis (or another URL) with overrides; restored after.

    One Redis per test, so the broker's lists hold only that test's messages.
    """

    def configure(**overrides: Any) -> Settings:
        settings = producer_settings.model_copy(
            update={"redis_url": own_redis.url, "route_cache_s": 2.0, **overrides}
        )
        app.configure(settings)
        return settings

    yield configure
    app.configure(producer_settings)


@pytest.fixture
def health(own_client: redis.Redis) -> HealthStore:
    return HealthStore(own_client, HealthPolicy())


@pytest.fixture
def conversations(own_client: redis.Redis, producer_settings: Settings) -> ConversationStore:
    return conversation_store(own_client, producer_settings)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(routing, "time", fake)
    return fake


def new_url() -> str:
    return f"https://127.0.0.1:8443/hook/{uuid.uuid4().hex[:12]}"


def make_slow(health: HealthStore, url: str) -> None:
    health.observe(normalize_endpoint(url), duration_s=1.0, outcome="timeout")


def make_fast(health: HealthStore, url: str) -> None:
    """Five quick answers push a timeout out of the recent outcomes."""
    for _ in range(5):
        health.observe(normalize_endpoint(url), duration_s=0.01, outcome="ok")


def registered(conversations: ConversationStore, url: str) -> str:
    cid = str(uuid.uuid4())
    conversations.set(cid, {"config": {"callback_url": url}})
    return cid


def parked(endpoint: str) -> Delivery:
    return Delivery(
        event=make_event(),
        callback_url=endpoint,
        webhook_id=f"msg_{uuid.uuid4().hex}",
        attempt=2,
        retries=1,
        waited_s=0.0,
    )


def delivery(event: dict[str, Any], callback_url: str | None = None) -> dict[str, Any]:
    """Task kwargs as ``DeliveryTask.apply_async`` publishes them."""
    return {"event": event, "callback_url": callback_url, "webhook_id": f"msg_{uuid.uuid4().hex}"}


def router_commands(client: redis.Redis) -> dict[str, int]:
    """Commands run on the server since the last CONFIG RESETSTAT, by name, but ours."""
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
    return {name: n for name, n in calls.items() if name not in MEASURING}


# --- where a delivery goes ---------------------------------------------------------------


def test_a_slow_callback_url_routes_to_the_slow_queue(
    point_at: Callable[..., Settings], health: HealthStore
) -> None:
    # Given one endpoint judged slow and one fast
    point_at()
    slow_url, fast_url = new_url(), new_url()
    make_slow(health, slow_url)
    health.observe(normalize_endpoint(fast_url), duration_s=0.01, outcome="ok")
    router = EndpointRouter(app)

    # When deliveries to each (by callback_url) are routed
    to_slow = router("deliver_webhook", (), delivery(make_event(), slow_url), {})
    to_fast = router("deliver_webhook", (), delivery(make_event(), fast_url), {})

    # Then only the slow endpoint's delivery goes to the slow queue
    assert to_slow == {"queue": SLOW_QUEUE}
    assert to_fast == {"queue": QUEUE}


def test_the_callback_url_is_compared_as_a_normalized_endpoint(
    point_at: Callable[..., Settings], health: HealthStore
) -> None:
    # Given a slow endpoint
    point_at()
    path = f"/hook/{uuid.uuid4().hex[:8]}"
    make_slow(health, f"https://127.0.0.1:443{path}")

    # When a delivery names it in another spelling (case, default port, a query)
    route = EndpointRouter(app).queue_for(delivery(make_event(), f"HTTPS://127.0.0.1{path}?x=1"))

    # Then it is the same endpoint, and slow
    assert route == SLOW_QUEUE


def test_a_conversations_configured_url_routes_when_no_callback_url_is_given(
    point_at: Callable[..., Settings], health: HealthStore, conversations: ConversationStore
) -> None:
    # Given two conversations, one configured with a slow endpoint, one with a fast one
    point_at()
    slow_url, fast_url = new_url(), new_url()
    make_slow(health, slow_url)
    slow_cid = registered(conversations, slow_url)
    fast_cid = registered(conversations, fast_url)
    router = EndpointRouter(app)

    # When their events are routed without a callback_url
    to_slow = router.queue_for(delivery(make_event(slow_cid)))
    to_fast = router.queue_for(delivery(make_event(fast_cid)))

    # Then the configured endpoint decides
    assert (to_slow, to_fast) == (SLOW_QUEUE, QUEUE)


def test_a_callback_url_overrides_the_conversations_configured_one(
    point_at: Callable[..., Settings], health: HealthStore, conversations: ConversationStore
) -> None:
    # Given a conversation configured with a slow endpoint
    point_at()
    slow_url = new_url()
    make_slow(health, slow_url)
    cid = registered(conversations, slow_url)

    # When its event is published with an explicit (fast) callback_url
    route = EndpointRouter(app).queue_for(delivery(make_event(cid), new_url()))

    # Then the callback_url is where it goes, and so what decides
    assert route == QUEUE


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"event": make_event()}, id="unknown-conversation"),
        pytest.param({"event": {"conversation_id": "not-a-uuid"}}, id="invalid-conversation-id"),
        pytest.param({}, id="no-event"),
    ],
)
def test_a_delivery_whose_endpoint_is_unknown_goes_to_the_default_queue(
    point_at: Callable[..., Settings], health: HealthStore, kwargs: dict[str, Any]
) -> None:
    # Given a slow endpoint somewhere (so the slow set is not empty)
    point_at()
    make_slow(health, new_url())

    # When a delivery with no resolvable endpoint is routed
    route = EndpointRouter(app)("deliver_webhook", (), kwargs, {})

    # Then it goes to the default queue
    assert route == {"queue": QUEUE}


def test_other_tasks_are_left_to_celerys_defaults(point_at: Callable[..., Settings]) -> None:
    point_at()

    assert EndpointRouter(app)("some_other_task", (), {"callback_url": new_url()}, {}) is None


@pytest.mark.parametrize("with_callback_url", [True, False], ids=["callback-url", "conversation"])
def test_redis_unreachable_routes_to_the_default_queue_without_raising(
    point_at: Callable[..., Settings], with_callback_url: bool
) -> None:
    # Given a store nobody listens on
    point_at(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_socket_timeout_s=0.5)
    router = EndpointRouter(app)
    kwargs = delivery(make_event(), new_url() if with_callback_url else None)

    # When a delivery is routed, twice (a failed refresh must not poison the next)
    routes = [router("deliver_webhook", (), kwargs, {}) for _ in range(2)]

    # Then it goes to the default queue, and nothing was raised
    assert routes == [{"queue": QUEUE}] * 2
    assert router.is_slow(normalize_endpoint(kwargs["callback_url"] or new_url())) is False


class HungStore:
    """A TCP server that accepts connections and never answers: a hung Redis."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}/0"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.connections.append(self._server.accept()[0])

    def close(self) -> None:
        self._server.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def hung_store() -> Iterator[HungStore]:
    store = HungStore()
    yield store
    store.close()


@pytest.mark.parametrize("with_callback_url", [True, False], ids=["callback-url", "conversation"])
def test_a_hung_store_is_asked_once_per_cache_period_not_on_every_publish(
    point_at: Callable[..., Settings], hung_store: HungStore, with_callback_url: bool
) -> None:
    # Given a store that accepts connections and never answers (each call waits
    # out the socket timeout), and a 60 s route cache
    point_at(redis_url=hung_store.url, redis_socket_timeout_s=0.2, route_cache_s=60.0)
    router = EndpointRouter(app)

    # When five deliveries are routed, for five conversations
    routes = [
        router.queue_for(delivery(make_event(), new_url() if with_callback_url else None))
        for _ in range(5)
    ]

    # Then all go to the default queue, and the router tried the store once:
    # the publishes after the failure did not each wait on it
    assert routes == [QUEUE] * 5
    assert len(hung_store.connections) == 1


# --- caching: Redis is read on refresh, not per publish ----------------------------------------


def test_many_publishes_read_redis_once_per_refresh_not_once_per_publish(
    point_at: Callable[..., Settings],
    health: HealthStore,
    conversations: ConversationStore,
    own_client: redis.Redis,
    clock: Clock,
) -> None:
    # Given a slow endpoint configured for a conversation, a 2 s route cache,
    # and a clean count of the commands the server has run
    point_at(route_cache_s=2.0)
    url = new_url()
    make_slow(health, url)
    cid = registered(conversations, url)
    router = EndpointRouter(app)
    own_client.config_resetstat()

    # When 1000 deliveries are routed over 10 s (by the router's clock)
    routes = set()
    for i in range(1000):
        clock.now = 1000.0 + i / 100
        routes.add(router.queue_for(delivery(make_event(cid))))

    # Then all went to the slow queue, and the server saw one read of the slow
    # set per 2 s (at 0, 2, 4, 6, 8 s) and one read of the conversation (its
    # cache lasts 60 s): nothing else, whatever the number of publishes
    assert routes == {SLOW_QUEUE}
    commands = router_commands(own_client)
    assert {c: n for c, n in commands.items() if c not in CONNECTION_SETUP} == {
        "smembers": 5,
        "get": 1,
    }
    # and one connection's handshake (HELLO, PING, and CLIENT SETINFO where supported)
    assert sum(commands.get(c, 0) for c in CONNECTION_SETUP) <= 4


def test_each_conversation_is_read_once_per_minute(
    point_at: Callable[..., Settings],
    conversations: ConversationStore,
    own_client: redis.Redis,
    clock: Clock,
) -> None:
    # Given three conversations and a long route cache
    point_at(route_cache_s=3600.0)
    cids = [registered(conversations, new_url()) for _ in range(3)]
    router = EndpointRouter(app)
    own_client.config_resetstat()

    # When each has 100 events routed within a minute, then one more a minute later
    for _ in range(100):
        for cid in cids:
            router.queue_for(delivery(make_event(cid)))
    clock.now += 60
    for cid in cids:
        router.queue_for(delivery(make_event(cid)))

    # Then each conversation was read twice (once per 60 s), the slow set once
    commands = router_commands(own_client)
    assert (commands.get("get"), commands.get("smembers")) == (6, 1)


def test_a_change_is_seen_only_after_the_route_cache_expires(
    point_at: Callable[..., Settings], health: HealthStore, clock: Clock
) -> None:
    # Given a fast endpoint routed once, with a 2 s route cache
    point_at(route_cache_s=2.0)
    url = new_url()
    health.observe(normalize_endpoint(url), duration_s=0.01, outcome="ok")
    router = EndpointRouter(app)
    kwargs = delivery(make_event(), url)
    assert router.queue_for(kwargs) == QUEUE

    # When it times out (turns slow)
    make_slow(health, url)

    # Then the router keeps its snapshot until 2 s have passed, then sees it
    clock.now += 1.9
    assert router.queue_for(kwargs) == QUEUE
    clock.now += 0.1
    assert router.queue_for(kwargs) == SLOW_QUEUE

    # And the same holds when it recovers
    make_fast(health, url)
    clock.now += 1.9
    assert router.queue_for(kwargs) == SLOW_QUEUE
    clock.now += 0.1
    assert router.queue_for(kwargs) == QUEUE


def test_a_route_cache_of_zero_reads_the_slow_set_every_time(
    point_at: Callable[..., Settings], health: HealthStore, clock: Clock
) -> None:
    # Given WEBHOOKS_ROUTE_CACHE_S=0 (what the integration tests use)
    point_at(route_cache_s=0.0)
    url = new_url()
    router = EndpointRouter(app)
    kwargs = delivery(make_event(), url)
    assert router.queue_for(kwargs) == QUEUE

    # When the endpoint turns slow, with no time passing at all
    make_slow(health, url)

    # Then the very next delivery sees it
    assert router.queue_for(kwargs) == SLOW_QUEUE


def test_a_conversations_new_url_is_seen_after_a_minute(
    point_at: Callable[..., Settings],
    health: HealthStore,
    conversations: ConversationStore,
    clock: Clock,
) -> None:
    # Given a conversation on a fast endpoint, routed once
    point_at()
    cid = registered(conversations, new_url())
    router = EndpointRouter(app)
    assert router.queue_for(delivery(make_event(cid))) == QUEUE

    # When it is reconfigured to a slow endpoint
    slow_url = new_url()
    make_slow(health, slow_url)
    conversations.set(cid, {"config": {"callback_url": slow_url}})

    # Then the router uses the cached URL for a minute, then the new one
    clock.now += 59
    assert router.queue_for(delivery(make_event(cid))) == QUEUE
    clock.now += 1
    assert router.queue_for(delivery(make_event(cid))) == SLOW_QUEUE


def test_a_real_route_cache_expires_in_real_time(
    point_at: Callable[..., Settings], health: HealthStore
) -> None:
    # Given a 0.2 s route cache (no fake clock) and a fast endpoint routed once
    point_at(route_cache_s=0.2)
    url = new_url()
    router = EndpointRouter(app)
    kwargs = delivery(make_event(), url)
    assert router.queue_for(kwargs) == QUEUE

    # When it turns slow
    make_slow(health, url)

    # Then within a little more than the cache period the router sees it
    deadline = time.monotonic() + 5
    while router.queue_for(kwargs) != SLOW_QUEUE:
        assert time.monotonic() < deadline, "the slow endpoint was never seen"
        time.sleep(0.02)


# --- publishing: the message lands in the routed queue --------------------------------------


def test_a_delivery_to_a_slow_endpoint_is_published_to_the_slow_queue(
    point_at: Callable[..., Settings], health: HealthStore, own_client: redis.Redis
) -> None:
    # Given a producer on a Redis with no worker, one slow endpoint and one fast
    point_at(route_cache_s=0.0)
    slow_url, fast_url = new_url(), new_url()
    make_slow(health, slow_url)

    # When three events are published to the slow one and two to the fast one
    for _ in range(3):
        deliver_webhook.delay(make_event(), slow_url)
    for _ in range(2):
        deliver_webhook.delay(make_event(), fast_url)

    # Then the broker's lists hold them apart
    assert (own_client.llen(SLOW_QUEUE), own_client.llen(QUEUE)) == (3, 2)


def test_an_explicit_queue_wins_over_the_router(
    point_at: Callable[..., Settings], health: HealthStore, own_client: redis.Redis
) -> None:
    # Given a slow endpoint
    point_at(route_cache_s=0.0)
    url = new_url()
    make_slow(health, url)

    # When a delivery to it is published with an explicit queue (as retries and
    # releases do)
    deliver_webhook.apply_async(kwargs={"event": make_event(), "callback_url": url}, queue=QUEUE)

    # Then the explicit queue is used
    assert (own_client.llen(SLOW_QUEUE), own_client.llen(QUEUE)) == (0, 1)


def test_the_pump_releases_a_slow_endpoints_line_to_the_slow_queue(
    point_at: Callable[..., Settings], health: HealthStore, own_client: redis.Redis
) -> None:
    # Given parked deliveries for a slow endpoint (2) and a fast one (3)
    point_at(route_cache_s=0.0)
    lot = ParkingLot(own_client)
    roomy = Limits(rate=RateLimit(1000, 60), max_concurrency=100)
    slow, fast = normalize_endpoint(new_url()), normalize_endpoint(new_url())
    make_slow(health, slow)
    for endpoint, count in ((slow, 2), (fast, 3)):
        for _ in range(count):
            lot.park(endpoint, parked(endpoint), roomy, wait_s=0)

    # When the pump runs
    released = Pump(lot, owner="test").tick()

    # Then the slow endpoint's line went to the slow queue and the fast one's to
    # the released queue
    assert released == 5
    assert (
        own_client.llen(SLOW_QUEUE),
        own_client.llen(RELEASED_QUEUE),
        own_client.llen(QUEUE),
    ) == (2, 3, 0)
    assert own_client.zcard(keys.endpoint(slow).parked) == 0
