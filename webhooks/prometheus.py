"""Prometheus text exposition of the shared metrics, and the server for it.

``webhooks metrics-server`` runs this as its own process: it reads Redis at
each scrape, so one server reports every worker on every machine, and any
number of such servers report the same numbers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from webhooks.metrics import BUCKETS_S, Sample

__all__ = ["render", "serve"]

log = logging.getLogger(__name__)

_COUNTERS = {
    "deliveries": "Deliveries that ended, by outcome (delivered or failed).",
    "attempts": "HTTP attempts, by result (success or error kind).",
    "errors": "Failed HTTP attempts, by error kind.",
    "retries": "HTTP attempts after the first one of a delivery.",
}
PREFIX = "webhooks_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def render(samples: list[Sample], gauges: dict[str, dict[str, float]]) -> str:
    """Counters and the duration histogram from ``samples``, plus ``gauges``.

    ``gauges`` maps a metric name to {label value: value} for a single
    ``queue``-style label, e.g. {"queue_depth": {"webhooks": 3}}.
    """
    lines: list[str] = []
    for name, help_text in _COUNTERS.items():
        metric = f"{PREFIX}{name}_total"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        for s in sorted((s for s in samples if s.name == name), key=_sort_key):
            pairs = (("endpoint", s.endpoint), *s.labels)
            lines.append(f"{metric}{_labels(pairs)} {_fmt(s.value)}")
    lines += _histogram(samples)
    for name, values in gauges.items():
        label = "queue" if name == "queue_depth" else "kind"
        lines += [f"# TYPE {PREFIX}{name} gauge"]
        for key, value in sorted(values.items()):
            lines.append(f"{PREFIX}{name}{_labels([(label, key)])} {_fmt(value)}")
    return "\n".join(lines) + "\n"


def _sort_key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.endpoint, sample.labels


def _histogram(samples: list[Sample]) -> list[str]:
    name = f"{PREFIX}attempt_duration_seconds"
    buckets: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[str, float] = defaultdict(float)
    for s in samples:
        if s.name == "attempt_duration_bucket":
            buckets[s.endpoint][dict(s.labels)["le"]] += s.value
        elif s.name == "attempt_duration_sum":
            sums[s.endpoint] += s.value
    lines = [
        f"# HELP {name} Duration of HTTP attempts, request to response.",
        f"# TYPE {name} histogram",
    ]
    for endpoint in sorted(buckets):
        cumulative = 0.0
        for bound in [*(repr(b) for b in BUCKETS_S), "+Inf"]:
            cumulative += buckets[endpoint].get(bound, 0.0)
            labels = _labels([("endpoint", endpoint), ("le", bound)])
            lines.append(f"{name}_bucket{labels} {_fmt(cumulative)}")
        lines.append(f"{name}_sum{_labels([('endpoint', endpoint)])} {sums[endpoint]!r}")
        lines.append(f"{name}_count{_labels([('endpoint', endpoint)])} {_fmt(cumulative)}")
    return lines


def serve(host: str, port: int, scrape: Callable[[], str]) -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` with ``scrape()``; not started."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "try /metrics")
                return
            try:
                body = scrape().encode()
            except Exception:
                log.exception("scrape failed")
                self.send_error(503, "metrics unavailable (is Redis reachable?)")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    return ThreadingHTTPServer((host, port), Handler)
