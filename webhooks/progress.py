"""A delivery's progress: the one type that travels between attempts.

A delivery crosses process boundaries many times: published by a producer,
retried with a countdown, parked in its endpoint's line and released by the
pump, dead-lettered and replayed. Each crossing carries the same fields, so
they live in one frozen dataclass; a new step is ``dataclasses.replace``,
and :meth:`Delivery.task_kwargs` is the only spelling of the task's
arguments (arq's ``JobDef`` is the model).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Delivery"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """Everything needed to make a delivery's next attempt where it left off."""

    event: dict[str, Any]
    webhook_id: str
    callback_url: str | None = None
    attempt: int = 1  # the number the next HTTP attempt carries (X-Webhook-Attempt)
    retries: int = 0  # retry budget used so far (Celery's ``retries``)
    waited_s: float = 0.0  # time spent waiting on a receiver's 429s so far
    place_ms: int = 0  # place in the endpoint's waiting line, kept when parked again
    sequence: int | None = None  # place in an ordered conversation (X-Webhook-Sequence)

    @classmethod
    def from_task(cls, kwargs: dict[str, Any] | None, *, retries: int, task_id: str) -> Delivery:
        """The delivery a task's kwargs and Celery's retry count describe.

        Producers leave ``attempt`` out: the first attempt is retries + 1. A
        429 back-off advances ``attempt`` without using the retry budget, so
        once given it is taken as it is.
        """
        given = kwargs or {}
        return cls(
            event=given.get("event") or {},
            webhook_id=given.get("webhook_id") or task_id,
            callback_url=given.get("callback_url"),
            attempt=int(given.get("attempt") or retries + 1),
            retries=retries,
            waited_s=float(given.get("waited_s") or 0.0),
            place_ms=int(given.get("place_ms") or 0),
            sequence=_int_or_none(given.get("sequence")),
        )

    def task_kwargs(self) -> dict[str, Any]:
        """``deliver_webhook``'s keyword arguments; ``retries`` goes as Celery's option."""
        # Shallow: the event is handed on, not copied (asdict would deep-copy it).
        return {name: getattr(self, name) for name in _TASK_KWARGS}


_TASK_KWARGS = tuple(f.name for f in fields(Delivery) if f.name != "retries")


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]
