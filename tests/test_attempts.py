"""The attempt log (and the observer that writes it) against the session's real Redis.

Each test runs on its own logical database of the session's Redis, emptied
first, so counts and key lists are exact.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from testing.redis_server import RedisServer
from webhooks import keys
from webhooks.attempts import MAX_PER_CONVERSATION, MAX_PER_MESSAGE, AttemptLog, AttemptRecord
from webhooks.errors import ErrorKind, PermanentDeliveryError, RetryableDeliveryError
from webhooks.health import HealthPolicy, HealthStore
from webhooks.metrics import Metrics
from webhooks.observer import AttemptFacts, Observer
from webhooks.queues import QUEUE
from webhooks.store import connect

DB = 11
RETENTION_S = 3600


@pytest.fixture
def db_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = connect(redis_server.url.rsplit("/", 1)[0] + f"/{DB}", socket_timeout_s=5)
    connection.flushdb()
    yield connection
    connection.close()


@pytest.fixture
def log(db_client: redis.Redis) -> AttemptLog:
    return AttemptLog(db_client, retention_s=RETENTION_S)


def a_record(**changes: object) -> AttemptRecord:
    base = AttemptRecord(
        webhook_id="msg_" + uuid.uuid4().hex,
        conversation_id=str(uuid.uuid4()),
        message_id=str(uuid.uuid4()),
        endpoint="https://receiver.example:443/hook",
        attempt=1,
        started_at=1_764_000_000.125,
        duration_s=0.042,
        outcome="delivered",
        status=200,
        error="",
        response_excerpt="",
        queue=QUEUE,
        worker="celery@host-a",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# --- the log ------------------------------------------------------------------


def test_attempts_of_a_message_come_back_oldest_first_with_every_field(log: AttemptLog) -> None:
    first = a_record(attempt=1, outcome="http_5xx", status=500, error="receiver answered 500")
    second = replace(first, attempt=2, outcome="connection", status=None, error="dropped")
    third = replace(first, attempt=3, outcome="delivered", status=200, error="")

    for record in (first, second, third):
        log.record(record)

    assert log.for_message(first.message_id) == [first, second, third]
    assert log.for_conversation(first.conversation_id) == [first, second, third]


def test_a_conversation_lists_all_its_messages_and_a_message_only_its_own(
    log: AttemptLog,
) -> None:
    one = a_record()
    other = replace(a_record(), conversation_id=one.conversation_id)
    stranger = a_record()

    for record in (one, other, stranger):
        log.record(record)

    assert log.for_conversation(one.conversation_id) == [one, other]
    assert log.for_message(one.message_id) == [one]
    assert log.for_message(stranger.message_id) == [stranger]


def test_an_unknown_message_has_no_attempts(log: AttemptLog) -> None:
    assert log.for_message(str(uuid.uuid4())) == []
    assert log.for_conversation(str(uuid.uuid4())) == []


def test_a_message_keeps_only_its_newest_attempts(log: AttemptLog) -> None:
    first = a_record()
    extra = 5

    for n in range(1, MAX_PER_MESSAGE + extra + 1):
        log.record(replace(first, attempt=n))

    kept = log.for_message(first.message_id)
    assert [r.attempt for r in kept] == list(range(extra + 1, MAX_PER_MESSAGE + extra + 1))


def test_a_conversation_keeps_only_its_newest_attempts(
    log: AttemptLog, db_client: redis.Redis
) -> None:
    cid = str(uuid.uuid4())
    extra = 300

    for n in range(MAX_PER_CONVERSATION + extra):
        log.record(a_record(conversation_id=cid, message_id=f"m{n}"))

    kept = log.for_conversation(cid)
    assert len(kept) == MAX_PER_CONVERSATION
    assert kept[0].message_id == f"m{extra}"
    assert kept[-1].message_id == f"m{MAX_PER_CONVERSATION + extra - 1}"
    # Trimmed a stream node at a time: about the cap is stored, not everything
    assert MAX_PER_CONVERSATION <= db_client.xlen(keys.attempts_by_conversation(cid)) < 1200


def test_a_message_is_found_among_its_conversations_newest_attempts(log: AttemptLog) -> None:
    # Given a message's attempt, then as many of other messages of its
    # conversation as the conversation keeps
    first = a_record()
    log.record(first)
    later = [a_record(conversation_id=first.conversation_id) for _ in range(MAX_PER_CONVERSATION)]
    for record in later:
        log.record(record)

    # Then the last of those is found by its message, the first no longer
    assert log.for_message(later[-1].message_id) == [later[-1]]
    assert log.for_message(first.message_id) == []


def test_the_stream_and_the_pointer_outlive_each_record_by_the_retention(
    log: AttemptLog, db_client: redis.Redis
) -> None:
    # Given a message's attempt recorded, both keys' expiry then brought close
    record = a_record()
    by_message = keys.attempts_by_message(record.message_id)
    by_conversation = keys.attempts_by_conversation(record.conversation_id)
    log.record(record)
    db_client.expire(by_message, 10)
    db_client.expire(by_conversation, 10)

    # When another process records its next attempt
    AttemptLog(db_client, retention_s=RETENTION_S).record(replace(record, attempt=2))

    # Then the pointer lives the retention again, the stream the retention
    # plus the tenth a process may go without renewing it
    assert RETENTION_S - 5 < db_client.ttl(by_message) <= RETENTION_S
    assert RETENTION_S < db_client.ttl(by_conversation) <= RETENTION_S * 1.1


def test_a_process_renews_a_streams_expiry_once_per_refresh_period(
    db_client: redis.Redis,
) -> None:
    # Given a process that trusts the expiry it set for 0.2 s
    log = AttemptLog(db_client, retention_s=RETENTION_S, refresh_s=0.2)
    cid = str(uuid.uuid4())

    def commands_of_one_attempt() -> list[str]:
        pipe = db_client.pipeline(transaction=False)
        log.record(a_record(conversation_id=cid), pipe=pipe)
        sent = [str(args[0]).lower() for args, _ in pipe.command_stack]
        pipe.execute()
        return sent

    # When it records three attempts of a conversation, the third 0.2 s later
    first, second = commands_of_one_attempt(), commands_of_one_attempt()
    time.sleep(0.2)
    third = commands_of_one_attempt()

    # Then the first and third push the stream's expiry back, the second not;
    # and nothing else is written (the stream entry, the message's pointer)
    assert first == third == ["xadd", "expire", "set"]
    assert second == ["xadd", "set"]
    assert RETENTION_S < db_client.ttl(keys.attempts_by_conversation(cid)) <= RETENTION_S + 1
    assert db_client.dbsize() == 1 + 3


def test_a_stream_whose_expiry_was_lost_gets_it_at_the_next_check(
    log: AttemptLog, db_client: redis.Redis
) -> None:
    # Given an attempt whose stream expiry never reached Redis (dropped from
    # the caller's pipeline, as a failed write would be), and a later attempt
    # of the conversation that this process does not send an expiry for
    cid = str(uuid.uuid4())
    pipe = db_client.pipeline(transaction=False)
    log.record(a_record(conversation_id=cid), pipe=pipe)
    pipe.command_stack = [c for c in pipe.command_stack if str(c[0][0]).lower() != "expire"]
    pipe.execute()
    log.record(a_record(conversation_id=cid))
    stream = keys.attempts_by_conversation(cid)
    assert db_client.ttl(stream) == -1

    # When the process checks the expiries it sent (the observer's flush does)
    log.check_expiries()

    # Then the stream expires after the retention like any other
    assert RETENTION_S < db_client.ttl(stream) <= RETENTION_S * 1.1


def test_a_stream_not_yet_written_is_checked_again(log: AttemptLog, db_client: redis.Redis) -> None:
    # Given an attempt queued in a pipeline that has not run yet
    cid = str(uuid.uuid4())
    pipe = db_client.pipeline(transaction=False)
    log.record(a_record(conversation_id=cid), pipe=pipe)

    # When a check runs first, then the pipeline without its expiry
    log.check_expiries()
    pipe.command_stack = [c for c in pipe.command_stack if str(c[0][0]).lower() != "expire"]
    pipe.execute()
    log.check_expiries()

    # Then the second check still gives the stream its expiry
    stream = keys.attempts_by_conversation(cid)
    assert RETENTION_S < db_client.ttl(stream) <= RETENTION_S * 1.1


def test_each_record_is_also_one_json_log_line(
    log: AttemptLog, caplog: pytest.LogCaptureFixture
) -> None:
    record = a_record(outcome="http_5xx", status=503, response_excerpt="try later")

    with caplog.at_level("INFO", logger="webhooks.attempts"):
        log.record(record)

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "webhooks.attempts"]
    assert lines == [json.loads(record.to_json())]
    assert lines[0]["webhook_id"] == record.webhook_id


# --- the observer that feeds it -------------------------------------------------


def facts(attempt: int = 1) -> AttemptFacts:
    return AttemptFacts(
        webhook_id="msg_" + uuid.uuid4().hex,
        conversation_id=str(uuid.uuid4()),
        message_id=str(uuid.uuid4()),
        endpoint="https://receiver.example:443/hook",
        attempt=attempt,
        queue=QUEUE,
        worker="celery@host-a",
    )


def test_the_observer_records_a_failed_attempt_with_its_status_kind_and_excerpt(
    db_client: redis.Redis, log: AttemptLog
) -> None:
    observer = Observer(log, Metrics(db_client), HealthStore(db_client, HealthPolicy()))
    given = facts(attempt=2)
    error = RetryableDeliveryError(
        "receiver answered HTTP 502", kind=ErrorKind.HTTP_5XX, status=502, response_excerpt="bad"
    )

    observer.attempted(given, started_at=100.0, duration_s=0.25, error=error)

    (record,) = log.for_message(given.message_id)
    assert (record.outcome, record.status, record.response_excerpt) == ("http_5xx", 502, "bad")
    assert record.error == "receiver answered HTTP 502"
    assert (record.attempt, record.queue, record.worker) == (2, QUEUE, "celery@host-a")


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (RetryableDeliveryError("429", kind=ErrorKind.RATE_LIMITED, status=429), "rate_limited"),
        (RetryableDeliveryError("dropped", kind=ErrorKind.CONNECTION), "connection"),
        (PermanentDeliveryError("no url", kind=ErrorKind.NO_CALLBACK), "no_callback"),
        (RuntimeError("bug"), "internal"),
    ],
)
def test_the_observer_names_the_error_kind(
    db_client: redis.Redis, log: AttemptLog, error: BaseException, outcome: str
) -> None:
    given = facts()

    Observer(log, Metrics(db_client), HealthStore(db_client, HealthPolicy())).attempted(
        given, started_at=1.0, duration_s=0.1, error=error
    )

    assert [r.outcome for r in log.for_message(given.message_id)] == [outcome]


def test_the_observer_swallows_a_redis_outage(redis_server: RedisServer) -> None:
    # Given an observer whose Redis went away after it was built
    dead = connect(redis_server.url.rsplit("/", 1)[0] + f"/{DB}", socket_timeout_s=0.5)
    observer = Observer(
        AttemptLog(dead, retention_s=60), Metrics(dead), HealthStore(dead, HealthPolicy())
    )
    dead.connection_pool.connection_kwargs["port"] = 1  # nothing listens there
    dead.connection_pool.disconnect()

    # When an attempt and the end of a delivery are reported, Then nothing is raised
    observer.attempted(facts(), started_at=1.0, duration_s=0.1)
    observer.ended("https://receiver.example:443/hook", delivered=True)
    dead.close()


# --- metrics and health are summed per process and flushed -----------------------


def buffered(client: redis.Redis, log: AttemptLog) -> Observer:
    # A flush interval far beyond the test: only explicit flush() calls write.
    return Observer(log, Metrics(client), HealthStore(client, HealthPolicy()), flush_s=3600)


def test_a_buffered_observer_writes_the_attempt_at_once_and_the_sums_on_flush(
    db_client: redis.Redis, log: AttemptLog
) -> None:
    # Given an observer that flushes on demand only
    observer = buffered(db_client, log)
    given = facts()

    # When two quick successful attempts (a retry among them) and the end of the
    # delivery are reported
    observer.attempted(given, started_at=1.0, duration_s=0.2)
    observer.attempted(replace(given, attempt=2), started_at=2.0, duration_s=0.1)
    observer.ended(given.endpoint, delivered=True)

    # Then the attempt log has both at once, but metrics and health nothing yet
    assert [r.attempt for r in log.for_message(given.message_id)] == [1, 2]
    assert Metrics(db_client).totals() == []
    assert db_client.exists(keys.endpoint(given.endpoint).health) == 0

    # When it flushes, Then the sums arrive in full: two attempts, one retry,
    # one delivery, and health folded both attempts
    observer.flush()
    totals = {(s.name, s.labels): s.value for s in Metrics(db_client).totals()}
    assert totals[("attempts", (("result", "success"),))] == 2
    assert totals[("retries", ())] == 1
    assert totals[("deliveries", (("outcome", "delivered"),))] == 1
    assert totals[("attempt_duration_sum", ())] == pytest.approx(0.3)
    health = db_client.hgetall(keys.endpoint(given.endpoint).health)
    assert (health["recent"], health["attempts"], health["slow"]) == ("oo", "2", "0")

    # And a second flush with nothing new writes nothing more
    observer.flush()
    again = {(s.name, s.labels): s.value for s in Metrics(db_client).totals()}
    assert again == totals


@pytest.mark.parametrize(
    ("duration_s", "error", "urgent"),
    [
        (0.2, RetryableDeliveryError("timed out", kind=ErrorKind.TIMEOUT), False),
        (0.2, RetryableDeliveryError("HTTP 500", kind=ErrorKind.HTTP_5XX, status=500), False),
        (HealthPolicy().recover_ms / 1000 + 0.1, None, False),
        (0.01, None, True),
    ],
    ids=["timeout", "error", "slow answer", "from the slow queue"],
)
def test_an_attempt_that_may_move_its_endpoint_is_written_at_once(
    db_client: redis.Redis,
    log: AttemptLog,
    duration_s: float,
    error: BaseException | None,
    urgent: bool,
) -> None:
    # Given a buffered observer holding one quick success for an endpoint
    observer = buffered(db_client, log)
    given = facts()
    observer.attempted(given, started_at=1.0, duration_s=0.01)

    # When an attempt that could change the endpoint's queue is reported
    observer.attempted(
        replace(given, attempt=2),
        started_at=2.0,
        duration_s=duration_s,
        error=error,
        urgent=urgent,
    )

    # Then health already holds both attempts, without a flush call
    health = db_client.hgetall(keys.endpoint(given.endpoint).health)
    assert health["attempts"] == "2"
    assert Metrics(db_client).totals() != []


def test_sums_that_could_not_be_written_wait_for_the_next_flush(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a buffered observer holding attempts to two endpoints, whose Redis
    # for metrics and health is unreachable (its client has not connected yet,
    # so every connection it makes goes to the new port, where nothing listens)
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    client = connect(url, socket_timeout_s=0.5)
    client.flushdb()
    flaky = connect(url, socket_timeout_s=0.5)
    port = flaky.connection_pool.connection_kwargs["port"]
    flaky.connection_pool.connection_kwargs["port"] = 1
    observer = Observer(
        AttemptLog(client, retention_s=60),
        Metrics(flaky),
        HealthStore(flaky, HealthPolicy()),
        flush_s=3600,
    )
    first = facts()
    second = replace(facts(), endpoint="https://other.example:443/hook")
    observer.attempted(first, started_at=1.0, duration_s=0.05)
    observer.attempted(second, started_at=1.0, duration_s=0.05)

    # When it flushes, Then nothing is raised, and it gave up at the first
    # endpoint instead of waiting out the same failure for each
    with caplog.at_level("WARNING", logger="webhooks.observer"):
        observer.flush()
    assert len([r for r in caplog.records if r.name == "webhooks.observer"]) == 1

    # And nothing is lost: once Redis is back, the next flush writes both
    flaky.connection_pool.connection_kwargs["port"] = port
    flaky.connection_pool.reset()  # forget the connections made for port 1
    observer.flush()
    attempts = {
        s.endpoint: s.value
        for s in Metrics(client).totals()
        if (s.name, s.labels) == ("attempts", (("result", "success"),))
    }
    assert attempts == {first.endpoint: 1, second.endpoint: 1}
    for endpoint in (first.endpoint, second.endpoint):
        assert client.hget(keys.endpoint(endpoint).health, "attempts") == "1"
    client.close()
    flaky.close()


def test_a_refused_attempt_is_logged_but_not_summed(
    db_client: redis.Redis, log: AttemptLog
) -> None:
    observer = buffered(db_client, log)
    given = facts()

    observer.attempted(
        given,
        started_at=1.0,
        duration_s=0.0,
        error=PermanentDeliveryError("no url", kind=ErrorKind.NO_CALLBACK),
        sent=False,
    )
    observer.flush()

    assert [r.outcome for r in log.for_message(given.message_id)] == ["no_callback"]
    assert Metrics(db_client).totals() == []
