"""Shared metrics in Redis: totals, minute windows, bounded labels, buckets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from testing.redis_server import RedisServer
from webhooks import keys
from webhooks.metrics import BUCKETS_S, MINUTE_TTL_S, Metrics, Sample, bucket_for
from webhooks.store import connect

DB = 12
A = "https://a.example:443/hook"
B = "https://b.example:443/hook"
C = "https://c.example:443/hook"
D = "https://d.example:443/hook"


@pytest.fixture
def connect_db(redis_server: RedisServer) -> Iterator[Callable[[], redis.Redis]]:
    """Clients of one emptied logical database of the session's Redis."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    opened: list[redis.Redis] = []

    def open_() -> redis.Redis:
        opened.append(connect(url, socket_timeout_s=5))
        return opened[-1]

    open_().flushdb()
    yield open_
    for client in opened:
        client.close()


@pytest.fixture
def db_client(connect_db: Callable[[], redis.Redis]) -> redis.Redis:
    return connect_db()


@pytest.fixture
def metrics(db_client: redis.Redis) -> Metrics:
    return Metrics(db_client)


def values(samples: list[Sample]) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, s.endpoint, s.labels): s.value for s in samples}


def away_from_a_minute_boundary() -> float:
    """Now, at least two seconds before the next minute starts."""
    if time.time() % 60 > 58:
        time.sleep(60 - time.time() % 60 + 0.05)
    return time.time()


# --- bucket_for ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration_s", "le"),
    [
        (0.0, "0.025"),
        (0.025, "0.025"),  # bounds are inclusive, as Prometheus' le
        (0.0251, "0.05"),
        (0.3, "0.5"),
        (1.0, "1.0"),
        (59.9, "60.0"),
        (60.0, "60.0"),
        (60.001, "+Inf"),
        (3600.0, "+Inf"),
    ],
)
def test_an_observation_falls_in_the_smallest_bucket_that_holds_it(
    duration_s: float, le: str
) -> None:
    assert bucket_for(duration_s) == le


def test_every_bucket_label_names_a_bound() -> None:
    labels = {bucket_for(bound) for bound in BUCKETS_S}

    assert labels == {repr(bound) for bound in BUCKETS_S}
    assert [float(label) for label in sorted(labels, key=float)] == sorted(BUCKETS_S)


# --- observe / totals ------------------------------------------------------------


def test_a_successful_first_attempt_counts_an_attempt_a_bucket_and_its_duration(
    metrics: Metrics,
) -> None:
    metrics.observe_attempt(A, result="success", duration_s=0.03, attempt=1)

    assert values(metrics.totals()) == {
        ("attempts", A, (("result", "success"),)): 1,
        ("attempt_duration_bucket", A, (("le", "0.05"),)): 1,
        ("attempt_duration_sum", A, ()): 0.03,
    }


def test_a_failed_retry_also_counts_an_error_of_its_kind_and_a_retry(metrics: Metrics) -> None:
    metrics.observe_attempt(A, result="http_5xx", duration_s=0.2, attempt=2)

    found = values(metrics.totals())

    assert found[("attempts", A, (("result", "http_5xx"),))] == 1
    assert found[("errors", A, (("kind", "http_5xx"),))] == 1
    assert found[("retries", A, ())] == 1
    assert ("attempts", A, (("result", "success"),)) not in found


def test_the_end_of_a_delivery_counts_by_outcome(metrics: Metrics) -> None:
    metrics.observe_delivery(A, outcome="delivered")
    metrics.observe_delivery(A, outcome="delivered")
    metrics.observe_delivery(A, outcome="failed")

    assert values(metrics.totals()) == {
        ("deliveries", A, (("outcome", "delivered"),)): 2,
        ("deliveries", A, (("outcome", "failed"),)): 1,
    }


def test_observations_from_separate_clients_add_up(connect_db: Callable[[], redis.Redis]) -> None:
    # Given two workers, each with its own connection
    one, two = Metrics(connect_db()), Metrics(connect_db())

    # When each observes attempts to the same endpoint
    for _ in range(3):
        one.observe_attempt(A, result="success", duration_s=0.1, attempt=1)
        two.observe_attempt(A, result="success", duration_s=0.2, attempt=1)

    # Then either one reads the sum of both
    for reader in (one, two):
        found = values(reader.totals())
        assert found[("attempts", A, (("result", "success"),))] == 6
        assert found[("attempt_duration_sum", A, ())] == pytest.approx(0.9)


# --- bounded endpoint labels -----------------------------------------------------


def test_endpoints_past_the_bound_share_the_other_label(db_client: redis.Redis) -> None:
    metrics = Metrics(db_client, max_endpoints=2)

    for endpoint in (A, B, C, D, A):
        metrics.observe_delivery(endpoint, outcome="delivered")

    found = values(metrics.totals())
    assert found == {
        ("deliveries", A, (("outcome", "delivered"),)): 2,
        ("deliveries", B, (("outcome", "delivered"),)): 1,
        ("deliveries", "other", (("outcome", "delivered"),)): 2,
    }
    assert db_client.smembers(keys.METRICS_ENDPOINTS) == {A, B}


# --- minute windows --------------------------------------------------------------


def test_the_last_minutes_include_this_minute_and_reach_back_as_asked(
    metrics: Metrics,
) -> None:
    now = away_from_a_minute_boundary()
    metrics.observe_attempt(A, result="success", duration_s=0.01, attempt=1)
    attempts = ("attempts", A, (("result", "success"),))

    assert values(metrics.last_minutes(1, now=now))[attempts] == 1
    # Three minutes later, a one- or three-minute window no longer holds it...
    assert attempts not in values(metrics.last_minutes(1, now=now + 180))
    assert attempts not in values(metrics.last_minutes(3, now=now + 180))
    # ...a four-minute window does, and so does the running total.
    assert values(metrics.last_minutes(4, now=now + 180))[attempts] == 1
    assert values(metrics.totals())[attempts] == 1


def test_minute_windows_sum_the_minutes_and_leave_totals_alone(
    metrics: Metrics, db_client: redis.Redis
) -> None:
    # Given counts written into two past minutes (as workers did then) and now
    now = away_from_a_minute_boundary()
    minute = int(now // 60)
    field = f"attempts\t{A}\tresult=success"
    db_client.hset(keys.metrics_minute(minute - 2), field, 4)
    db_client.hset(keys.metrics_minute(minute - 10), field, 100)
    metrics.observe_attempt(A, result="success", duration_s=0.01, attempt=1)
    attempts = ("attempts", A, (("result", "success"),))

    assert values(metrics.last_minutes(3, now=now))[attempts] == 5
    assert values(metrics.last_minutes(11, now=now))[attempts] == 105
    assert values(metrics.totals())[attempts] == 1


def test_a_minute_hash_expires_and_the_totals_do_not(
    metrics: Metrics, db_client: redis.Redis
) -> None:
    now = away_from_a_minute_boundary()

    metrics.observe_delivery(A, outcome="delivered")

    assert MINUTE_TTL_S - 5 < db_client.ttl(keys.metrics_minute(int(now // 60))) <= MINUTE_TTL_S
    assert db_client.ttl(keys.METRICS_TOTALS) == -1
