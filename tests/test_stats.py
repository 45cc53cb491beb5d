"""``webhooks stats`` numbers: from minute metrics in Redis to the guide's health metrics."""

from __future__ import annotations

import time

import pytest

from webhooks.metrics import Metrics, Sample
from webhooks.stats import ALL, Summary, format_table, summarize

A = "https://a.example:443/hook"
B = "https://b.example:443/hook"


def recent(metrics: Metrics) -> list[Sample]:
    return metrics.last_minutes(5, now=time.time())


def by_endpoint(summaries: list[Summary]) -> dict[str, Summary]:
    return {s.endpoint: s for s in summaries}


def test_success_rate_mean_retries_and_error_rates_per_endpoint_and_overall(
    metrics: Metrics,
) -> None:
    # Given A: one delivery that failed twice (5xx, then dropped) and then succeeded,
    # and B: two first-time successes
    metrics.observe_attempt(A, result="http_5xx", duration_s=0.1, attempt=1)
    metrics.observe_attempt(A, result="connection", duration_s=0.2, attempt=2)
    metrics.observe_attempt(A, result="success", duration_s=0.3, attempt=3)
    metrics.observe_delivery(A, outcome="delivered")
    for _ in range(2):
        metrics.observe_attempt(B, result="success", duration_s=0.05, attempt=1)
        metrics.observe_delivery(B, outcome="delivered")

    # When the window is summarized
    summaries = summarize(recent(metrics))

    # Then the overall summary comes first, then each endpoint in order
    assert [s.endpoint for s in summaries] == [ALL, A, B]
    found = by_endpoint(summaries)
    a = found[A].as_dict()
    assert a["attempts"] == 3
    assert a["success_rate"] == pytest.approx(1 / 3)
    assert a["mean_s"] == pytest.approx(0.2)
    assert a["retries"] == 2
    assert a["deliveries"] == {"delivered": 1, "failed": 0}
    assert a["error_rates"] == pytest.approx({"connection": 1 / 3, "http_5xx": 1 / 3})
    overall = found[ALL].as_dict()
    assert overall["attempts"] == 5
    assert overall["success_rate"] == pytest.approx(3 / 5)
    assert overall["mean_s"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.05 + 0.05) / 5)
    assert overall["deliveries"] == {"delivered": 3, "failed": 0}
    assert overall["error_rates"] == pytest.approx({"connection": 0.2, "http_5xx": 0.2})


def test_percentiles_are_the_upper_bound_of_the_bucket_holding_them(metrics: Metrics) -> None:
    # Given 100 attempts: 50 fast, 45 medium, 4 slow, 1 past the last bucket
    for duration_s, count in ((0.01, 50), (0.2, 45), (2.0, 4), (90.0, 1)):
        for _ in range(count):
            metrics.observe_attempt(A, result="success", duration_s=duration_s, attempt=1)

    (_, a) = summarize(recent(metrics))

    assert a.percentile_s(0.5) == 0.025
    assert a.percentile_s(0.51) == 0.25
    assert a.percentile_s(0.95) == 0.25
    assert a.percentile_s(0.99) == 2.5
    assert a.percentile_s(1.0) == float("inf")
    assert (a.as_dict()["p50_s"], a.as_dict()["p95_s"], a.as_dict()["p99_s"]) == (0.025, 0.25, 2.5)


def test_a_dead_lettered_delivery_counts_as_failed(metrics: Metrics) -> None:
    for attempt in (1, 2, 3, 4):
        metrics.observe_attempt(A, result="http_5xx", duration_s=0.01, attempt=attempt)
    metrics.observe_delivery(A, outcome="failed")

    a = by_endpoint(summarize(recent(metrics)))[A].as_dict()

    assert a["success_rate"] == 0
    assert a["deliveries"] == {"delivered": 0, "failed": 1}
    assert a["retries"] == 3
    assert a["error_rates"] == {"http_5xx": 1.0}


def test_an_empty_window_has_no_rates_rather_than_a_division_by_zero() -> None:
    (overall,) = summarize([])

    assert overall.as_dict() == {
        "endpoint": ALL,
        "attempts": 0,
        "success_rate": None,
        "mean_s": None,
        "p50_s": None,
        "p95_s": None,
        "p99_s": None,
        "retries": 0,
        "deliveries": {"delivered": 0, "failed": 0},
        "error_rates": {},
    }
    assert "-" in format_table([overall], 15).splitlines()[-1]


def test_the_table_shows_one_row_per_summary_with_its_numbers(metrics: Metrics) -> None:
    metrics.observe_attempt(A, result="timeout", duration_s=2.0, attempt=1)
    metrics.observe_attempt(A, result="success", duration_s=0.2, attempt=2)
    metrics.observe_delivery(A, outcome="delivered")

    table = format_table(summarize(recent(metrics)), 5)

    lines = table.splitlines()
    assert lines[0] == "last 5 minute(s)"
    assert lines[1].split()[:3] == ["endpoint", "attempts", "success"]
    row = next(line for line in lines if line.startswith(A))
    assert row.split()[1:4] == ["2", "50.0%", "1100"]  # attempts, success, mean ms
    assert row.endswith("timeout 50.0%")
