"""The retry schedule as a pure function.

The guide's schedule is a fixed sequence (4 s, 8 s, 10 s), not a formula, so
the countdown for retry *n* is simply the *n*-th entry; the sequence's
length is the retry budget.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["countdown"]


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
