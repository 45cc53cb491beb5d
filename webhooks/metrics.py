"""Delivery metrics aggregated in Redis, so they add up across every worker.

Per-process counters vanish with their process and cover one worker only.
Here each observation increments shared hashes in one script call: running
totals (served as Prometheus counters) and a per-minute copy (read by
``webhooks stats`` for "the last N minutes"). Endpoint labels are bounded:
the first ``max_endpoints`` endpoints get their own label, later ones share
``other``, so a flood of new receivers cannot blow up cardinality.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from webhooks import keys
from webhooks.ratelimit import load_script
from webhooks.store import Store

__all__ = [
    "BUCKETS_S",
    "Metrics",
    "Sample",
    "attempt_fields",
    "bucket_for",
    "delivery_fields",
]

#: Upper bounds of the attempt duration histogram, seconds.
BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MINUTE_TTL_S = 26 * 3600


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    endpoint: str
    labels: tuple[tuple[str, str], ...]
    value: float


def bucket_for(duration_s: float) -> str:
    """The histogram bucket (``le``) an observation falls in, non-cumulative."""
    for bound in BUCKETS_S:
        if duration_s <= bound:
            return repr(bound)
    return "+Inf"


def attempt_fields(*, result: str, duration_s: float, attempt: int) -> list[tuple[str, float]]:
    """The increments one HTTP attempt makes (``result``: "success" or an ErrorKind)."""
    fields: list[tuple[str, float]] = [
        (f"attempts\t\tresult={result}", 1),
        (f"attempt_duration_bucket\t\tle={bucket_for(duration_s)}", 1),
        ("attempt_duration_sum\t\t", duration_s),
    ]
    if result != "success":
        fields.append((f"errors\t\tkind={result}", 1))
    if attempt > 1:
        fields.append(("retries\t\t", 1))
    return fields


def delivery_fields(outcome: str) -> list[tuple[str, float]]:
    """The increment the end of a delivery makes ("delivered" or "failed")."""
    return [(f"deliveries\t\toutcome={outcome}", 1)]


class Metrics:
    def __init__(self, client: Store, *, max_endpoints: int = 50) -> None:
        self._redis = client
        self._max_endpoints = max_endpoints
        self._observe = load_script(client, "metrics")

    def observe_attempt(
        self, endpoint: str, *, result: str, duration_s: float, attempt: int
    ) -> None:
        """One HTTP attempt: ``result`` is "success" or an ErrorKind value."""
        self.add(endpoint, attempt_fields(result=result, duration_s=duration_s, attempt=attempt))

    def observe_delivery(self, endpoint: str, *, outcome: str) -> None:
        """A delivery ended: ``outcome`` is "delivered" or "failed"."""
        self.add(endpoint, delivery_fields(outcome))

    def add(self, endpoint: str, fields: Iterable[tuple[str, float]]) -> None:
        """Add ``(field, increment)`` pairs to the totals and this minute, in one call."""
        minute = int(time.time() // 60)
        args: list[str | float] = [endpoint, self._max_endpoints, MINUTE_TTL_S]
        for field, increment in fields:
            args += [field, increment]
        self._observe(
            keys=[keys.METRICS_TOTALS, keys.metrics_minute(minute), keys.METRICS_ENDPOINTS],
            args=args,
        )

    def totals(self) -> list[Sample]:
        return _parse(self._redis.hgetall(keys.METRICS_TOTALS))

    def last_minutes(self, minutes: int, *, now: float | None = None) -> list[Sample]:
        """Samples summed over the last ``minutes`` whole minutes, this one included."""
        current = int((time.time() if now is None else now) // 60)
        pipe = self._redis.pipeline(transaction=False)
        for minute in range(current - minutes + 1, current + 1):
            pipe.hgetall(keys.metrics_minute(minute))
        summed: dict[str, float] = defaultdict(float)
        for hash_ in pipe.execute():
            for field, value in hash_.items():
                summed[str(field)] += float(value)
        return _parse(summed)


def _parse(raw: dict[str, str] | dict[str, float] | dict[bytes | str, bytes | str]) -> list[Sample]:
    samples = []
    for field, value in raw.items():
        name, endpoint, rest = str(field).split("\t", 2)
        labels = tuple((k, v) for k, v in (pair.split("=", 1) for pair in rest.split(",") if pair))
        number = float(value)
        if math.isfinite(number):
            samples.append(Sample(name=name, endpoint=endpoint, labels=labels, value=number))
    return samples


def by_name(samples: Iterable[Sample], name: str) -> list[Sample]:
    return [s for s in samples if s.name == name]
