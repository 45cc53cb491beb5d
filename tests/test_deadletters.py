"""Dead letters: finding them, and replaying each exactly once.

Dead letters are written the way workers write them (``OutcomeStore.failed``)
into an emptied logical database of the session's Redis.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from testing.redis_server import RedisServer
from webhooks import keys
from webhooks.deadletters import DeadLetter, DeadLetters
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.store import connect

DB = 15


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    return redis_server.url.rsplit("/", 1)[0] + f"/{DB}"


@pytest.fixture
def db_client(url: str) -> Iterator[redis.Redis]:
    connection = connect(url, socket_timeout_s=5)
    connection.flushdb()
    yield connection
    connection.close()


@pytest.fixture
def letters(db_client: redis.Redis) -> DeadLetters:
    return DeadLetters(db_client)


def dead(
    client: redis.Redis,
    *,
    url: str = "https://receiver.example/hook",
    callback_url: str | None = None,
    failed_at: float = 1_764_000_000.0,
) -> str:
    """Store one dead letter as a worker does; returns its webhook id."""
    webhook_id = "msg_" + uuid.uuid4().hex
    message_id = str(uuid.uuid4())
    outcome = Outcome(
        webhook_id=webhook_id,
        state="failed",
        conversation_id=str(uuid.uuid4()),
        message_id=message_id,
        url=url,
        attempts=4,
        status=503,
        error_kind="http_5xx",
        error="receiver answered HTTP 503",
        finished_at=failed_at,
    )
    event = {"conversation_id": outcome.conversation_id, "data": {"id": message_id}}
    OutcomeStore(client, retention_s=3600).failed(outcome, event=event, callback_url=callback_url)
    return webhook_id


def ids(found: list[DeadLetter]) -> list[str]:
    return [d.webhook_id for d in found]


# --- find -----------------------------------------------------------------------


def test_find_lists_oldest_first_with_payload_and_last_error(
    db_client: redis.Redis, letters: DeadLetters
) -> None:
    newer = dead(db_client, failed_at=2000.0)
    older = dead(db_client, failed_at=1000.0, callback_url="https://override.example/h")

    found = letters.find()

    assert ids(found) == [older, newer]
    first = found[0]
    assert first.failed_at == 1000.0
    assert first.outcome["error_kind"] == "http_5xx"
    assert first.message_id == first.event["data"]["id"]
    assert first.callback_url == "https://override.example/h"


@pytest.mark.parametrize(
    "asked",
    [
        "https://receiver.example/hook",
        "HTTPS://Receiver.EXAMPLE/hook",
        "https://receiver.example:443/hook",
        "https://receiver.example/hook?ignored=1",
    ],
)
def test_find_by_endpoint_matches_the_normalized_url(
    db_client: redis.Redis, letters: DeadLetters, asked: str
) -> None:
    wanted = dead(db_client, url="https://Receiver.example:443/hook")
    dead(db_client, url="https://receiver.example/other")
    dead(db_client, url="https://receiver.example:8443/hook")

    assert ids(letters.find(endpoint=asked)) == [wanted]


def test_find_since_leaves_out_older_failures(db_client: redis.Redis, letters: DeadLetters) -> None:
    dead(db_client, failed_at=1000.0)
    at = dead(db_client, failed_at=2000.0)
    later = dead(db_client, failed_at=3000.0)

    assert ids(letters.find(since=2000.0)) == [at, later]
    assert ids(letters.find(since=3000.5)) == []


def test_find_by_endpoint_and_since_together(db_client: redis.Redis, letters: DeadLetters) -> None:
    dead(db_client, url="https://a.example/h", failed_at=1000.0)
    wanted = dead(db_client, url="https://a.example/h", failed_at=3000.0)
    dead(db_client, url="https://b.example/h", failed_at=3000.0)

    assert ids(letters.find(endpoint="https://A.example/h", since=2000.0)) == [wanted]


# --- replay ---------------------------------------------------------------------


def test_replay_publishes_each_letter_once_and_removes_it(
    db_client: redis.Redis, letters: DeadLetters
) -> None:
    webhook_ids = [dead(db_client) for _ in range(3)]
    published: list[str] = []

    replayed = letters.replay(letters.find(), lambda d: published.append(d.webhook_id))

    assert replayed == 3
    assert sorted(published) == sorted(webhook_ids)
    assert letters.find() == []
    assert db_client.exists(*(keys.dead_letter(i) for i in webhook_ids)) == 0


def test_replaying_the_same_letters_again_publishes_nothing(
    db_client: redis.Redis, letters: DeadLetters
) -> None:
    dead(db_client)
    found = letters.find()
    published: list[DeadLetter] = []
    letters.replay(found, published.append)

    again = letters.replay(found, published.append)

    assert again == 0
    assert len(published) == 1


def test_a_replay_that_starts_while_another_is_publishing_gets_nothing(
    db_client: redis.Redis, url: str
) -> None:
    # Given two operators who both listed the same dead letter
    dead(db_client)
    other_client = connect(url, socket_timeout_s=5)
    first, second = DeadLetters(db_client), DeadLetters(other_client)
    seen_by_first, seen_by_second = first.find(), second.find()
    published: list[str] = []
    second_replayed: list[int] = []

    def publish_then_let_the_other_try(letter: DeadLetter) -> None:
        # When the second replays while the first is in the middle of publishing
        second_replayed.append(second.replay(seen_by_second, lambda d: published.append("2nd")))
        published.append("1st")

    # Then only the first publishes
    assert first.replay(seen_by_first, publish_then_let_the_other_try) == 1
    assert second_replayed == [0]
    assert published == ["1st"]
    other_client.close()


def test_concurrent_replays_of_many_letters_publish_each_exactly_once(
    db_client: redis.Redis, url: str
) -> None:
    webhook_ids = [dead(db_client) for _ in range(30)]
    published: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)
    counts: list[int] = []

    def operator() -> None:
        own = connect(url, socket_timeout_s=5)
        letters = DeadLetters(own)
        found = letters.find()
        start.wait()

        def publish(letter: DeadLetter) -> None:
            with lock:
                published.append(letter.webhook_id)

        n = letters.replay(found, publish)
        with lock:
            counts.append(n)
        own.close()

    threads = [threading.Thread(target=operator) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert sorted(published) == sorted(webhook_ids)
    assert sum(counts) == 30


def test_a_failed_publish_puts_the_letter_back_for_a_later_replay(
    db_client: redis.Redis, letters: DeadLetters
) -> None:
    # Given a dead letter and a broker that refuses the first publish
    webhook_id = dead(db_client, failed_at=1234.5)
    found = letters.find()

    def broker_down(letter: DeadLetter) -> None:
        raise ConnectionError("broker unreachable")

    # When it is replayed, Then the error surfaces and the letter is still there
    with pytest.raises(ConnectionError):
        letters.replay(found, broker_down)
    assert ids(letters.find()) == [webhook_id]
    assert db_client.zscore(keys.DEAD_LETTERS, webhook_id) == 1234.5
    assert letters.find()[0].event == found[0].event

    # And a later replay publishes it
    published: list[Any] = []
    assert letters.replay(letters.find(), published.append) == 1
    assert ids(published) == [webhook_id]


def test_the_url_of_a_letter_is_its_callback_or_the_configured_one(
    db_client: redis.Redis, letters: DeadLetters
) -> None:
    configured = dead(db_client, url="https://configured.example/h", callback_url=None)

    (letter,) = letters.find()

    assert letter.webhook_id == configured
    assert letter.callback_url is None
    assert letter.url == "https://configured.example/h"


# --- retention ------------------------------------------------------------------


def test_an_entry_without_its_letter_is_skipped_and_dropped_once_stale(
    db_client: redis.Redis, letters: DeadLetters
) -> None:
    # Given a letter, an old index entry whose letter is gone (a crash
    # between the index write and the letter's), and a fresh one whose letter
    # is still being written
    kept = dead(db_client)
    lost = dead(db_client)
    db_client.delete(keys.dead_letter(lost))
    db_client.zadd(keys.DEAD_LETTERS, {"being-written": time.time()})

    # When the letters are listed
    found = letters.find()

    # Then only the whole letter is listed, and only the stale entry is dropped
    assert ids(found) == [kept]
    assert set(db_client.zrange(keys.DEAD_LETTERS, 0, -1)) == {kept, "being-written"}


def test_dead_letters_expire_and_leave_the_index_as_new_ones_come(db_client: redis.Redis) -> None:
    # Given a store that keeps dead letters for 100 s, and a letter 150 s old
    store = OutcomeStore(db_client, retention_s=10, dead_letter_retention_s=100)
    now = time.time()
    old = Outcome(str(uuid.uuid4()), "failed", None, None, None, 4, finished_at=now - 150)
    store.failed(old, event={}, callback_url=None)

    # When a new delivery fails
    new = Outcome(str(uuid.uuid4()), "failed", None, None, None, 4, finished_at=now)
    store.failed(new, event={}, callback_url=None)

    # Then both letters and their outcomes expire on Redis' clock, the outcome
    # no sooner than its letter, and the index has forgotten the old letter
    for outcome in (old, new):
        assert 90 < db_client.ttl(keys.dead_letter(outcome.webhook_id)) <= 100
        assert 90 < db_client.ttl(keys.delivery(outcome.webhook_id)) <= 100
    assert store.dead_letter_ids() == [new.webhook_id]
