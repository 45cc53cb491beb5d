"""webhooks.health: the moving average, recent outcomes and the slow flag, on a real Redis.

The module gets a Redis of its own (flushed before each test), so the
global sets ``SLOW_ENDPOINTS`` and ``KNOWN_ENDPOINTS`` and ``all()`` can be
checked exactly, not merely for membership.
"""

from __future__ import annotations

import pytest
import redis

from config.settings import Settings
from webhooks import keys
from webhooks.health import EndpointHealth, HealthPolicy, HealthStore

#: The defaults: slow above 5000 ms, fast again below 2500 ms, alpha 0.3, last 5.
POLICY = HealthPolicy()
FAST_EP = "https://fast.example:443/hook"
SLOW_EP = "https://slow.example:443/hook"


@pytest.fixture
def store(own_client: redis.Redis) -> HealthStore:
    return HealthStore(own_client, POLICY)


def observe_ms(
    store: HealthStore, endpoint: str, *durations_ms: float, outcome: str = "ok"
) -> bool:
    """Fold in attempts of these durations; the slow flag after the last one."""
    slow = False
    for ms in durations_ms:
        slow = store.observe(endpoint, duration_s=ms / 1000, outcome=outcome)
    return slow


def health_of(store: HealthStore, endpoint: str) -> EndpointHealth:
    (found,) = [h for h in store.all() if h.endpoint == endpoint]
    return found


# --- the moving average ------------------------------------------------------------------


def test_the_first_attempt_is_the_average_and_later_ones_weigh_alpha(store: HealthStore) -> None:
    # Given an endpoint never seen before
    # When it answers in 100 ms, then in 1000 ms, then at once
    observe_ms(store, FAST_EP, 100)
    first = health_of(store, FAST_EP).ewma_ms
    observe_ms(store, FAST_EP, 1000)
    second = health_of(store, FAST_EP).ewma_ms
    observe_ms(store, FAST_EP, 0)

    # Then the average starts at the first duration and moves by alpha = 0.3 each time
    assert first == 100.0
    assert second == pytest.approx(0.3 * 1000 + 0.7 * 100)  # 370
    health = health_of(store, FAST_EP)
    assert health.ewma_ms == pytest.approx(0.7 * 370)  # 259
    assert (health.attempts, health.recent, health.slow) == (3, "ooo", False)


def test_recent_keeps_the_last_five_outcomes_newest_last(store: HealthStore) -> None:
    # Given a mix of outcomes, errors among them
    # When seven attempts are observed
    for outcome in ["ok", "error", "ok", "ok", "error", "error", "ok"]:
        store.observe(FAST_EP, duration_s=0.05, outcome=outcome)

    # Then only the last five are kept, and errors alone do not make it slow
    health = health_of(store, FAST_EP)
    assert health.recent == "ooeeo"
    assert health.attempts == 7
    assert not health.slow


def test_the_record_expires_when_an_endpoint_is_no_longer_attempted(
    store: HealthStore, own_client: redis.Redis
) -> None:
    # When an endpoint is attempted
    observe_ms(store, FAST_EP, 10)

    # Then its health record lives for about a week after the latest attempt
    assert own_client.ttl(keys.endpoint(FAST_EP).health) == pytest.approx(7 * 24 * 3600, abs=5)


# --- turning slow --------------------------------------------------------------------------


def test_an_average_above_slow_ms_makes_it_slow_and_exactly_slow_ms_does_not(
    store: HealthStore,
) -> None:
    # Given two endpoints, one answering in exactly the threshold, one just above
    # When each is attempted once
    at_threshold = observe_ms(store, FAST_EP, POLICY.slow_ms)
    above = observe_ms(store, SLOW_EP, POLICY.slow_ms + 0.1)

    # Then only the one above the threshold is slow
    assert (at_threshold, above) == (False, True)
    assert health_of(store, SLOW_EP).slow and not health_of(store, FAST_EP).slow


def test_a_rising_average_turns_slow_once_it_passes_slow_ms(store: HealthStore) -> None:
    # Given a fast endpoint (100 ms)
    observe_ms(store, FAST_EP, 100)

    # When it starts answering in 9 s: 100 -> 2770 -> 4639 -> 5947 ms
    verdicts = [observe_ms(store, FAST_EP, 9000) for _ in range(3)]

    # Then it turns slow on the attempt that takes the average past 5000 ms
    assert verdicts == [False, False, True]
    assert health_of(store, FAST_EP).ewma_ms == pytest.approx(5947.3, abs=0.2)


