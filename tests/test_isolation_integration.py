"""Slow-endpoint isolation end to end: real workers, a Redis of each test's own.

Real parts only: a ``redis-server`` per test (the producer, this process,
publishes to it), ``celery worker`` processes laid out as in the Procfile,
and HTTPS receivers. Which queue each attempt ran from is read from the
attempt log (the task's ``delivery_info`` routing key), not inferred.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from config.celery_app import app
from tasks import deliver_webhook
from tasks.routing import router
from testing.receiver import Hang, Receiver, Respond, TestCA
from testing.worker import ALL_QUEUES, FAST_QUEUES, SLOW_QUEUES, WorkerProcess
from tests.support import Broker, make_event, registered, unique_path, wait_until
from webhooks import keys
from webhooks.attempts import AttemptLog, AttemptRecord
from webhooks.cli import main as cli
from webhooks.endpoints import normalize_endpoint
from webhooks.queues import QUEUE, SLOW_QUEUE

#: Limits out of the way: isolation, not rate limiting, is under test here.
ROOMY = {"WEBHOOKS_RATE_LIMIT": "100000/minute", "WEBHOOKS_MAX_CONCURRENCY": "50"}


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def workers() -> Iterator[Callable[..., list[WorkerProcess]]]:
    """Start workers in parallel; all are killed after the test."""
    started: list[WorkerProcess] = []

    def start(*batch: WorkerProcess) -> list[WorkerProcess]:
        started.extend(batch)
        with ThreadPoolExecutor(len(batch)) as pool:
            list(pool.map(lambda w: w.start(), batch))
        return list(batch)

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def second_receiver(test_ca: TestCA) -> Iterator[Receiver]:
    """A receiver of its own for the fast endpoint: the slow one's hanging
    connections must not share its accept loop."""
    with Receiver(test_ca.server_context()) as server:
        yield server


def attempts_of(broker: Broker, event: dict[str, Any]) -> list[AttemptRecord]:
    return AttemptLog(broker.client, retention_s=3600).for_message(event["data"]["id"])


def queues_of(broker: Broker, event: dict[str, Any]) -> list[str]:
    return [a.queue for a in attempts_of(broker, event)]


@pytest.fixture
def listed_endpoints(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, broker: Broker
) -> Callable[[], dict[str, dict[str, Any]]]:
    """Run ``webhooks endpoints --json`` against the test's Redis; rows by endpoint."""

    def run() -> dict[str, dict[str, Any]]:
        monkeypatch.setenv("WEBHOOKS_REDIS_URL", broker.server.url)
        capsys.readouterr()
        assert cli(["endpoints", "--json"]) == 0
        return {row["endpoint"]: row for row in json.loads(capsys.readouterr().out)}

    return run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- a timeout moves an endpoint to the slow queue, and it comes back ---------------------------


def test_after_a_timeout_the_retry_runs_from_the_slow_queue_and_recovery_brings_it_back(
    broker: Broker, workers: Callable[..., list[WorkerProcess]], receiver: Receiver
) -> None:
    # Given one worker consuming every queue, a 1 s read timeout, and a route
    # cache of 0 s in the workers and in the producer. With the default 2 s a
    # router may route from a snapshot taken before the timeout was recorded,
    # so which queue a retry or the next event lands on would depend on
    # timing; 0 makes every publish read the slow set as it is at that moment.
    app.configure(app.settings.model_copy(update={"route_cache_s": 0.0}))
    env = broker.worker_env(WEBHOOKS_TIMEOUT_S="1", WEBHOOKS_ROUTE_CACHE_S="0")
    workers(WorkerProcess(env, concurrency=2, name="all", queues=ALL_QUEUES))
    path = unique_path()
    cid, _ = registered(broker.conversations, receiver, path)
    endpoint = normalize_endpoint(receiver.url(path))
    receiver.script(path, [Hang(3)])  # the first request hangs past the timeout, then 200s

    # When an event is published to the endpoint, never seen before
    first = make_event(cid)
    outcome = broker.wait_outcome(deliver_webhook.delay(first).id, timeout=30)

    # Then its first attempt ran from "webhooks" and timed out, which made the
    # endpoint slow, and its retry ran from "webhooks.slow" and was delivered
    assert (outcome.state, outcome.status, outcome.attempts) == ("delivered", 200, 2)
    attempts = attempts_of(broker, first)
    assert [(a.attempt, a.queue, a.outcome) for a in attempts] == [
        (1, QUEUE, "timeout"),
        (2, SLOW_QUEUE, "delivered"),
    ]
    assert broker.client.smembers(keys.SLOW_ENDPOINTS) == {endpoint}

    # When it then answers at once, and events are published one after another
    queues: list[str] = []
    while len(queues) < 10 and (not queues or queues[-1] != QUEUE):
        event = make_event(cid)
        done = broker.wait_outcome(deliver_webhook.delay(event).id, timeout=30)
        assert (done.state, done.attempts) == ("delivered", 1)
        (queue,) = queues_of(broker, event)
        queues.append(queue)

    # Then they run from the slow queue while the timeout is among the last 5
    # outcomes (the retry's answer and 3 more keep it there, the 4th pushes it
    # out; the average, about 1 s after the timeout, is already under 2.5 s),
    # and the next event runs from "webhooks" again
    assert queues == [SLOW_QUEUE] * 4 + [QUEUE]
    assert broker.client.smembers(keys.SLOW_ENDPOINTS) == set()
    health = broker.client.hgetall(keys.endpoint(endpoint).health)
    assert (health["recent"], health["slow"]) == ("ooooo", "0")
    assert float(health["ewma_ms"]) < 2500


