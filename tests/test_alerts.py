"""config/alerts.yml: promtool accepts it, its unit tests pass, and it only
queries metrics and labels that the service really exports.

promtool (Debian's ``prometheus`` package) must be on PATH; .ci/run installs it.
A missing promtool fails these tests rather than skipping them, so CI cannot
pass without having checked the rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhooks.errors import ErrorKind
from webhooks.metrics import BUCKETS_S, Sample, bucket_for
from webhooks.ordering import ordered_line_gauges
from webhooks.prometheus import render
from webhooks.queues import QUEUES

ROOT = Path(__file__).resolve().parent.parent
RULES = "config/alerts.yml"
RULE_TESTS = "config/alerts.test.yml"

ALERTS = {
    "WebhookHighErrorRate",
    "WebhookResponseTimeDegraded",
    "WebhookRetrySpike",
    "WebhookFailedDeliveryCluster",
    "WebhookOrderedLineBlocked",
}
#: Alerts about one endpoint, which their annotations must name.
PER_ENDPOINT = ALERTS - {"WebhookOrderedLineBlocked"}

SELECTOR = re.compile(r"\b(webhooks_\w+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
EXPOSED = re.compile(r"^(webhooks_\w+)(?:\{(.*)\})? \S+$")
EXPOSED_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
#: Labels Prometheus adds to every scraped series, not the exporter.
TARGET_LABELS = {"job", "instance"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH. Install it with "
            "`apt-get install -y --no-install-recommends prometheus` (Debian) "
            "or from https://prometheus.io/download/; .ci/run does this on CI.",
            pytrace=False,
        )
    return subprocess.run(
        [path, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load((ROOT / RULES).read_text())
    (group,) = loaded["groups"]
    return list(group["rules"])


class NoLinesBlocked:
    def blocked(self) -> list[object]:
        return []


def exported() -> dict[str, dict[str, set[str]]]:
    """Metric name -> label name -> values, from the exporter's own output
    for samples covering every result, error kind, outcome and bucket."""
    endpoint = "https://receiver.example/hooks"
    results = ["success", *(kind.value for kind in ErrorKind)]
    samples = [
        *(Sample("attempts", endpoint, (("result", r),), 1) for r in results),
        *(Sample("errors", endpoint, (("kind", k.value),), 1) for k in ErrorKind),
        *(Sample("deliveries", endpoint, (("outcome", o),), 1) for o in ("delivered", "failed")),
        Sample("retries", endpoint, (), 1),
        *(
            Sample("attempt_duration_bucket", endpoint, (("le", bucket_for(s)),), 1)
            for s in (*BUCKETS_S, 120.0)
        ),
        Sample("attempt_duration_sum", endpoint, (), 42.0),
    ]
    gauges = {
        "queue_depth": {queue: 0.0 for queue in (*QUEUES, "parked")},
        "dead_letters": {"all": 0.0},
        **ordered_line_gauges(NoLinesBlocked()),  # type: ignore[arg-type]
    }
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for line in render(samples, gauges).splitlines():
        match = EXPOSED.match(line)
        if match:
            name, labels = match.groups()
            found[name]  # a metric without labels is still exported
            for label, value in EXPOSED_LABEL.findall(labels or ""):
                found[name][label].add(value)
    return found


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    # Given the rules file / When promtool checks it
    result = promtool("check", "rules", RULES)

    # Then it is valid and holds the four alerts
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool check rules failed:\n{output}"
    assert f"SUCCESS: {len(ALERTS)} rules found" in output, output


def test_promtool_unit_tests_fire_and_stay_quiet_as_expected() -> None:
    # Given input series for failing and healthy endpoints / When promtool runs the tests
    result = promtool("test", "rules", RULE_TESTS)

    # Then every expected alert fires, and nothing else does
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool test rules failed:\n{output}"
    assert "SUCCESS" in output, output


def test_rules_are_the_guides_four_alerts_and_ordering_each_complete() -> None:
    # Given the rules / Then each alert is complete
    by_name = {rule["alert"]: rule for rule in rules()}
    assert set(by_name) == ALERTS
    for name, rule in by_name.items():
        assert rule.get("for"), f"{name} has no for:"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        for key in ("summary", "description"):
            text = rule["annotations"][key]
            assert "$value" in text, (name, key)
            assert name not in PER_ENDPOINT or "$labels.endpoint" in text, (name, key)


def test_every_alert_has_unit_tests_that_fire_it_and_that_must_not() -> None:
    # Given the promtool unit tests
    cases = yaml.safe_load((ROOT / RULE_TESTS).read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])

    # Then each alert is both expected to fire and expected to stay quiet somewhere
    assert fired == ALERTS, f"alerts never fired in {RULE_TESTS}: {ALERTS - fired}"
    assert quiet == ALERTS, f"alerts never checked quiet in {RULE_TESTS}: {ALERTS - quiet}"


def test_rules_query_only_metrics_and_labels_the_service_exports() -> None:
    # Given what webhooks.prometheus.render emits
    metrics = exported()
    label_names = {label for labels in metrics.values() for label in labels} | TARGET_LABELS
    assert "webhooks_attempt_duration_seconds_count" in metrics  # the parse works

    # When the rule expressions are scanned for selectors, matchers and groupings
    problems = []
    used = set()
    for rule in rules():
        expr = rule["expr"]
        for name, matchers in SELECTOR.findall(expr):
            used.add(name)
            if name not in metrics:
                problems.append(f"{rule['alert']}: {name} is not exported")
                continue
            for label, op, value in MATCHER.findall(matchers):
                if label not in metrics[name]:
                    problems.append(f"{rule['alert']}: {name} has no label {label}")
                elif op in {"=", "!="} and value not in metrics[name][label]:
                    problems.append(f'{rule["alert"]}: {name}{{{label}="{value}"}} never exported')
        for group in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                if label not in label_names:
                    problems.append(f"{rule['alert']}: groups by unknown label {label}")

    # Then every one of them exists, and the rules use each counter family
    assert not problems, "\n".join(problems)
    assert {
        "webhooks_attempts_total",
        "webhooks_retries_total",
        "webhooks_deliveries_total",
        "webhooks_attempt_duration_seconds_bucket",
    } <= used
