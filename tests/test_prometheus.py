"""Prometheus text exposition of the shared metrics, and its HTTP server.

The output is checked with prometheus_client's own parser, an independent
reading of the text format.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable, Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PromSample

from webhooks.metrics import BUCKETS_S, Metrics, Sample
from webhooks.metrics_http import serve
from webhooks.prometheus import endpoint_label, render
from webhooks.queues import QUEUE

A = "https://a.example:443/hook"
B = "https://b.example:443/other"
LA, LB = endpoint_label(A), endpoint_label(B)


def get(base: str, path: str) -> tuple[int, str, str]:
    """GET ``path``; gives status, Content-Type and body."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


def parse(text: str) -> dict[str, tuple[str, list[PromSample]]]:
    return {f.name: (f.type, list(f.samples)) for f in text_string_to_metric_families(text)}


def value(samples: list[PromSample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


@pytest.fixture
def observed(metrics: Metrics) -> list[Sample]:
    """Two endpoints: A with a failed then a successful delivery, B one slow success."""
    metrics.observe_attempt(A, result="http_5xx", duration_s=0.01, attempt=1)
    metrics.observe_attempt(A, result="timeout", duration_s=2.0, attempt=2)
    metrics.observe_delivery(A, outcome="failed")
    metrics.observe_attempt(A, result="success", duration_s=0.3, attempt=1)
    metrics.observe_delivery(A, outcome="delivered")
    metrics.observe_attempt(B, result="success", duration_s=75.0, attempt=1)
    metrics.observe_delivery(B, outcome="delivered")
    return metrics.totals()


def test_the_counters_parse_with_their_types_and_values(observed: list[Sample]) -> None:
    text = render(observed, {})

    families = parse(text)

    for name in ("deliveries", "attempts", "errors", "retries"):
        assert families[f"webhooks_{name}"][0] == "counter"
    _, attempts = families["webhooks_attempts"]
    assert value(attempts, "webhooks_attempts_total", endpoint=LA, result="success") == 1
    assert value(attempts, "webhooks_attempts_total", endpoint=LA, result="http_5xx") == 1
    assert value(attempts, "webhooks_attempts_total", endpoint=LA, result="timeout") == 1
    assert value(attempts, "webhooks_attempts_total", endpoint=LB, result="success") == 1
    _, deliveries = families["webhooks_deliveries"]
    assert value(deliveries, "webhooks_deliveries_total", endpoint=LA, outcome="failed") == 1
    assert value(deliveries, "webhooks_deliveries_total", endpoint=LA, outcome="delivered") == 1
    _, errors = families["webhooks_errors"]
    assert value(errors, "webhooks_errors_total", endpoint=LA, kind="timeout") == 1
    _, retries = families["webhooks_retries"]
    assert value(retries, "webhooks_retries_total", endpoint=LA) == 1
    assert [s for s in retries if s.labels["endpoint"] == LB] == []


def test_the_histogram_is_cumulative_and_its_count_is_the_inf_bucket(
    observed: list[Sample],
) -> None:
    kind, samples = parse(render(observed, {}))["webhooks_attempt_duration_seconds"]

    assert kind == "histogram"
    name = "webhooks_attempt_duration_seconds"
    for endpoint, durations in ((LA, [0.01, 2.0, 0.3]), (LB, [75.0])):
        bounds = [repr(b) for b in BUCKETS_S] + ["+Inf"]
        buckets = [value(samples, f"{name}_bucket", endpoint=endpoint, le=le) for le in bounds]
        expected = [sum(1 for d in durations if d <= float(le)) for le in bounds]
        assert buckets == expected
        assert buckets == sorted(buckets)  # cumulative, never decreasing
        assert value(samples, f"{name}_count", endpoint=endpoint) == buckets[-1] == len(durations)
        assert value(samples, f"{name}_sum", endpoint=endpoint) == pytest.approx(sum(durations))


def test_gauges_are_rendered_with_their_label() -> None:
    text = render([], {"queue_depth": {QUEUE: 3, "parked": 7}, "dead_letters": {"all": 2}})

    families = parse(text)

    kind, depth = families["webhooks_queue_depth"]
    assert kind == "gauge"
    assert value(depth, "webhooks_queue_depth", queue=QUEUE) == 3
    assert value(depth, "webhooks_queue_depth", queue="parked") == 7
    assert families["webhooks_dead_letters"][0] == "gauge"
    assert [s.value for s in families["webhooks_dead_letters"][1]] == [2]


def test_no_observations_is_still_a_valid_exposition() -> None:
    text = render([], {})

    families = parse(text)

    assert all(samples == [] for _, samples in families.values())
    assert text.endswith("\n")


def test_label_values_are_escaped() -> None:
    # A label value may carry characters the text format must escape.
    odd = 'say"hi"\\there\nnext'
    samples = [Sample("attempts", odd, (("result", "success"),), 2)]

    _, attempts = parse(render(samples, {}))["webhooks_attempts"]

    assert value(attempts, "webhooks_attempts_total", endpoint=odd, result="success") == 2


def test_endpoint_labels_are_host_and_path_hash_never_path_or_query() -> None:
    # Given an endpoint whose path and query carry tokens
    secret_url = "https://hooks.example:443/t/sk_live_abc123?token=qq9"
    samples = [
        Sample("attempts", secret_url, (("result", "success"),), 1),
        Sample("attempt_duration_bucket", secret_url, (("le", "0.1"),), 1),
        Sample("attempt_duration_sum", secret_url, (), 0.1),
    ]

    # When it is rendered
    text = render(samples, {})

    # Then its label is the host and port with an 8-digit hash of the path only
    assert "sk_live_abc123" not in text and "qq9" not in text and "/t/" not in text
    label = endpoint_label(secret_url)
    assert re.fullmatch(r"hooks\.example:443/[0-9a-f]{8}", label)
    assert label == endpoint_label("https://hooks.example:443/t/sk_live_abc123?token=other")
    assert label != endpoint_label("https://hooks.example:443/t/sk_live_abc124")
    _, attempts = parse(text)["webhooks_attempts"]
    assert value(attempts, "webhooks_attempts_total", endpoint=label, result="success") == 1


def test_every_line_is_a_comment_or_one_sample(observed: list[Sample]) -> None:
    text = render(observed, {"queue_depth": {QUEUE: 0}})

    lines = text.splitlines()

    assert all(line.startswith(("# HELP ", "# TYPE ", "webhooks_")) for line in lines)
    sample_count = sum(len(samples) for _, samples in parse(text).values())
    assert sample_count == sum(1 for line in lines if not line.startswith("#"))


# --- the server -----------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[], str]], str]]:
    """Start ``serve`` with a scrape function; gives its base URL."""
    started = []

    def start(scrape: Callable[[], str]) -> str:
        httpd = serve("127.0.0.1", 0, scrape)
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_get_metrics_answers_with_the_scrape(
    server: Callable[[Callable[[], str]], str], observed: list[Sample]
) -> None:
    base = server(lambda: render(observed, {}))

    status, content_type, body = get(base, "/metrics")

    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    _, attempts = parse(body)["webhooks_attempts"]
    assert value(attempts, "webhooks_attempts_total", endpoint=LB, result="success") == 1


def test_other_paths_are_not_found(server: Callable[[Callable[[], str]], str]) -> None:
    base = server(lambda: "")

    status, _, _ = get(base, "/")

    assert status == 404


def test_a_failing_scrape_is_a_503_not_a_dead_server(
    server: Callable[[Callable[[], str]], str],
) -> None:
    calls = []

    def scrape() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("Redis is down")
        return render([], {})

    base = server(scrape)

    assert get(base, "/metrics")[0] == 503
    assert get(base, "/metrics")[0] == 200