# --- the Procfile layout keeps a fast endpoint fast ------------------------------------------


def test_a_slow_endpoint_does_not_hold_up_a_fast_one_on_the_procfile_layout(
    broker: Broker,
    workers: Callable[..., list[WorkerProcess]],
    receiver: Receiver,
    second_receiver: Receiver,
    listed_endpoints: Callable[[], dict[str, dict[str, Any]]],
) -> None:
    # Given the Procfile's layout: a prefork worker of 2 on webhooks and
    # webhooks.released, a gevent worker of 50 on webhooks.slow; a 2 s read
    # timeout and one retry; the producer and workers on the default 2 s route cache
    env = broker.worker_env(WEBHOOKS_TIMEOUT_S="2", WEBHOOKS_RETRY_SCHEDULE="0.2", **ROOMY)
    workers(
        WorkerProcess(env, concurrency=2, name="fast", queues=FAST_QUEUES),
        WorkerProcess(
            env, concurrency=50, name="slow", queues=SLOW_QUEUES, extra_args=("--pool", "gevent")
        ),
    )
    # And a slow endpoint that never answers in time, a fast one that answers at once
    slow_path, fast_path = unique_path(), unique_path()
    slow_cid, _ = registered(broker.conversations, receiver, slow_path)
    fast_cid, _ = registered(broker.conversations, second_receiver, fast_path)
    receiver.always(slow_path, Hang(2.5))
    second_receiver.always(fast_path, Respond())
    slow_endpoint = normalize_endpoint(receiver.url(slow_path))
    fast_endpoint = normalize_endpoint(second_receiver.url(fast_path))

    # And the slow endpoint known slow: one event times out on the fast worker,
    # and `webhooks endpoints` and the producer's router see it
    warm_up = make_event(slow_cid)
    warm_up_id = deliver_webhook.delay(warm_up).id
    wait_until(lambda: router.is_slow(slow_endpoint), 15, "the producer sees the endpoint slow")
    listed = listed_endpoints()
    assert listed[slow_endpoint]["queue"] == SLOW_QUEUE
    assert "t" in listed[slow_endpoint]["recent"]

    # When 200 events for each endpoint are published, interleaved
    published_at: dict[str, float] = {}
    fast_events, slow_events = [], []
    for _ in range(200):
        fast_event, slow_event = make_event(fast_cid), make_event(slow_cid)
        started = time.time()
        fast_id = deliver_webhook.delay(fast_event).id
        published_at[fast_id] = started
        fast_events.append((fast_id, fast_event))
        slow_events.append((deliver_webhook.delay(slow_event).id, slow_event))

    # Then every fast event was delivered, once, on its first attempt, from "webhooks",
    # by the fast worker
    fast_outcomes = broker.wait_outcomes([i for i, _ in fast_events], timeout=60)
    assert {(o.state, o.status, o.attempts) for o in fast_outcomes} == {("delivered", 200, 1)}
    requests = second_receiver.received(fast_path)
    per_id = Counter(r.headers["webhook-id"] for r in requests)
    assert set(per_id) == set(published_at)
    assert [i for i, n in per_id.items() if n != 1] == []
    assert all(r.signature_ok for r in requests)
    fast_attempts = [a for _, e in fast_events for a in attempts_of(broker, e)]
    assert len(fast_attempts) == 200
    assert {a.queue for a in fast_attempts} == {QUEUE}
    assert all(a.worker.startswith("fast-") for a in fast_attempts)

    # And every slow event ran both its attempts from "webhooks.slow", on the gevent worker
    slow_outcomes = broker.wait_outcomes([i for i, _ in slow_events], timeout=120)
    assert {(o.state, o.error_kind, o.attempts) for o in slow_outcomes} == {
        ("failed", "timeout", 2)
    }
    slow_attempts = [a for _, e in slow_events for a in attempts_of(broker, e)]
    assert len(slow_attempts) == 400
    assert {a.queue for a in slow_attempts} == {SLOW_QUEUE}
    assert all(a.worker.startswith("slow-") for a in slow_attempts)
    # (the warm-up event's first attempt was the only one on "webhooks")
    broker.wait_outcome(warm_up_id)
    assert queues_of(broker, warm_up) == [QUEUE, SLOW_QUEUE]

    # And the fast events were all done while the slow endpoint's were still going
    fast_done = max(o.finished_at for o in fast_outcomes)
    slow_done = sorted(o.finished_at for o in slow_outcomes)
    assert fast_done < slow_done[-1]
    assert listed_endpoints()[fast_endpoint]["queue"] == QUEUE

    latencies_ms = [
        (r.received_at - published_at[r.headers["webhook-id"]]) * 1000 for r in requests
    ]
    first_publish = min(published_at.values())
    print(
        f"\n[isolation] fast endpoint publish->receipt: p50 {percentile(latencies_ms, 0.5):.1f}"
        f" ms, p99 {percentile(latencies_ms, 0.99):.1f} ms, max {max(latencies_ms):.1f} ms"
        f" (mean {statistics.fmean(latencies_ms):.1f} ms); fast done"
        f" {fast_done - first_publish:.2f} s after the first publish, with"
        f" {sum(t <= fast_done for t in slow_done)}/200 slow deliveries done; the last slow"
        f" {slow_done[-1] - first_publish:.2f} s after; slow receiver peak in flight"
        f" {receiver.peak_in_flight(slow_path)}"
    )
