"""The store on a Redis Cluster: the integration scenarios against three masters.

Real parts only: a 3-master cluster (:class:`testing.cluster.RedisCluster`)
as the store, a separate single ``redis-server`` as the broker (kombu has no
Cluster transport), a real ``celery worker`` and real HTTPS receivers. Each
scenario would fail on a cluster if a script, pipeline or transaction
crossed hash slots (``CROSSSLOT``), so a pass means every path it takes keeps
to one slot per script and transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from config.settings import Settings
from config.wiring import conversation_store
from tasks import deliver_webhook
from tasks.replay import republish
from testing.cluster import RedisCluster
from testing.receiver import Receiver, Respond, TestCA
from testing.redis_server import RedisServer
from testing.worker import WorkerProcess
from tests.support import make_event, producer_using, unique_path, wait_until, worker_env
from webhooks import keys
from webhooks.attempts import AttemptLog
from webhooks.console.queries import endpoint_rows
from webhooks.conversations import ConversationStore
from webhooks.deadletters import DeadLetters
from webhooks.endpoints import normalize_endpoint
from webhooks.health import HealthPolicy
from webhooks.metrics import Metrics
from webhooks.ordering import OrderedLines
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.parking import ParkingLot
from webhooks.ratelimit import Denied, Granted, Limiter, Limits, RateLimit
from webhooks.store import Store


@dataclass
class ClusterStore:
    """The cluster as the producer and the tests see it."""

    cluster: RedisCluster
    client: Store
    conversations: ConversationStore
    outcomes: OutcomeStore

    def register(self, receiver: Receiver, path: str, **config: object) -> str:
        cid = str(uuid.uuid4())
        conversation = self.conversations.set(
            cid, {"config": {"callback_url": receiver.url(path), **config}}
        )
        receiver.verify_with(path, conversation.secret)
        return cid

    def wait_outcomes(self, webhook_ids: list[str], timeout: float = 20.0) -> list[Outcome]:
        return [
            wait_until(lambda i=i: self.outcomes.get(i), timeout, f"an outcome for {i}")
            for i in webhook_ids
        ]


@pytest.fixture(scope="module")
def cluster_broker() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def store(
    redis_cluster: RedisCluster,
    cluster_broker: RedisServer,
    producer_settings: Settings,
) -> Iterator[ClusterStore]:
    """The producer (this process) publishes to the broker, with the cluster as its store."""
    with producer_using(
        producer_settings, redis_url=redis_cluster.url, broker_url=cluster_broker.url
    ) as (settings, client):
        yield ClusterStore(
            cluster=redis_cluster,
            client=client,
            conversations=conversation_store(client, settings),
            outcomes=OutcomeStore(client, retention_s=3600),
        )


@pytest.fixture(scope="module")
def cluster_worker(
    redis_cluster: RedisCluster, cluster_broker: RedisServer, test_ca: TestCA, store: ClusterStore
) -> Iterator[WorkerProcess]:
    env = worker_env(
        redis_cluster.url,
        test_ca,
        WEBHOOKS_BROKER_URL=cluster_broker.url,
        WEBHOOKS_METRICS_FLUSH_S="0.2",
    )
    with WorkerProcess(env, concurrency=2, name="cluster") as process:
        yield process


def publish(cid: str, count: int) -> list[str]:
    return [deliver_webhook.delay(make_event(cid)).id for _ in range(count)]


def node_keys(cluster: RedisCluster, pattern: str) -> list[set[str]]:
    """The keys matching ``pattern`` that each node holds."""
    found = []
    for node in cluster.nodes:
        client = cluster.client_of(node)
        found.append({str(k) for k in client.scan_iter(match=pattern, count=1000)})
        client.close()
    return found


def test_the_store_is_spread_over_every_node_and_the_broker_holds_none_of_it(
    store: ClusterStore, cluster_broker: RedisServer, receiver: Receiver
) -> None:
    # When thirty conversations are registered through the store's client
    cids = {store.register(receiver, unique_path()) for _ in range(30)}

    # Then every node of the cluster holds some of them (it is a cluster
    # client, not one node's), each exactly once
    held = node_keys(store.cluster, f"{keys.conversation('')}*")
    assert all(held), [len(h) for h in held]
    assert set().union(*held) >= {keys.conversation(c) for c in cids}
    assert sum(len(h) for h in held) == len(set().union(*held))
    assert {str(c) for c in store.client.smembers(keys.CONVERSATIONS)} >= cids

    # And the broker has none of the store's keys
    broker = redis.Redis(port=cluster_broker.port, socket_timeout=2)
    assert not list(broker.scan_iter(match=f"{keys.PREFIX}:conversation*"))
    broker.close()


def test_a_burst_over_the_rate_limit_is_parked_and_released_by_the_pump(
    store: ClusterStore, cluster_worker: WorkerProcess, receiver: Receiver
) -> None:
    # Given an endpoint allowed 4 requests a second
    path = unique_path()
    cid = store.register(receiver, path, rate_limit="4/second")
    endpoint = normalize_endpoint(receiver.url(path))
    lot = ParkingLot(store.client)

    # When 12 events are published at once
    webhook_ids = publish(cid, 12)

    # Then the window binds: some wait in the endpoint's line, indexed for the pump
    wait_until(lambda: lot.backlog(endpoint) > 0, 10, "deliveries parked")
    assert store.client.zscore(keys.PARKED_ENDPOINTS, endpoint) is not None

    # And the pump releases the backlog: each is delivered, once
    outcomes = store.wait_outcomes(webhook_ids)
    assert {o.state for o in outcomes} == {"delivered"}
    arrived = [r.headers["webhook-id"] for r in receiver.received(path)]
    assert sorted(arrived) == sorted(webhook_ids)
    wait_until(lambda: lot.backlog(endpoint) == 0, 10, "the line empty")

    # And `webhooks endpoints` (and the console) read the endpoint's state off the cluster
    rows = wait_until(
        lambda: [r for r in endpoint_rows(store.client, HealthPolicy()) if r.endpoint == endpoint],
        10,
        "the endpoint's health flushed",
    )
    assert rows[0].limits.startswith("4 1000")


def test_a_failing_receiver_leaves_its_attempts_metrics_and_a_dead_letter_to_replay(
    store: ClusterStore, cluster_worker: WorkerProcess, receiver: Receiver
) -> None:
    # Given a receiver that answers 500 to every attempt (1 + 3 retries)
    path = unique_path()
    cid = store.register(receiver, path)
    receiver.script(path, [Respond(500)] * 4)
    endpoint = normalize_endpoint(receiver.url(path))
    event = make_event(cid)

    # When an event is published
    webhook_id = deliver_webhook.delay(event).id

    # Then it ends in a dead letter, listed with its event
    (outcome,) = store.wait_outcomes([webhook_id])
    assert (outcome.state, outcome.attempts, outcome.status) == ("failed", 4, 500)
    letters = DeadLetters(store.client)
    (letter,) = [d for d in letters.find() if d.webhook_id == webhook_id]
    assert letter.event["data"]["id"] == event["data"]["id"]

    # And the attempt log has every attempt
    attempts = AttemptLog(store.client, retention_s=3600).for_message(event["data"]["id"])
    assert sorted(a.attempt for a in attempts) == [1, 2, 3, 4]
    assert {a.status for a in attempts} == {500}

    # And the shared metrics count the failed delivery for the endpoint
    def failed() -> float:
        return sum(
            s.value
            for s in Metrics(store.client).totals()
            if s.name == "deliveries"
            and s.endpoint == endpoint
            and ("outcome", "failed") in s.labels
        )

    wait_until(lambda: failed() == 1, 10, "the failure in the metrics")

    # When it is replayed, the receiver answering 200 now
    assert letters.replay([letter], republish) == 1

    # Then it is delivered under its own id, and no longer a dead letter
    wait_until(
        lambda: (o := store.outcomes.get(webhook_id)) and o.state == "delivered", 20, "replayed"
    )
    assert receiver.received(path)[-1].headers["webhook-id"] == webhook_id
    assert webhook_id not in {d.webhook_id for d in letters.find()}


def test_an_ordered_conversation_arrives_in_order(
    store: ClusterStore, cluster_worker: WorkerProcess, receiver: Receiver
) -> None:
    # Given an ordered conversation whose receiver fails the first attempt of event 2
    path = unique_path()
    cid = store.register(receiver, path, ordering="conversation")
    receiver.script(path, [Respond(200), Respond(500)])

    # When six events are published at once
    webhook_ids = publish(cid, 6)

    # Then all are delivered, first arriving in their numbered order
    outcomes = store.wait_outcomes(webhook_ids)
    assert {o.state for o in outcomes} == {"delivered"}
    first_seen: list[int] = []
    for request in receiver.received(path):
        number = int(request.headers["x-webhook-sequence"])
        if number not in first_seen:
            first_seen.append(number)
    assert first_seen == [1, 2, 3, 4, 5, 6]

    # And the line is left unblocked, with nothing due
    lines = OrderedLines(store.client)
    wait_until(
        lambda: not [b for b in lines.blocked() if b.conversation_id == cid], 10, "unblocked"
    )
    assert store.client.get(keys.line(cid).due) is None


def test_a_retry_after_hold_is_set_after_the_nodes_lost_their_scripts(
    store: ClusterStore,
) -> None:
    # Given a granted attempt, then every primary's script cache emptied (a
    # restart or a failover since the worker loaded its scripts)
    limiter = Limiter(store.client, lease_s=30)
    endpoint = normalize_endpoint(f"https://receiver.example/{uuid.uuid4().hex}")
    grant = limiter.acquire(endpoint, Limits(RateLimit(100, 60), 10))
    assert isinstance(grant, Granted)
    assert isinstance(store.client, redis.RedisCluster)
    for node in store.client.get_primaries():
        node.redis_connection.script_flush()

    # When the attempt gives its slot back with the receiver's Retry-After
    pipe = store.client.pipeline(transaction=False)
    limiter.release_into(pipe, endpoint, grant.token, hold_s=5)
    replies = pipe.execute(raise_on_error=False)

    # Then the hold is set, the slot is free, and nothing failed
    ek = keys.endpoint(endpoint)
    assert not [r for r in replies if isinstance(r, Exception)]
    assert 3000 < store.client.pttl(ek.hold) <= 5000
    assert limiter.acquire(endpoint, Limits(RateLimit(100, 60), 10)) == Denied(
        wait_s=pytest.approx(5, abs=2), reason="hold"
    )
