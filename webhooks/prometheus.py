"""Prometheus text exposition of the shared metrics.

``webhooks metrics-server`` (webhooks/metrics_http.py) serves this from its
own process: it reads Redis at each scrape, so one server reports every
worker on every machine, and any number of such servers report the same
numbers.

Endpoint labels are ``host:port/`` plus a short hash of the path, never the
path itself: callback paths often carry tokens, and whoever can read
``/metrics`` (or Prometheus, or its dashboards) must not learn them.
``webhooks stats`` shows the full URLs to those who can read Redis.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from urllib.parse import urlsplit

from webhooks.metrics import BUCKETS_S, Sample

__all__ = ["endpoint_label", "render"]

_COUNTERS = {
    "deliveries": "Deliveries that ended, by outcome (delivered or failed).",
    "attempts": "HTTP attempts, by result (success or error kind).",
    "errors": "Failed HTTP attempts, by error kind.",
    "retries": "HTTP attempts after the first one of a delivery.",
}
PREFIX = "webhooks_"


def endpoint_label(endpoint: str) -> str:
    """``host:port/`` and the first 8 hex digits of the path's SHA-256.

    ``https://a.example:443/hooks/t0ken?x=1`` → ``a.example:443/8af2197d``:
    enough to tell one endpoint of a host from another, nothing of the path,
    never the query. ``other`` (the overflow label) stays as it is.
    """
    if "://" not in endpoint:
        return endpoint
    parts = urlsplit(endpoint)
    digest = hashlib.sha256((parts.path or "/").encode()).hexdigest()[:8]
    return f"{parts.netloc.rpartition('@')[2]}/{digest}"


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
        summed: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        for s in samples:
            if s.name == name:  # two paths hashing alike must not make a duplicate series
                summed[(("endpoint", endpoint_label(s.endpoint)), *s.labels)] += s.value
        for pairs, total in sorted(summed.items()):
            lines.append(f"{metric}{_labels(pairs)} {_fmt(total)}")
    lines += _histogram(samples)
    for name, values in gauges.items():
        label = "queue" if name == "queue_depth" else "kind"
        lines += [f"# TYPE {PREFIX}{name} gauge"]
        for key, value in sorted(values.items()):
            lines.append(f"{PREFIX}{name}{_labels([(label, key)])} {_fmt(value)}")
    return "\n".join(lines) + "\n"


def _histogram(samples: list[Sample]) -> list[str]:
    name = f"{PREFIX}attempt_duration_seconds"
    buckets: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[str, float] = defaultdict(float)
    for s in samples:
        if s.name == "attempt_duration_bucket":
            buckets[endpoint_label(s.endpoint)][dict(s.labels)["le"]] += s.value
        elif s.name == "attempt_duration_sum":
            sums[endpoint_label(s.endpoint)] += s.value
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
