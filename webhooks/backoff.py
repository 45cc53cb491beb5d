"""How long to wait, as pure functions: the retry schedule and a receiver's holds.

The guide's schedule is a fixed sequence (4 s, 8 s, 10 s), not a formula, so
the countdown for retry *n* is simply the *n*-th entry; the sequence's
length is the retry budget. A 429 or 503 holds the whole endpoint for its
``Retry-After``; a 429 is back-pressure, waited out without using the retry
budget, up to a limit.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["countdown", "hold_s", "rate_limited_wait_s"]


def countdown(retries_done: int, schedule: Sequence[float]) -> float:
    """Seconds to wait before the next retry, given how many retries have run.

    Past the end of the schedule the last entry repeats; callers stop at
    ``len(schedule)`` retries, so that only matters if the budget is raised
    for a replay.
    """
    if retries_done < 0:
        raise ValueError("retries_done must not be negative")
    if not schedule:
        return 0.0
    return float(schedule[min(retries_done, len(schedule) - 1)])


def hold_s(
    status: int | None,
    retry_after_s: float | None,
    *,
    retries_done: int,
    schedule: Sequence[float],
    cap_s: float,
) -> float:
    """How long a receiver's answer holds every attempt to its endpoint.

    Only 429 and 503 hold. A 429 without ``Retry-After`` waits as the retry
    schedule would; a 503 without it holds nothing. Never more than ``cap_s``.
    """
    if status not in (429, 503):
        return 0.0
    wait = retry_after_s
    if wait is None and status == 429:
        wait = countdown(retries_done, schedule)
    return min(wait or 0.0, cap_s)


def rate_limited_wait_s(waited_s: float, hold: float, *, max_wait_s: float) -> float | None:
    """Time waited on 429s once this hold is over; ``None`` once past ``max_wait_s``."""
    waited = waited_s + hold
    return None if waited > max_wait_s else waited