def test_a_single_timeout_makes_it_slow_whatever_the_average(store: HealthStore) -> None:
    # Given a fast endpoint with a short history
    observe_ms(store, FAST_EP, 50, 50, 50)

    # When one attempt times out after 1 s (the average stays far below slow_ms)
    slow = store.observe(FAST_EP, duration_s=1.0, outcome="timeout")

    # Then it is slow at once
    health = health_of(store, FAST_EP)
    assert slow and health.slow
    assert health.ewma_ms < POLICY.recover_ms
    assert health.recent == "ooot"


# --- hysteresis ----------------------------------------------------------------------------


def test_between_the_thresholds_a_slow_endpoint_stays_slow(store: HealthStore) -> None:
    # Given a slow endpoint (6 s)
    assert observe_ms(store, SLOW_EP, 6000)

    # When it answers in 1 s: 6000 -> 4500 -> 3450 -> 2715 -> 2200.5 ms
    verdicts = [observe_ms(store, SLOW_EP, 1000) for _ in range(4)]

    # Then it stays slow while the average is between recover_ms and slow_ms,
    # and is fast once the average is under recover_ms
    assert verdicts == [True, True, True, False]
    assert health_of(store, SLOW_EP).ewma_ms == pytest.approx(2200.5, abs=0.2)


def test_exactly_recover_ms_keeps_a_slow_endpoint_slow(own_client: redis.Redis) -> None:
    # Given a policy whose numbers land exactly on recover_ms (alpha 0.5: 3000 -> 2500)
    store = HealthStore(own_client, HealthPolicy(slow_ms=2900, recover_ms=2500, alpha=0.5))
    assert observe_ms(store, SLOW_EP, 3000)

    # When an attempt brings the average to exactly recover_ms
    still_slow = observe_ms(store, SLOW_EP, 2000)

    # Then it is still slow: fast again only *under* recover_ms
    assert health_of(store, SLOW_EP).ewma_ms == 2500.0
    assert still_slow


def test_between_the_thresholds_a_fast_endpoint_stays_fast(store: HealthStore) -> None:
    # Given a fast endpoint (1 s)
    assert not observe_ms(store, FAST_EP, 1000)

    # When slower answers take its average to 2500 and then 4450 ms
    verdicts = [observe_ms(store, FAST_EP, ms) for ms in (6000, 9000)]

    # Then it stays fast: between the thresholds nothing flips
    assert verdicts == [False, False]
    assert health_of(store, FAST_EP).ewma_ms == pytest.approx(4450.0, abs=0.2)


def test_after_a_timeout_it_recovers_only_when_the_timeout_left_the_recent_five(
    store: HealthStore,
) -> None:
    # Given an endpoint made slow by one 1-s timeout (its average stays low)
    store.observe(FAST_EP, duration_s=1.0, outcome="timeout")

    # When it then answers at once, five times
    verdicts = [observe_ms(store, FAST_EP, 10) for _ in range(5)]

    # Then it stays slow while the timeout is among the last five outcomes,
    # and is fast on the attempt that pushes it out
    assert verdicts == [True, True, True, True, False]
    assert health_of(store, FAST_EP).recent == "ooooo"


def test_with_the_timeout_gone_a_high_average_still_keeps_it_slow(store: HealthStore) -> None:
    # Given an endpoint that timed out after 30 s (its average is then 30000 ms)
    store.observe(SLOW_EP, duration_s=30.0, outcome="timeout")

    # When it answers in 100 ms from then on
    verdicts = [observe_ms(store, SLOW_EP, 100) for _ in range(8)]

    # Then the timeout leaves the recent window after 5 answers, but the average
    # (30000 * 0.7^k + 100 * (1 - 0.7^k)) only drops under 2500 ms after 8
    assert verdicts == [True] * 7 + [False]
    health = health_of(store, SLOW_EP)
    assert health.recent == "ooooo"
    assert health.ewma_ms == pytest.approx(30000 * 0.7**8 + 100 * (1 - 0.7**8), abs=1)


# --- the global sets and all() -----------------------------------------------------------------


def test_the_slow_and_known_sets_follow_the_flag(
    store: HealthStore, own_client: redis.Redis
) -> None:
    # Given two endpoints seen once, one fast and one timing out
    observe_ms(store, FAST_EP, 20)
    store.observe(SLOW_EP, duration_s=1.0, outcome="timeout")

    # Then both are known and only the one that timed out is slow
    assert own_client.smembers(keys.KNOWN_ENDPOINTS) == {FAST_EP, SLOW_EP}
    assert own_client.smembers(keys.SLOW_ENDPOINTS) == {SLOW_EP}
    assert store.slow_endpoints() == {SLOW_EP}

    # When the slow one recovers (five quick answers push the timeout out)
    # and the fast one times out
    observe_ms(store, SLOW_EP, 10, 10, 10, 10, 10)
    store.observe(FAST_EP, duration_s=1.0, outcome="timeout")

    # Then the slow set has swapped and both are still known
    assert store.slow_endpoints() == {FAST_EP}
    assert own_client.smembers(keys.KNOWN_ENDPOINTS) == {FAST_EP, SLOW_EP}


