"""webhooks.backoff: the guide's fixed retry schedule and a receiver's holds, as pure functions."""

from __future__ import annotations

import pytest

from webhooks.backoff import countdown, hold_s, rate_limited_wait_s

GUIDE_SCHEDULE = (4.0, 8.0, 10.0)


@pytest.mark.parametrize(("retries_done", "expected"), [(0, 4.0), (1, 8.0), (2, 10.0)])
def test_countdown_follows_the_guides_schedule(retries_done: int, expected: float) -> None:
    # Given the guide's 4/8/10 s schedule
    # When asking for the wait before the next retry
    # Then it is the schedule's entry for that retry
    assert countdown(retries_done, GUIDE_SCHEDULE) == expected


@pytest.mark.parametrize("retries_done", [3, 4, 100])
def test_past_the_schedule_the_last_entry_repeats(retries_done: int) -> None:
    assert countdown(retries_done, GUIDE_SCHEDULE) == 10.0


def test_countdown_is_a_float_for_integer_schedules() -> None:
    # Given a schedule of ints (as a list)
    result = countdown(1, [1, 2, 3])

    # Then a float comes back
    assert result == 2.0
    assert isinstance(result, float)


def test_fractional_schedule_is_kept() -> None:
    assert countdown(0, (0.3, 0.6)) == 0.3


def test_empty_schedule_means_no_wait() -> None:
    assert countdown(0, ()) == 0.0
    assert countdown(5, []) == 0.0


def test_negative_retry_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        countdown(-1, GUIDE_SCHEDULE)


def test_schedule_is_not_modified() -> None:
    # Given a mutable schedule
    schedule = [4.0, 8.0, 10.0]

    # When used for every retry and beyond
    for retries_done in range(5):
        countdown(retries_done, schedule)

    # Then it is unchanged
    assert schedule == [4.0, 8.0, 10.0]


@pytest.mark.parametrize(
    ("status", "retry_after_s", "expected"),
    [
        pytest.param(429, 7.0, 7.0, id="429-with-retry-after"),
        pytest.param(503, 7.0, 7.0, id="503-with-retry-after"),
        pytest.param(429, None, 8.0, id="429-without-waits-as-the-schedule"),
        pytest.param(503, None, 0.0, id="503-without-holds-nothing"),
        pytest.param(429, 3600.0, 600.0, id="capped"),
        pytest.param(500, 7.0, 0.0, id="other-statuses-never-hold"),
        pytest.param(None, None, 0.0, id="no-answer"),
    ],
)
def test_a_receivers_hold(status: int | None, retry_after_s: float | None, expected: float) -> None:
    # Given one retry done on the guide's schedule and a 10 min cap
    # When a receiver answers
    held = hold_s(status, retry_after_s, retries_done=1, schedule=GUIDE_SCHEDULE, cap_s=600.0)

    # Then only a 429 or 503 holds the endpoint, as asked, within the cap
    assert held == expected


def test_429_waits_add_up_until_the_limit() -> None:
    # Given 50 s already waited on 429s and 60 s allowed
    # Then a 10 s hold brings the total to exactly the limit, still allowed
    assert rate_limited_wait_s(50.0, 10.0, max_wait_s=60.0) == 60.0
    # And one more second past it gives up
    assert rate_limited_wait_s(50.0, 11.0, max_wait_s=60.0) is None
