"""``webhooks stats``: the guide's health metrics for a recent window.

Success rate, mean and p50/p95/p99 response time, retries and error rates by
type, overall and per endpoint, computed from the per-minute metrics that
every worker writes to Redis. Percentiles come from the histogram, so each
is reported as the upper bound of the bucket it falls in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from webhooks.metrics import BUCKETS_S, Sample

__all__ = ["Summary", "format_table", "summarize"]

ALL = "(all endpoints)"


@dataclass
class Summary:
    endpoint: str
    attempts: int = 0
    successes: int = 0
    retries: int = 0
    delivered: int = 0
    failed: int = 0
    duration_sum_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.attempts if self.attempts else None

    @property
    def mean_s(self) -> float | None:
        return self.duration_sum_s / self.attempts if self.attempts else None

    def percentile_s(self, q: float) -> float | None:
        """Upper bound of the bucket holding the ``q`` quantile (inf past the last)."""
        if not self.attempts:
            return None
        rank = q * self.attempts
        seen = 0
        for bound in BUCKETS_S:
            seen += self.buckets.get(repr(bound), 0)
            if seen >= rank:
                return bound
        return float("inf")

    def as_dict(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "attempts": self.attempts,
            "success_rate": self.success_rate,
            "mean_s": self.mean_s,
            "p50_s": self.percentile_s(0.5),
            "p95_s": self.percentile_s(0.95),
            "p99_s": self.percentile_s(0.99),
            "retries": self.retries,
            "deliveries": {"delivered": self.delivered, "failed": self.failed},
            "error_rates": {k: v / self.attempts for k, v in sorted(self.errors.items())},
        }


def summarize(samples: Iterable[Sample]) -> list[Summary]:
    """One summary per endpoint, the overall one first."""
    by_endpoint: dict[str, Summary] = {}
    total = Summary(ALL)
    for sample in samples:
        summary = by_endpoint.setdefault(sample.endpoint, Summary(sample.endpoint))
        for target in (total, summary):
            _add(target, sample)
    return [total, *(by_endpoint[e] for e in sorted(by_endpoint))]


def _add(summary: Summary, sample: Sample) -> None:
    labels = dict(sample.labels)
    value = int(sample.value)
    if sample.name == "attempts":
        summary.attempts += value
        if labels.get("result") == "success":
            summary.successes += value
    elif sample.name == "errors":
        kind = labels.get("kind", "unknown")
        summary.errors[kind] = summary.errors.get(kind, 0) + value
    elif sample.name == "retries":
        summary.retries += value
    elif sample.name == "deliveries":
        if labels.get("outcome") == "delivered":
            summary.delivered += value
        else:
            summary.failed += value
    elif sample.name == "attempt_duration_sum":
        summary.duration_sum_s += sample.value
    elif sample.name == "attempt_duration_bucket":
        le = labels.get("le", "+Inf")
        summary.buckets[le] = summary.buckets.get(le, 0) + value


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if value == float("inf") else f"{value * 1000:.0f}"


def format_table(summaries: list[Summary], minutes: int) -> str:
    header = (
        f"{'endpoint':<44} {'attempts':>8} {'success':>8} {'mean ms':>8} {'p50':>6} "
        f"{'p95':>6} {'p99':>6} {'retries':>7} {'ok':>5} {'dead':>5}  errors"
    )
    lines = [f"last {minutes} minute(s)", header, "-" * len(header)]
    for s in summaries:
        rate = "-" if s.success_rate is None else f"{s.success_rate:.1%}"
        errors = defaultdict(int, s.errors)
        shown = ", ".join(f"{k} {v / s.attempts:.1%}" for k, v in sorted(errors.items())) or "-"
        lines.append(
            f"{s.endpoint[:44]:<44} {s.attempts:>8} {rate:>8} {_ms(s.mean_s):>8} "
            f"{_ms(s.percentile_s(0.5)):>6} {_ms(s.percentile_s(0.95)):>6} "
            f"{_ms(s.percentile_s(0.99)):>6} {s.retries:>7} {s.delivered:>5} {s.failed:>5}  "
            f"{shown}"
        )
    return "\n".join(lines)
