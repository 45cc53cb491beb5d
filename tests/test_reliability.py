"""Reliability end to end: measured retry schedules, killed workers, a restarted Redis.

Real parts only: ``redis-server`` processes, ``celery worker`` subprocesses and
an HTTPS receiver. Each test runs on a Redis of its own, with the producer
(this process) pointed at it and its own workers, so that it can kill workers,
restart Redis and read the broker's bookkeeping without touching the
session's shared Redis and worker.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
import redis

from config.settings import DEFAULT_RETRY_SCHEDULE_S, Settings
from config.wiring import conversation_store
from tasks import deliver_webhook
from testing.receiver import Hang, ReceivedRequest, Receiver, Respond
from testing.redis_server import RedisServer
from testing.worker import WorkerProcess
from tests.support import Broker, make_event, registered, unique_path, wait_until
from webhooks import keys
from webhooks.conversations import ConversationStore
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.queues import QUEUE

#: Kombu's Redis transport keeps each message it hands to a worker in this hash
#: (payload) and sorted set (hand-out time) until the worker acknowledges it.
UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"


# --- helpers -----------------------------------------------------------------


def gaps_s(requests: list[ReceivedRequest]) -> list[float]:
    """Seconds between consecutive arrivals at the receiver."""
    times = [r.received_at for r in requests]
    return [round(later - earlier, 3) for earlier, later in itertools.pairwise(times)]


@dataclass(frozen=True)
class Held:
    """A message the broker handed to a worker and has not seen acknowledged."""

    task_id: str
    retries: int
    handed_out_at: float
    eta: datetime | None


def held_messages(client: redis.Redis) -> list[Held]:
    held = []
    for tag, raw in client.hgetall(UNACKED_KEY).items():
        since = client.zscore(UNACKED_INDEX_KEY, tag)
        if since is None:
            continue  # acknowledged between the two reads
        message, _exchange, _routing_key = json.loads(raw)
        headers = message["headers"]
        eta = datetime.fromisoformat(headers["eta"]) if headers.get("eta") else None
        held.append(Held(headers["id"], int(headers["retries"]), float(since), eta))
    return held


def minimal_visibility_timeout_s(**settings: object) -> int:
    """The smallest broker visibility timeout the Settings validator accepts."""
    probe = Settings(visibility_timeout_s=10**6, **settings)  # type: ignore[arg-type]
    return int(probe.task_time_limit_s + max(probe.retry_schedule)) + 1


# --- fixtures ----------------------------------------------------------------


def assert_nothing_left(broker: Broker) -> None:
    """No message is queued or held unacknowledged: nothing can be delivered again."""
    assert held_messages(broker.client) == []
    assert broker.client.llen(QUEUE) == 0


@pytest.fixture
def workers(broker: Broker) -> Iterator[Callable[..., WorkerProcess]]:
    """Start single-process workers on ``broker``; whatever still runs is killed after."""
    started: list[WorkerProcess] = []

    def start(
        name: str = "worker", pool: str = "prefork", concurrency: int = 1, **overrides: str
    ) -> WorkerProcess:
        process = WorkerProcess(
            broker.worker_env(**overrides),
            concurrency=concurrency,
            name=name,
            extra_args=("--pool", pool),
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


# --- retry schedule ----------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule_env", "expected_gaps_s"),
    [
        pytest.param("1,2,3", [1.0, 2.0, 3.0], id="1-2-3"),
        pytest.param(
            ",".join(f"{s:g}" for s in DEFAULT_RETRY_SCHEDULE_S),
            [4.0, 8.0, 10.0],
            id="guide-default-4-8-10",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_retries_arrive_on_the_schedule(
    schedule_env: str,
    expected_gaps_s: list[float],
    broker: Broker,
    workers: Callable[..., WorkerProcess],
    receiver: Receiver,
) -> None:
    # Given a worker with this retry schedule, and an endpoint failing three times
    workers(WEBHOOKS_RETRY_SCHEDULE=schedule_env)
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.script(path, [Respond(500)] * 3)

    # When an event is published
    result = deliver_webhook.delay(make_event(cid))

    # Then four attempts arrive, spaced as the schedule says, as one delivery
    requests = receiver.wait_for(4, path, timeout=sum(expected_gaps_s) + 20)
    outcome = broker.wait_outcome(result.id)
    assert gaps_s(requests) == pytest.approx(expected_gaps_s, abs=0.5), gaps_s(requests)
    assert [r.headers["x-webhook-attempt"] for r in requests] == ["1", "2", "3", "4"]
    assert {r.headers["webhook-id"] for r in requests} == {result.id}
    assert all(r.signature_ok for r in requests)
    assert (outcome.state, outcome.attempts, outcome.status) == ("delivered", 4, 200)
    assert len(receiver.received(path)) == 4


# --- killed processes --------------------------------------------------------


def test_a_pool_process_killed_mid_delivery_is_redelivered(
    broker: Broker, workers: Callable[..., WorkerProcess], receiver: Receiver
) -> None:
    # Given a worker with one pool process, in the middle of a request that hangs
    worker = workers(WEBHOOKS_TIMEOUT_S="30")  # the hang must outlast the kill
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.script(path, [Hang(120)])
    result = deliver_webhook.delay(make_event(cid))
    receiver.wait_for(1, path)

    # When that pool process is SIGKILLed
    (child,) = worker.pool_pids()
    os.kill(child, signal.SIGKILL)

    # Then the main process survives and requeues the message, and a new pool
    # process delivers the event again, under the same webhook-id
    first, second = receiver.wait_for(2, path, timeout=30)
    outcome = broker.wait_outcome(result.id)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == result.id
    assert second.signature_ok is True
    assert (outcome.state, outcome.status) == ("delivered", 200)
    assert worker.process is not None and worker.process.poll() is None
    assert child not in worker.pool_pids()
    assert "WorkerLostError" in worker.output()
    worker.stop()  # warm: its acknowledgement is written
    assert_nothing_left(broker)
    assert len(receiver.received(path)) == 2


#: Heartbeats every 0.5 s, dead after 2 s silent; the broker's visibility
#: timeout stays at the tests' 60 s, far past anything measured here.
HEARTBEAT = {"WEBHOOKS_WORKER_HEARTBEAT_S": "0.5", "WEBHOOKS_WORKER_DEAD_AFTER_S": "2"}


def test_a_killed_worker_is_redelivered_by_a_live_one_once_its_heartbeat_stops(
    broker: Broker, workers: Callable[..., WorkerProcess], receiver: Receiver
) -> None:
    # Given a worker in the middle of a request that hangs, and a second worker
    crashed = workers("crashed", WEBHOOKS_TIMEOUT_S="30", **HEARTBEAT)
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.script(path, [Hang(120)])
    result = deliver_webhook.delay(make_event(cid))
    receiver.wait_for(1, path)
    survivor = workers("survivor", **HEARTBEAT)

    # When the whole first worker is SIGKILLed
    crashed.kill()
    killed_at = time.time()

    # Then the message is neither lost nor queued: Redis holds it unacknowledged
    (held,) = held_messages(broker.client)
    assert (held.task_id, held.retries) == (result.id, 0)

    # And once the dead worker has been silent for 2 s, the survivor hands
    # the message out again, long before the 60 s visibility timeout, and
    # the same delivery arrives once more
    first, second = receiver.wait_for(2, path, timeout=30)
    assert second.received_at - killed_at < 30
    outcome = broker.wait_outcome(result.id)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == result.id
    assert second.headers["x-webhook-attempt"] == "1"  # a redelivery, not a retry
    assert (outcome.state, outcome.status) == ("delivered", 200)
    assert "went silent: 1 unacknowledged deliveries handed out again" in survivor.output()
    survivor.stop()
    assert_nothing_left(broker)
    assert len(receiver.received(path)) == 2


def test_a_live_workers_slow_and_waiting_deliveries_are_not_handed_out_twice(
    broker: Broker, workers: Callable[..., WorkerProcess], receiver: Receiver
) -> None:
    # Given two live workers that take a worker silent for 2 s for dead, an
    # answer that takes 4 s, and a failure whose retry waits 3 s
    for name in ("one", "two"):
        workers(name, WEBHOOKS_TIMEOUT_S="30", WEBHOOKS_RETRY_SCHEDULE="3", **HEARTBEAT)
    slow, failing = unique_path(), unique_path()
    receiver.script(slow, [Respond(200, delay_s=4)])
    receiver.script(failing, [Respond(500)])
    results = [
        deliver_webhook.delay(make_event(registered(broker.conversations, receiver, path)[0]))
        for path in (slow, failing)
    ]

    # When both are delivered
    outcomes = broker.wait_outcomes([r.id for r in results], timeout=30)

    # Then each request was made exactly as often as the answers required
    assert [(o.state, o.attempts) for o in outcomes] == [("delivered", 1), ("delivered", 2)]
    assert len(receiver.received(slow)) == 1
    assert len(receiver.received(failing)) == 2
    # (The acknowledgement follows the outcome record by a moment.)
    wait_until(lambda: not held_messages(broker.client), 5, "the last acknowledgement")
    assert_nothing_left(broker)


# --- restarted Redis ----------------------------------------------------------

#: One retry, long enough for Redis to be stopped and started within it.
RESTART_SCHEDULE_S = 3.0
RESTART_SETTINGS = {
    "WEBHOOKS_RETRY_SCHEDULE": f"{RESTART_SCHEDULE_S:g}",
    "WEBHOOKS_TIMEOUT_S": "1",
    "WEBHOOKS_CONNECT_TIMEOUT_S": "1",
    "WEBHOOKS_VISIBILITY_TIMEOUT_S": str(
        minimal_visibility_timeout_s(
            timeout_s=1.0, connect_timeout_s=1.0, retry_schedule=(RESTART_SCHEDULE_S,)
        )
    ),
}


def restart_redis_during_a_retry_countdown(
    broker: Broker, receiver: Receiver, path: str
) -> tuple[str, Held]:
    """Fail a delivery once, then restart Redis while its retry is counting down."""
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.script(path, [Respond(500)])
    result = deliver_webhook.delay(make_event(cid))
    receiver.wait_for(1, path)
    # The retry is published and handed to the worker, which holds it until its ETA
    wait_until(
        lambda: [h.retries for h in held_messages(broker.client)] == [1],
        timeout=10,
        what="the worker holds the retry",
    )
    (retry,) = held_messages(broker.client)
    assert retry.eta is not None
    broker.server.stop()
    time.sleep(1.5)
    broker.server.start()  # same port, same AOF
    assert time.time() < retry.eta.timestamp()  # still within the countdown
    return result.id, retry


def test_a_retry_pending_across_a_redis_restart_is_kept_and_delivered(
    broker: Broker, workers: Callable[..., WorkerProcess], receiver: Receiver
) -> None:
    # Given a delivery that failed once and waits out its retry countdown
    worker = workers("restarted", **RESTART_SETTINGS)
    path = unique_path()

    # When Redis is stopped and started again during the countdown
    webhook_id, retry = restart_redis_during_a_retry_countdown(broker, receiver, path)

    # Then the retry survives the restart, held unacknowledged in Redis (AOF)
    assert retry.task_id == webhook_id

    # And the reconnected worker takes back what its old connection held at
    # once (Celery drops it with the channel), without waiting for the
    # visibility timeout: the retry is made, once, and the event delivered
    first, second = receiver.wait_for(2, path, timeout=30)
    visibility_s = int(RESTART_SETTINGS["WEBHOOKS_VISIBILITY_TIMEOUT_S"])
    assert second.received_at < retry.handed_out_at + visibility_s
    outcome = broker.wait_outcome(webhook_id)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == webhook_id
    assert [first.headers["x-webhook-attempt"], second.headers["x-webhook-attempt"]] == ["1", "2"]
    assert (outcome.state, outcome.attempts, outcome.status) == ("delivered", 2, 200)
    assert "went silent: 1 unacknowledged deliveries handed out again" in worker.output()
    worker.stop()
    assert_nothing_left(broker)
    assert len(receiver.received(path)) == 2


#: An attempt long enough for Redis to be stopped and started within it.
SLOW_ANSWER_SETTINGS = {
    **RESTART_SETTINGS,
    "WEBHOOKS_TIMEOUT_S": "10",
    "WEBHOOKS_VISIBILITY_TIMEOUT_S": str(
        minimal_visibility_timeout_s(
            timeout_s=10.0, connect_timeout_s=1.0, retry_schedule=(RESTART_SCHEDULE_S,)
        )
    ),
}


@pytest.mark.parametrize("pool", ["prefork", "gevent"])  # the Procfile's two workers
def test_an_attempt_cut_short_by_a_redis_restart_is_made_again(
    broker: Broker, workers: Callable[..., WorkerProcess], receiver: Receiver, pool: str
) -> None:
    # Given a worker in the middle of an attempt whose receiver is slow to
    # answer, with room for more, so it is waiting on the broker meanwhile
    worker = workers(pool, pool=pool, concurrency=2, **SLOW_ANSWER_SETTINGS)
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.script(path, [Hang(8), Respond(200)])
    result = deliver_webhook.delay(make_event(cid))
    receiver.wait_for(1, path)

    # When Redis is stopped and started again while the attempt runs, which
    # makes Celery cancel the running task (gevent reports that as a success)
    broker.server.stop()
    time.sleep(1.5)
    broker.server.start()

    # Then the cancelled delivery is not acknowledged but handed out again,
    # and the event is delivered under the same webhook-id
    first, second = receiver.wait_for(2, path, timeout=30)
    outcome = broker.wait_outcome(result.id, timeout=30)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == result.id
    assert (outcome.state, outcome.status) == ("delivered", 200)
    assert "cannot be acknowledged after a connection loss" in worker.output(), worker.output()
    worker.stop()
    assert_nothing_left(broker)


def test_a_worker_holding_a_retry_survives_a_redis_restart(
    broker: Broker, workers: Callable[..., WorkerProcess], receiver: Receiver
) -> None:
    # Given a worker waiting out a retry countdown
    worker = workers("survivor", **RESTART_SETTINGS)

    # When Redis is stopped and started again during the countdown
    restart_redis_during_a_retry_countdown(broker, receiver, unique_path())

    # Then the worker reconnects and goes on consuming
    later = unique_path()
    cid, _ = registered(broker.conversations, receiver, later)
    deliver_webhook.delay(make_event(cid))
    assert worker.process is not None
    wait_until(
        lambda: worker.process.poll() is not None or receiver.received(later),  # type: ignore[union-attr]
        timeout=20,
        what="the worker delivers an event published after the restart, or exits",
    )
    assert worker.process.poll() is None, "\n".join(
        line for line in worker.lines if "CRITICAL" in line or "Error" in line
    )
    assert len(receiver.received(later)) == 1


#: One retry, 5 s after the first attempt; a delivery handed back is made
#: again after 5 s too: time enough to start the stopped store again first.
HAND_BACK_SCHEDULE = "5"


@dataclass
class SeparateStore:
    """A worker whose store is a Redis of its own beside the broker, so the
    store can go away while the broker stays."""

    server: RedisServer
    client: redis.Redis
    worker: WorkerProcess
    conversations: ConversationStore

    def outage_until(self, logged: str) -> None:
        """Stop the store until the worker logs ``logged``; then start it again."""
        self.server.stop()
        wait_until(lambda: logged in self.worker.output(), timeout=30, what=repr(logged))
        self.server.start()  # same port, same AOF

    def wait_outcome(self, webhook_id: str) -> Outcome:
        outcomes = OutcomeStore(self.client, retention_s=60)
        return wait_until(lambda: outcomes.get(webhook_id), 30, f"an outcome for {webhook_id}")


@pytest.fixture
def separate_store(
    broker: Broker, workers: Callable[..., WorkerProcess], producer_settings: Settings
) -> Iterator[SeparateStore]:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
        worker = workers(
            "separate-store",
            WEBHOOKS_REDIS_URL=server.url,
            WEBHOOKS_BROKER_URL=broker.server.url,
            WEBHOOKS_RETRY_SCHEDULE=HAND_BACK_SCHEDULE,
        )
        yield SeparateStore(server, client, worker, conversation_store(client, producer_settings))
        client.close()


def test_a_delivery_whose_dead_letter_cannot_be_stored_is_tried_again(
    separate_store: SeparateStore, receiver: Receiver
) -> None:
    # Given a receiver that always fails, with one retry 5 s after the first attempt
    path = unique_path()
    cid, _ = registered(separate_store.conversations, receiver, path)
    receiver.always(path, Respond(500))
    result = deliver_webhook.delay(make_event(cid))
    receiver.wait_for(1, path)

    # When the store goes away during the countdown, so that the last
    # attempt fails and its dead letter cannot be stored, and comes back
    separate_store.outage_until("dead letter could not be stored; trying it again")

    # Then the delivery was not acknowledged and forgotten: it is tried
    # again and, failing again, kept as a dead letter
    outcome = separate_store.wait_outcome(result.id)
    assert (outcome.state, outcome.status, outcome.attempts) == ("failed", 500, 2)
    assert separate_store.client.exists(keys.dead_letter(result.id))
    assert len(receiver.received(path)) == 2


def test_a_delivery_whose_outcome_cannot_be_recorded_is_sent_again(
    separate_store: SeparateStore, receiver: Receiver
) -> None:
    # Given a receiver that answers 200 after 1 s (the read timeout is 2 s)
    path = unique_path()
    cid, _ = registered(separate_store.conversations, receiver, path)
    receiver.always(path, Respond(200, delay_s=1))
    result = deliver_webhook.delay(make_event(cid))

    # When the store goes away while the receiver takes its time, so the
    # 2xx cannot be recorded, and comes back
    receiver.wait_for(1, path)
    separate_store.outage_until("could not be recorded; made again")

    # Then the event is not left delivered without a record: it is sent
    # again, under the same webhook-id and attempt number, and recorded
    outcome = separate_store.wait_outcome(result.id)
    assert (outcome.state, outcome.status, outcome.attempts) == ("delivered", 200, 1)
    first, second = receiver.received(path)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == result.id
    assert first.headers["x-webhook-attempt"] == second.headers["x-webhook-attempt"] == "1"