def test_an_endpoint_slow_on_its_first_attempt_is_in_the_slow_set(store: HealthStore) -> None:
    # When an endpoint's first ever attempt takes 8 s
    observe_ms(store, SLOW_EP, 8000)

    # Then it is slow from the start
    assert store.slow_endpoints() == {SLOW_EP}


def test_all_lists_every_known_endpoint_sorted_with_its_health(store: HealthStore) -> None:
    # Given two endpoints with different histories
    observe_ms(store, SLOW_EP, 100, 200)
    store.observe(SLOW_EP, duration_s=1.0, outcome="timeout")
    store.observe(FAST_EP, duration_s=0.04, outcome="error")

    # When all endpoints are listed
    listed = store.all()

    # Then each appears once, sorted, with its average, outcomes, flag and count
    assert [(h.endpoint, h.recent, h.slow, h.attempts) for h in listed] == [
        (FAST_EP, "e", False, 1),
        (SLOW_EP, "oot", True, 3),
    ]
    assert listed[0].ewma_ms == 40.0
    assert listed[1].ewma_ms == pytest.approx(0.3 * 1000 + 0.7 * 130)  # 100 -> 130 -> 391


def test_all_skips_a_known_endpoint_whose_record_expired(
    store: HealthStore, own_client: redis.Redis
) -> None:
    # Given a known endpoint whose health record has gone (expired)
    observe_ms(store, FAST_EP, 10)
    observe_ms(store, SLOW_EP, 10)
    own_client.delete(keys.endpoint(SLOW_EP).health)

    # Then it is not listed
    assert [h.endpoint for h in store.all()] == [FAST_EP]


# --- settings ------------------------------------------------------------------------------


def test_the_thresholds_come_from_the_environment_and_recover_never_exceeds_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given no thresholds in the environment, then explicit ones, then an inverted pair
    monkeypatch.delenv("WEBHOOKS_SLOW_THRESHOLD_MS", raising=False)
    monkeypatch.delenv("WEBHOOKS_RECOVER_THRESHOLD_MS", raising=False)
    default = Settings().health_policy
    monkeypatch.setenv("WEBHOOKS_SLOW_THRESHOLD_MS", "800")
    monkeypatch.setenv("WEBHOOKS_RECOVER_THRESHOLD_MS", "300")
    explicit = Settings().health_policy
    monkeypatch.setenv("WEBHOOKS_RECOVER_THRESHOLD_MS", "1200")
    inverted = Settings().health_policy

    # Then the policy carries them; an inverted pair collapses to one threshold
    assert (default.slow_ms, default.recover_ms) == (5000.0, 2500.0)
    assert (explicit.slow_ms, explicit.recover_ms) == (800.0, 300.0)
    assert (inverted.slow_ms, inverted.recover_ms) == (800.0, 800.0)


# --- a batch of attempts at once (what a worker's flush sends) ---------------------------


@pytest.mark.parametrize(
    "attempts",
    [
        [(0.1, "ok"), (1.0, "ok"), (0.0, "ok")],
        [(0.2, "ok"), (30.0, "timeout"), (0.1, "error"), (0.1, "ok")],
        [(6.0, "ok"), (4.0, "ok"), (0.1, "ok"), (0.1, "ok"), (0.1, "ok"), (0.1, "ok")],
        [(0.1, "timeout")] + [(0.05, "ok")] * 6,
    ],
)
def test_a_batch_ends_where_the_same_attempts_one_by_one_end(
    own_client: redis.Redis, attempts: list[tuple[float, str]]
) -> None:
    # Given two endpoints that see the same attempts in the same order
    one_by_one, batched = f"{FAST_EP}/a", f"{FAST_EP}/b"
    store = HealthStore(own_client, POLICY)

    # When one gets them one call each and the other in a single call
    for duration_s, outcome in attempts:
        slow_after_each = store.observe(one_by_one, duration_s=duration_s, outcome=outcome)
    slow_after_batch = store.observe_many(batched, attempts)

    # Then both end with the same average, recent outcomes, count and flag
    a, b = health_of(store, one_by_one), health_of(store, batched)
    assert (b.ewma_ms, b.recent, b.attempts, b.slow) == (a.ewma_ms, a.recent, a.attempts, a.slow)
    assert slow_after_batch == slow_after_each == a.slow
    assert a.attempts == len(attempts)
    # and the slow set agrees with the flag
    assert (batched in store.slow_endpoints()) == b.slow
