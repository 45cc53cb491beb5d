"""The overview's small chart: the latency histogram as inline SVG bars.

Computed here, drawn by the template: no JavaScript, no chart library.
"""

from __future__ import annotations

from dataclasses import dataclass

from webhooks.metrics import BUCKETS_S
from webhooks.stats import Summary

__all__ = ["Bar", "latency_bars"]

HEIGHT = 80


@dataclass(frozen=True, slots=True)
class Bar:
    label: str  # the bucket's upper bound
    count: int
    height: int  # pixels, the tallest bar is HEIGHT


def latency_bars(summary: Summary) -> list[Bar]:
    """Attempts per latency bucket (not cumulative), for the summary's window."""
    counts = [summary.buckets.get(repr(bound), 0) for bound in BUCKETS_S]
    counts.append(max(0, summary.attempts - sum(counts)))
    labels = [_label(b) for b in BUCKETS_S] + [f">{_label(BUCKETS_S[-1])}"]
    tallest = max(counts) or 1
    return [
        Bar(label, count, round(HEIGHT * count / tallest))
        for label, count in zip(labels, counts, strict=True)
    ]


def _label(bound_s: float) -> str:
    return f"{bound_s * 1000:.0f}ms" if bound_s < 1 else f"{bound_s:g}s"
