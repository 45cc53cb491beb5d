"""webhooks.ratelimit: parsing, and the Redis limiter's window, slots, leases and holds.

The limiter tests run against the session's real Redis; each uses an
endpoint of its own, so they share it with nothing.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from importlib.resources import files
from types import SimpleNamespace
from typing import cast

import pytest
import redis
from redis.crc import key_slot

from tests.support import release_slot
from webhooks import keys
from webhooks.endpoints import endpoint_tag, normalize_endpoint
from webhooks.ratelimit import (
    Denied,
    Granted,
    Limiter,
    Limits,
    RateLimit,
    Usage,
    load_script,
    usage,
)
from webhooks.store import redis_now_ms

LUA_SCRIPTS = sorted(
    entry.name.removesuffix(".lua")
    for entry in files("webhooks").joinpath("lua").iterdir()
    if entry.name.endswith(".lua")
)
#: Long enough never to expire within a test, unless the test says otherwise.
LEASE_S = 30.0


@pytest.fixture
def endpoint() -> str:
    return normalize_endpoint(f"https://receiver.example/hook/{uuid.uuid4().hex}")


@pytest.fixture
def limiter(redis_client: redis.Redis) -> Limiter:
    return Limiter(redis_client, lease_s=LEASE_S)


@pytest.fixture
def cleanup(redis_client: redis.Redis, endpoint: str) -> Iterator[None]:
    yield
    ek = keys.endpoint(endpoint)
    redis_client.delete(*ek.for_script(), ek.pump_lock)


def file_sha1(name: str) -> str:
    """What EVALSHA calls a script: the SHA-1 of its source."""
    source = files("webhooks").joinpath("lua", f"{name}.lua").read_bytes()
    return hashlib.sha1(source, usedforsecurity=False).hexdigest()


def limits(count: int, window_s: int = 1, max_concurrency: int = 100) -> Limits:
    return Limits(rate=RateLimit(count, window_s), max_concurrency=max_concurrency)


def granted(result: Granted | Denied) -> Granted:
    assert isinstance(result, Granted), result
    return result


def denied(result: Granted | Denied) -> Denied:
    assert isinstance(result, Denied), result
    return result


# --- RateLimit.parse ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "window_s"),
    [
        ("100/minute", 100, 60),
        ("10/second", 10, 1),
        ("1000/hour", 1000, 3600),
        ("1/second", 1, 1),
        (" 5 / seconds ", 5, 1),
        ("300/minutes", 300, 60),
    ],
)
def test_parse_valid_rates(text: str, count: int, window_s: int) -> None:
    # Given a rate as an operator writes it
    # When it is parsed
    rate = RateLimit.parse(text)

    # Then it is a count per window in seconds, and prints back canonically
    assert (rate.count, rate.window_s) == (count, window_s)
    assert RateLimit.parse(str(rate)) == rate


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100",
        "0/minute",
        "-1/second",
        "1.5/second",
        "100/day",
        "100/min",
        "abc/second",
        "100 per minute",
        "/minute",
        "100/",
    ],
)
def test_parse_rejects_invalid_rates(text: str) -> None:
    # Given a rate that is malformed, zero, or in an unknown unit
    # When it is parsed
    # Then a ValueError names the accepted forms
    with pytest.raises(ValueError, match="100/minute"):
        RateLimit.parse(text)


def test_str_of_a_rate() -> None:
    assert str(RateLimit(100, 60)) == "100/minute"
    assert str(RateLimit(5, 1)) == "5/second"
    assert str(RateLimit(7, 3600)) == "7/hour"


def test_granted_headers() -> None:
    # Given a grant with 41 attempts left of 100, the window resetting in 17 s
    grant = Granted(token="t", limit=100, remaining=41, reset_s=17)

    # Then the request carries exactly the three rate-limit headers, as strings
    assert grant.headers() == {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "41",
        "X-RateLimit-Reset": "17",
    }


# --- the sliding window -------------------------------------------------------


@pytest.mark.usefixtures("cleanup")
def test_window_allows_n_then_denies_until_the_oldest_attempt_leaves_it(
    limiter: Limiter, endpoint: str, redis_client: redis.Redis
) -> None:
    # Given a limit of 3 attempts per 1 s, slots released at once
    rule = limits(3, window_s=1)

    # When 3 attempts are made
    for _ in range(3):
        release_slot(
            limiter, redis_client, endpoint, granted(limiter.acquire(endpoint, rule)).token
        )

    # Then a 4th is denied for the rate, told to wait at most the window
    refusal = denied(limiter.acquire(endpoint, rule))
    assert refusal.reason == "rate"
    assert 0 < refusal.wait_s <= 1.0

    # When it waits exactly as long as it was told
    time.sleep(refusal.wait_s)

    # Then it is granted
    granted(limiter.acquire(endpoint, rule))


@pytest.mark.usefixtures("cleanup")
def test_window_slides_rather_than_resets(
    limiter: Limiter, endpoint: str, redis_client: redis.Redis
) -> None:
    # Given a limit of 3 per 1 s: one attempt, then two more half a second later
    rule = limits(3, window_s=1)
    granted(limiter.acquire(endpoint, rule))
    time.sleep(0.5)
    granted(limiter.acquire(endpoint, rule))
    granted(limiter.acquire(endpoint, rule))
    log = redis_client.zrange(keys.endpoint(endpoint).window, 0, -1, withscores=True)
    starts = sorted(float(score) for _, score in cast(list[tuple[str, float]], log) if score > 0)
    assert starts[1] - starts[0] >= 500

    # When the window is full, and the first attempt leaves it
    refusal = denied(limiter.acquire(endpoint, rule))
    assert refusal.reason == "rate"
    assert refusal.wait_s <= 0.5
    time.sleep(refusal.wait_s)

    # Then exactly one more attempt fits (a fixed window would now allow three),
    # and the next one must wait for the two later attempts to leave: until
    # the second attempt's start plus the window, by Redis' clock (how long the
    # sleeps overshot on a busy machine does not matter)
    granted(limiter.acquire(endpoint, rule))
    before = redis_now_ms(redis_client)
    again = denied(limiter.acquire(endpoint, rule))
    after = redis_now_ms(redis_client)
    assert again.reason == "rate"
    assert (starts[1] + 1000 - after) / 1000 <= again.wait_s <= (starts[1] + 1000 - before) / 1000


@pytest.mark.usefixtures("cleanup")
def test_a_short_window_never_sweeps_out_what_a_longer_one_on_the_endpoint_counts(
    limiter: Limiter, endpoint: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two conversations sharing one endpoint, one allowed 5 a minute
    # and one 100 a second, and every grant sweeping (a token starting "0"
    # sweeps; otherwise one grant in 16 does)
    sweeping = SimpleNamespace(uuid4=lambda: SimpleNamespace(hex="0" + uuid.uuid4().hex[1:]))
    monkeypatch.setattr("webhooks.ratelimit.uuid", sweeping)
    per_minute, per_second = limits(5, window_s=60), limits(100, window_s=1)
    for _ in range(5):
        granted(limiter.acquire(endpoint, per_minute))

    # When the per-second conversation is granted after its own window has passed
    time.sleep(1.1)
    granted(limiter.acquire(endpoint, per_second))

    # Then the per-minute conversation still counts its five: no sixth this minute
    assert denied(limiter.acquire(endpoint, per_minute)).reason == "rate"
    # And the sets outlive the longest window
    ek = keys.endpoint(endpoint)
    assert redis_client.pttl(ek.window) > 60_000


@pytest.mark.usefixtures("cleanup")
def test_releasing_a_slot_does_not_refund_the_rate_budget(
    limiter: Limiter, endpoint: str, redis_client: redis.Redis
) -> None:
    # Given a limit of 2 per minute, both used and their slots released
    rule = limits(2, window_s=60)
    for _ in range(2):
        release_slot(
            limiter, redis_client, endpoint, granted(limiter.acquire(endpoint, rule)).token
        )

    # When a third attempt is made
    refusal = denied(limiter.acquire(endpoint, rule))

    # Then it waits for the window, up to a minute
    assert refusal.reason == "rate"
    assert 59.0 < refusal.wait_s <= 60.0


@pytest.mark.usefixtures("cleanup")
def test_denied_attempts_do_not_use_the_budget(
    limiter: Limiter, endpoint: str, redis_client: redis.Redis
) -> None:
    # Given a limit of 2 per 1 s with one slot, the slot taken
    rule = limits(2, window_s=1, max_concurrency=1)
    holder = granted(limiter.acquire(endpoint, rule))

    # When ten attempts are refused for want of a slot
    for _ in range(10):
        assert denied(limiter.acquire(endpoint, rule)).reason == "concurrency"

    # Then the second attempt of the window is still available once the slot is free
    release_slot(limiter, redis_client, endpoint, holder.token)
    second = granted(limiter.acquire(endpoint, rule))
    assert second.remaining == 0


# --- concurrency slots and leases ---------------------------------------------


@pytest.mark.usefixtures("cleanup")
def test_concurrency_cap_and_release(
    limiter: Limiter, endpoint: str, redis_client: redis.Redis
) -> None:
    # Given a cap of 2 attempts at once
    rule = limits(1000, window_s=60, max_concurrency=2)
    first = granted(limiter.acquire(endpoint, rule))
    granted(limiter.acquire(endpoint, rule))

    # When a third attempt is made while both are in flight
    refusal = denied(limiter.acquire(endpoint, rule))

    # Then it is refused for concurrency, told to wait at most a lease
    assert refusal.reason == "concurrency"
    assert 0 < refusal.wait_s <= LEASE_S

    # When one attempt finishes and releases its slot
    release_slot(limiter, redis_client, endpoint, first.token)

    # Then exactly one more attempt fits
    granted(limiter.acquire(endpoint, rule))
    assert denied(limiter.acquire(endpoint, rule)).reason == "concurrency"


@pytest.mark.usefixtures("cleanup")
def test_releasing_twice_frees_one_slot_only(
    limiter: Limiter, endpoint: str, redis_client: redis.Redis
) -> None:
    # Given a cap of 2, both slots held
    rule = limits(1000, window_s=60, max_concurrency=2)
    first = granted(limiter.acquire(endpoint, rule))
    granted(limiter.acquire(endpoint, rule))

    # When the same attempt releases twice (e.g. a retried release)
    release_slot(limiter, redis_client, endpoint, first.token)
    release_slot(limiter, redis_client, endpoint, first.token)

    # Then one slot came free, not two
    granted(limiter.acquire(endpoint, rule))
    assert denied(limiter.acquire(endpoint, rule)).reason == "concurrency"


@pytest.mark.usefixtures("cleanup")
def test_lease_expiry_frees_the_slot_of_a_dead_holder(
    redis_client: redis.Redis, endpoint: str
) -> None:
    # Given a 0.3 s lease and a cap of 1, the slot taken by a holder that
    # dies without releasing it
    limiter = Limiter(redis_client, lease_s=0.3)
    rule = limits(1000, window_s=60, max_concurrency=1)
    granted(limiter.acquire(endpoint, rule))

    # When another attempt is made
    refusal = denied(limiter.acquire(endpoint, rule))

    # Then it is told to wait for the lease, no longer
    assert refusal.reason == "concurrency"
    assert 0 < refusal.wait_s <= 0.3

    # When it waits that long
    time.sleep(refusal.wait_s)

    # Then the slot is its own
    granted(limiter.acquire(endpoint, rule))


# --- holds (Retry-After) ----------------------------------------------------------


@pytest.mark.usefixtures("cleanup")
def test_release_with_hold_holds_back_every_attempt(
    limiter: Limiter, endpoint: str, redis_client: redis.Redis
) -> None:
    # Given an endpoint with plenty of room
    rule = limits(1000, window_s=60, max_concurrency=10)
    grant = granted(limiter.acquire(endpoint, rule))

    # When the attempt releases with a 0.5 s hold (the receiver's Retry-After)
    release_slot(limiter, redis_client, endpoint, grant.token, hold_s=0.5)

    # Then attempts are refused for the hold until it is over
    refusal = denied(limiter.acquire(endpoint, rule))
    assert refusal.reason == "hold"
    assert 0.3 < refusal.wait_s <= 0.5
    time.sleep(refusal.wait_s)
    granted(limiter.acquire(endpoint, rule))


@pytest.mark.usefixtures("cleanup")
def test_a_hold_only_extends_never_shortens(
    limiter: Limiter, redis_client: redis.Redis, endpoint: str
) -> None:
    # Given an endpoint held for 5 s
    rule = limits(1000, window_s=60, max_concurrency=10)
    tokens = [granted(limiter.acquire(endpoint, rule)).token for _ in range(3)]
    release_slot(limiter, redis_client, endpoint, tokens[0], hold_s=5)
    hold_key = keys.endpoint(endpoint).hold
    held_until = int(redis_client.get(hold_key) or 0)

    # When another attempt releases with a shorter hold
    release_slot(limiter, redis_client, endpoint, tokens[1], hold_s=1)

    # Then the hold is unchanged
    assert int(redis_client.get(hold_key) or 0) == held_until
    assert 4.0 < denied(limiter.acquire(endpoint, rule)).wait_s <= 5.0

    # When another releases with a longer hold
    release_slot(limiter, redis_client, endpoint, tokens[2], hold_s=10)

    # Then the hold is extended, and its key expires with it
    assert int(redis_client.get(hold_key) or 0) > held_until
    refusal = denied(limiter.acquire(endpoint, rule))
    assert refusal.reason == "hold"
    assert 9.0 < refusal.wait_s <= 10.0
    assert 9000 < redis_client.pttl(hold_key) <= 10_000


@pytest.mark.usefixtures("cleanup")
def test_a_hold_wins_over_free_room(
    limiter: Limiter, endpoint: str, redis_client: redis.Redis
) -> None:
    # Given an endpoint held while it has every slot and budget free
    rule = limits(1000, window_s=60, max_concurrency=10)
    release_slot(
        limiter, redis_client, endpoint, granted(limiter.acquire(endpoint, rule)).token, hold_s=2
    )

    # When attempts are made
    # Then all are refused for the hold and none uses the budget
    for _ in range(5):
        assert denied(limiter.acquire(endpoint, rule)).reason == "hold"


@pytest.mark.usefixtures("cleanup")
@pytest.mark.parametrize("hold_s", [0.0, 5.0], ids=["plain", "with-hold"])
def test_a_release_wakes_no_line_that_did_not_ask(
    limiter: Limiter, redis_client: redis.Redis, endpoint: str, hold_s: float
) -> None:
    # Given an endpoint with two slots taken and nothing parked
    rule = limits(1000, window_s=60, max_concurrency=10)
    first = granted(limiter.acquire(endpoint, rule))
    second = granted(limiter.acquire(endpoint, rule))

    # When both are released (with or without holding the endpoint back)
    # Then neither wakes the line (a park asks for that: test_parking)
    assert not release_slot(limiter, redis_client, endpoint, first.token, hold_s=hold_s)
    assert not release_slot(limiter, redis_client, endpoint, second.token, hold_s=hold_s)


@pytest.mark.usefixtures("cleanup")
def test_a_fresh_delivery_joins_a_non_empty_line(
    limiter: Limiter, redis_client: redis.Redis, endpoint: str
) -> None:
    # Given an endpoint with room, but a delivery waiting in its line
    rule = limits(1000, window_s=60, max_concurrency=10)
    redis_client.zadd(keys.endpoint(endpoint).parked, {"wh_waiting": 1})

    # When a fresh delivery and one released from the line ask for a slot
    fresh = denied(limiter.acquire(endpoint, rule))
    released = limiter.acquire(endpoint, rule, from_line=True)

    # Then the fresh one must queue behind the line; the released one goes
    assert fresh.reason == "line"
    assert isinstance(released, Granted)

    # And once the line is empty, fresh deliveries go straight through again
    redis_client.delete(keys.endpoint(endpoint).parked)
    assert isinstance(limiter.acquire(endpoint, rule), Granted)


# --- expiry (Redis runs noeviction) -----------------------------------------------


@pytest.mark.usefixtures("cleanup")
def test_an_endpoints_sets_expire_after_twice_the_longest_entry_life(
    limiter: Limiter, redis_client: redis.Redis, endpoint: str
) -> None:
    # Given a 1 s window and the 30 s lease: entries live at most 30 s
    span_ms = LEASE_S * 1000

    # When an attempt is granted
    granted(limiter.acquire(endpoint, limits(10, window_s=1)))

    # Then the window and the leases expire within twice that, and the
    # marker that spares later grants an expiry within once that
    ek = keys.endpoint(endpoint)
    assert span_ms < redis_client.pttl(ek.window) <= 2 * span_ms
    assert span_ms < redis_client.pttl(ek.inflight) <= 2 * span_ms
    assert 0 < redis_client.pttl(ek.fresh) <= span_ms


@pytest.mark.usefixtures("cleanup")
def test_the_sets_outlive_their_entries_and_sets_created_anew_expire(
    limiter: Limiter, redis_client: redis.Redis, endpoint: str
) -> None:
    # Given an attempt whose lease was given back and whose 1 s window passed
    rule = limits(10, window_s=1)
    token = granted(limiter.acquire(endpoint, rule)).token
    release_slot(limiter, redis_client, endpoint, token)
    time.sleep(1.1)
    ek = keys.endpoint(endpoint)

    # When the next attempt is granted once the expiry marker lapsed, which
    # sweeps the first attempt out of both sets
    redis_client.delete(ek.fresh)
    granted(limiter.acquire(endpoint, rule))

    # Then each set holds the new attempt and its own marker (~w, ~wake),
    # so it never empties, and keeps its expiry
    assert usage(redis_client, [endpoint]) == [Usage(in_window=1, in_flight=1)]
    assert (redis_client.zcard(ek.window), redis_client.zcard(ek.inflight)) == (2, 2)
    assert redis_client.pttl(ek.window) > 0
    assert redis_client.pttl(ek.inflight) > 0

    # When both sets are gone (deleted) while the marker lives, and an
    # attempt is granted
    redis_client.delete(ek.window, ek.inflight)
    granted(limiter.acquire(endpoint, rule))

    # Then both, created anew, expire again: nothing idle stays for ever
    assert redis_client.pttl(ek.window) > 0
    assert redis_client.pttl(ek.inflight) > 0


# --- headers ----------------------------------------------------------------------


@pytest.mark.usefixtures("cleanup")
def test_granted_headers_count_down(limiter: Limiter, endpoint: str) -> None:
    # Given a limit of 5 per minute
    rule = limits(5, window_s=60)

    # When five attempts are granted, the first 1.1 s before the others
    grants = [granted(limiter.acquire(endpoint, rule))]
    time.sleep(1.1)
    grants += [granted(limiter.acquire(endpoint, rule)) for _ in range(4)]

    # Then each carries the limit, the attempts left after it, and when the
    # budget grows again: a window from now while some is left, and when the
    # oldest attempt leaves the window for the one that took the last of it
    headers = [g.headers() for g in grants]
    assert [h["X-RateLimit-Limit"] for h in headers] == ["5"] * 5
    assert [h["X-RateLimit-Remaining"] for h in headers] == ["4", "3", "2", "1", "0"]
    assert [h["X-RateLimit-Reset"] for h in headers] == ["60", "60", "60", "60", "59"]
    assert denied(limiter.acquire(endpoint, rule)).reason == "rate"


# --- keys and scripts ---------------------------------------------------------------


def test_every_key_of_an_endpoint_shares_one_hash_tag(endpoint: str) -> None:
    # Given an endpoint's keys
    ek = keys.endpoint(endpoint)
    every_key = [*ek.for_script(), ek.pump_lock]

    # Then each is under the package prefix, carries the endpoint's tag in
    # braces exactly once, and so all hash to one Redis Cluster slot
    tag = "{" + endpoint_tag(endpoint) + "}"
    assert len(set(every_key)) == 8
    assert all(k.startswith(f"{keys.PREFIX}:") for k in every_key)
    assert all(k.count("{") == 1 and tag in k for k in every_key)
    assert len({key_slot(k.encode()) for k in every_key}) == 1


@pytest.mark.usefixtures("cleanup")
def test_the_limiter_writes_only_keys_under_the_endpoints_tag(
    limiter: Limiter, redis_client: redis.Redis, endpoint: str
) -> None:
    # Given an endpoint that was acquired, released with a hold
    rule = limits(10, window_s=60)
    token = granted(limiter.acquire(endpoint, rule)).token
    granted(limiter.acquire(endpoint, rule))
    release_slot(limiter, redis_client, endpoint, token, hold_s=5)

    # Then every key it wrote carries the endpoint's hash tag
    written = set(redis_client.scan_iter(match=f"*{endpoint_tag(endpoint)}*"))
    ek = keys.endpoint(endpoint)
    assert written == {ek.window, ek.inflight, ek.hold, ek.fresh}


def test_the_limiter_and_parking_scripts_are_shipped() -> None:
    assert {"acquire", "hold", "park", "unpark", "done"} <= set(LUA_SCRIPTS)


@pytest.mark.parametrize("name", LUA_SCRIPTS)
def test_scripts_are_lua_files_that_state_their_contract(
    name: str, redis_client: redis.Redis
) -> None:
    # Given a script file shipped in the package
    source = files("webhooks").joinpath("lua", f"{name}.lua").read_text()

    # Then it opens with comments stating its KEYS and ARGV
    header = [line for line in source.splitlines() if line.startswith("--")]
    assert any("KEYS[" in line for line in header)
    assert any("ARGV[" in line for line in header)

    # When it is loaded
    script = load_script(redis_client, name)

    # Then it is the file, registered under the file's SHA-1
    assert script.script == source
    assert script.sha == file_sha1(name)


def command_calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.usefixtures("cleanup")
def test_limiter_runs_registered_scripts_by_sha(redis_client: redis.Redis, endpoint: str) -> None:
    # Given a fresh limiter
    limiter = Limiter(redis_client, lease_s=LEASE_S)
    rule = limits(1000, window_s=60)
    evals, shas = command_calls(redis_client, "eval"), command_calls(redis_client, "evalsha")

    # When it acquires five slots and releases them holding the endpoint back
    # (the release itself needs no script, the hold does)
    tokens = [granted(limiter.acquire(endpoint, rule)).token for _ in range(5)]
    for token in tokens:
        release_slot(limiter, redis_client, endpoint, token, hold_s=1)

    # Then both scripts are known to Redis by the SHA-1 of their files, and
    # were run with EVALSHA, never by sending their source with EVAL
    shas_of_files = [file_sha1("acquire"), file_sha1("hold")]
    assert redis_client.script_exists(*shas_of_files) == [True, True]
    assert command_calls(redis_client, "eval") == evals
    assert command_calls(redis_client, "evalsha") >= shas + 10
