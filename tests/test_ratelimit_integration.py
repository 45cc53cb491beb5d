"""Rate limits, concurrency caps and back-pressure end to end, across workers.

Real parts only: a ``redis-server`` of each test's own (the producer, this
process, publishes to it), two or more ``celery worker`` processes consuming
from it, and an HTTPS receiver that records when each request arrived.
The limits are promised per endpoint across every worker, so every test runs
at least two worker processes against one endpoint.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest
import redis

from config.settings import Settings
from tasks import deliver_webhook
from testing.receiver import Hang, ReceivedRequest, Receiver, Respond
from testing.worker import WorkerProcess
from tests.support import (
    Broker,
    make_event,
    registered,
    unique_path,
    wait_until,
    worker_env,
)
from webhooks import keys
from webhooks.endpoints import normalize_endpoint
from webhooks.outcomes import Outcome
from webhooks.parking import ParkingLot
from webhooks.queues import QUEUE, RELEASED_QUEUE
from webhooks.ratelimit import usage

#: Kombu's Redis transport keeps each message handed to a worker here until acked.
UNACKED_KEY = "unacked"

#: Arrivals are timed by the receiver (``time.time()`` once it has read the
#: request), the limiter by Redis ``TIME`` at acquire, on the same host clock.
#: An arrival lags its acquire by the send latency (signing, writing to the
#: socket, the receiver's thread scheduling in this process); measured here
#: at 1-10 ms on a warm connection, but 25-85 ms for a worker process's first
#: request (TCP and TLS handshake), hence ``warm_up``. Two arrivals can be
#: closer together than their acquires by the difference of their lags: this
#: slack allows that, and nothing more. The exact check runs on Redis' own
#: log of acquire times (``AcquireLog``), with no slack at all.
ARRIVAL_SLACK_S = 0.025
#: Redis ``TIME`` is read in whole milliseconds (floored).
REDIS_MS = 0.001
#: The burst endpoint's limit, per second.
BURST_RATE_PER_S = 50


# --- fixtures and helpers --------------------------------------------------------


def wait_settled(broker: Broker, endpoints: list[str], timeout: float = 30.0) -> None:
    """Until nothing is queued, held unacknowledged, or parked for ``endpoints``."""
    lot = ParkingLot(broker.client)

    def settled() -> bool:
        return (
            broker.client.llen(QUEUE) == 0
            and broker.client.llen(RELEASED_QUEUE) == 0
            and broker.client.hlen(UNACKED_KEY) == 0
            and all(lot.backlog(e) == 0 for e in endpoints)
        )

    wait_until(settled, timeout, "the queue, the unacked set and the waiting lines empty")


@pytest.fixture
def workers(broker: Broker) -> Iterator[Callable[..., list[WorkerProcess]]]:
    """Start ``count`` workers with the same settings, in parallel; all killed after."""
    started: list[WorkerProcess] = []

    def start(count: int = 2, *, concurrency: int = 2, **overrides: str) -> list[WorkerProcess]:
        batch = [
            WorkerProcess(
                worker_env(broker.server.url, broker.ca, **overrides),
                concurrency=concurrency,
                name=f"w{len(started) + i}",
            )
            for i in range(count)
        ]
        started.extend(batch)
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda w: w.start(), batch))
        return batch

    yield start
    for process in started:
        process.kill()


def warm_up(broker: Broker, receiver: Receiver, processes: int) -> None:
    """Have every worker process open its connection to ``receiver`` (see ARRIVAL_SLACK_S).

    Slow answers on another path (another endpoint, same connection pool)
    keep each process busy, so the events spread over all of them.
    """
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.always(path, Respond(delay_s=0.3))
    broker.wait_outcomes(publish(cid, 2 * processes))


def held_task_ids(client: redis.Redis) -> list[str]:
    """Messages handed to a worker and not acknowledged (kombu: [message, exchange, key])."""
    return [json.loads(raw)[0]["headers"]["id"] for raw in client.hvals(UNACKED_KEY)]


def scored(client: redis.Redis, key: str) -> list[tuple[str, float]]:
    """A sorted set's members with their scores, lowest first."""
    return cast(list[tuple[str, float]], client.zrange(key, 0, -1, withscores=True))


def publish(cid: str, count: int) -> list[str]:
    return [deliver_webhook.delay(make_event(cid)).id for _ in range(count)]


def endpoint_of(receiver: Receiver, path: str) -> str:
    return normalize_endpoint(receiver.url(path))


def arrivals(requests: list[ReceivedRequest]) -> list[float]:
    return sorted(r.received_at for r in requests)


def most_in_any_window(times: Sequence[float], window: float) -> int:
    """The most ``times`` inside any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def closest_spacing(times: Sequence[float], count: int) -> float:
    """The shortest span holding ``count + 1`` consecutive ``times``: for a limit of
    ``count`` per window, every such span must be at least the window."""
    ordered = sorted(times)
    return min(later - earlier for earlier, later in zip(ordered, ordered[count:], strict=False))


def assert_delivered_once_each(
    receiver: Receiver, path: str, webhook_ids: list[str], outcomes: list[Outcome]
) -> None:
    requests = receiver.received(path)
    per_id = Counter(r.headers["webhook-id"] for r in requests)
    assert set(per_id) == set(webhook_ids)
    assert [i for i, n in per_id.items() if n != 1] == []
    assert len(requests) == len(webhook_ids)
    assert {(o.state, o.status) for o in outcomes} == {("delivered", 200)}
    assert all(r.signature_ok for r in requests)


ZADD_FLAGS = {"NX", "XX", "GT", "LT", "CH", "INCR"}


class AcquireLog:
    """Records every attempt an endpoint was granted, as Redis ``MONITOR`` shows it.

    The acquire script adds each grant to the endpoint's sliding-window log
    (``ZADD window <Redis TIME in ms> <token>``), and ``MONITOR`` echoes
    commands run inside scripts. Unlike polling the log, which loses entries
    whenever the poller is descheduled for longer than a window on a busy
    machine, the server buffers the stream until it is read: nothing is missed.
    """

    def __init__(self, server_url: str, endpoint: str) -> None:
        self._client = redis.Redis.from_url(server_url, decode_responses=True)
        self._key = keys.endpoint(endpoint).window
        self._sentinel = f"acquire-log-end-{uuid.uuid4().hex}"
        self.starts_ms: dict[str, int] = {}
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AcquireLog:
        self._thread.start()
        assert self._started.wait(5), "MONITOR did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        # The reader stops at this ECHO, so every line before it, however far
        # behind the reader is, is read first.
        self._client.echo(self._sentinel)
        self._thread.join(60)
        self._client.close()
        assert not self._thread.is_alive(), "the MONITOR reader did not reach the end marker"
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        try:
            with self._client.monitor() as monitor:  # type: ignore[no-untyped-call]
                self._started.set()
                while True:
                    line = monitor.next_command()
                    words = line["command"].split(" ")
                    if words[0].upper() == "ECHO" and words[1:] == [self._sentinel]:
                        return
                    if line["client_type"] != "lua":
                        continue
                    if words[0].upper() == "ZADD" and words[1] == self._key:
                        # ZADD key [NX|LT] [CH] start token -window ~w
                        rest = words[2:]
                        while rest[0].upper() in ZADD_FLAGS:
                            rest = rest[1:]
                        score, token = rest[:2]
                        self.starts_ms[token] = int(score)
        except BaseException as failure:  # surfaced in __exit__
            self._failure = failure


# --- concurrency ------------------------------------------------------------------------


def test_concurrency_never_exceeds_the_cap_across_workers(
    broker: Broker, workers: Callable[..., list[WorkerProcess]], receiver: Receiver
) -> None:
    # Given two workers of two processes each (4 could send at once), a cap of
    # 3 per endpoint, and a receiver that takes 0.3 s to answer
    workers(2, concurrency=2, WEBHOOKS_MAX_CONCURRENCY="3", WEBHOOKS_RATE_LIMIT="1000/minute")
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.always(path, Respond(delay_s=0.3))

    # When 30 events are published at once
    webhook_ids = publish(cid, 30)

    # Then the receiver never had more than 3 requests in flight, and had 3
    outcomes = broker.wait_outcomes(webhook_ids)
    wait_settled(broker, [endpoint_of(receiver, path)])
    assert receiver.peak_in_flight(path) == 3

    # And every event was delivered exactly once, on its first attempt
    assert_delivered_once_each(receiver, path, webhook_ids, outcomes)
    assert {r.headers["x-webhook-attempt"] for r in receiver.received(path)} == {"1"}


def test_a_conversations_own_cap_applies(
    broker: Broker, workers: Callable[..., list[WorkerProcess]], receiver: Receiver
) -> None:
    # Given workers whose default cap is 10, and a conversation capped at 1
    workers(2, concurrency=2, WEBHOOKS_MAX_CONCURRENCY="10")
    path = unique_path()
    cid = str(uuid.uuid4())
    conversation = broker.conversations.set(
        cid, {"config": {"callback_url": receiver.url(path), "max_concurrency": 1}}
    )
    receiver.verify_with(path, conversation.secret)
    receiver.always(path, Respond(delay_s=0.2))

    # When 8 events are published at once
    webhook_ids = publish(cid, 8)

    # Then they were sent one at a time, each once
    outcomes = broker.wait_outcomes(webhook_ids)
    wait_settled(broker, [endpoint_of(receiver, path)])
    assert receiver.peak_in_flight(path) == 1
    assert_delivered_once_each(receiver, path, webhook_ids, outcomes)


# --- the sliding window -------------------------------------------------------------------


def test_no_sliding_window_holds_more_than_the_limit(
    broker: Broker, workers: Callable[..., list[WorkerProcess]], receiver: Receiver
) -> None:
    # Given two workers of two processes each, and a limit of 5 per second
    workers(2, concurrency=2, WEBHOOKS_RATE_LIMIT="5/second")
    warm_up(broker, receiver, processes=4)
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)

    # When 25 events are published at once
    with AcquireLog(broker.server.url, endpoint_of(receiver, path)) as log:
        webhook_ids = publish(cid, 25)
        outcomes = broker.wait_outcomes(webhook_ids)
        wait_settled(broker, [endpoint_of(receiver, path)])

    # Then, by Redis' own clock, 25 attempts were granted and no 1 s window
    # (half-open, in whole milliseconds) holds more than 5 of them
    starts_ms = list(log.starts_ms.values())
    assert len(starts_ms) == 25
    assert closest_spacing(starts_ms, 5) >= 1000
    assert most_in_any_window(starts_ms, 1000) == 5

    # And at the receiver no 1 s window holds more than 5 arrivals, give or
    # take the send latency's jitter (ARRIVAL_SLACK_S)
    times = arrivals(receiver.received(path))
    spacing = closest_spacing(times, 5)
    assert spacing >= 1.0 - ARRIVAL_SLACK_S, spacing
    assert times[-1] - times[0] >= 4.0 - ARRIVAL_SLACK_S  # 25 at 5/s: at least 4 s

    # And every event was delivered exactly once
    assert_delivered_once_each(receiver, path, webhook_ids, outcomes)


@pytest.mark.slow
def test_the_guides_100_per_minute(
    broker: Broker, workers: Callable[..., list[WorkerProcess]], receiver: Receiver
) -> None:
    # Given two workers with the default limit of 100 per minute
    workers(2, concurrency=2)
    warm_up(broker, receiver, processes=4)
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)

    # When 105 events are published at once
    webhook_ids = publish(cid, 105)

    # Then exactly 100 arrive within the first minute ...
    requests = receiver.wait_for(105, path, timeout=90)
    times = arrivals(requests)
    first = times[0]
    within = [t for t in times if t < first + 60 - ARRIVAL_SLACK_S]
    assert len(within) == 100

    # ... and the other 5 only once the first minute's attempts leave the window
    assert all(t >= first + 60 - ARRIVAL_SLACK_S for t in times[100:])
    assert closest_spacing(times, 100) >= 60 - ARRIVAL_SLACK_S

    # And each request states the budget: 100 per window, counting down 99..0
    # over the first 100 (each grant saw the one before it)
    by_time = sorted(requests, key=lambda r: r.received_at)
    assert {r.headers["x-ratelimit-limit"] for r in requests} == {"100"}
    first_remaining = [int(r.headers["x-ratelimit-remaining"]) for r in by_time[:100]]
    assert sorted(first_remaining, reverse=True) == list(range(99, -1, -1))
    assert all(0 < int(r.headers["x-ratelimit-reset"]) <= 60 for r in requests)

    # And every event was delivered exactly once
    outcomes = broker.wait_outcomes(webhook_ids)
    wait_settled(broker, [endpoint_of(receiver, path)])
    assert_delivered_once_each(receiver, path, webhook_ids, outcomes)


# --- leases -------------------------------------------------------------------------------


def test_the_slot_of_a_killed_worker_comes_back_when_its_lease_expires(
    broker: Broker, workers: Callable[..., list[WorkerProcess]], receiver: Receiver
) -> None:
    # Given a cap of 1 and short timeouts: the task time limit is 1+1+5+10 = 17 s,
    # so a slot's lease is 22 s; the broker's visibility timeout (60 s) keeps
    # the killed worker's message from being redelivered within the test
    settings = {
        "WEBHOOKS_MAX_CONCURRENCY": "1",
        "WEBHOOKS_TIMEOUT_S": "1",
        "WEBHOOKS_CONNECT_TIMEOUT_S": "1",
        "WEBHOOKS_VISIBILITY_TIMEOUT_S": "60",
    }
    assert Settings(timeout_s=1, connect_timeout_s=1, visibility_timeout_s=60).lease_s == 22
    (crashed,) = workers(1, concurrency=2, **settings)
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.script(path, [Hang(120)])
    endpoint = endpoint_of(receiver, path)
    inflight = keys.endpoint(endpoint).inflight

    # When a worker holding the endpoint's only slot is SIGKILLed mid-request
    first_id = deliver_webhook.delay(make_event(cid)).id
    (hung,) = receiver.wait_for(1, path)
    crashed.kill()
    ((_, lease_expiry_ms),) = [(m, s) for m, s in scored(broker.client, inflight) if s > 0]
    assert lease_expiry_ms / 1000 == pytest.approx(hung.received_at + 22, abs=1.0)

    # And, on a fresh worker, a second event is published to the same endpoint
    workers(1, concurrency=2, **settings)
    second_id = deliver_webhook.delay(make_event(cid)).id

    # Then it waits for the dead worker's lease, and is delivered once it expires
    outcome = broker.wait_outcome(second_id, timeout=40)
    assert (outcome.state, outcome.status, outcome.attempts) == ("delivered", 200, 1)
    (request,) = [r for r in receiver.received(path) if r.headers["webhook-id"] == second_id]
    assert request.received_at >= lease_expiry_ms / 1000 - REDIS_MS
    assert usage(broker.client, [endpoint])[0].in_flight == 0
    # And the killed worker's own message is not lost: the broker holds it
    # unacknowledged, to redeliver after the visibility timeout. (The second
    # task is acknowledged just after its outcome is written, so wait for it.)
    wait_until(
        lambda: held_task_ids(broker.client) == [first_id],
        10,
        "only the killed worker's message left unacknowledged",
    )


# --- Retry-After ------------------------------------------------------------------------


def test_429_retry_after_is_honoured_without_using_the_retry_budget(
    broker: Broker, workers: Callable[..., list[WorkerProcess]], receiver: Receiver
) -> None:
    # Given a retry budget of 3 and an endpoint that answers 429 with
    # Retry-After: 2 four times, then 200
    workers(2, concurrency=1, WEBHOOKS_RETRY_SCHEDULE="0.2,0.2,0.2")
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.script(path, [Respond(429, headers={"Retry-After": "2"})] * 4)

    # When an event is published
    webhook_id = deliver_webhook.delay(make_event(cid)).id

    # Then it is delivered on the 5th attempt, although the budget allows 4
    outcome = broker.wait_outcome(webhook_id, timeout=30)
    assert (outcome.state, outcome.status, outcome.attempts) == ("delivered", 200, 5)
    requests = receiver.received(path)
    assert [r.headers["x-webhook-attempt"] for r in requests] == ["1", "2", "3", "4", "5"]
    assert {r.headers["webhook-id"] for r in requests} == {webhook_id}

    # And each attempt after a 429 came no sooner than the Retry-After (the
    # hold starts when the 429 is read, after its arrival)
    times = [r.received_at for r in requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= 2.0 - REDIS_MS for gap in gaps), gaps
    wait_settled(broker, [endpoint_of(receiver, path)])
    assert len(receiver.received(path)) == 5


@pytest.mark.parametrize(
    "case",
    [
        # Deliveries may wait 3 s in all on 429s: after waiting 1 + 1 + 1 s,
        # the 4th 429 fails it as rate limited (429s use no retry budget).
        pytest.param((429, {"WEBHOOKS_MAX_RATE_LIMITED_WAIT_S": "3"}, "rate_limited"), id="429"),
        # A retry budget of 3 with 0.2 s countdowns: each retry waits out the
        # Retry-After, not the countdown, and the budget runs out after 4.
        pytest.param(
            (503, {"WEBHOOKS_RETRY_SCHEDULE": "0.2,0.2,0.2"}, "http_5xx"), id="503-uses-the-budget"
        ),
    ],
)
def test_an_endless_retry_after_ends_in_a_dead_letter_after_four_held_attempts(
    broker: Broker,
    workers: Callable[..., list[WorkerProcess]],
    receiver: Receiver,
    case: tuple[int, dict[str, str], str],
) -> None:
    # Given an endpoint that always answers the status with Retry-After: 1
    status, settings, error_kind = case
    workers(2, concurrency=1, **settings)
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    receiver.always(path, Respond(status, headers={"Retry-After": "1"}))

    # When an event is published
    webhook_id = deliver_webhook.delay(make_event(cid)).id

    # Then it fails after 4 attempts, kept as a dead letter of the right kind
    outcome = broker.wait_outcome(webhook_id, timeout=30)
    assert (outcome.state, outcome.status, outcome.error_kind) == ("failed", status, error_kind)
    assert outcome.attempts == 4
    assert webhook_id in broker.outcomes.dead_letter_ids()
    requests = receiver.received(path)
    assert [r.headers["x-webhook-attempt"] for r in requests] == ["1", "2", "3", "4"]

    # And each attempt came no sooner than the Retry-After
    times = [r.received_at for r in requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= 1.0 - REDIS_MS for gap in gaps), gaps
    wait_settled(broker, [endpoint_of(receiver, path)])
    assert len(receiver.received(path)) == 4


# --- a burst ------------------------------------------------------------------------------


def test_a_burst_is_delivered_exactly_once_without_blocking_other_endpoints(
    broker: Broker,
    workers: Callable[..., list[WorkerProcess]],
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given two workers of two processes each, 50 per second and 4 at once per
    # endpoint, and two endpoints A and B on a receiver that answers at once.
    # 50/s is below what this rig sends (about 80/s), so that A's backlog is
    # parked; the pump looks every 0.05 s because it releases at most the
    # free slots (4) per look, so the default 0.2 s would drain A at 20/s.
    workers(
        2,
        concurrency=2,
        WEBHOOKS_RATE_LIMIT=f"{BURST_RATE_PER_S}/second",
        WEBHOOKS_MAX_CONCURRENCY="4",
        WEBHOOKS_PUMP_INTERVAL_S="0.05",
    )
    path_a, path_b = unique_path(), unique_path()
    cid_a, _ = registered(broker.conversations, receiver, path_a)
    cid_b, _ = registered(broker.conversations, receiver, path_b)
    endpoints = [endpoint_of(receiver, path_a), endpoint_of(receiver, path_b)]

    # When 1,000 events for A are published, and 20 for B right after them
    with AcquireLog(broker.server.url, endpoints[0]) as log_a:
        started = time.time()
        ids_a = publish(cid_a, 1000)
        published_a = time.time()
        ids_b = publish(cid_b, 20)
        published_b = time.time()
        outcomes_b = broker.wait_outcomes(ids_b, timeout=120)
        outcomes_a = broker.wait_outcomes(ids_a, timeout=180)
        wait_settled(broker, endpoints)

    # Then every event is delivered exactly once: 1,000 distinct webhook-ids,
    # 1,000 requests to A, every outcome delivered, nothing left anywhere
    assert_delivered_once_each(receiver, path_a, ids_a, outcomes_a)
    assert_delivered_once_each(receiver, path_b, ids_b, outcomes_b)

    # And A's limits held throughout, by Redis' own clock: 1,000 grants, never
    # more than 50 in a second, never more than 4 in flight
    starts_ms = list(log_a.starts_ms.values())
    assert len(starts_ms) == 1000
    assert most_in_any_window(starts_ms, 1000) <= BURST_RATE_PER_S
    assert receiver.peak_in_flight(path_a) <= 4

    # And B was not stuck behind A's backlog: all of B arrived before A's last
    times_a = arrivals(receiver.received(path_a))
    times_b = arrivals(receiver.received(path_b))
    assert times_b[-1] < times_a[-1]

    with capsys.disabled():
        print(
            f"\n[burst] published A in {published_a - started:.2f} s, B in "
            f"{published_b - published_a:.2f} s; A delivered {times_a[0] - started:.2f} .. "
            f"{times_a[-1] - started:.2f} s after start "
            f"({len(times_a) / (times_a[-1] - times_a[0]):.0f}/s); B after its publish: first "
            f"{times_b[0] - published_b:.2f} s, last {times_b[-1] - published_b:.2f} s, "
            f"{times_a[-1] - times_b[-1]:.2f} s before A's last; busiest 1 s of A: "
            f"{most_in_any_window(starts_ms, 1000)} grants (Redis), "
            f"{most_in_any_window(times_a, 1.0)} arrivals (receiver)"
        )
