"""Operations end to end: attempt log, dead letters, Prometheus metrics and stats.

Real parts only: a ``redis-server`` of this module's own, two ``celery worker``
processes, an HTTPS receiver, the ``webhooks`` CLI (in-process, as
``webhooks.cli.main``) and ``webhooks metrics-server`` as a subprocess.

The module has its own Redis because metrics are global to a Redis and their
endpoint labels are bounded (the first 50 endpoints ever seen): on the
session's Redis, shared with every other test's fresh endpoints, this
module's endpoints could be counted as ``other``.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from config.celery_app import app
from config.settings import Settings, child_environment
from config.wiring import conversation_store
from tasks import deliver_webhook
from testing.receiver import Drop, Receiver, Respond, TestCA
from testing.redis_server import RedisServer, free_port
from testing.worker import WorkerProcess
from tests.support import make_event, registered, unique_path, wait_until, worker_env
from webhooks.cli import EXIT_NOT_FOUND, main
from webhooks.conversations import ConversationStore
from webhooks.endpoints import normalize_endpoint
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.prometheus import endpoint_label
from webhooks.queues import QUEUE

# --- fixtures ----------------------------------------------------------------


@dataclass
class Fleet:
    """This module's Redis, its two workers, and the producer pointed at it."""

    server: RedisServer
    client: redis.Redis
    conversations: ConversationStore
    outcomes: OutcomeStore
    workers: list[WorkerProcess]

    def wait_outcome(self, webhook_id: str, state: str, timeout: float = 30.0) -> Outcome:
        deadline = time.monotonic() + timeout
        while True:
            found = self.outcomes.get(webhook_id)
            if found is not None and found.state == state:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{webhook_id} not {state} within {timeout} s: {found}")
            time.sleep(0.05)

    def hostnames(self) -> set[str]:
        """Each worker's node name (``name@host``), from its startup banner."""
        names = set()
        for worker in self.workers:
            ready = next(line for line in worker.lines if " ready." in line)
            names.add(ready.split()[-2])
        return names


@pytest.fixture(scope="module")
def fleet(producer_settings: Settings, test_ca: TestCA) -> Iterator[Fleet]:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
        settings = producer_settings.model_copy(update={"redis_url": server.url})
        app.configure(settings)
        workers = [
            WorkerProcess(worker_env(server.url, test_ca), concurrency=1, name=name)
            for name in ("alpha", "beta")
        ]
        starting = [threading.Thread(target=w.start) for w in workers]
        try:
            for thread in starting:
                thread.start()
            for thread in starting:
                thread.join()
            yield Fleet(
                server=server,
                client=client,
                conversations=conversation_store(client, settings),
                outcomes=OutcomeStore(client, retention_s=3600),
                workers=workers,
            )
        finally:
            stopping = [threading.Thread(target=w.stop) for w in workers]
            for thread in stopping:
                thread.start()
            for thread in stopping:
                thread.join()
            app.amqp.producer_pool.force_close_all()
            app.pool.force_close_all()
            app.configure(producer_settings)
            client.close()


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch, fleet: Fleet) -> None:
    monkeypatch.setenv("WEBHOOKS_REDIS_URL", fleet.server.url)
    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "true")


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``webhooks ARGS…`` in-process; gives exit code, stdout, stderr."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def metrics_port(fleet: Fleet) -> Iterator[int]:
    """``webhooks metrics-server`` as its own process, as the Procfile runs it."""
    port = free_port()
    command = Path(sys.executable).parent / "webhooks"
    process = subprocess.Popen(
        [str(command), "metrics-server", "--host", "127.0.0.1", "--port", str(port)],
        env=child_environment({"WEBHOOKS_REDIS_URL": fleet.server.url}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                get_metrics(port)
                break
            except ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("metrics-server did not come up") from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=10)


def get_metrics(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = get_metrics(port)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def publish(conversation_id: str) -> tuple[str, str]:
    """Publish one event as a producer does; gives (webhook id, message id)."""
    event = make_event(conversation_id)
    result = deliver_webhook.delay(event)
    return str(result.id), str(event["data"]["id"])


# --- 1. the attempt log ------------------------------------------------------


def test_the_log_tells_the_story_of_a_delivery_that_failed_twice_then_succeeded(
    fleet: Fleet, receiver: Receiver, cli: Cli
) -> None:
    # Given an endpoint that answers 500, then drops the connection, then 200
    path = unique_path()
    cid, _ = registered(fleet.conversations, receiver, path)
    receiver.script(path, [Respond(500, body=b'{"error":"boom"}'), Drop(), Respond(200)])

    # When an event is delivered
    webhook_id, message_id = publish(cid)
    outcome = fleet.wait_outcome(webhook_id, "delivered")
    assert outcome.attempts == 3
    assert {r.headers["webhook-id"] for r in receiver.received(path)} == {webhook_id}

    # Then the JSON log holds the three attempts, in order, with their facts
    code, out, _ = cli("log", "--message-id", message_id, "--json")
    assert code == 0
    records = json.loads(out)
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert [r["outcome"] for r in records] == ["http_5xx", "connection", "delivered"]
    assert [r["status"] for r in records] == [500, None, 200]
    assert {r["webhook_id"] for r in records} == {webhook_id}
    assert {(r["conversation_id"], r["message_id"]) for r in records} == {(cid, message_id)}
    assert {r["endpoint"] for r in records} == {normalize_endpoint(receiver.url(path))}
    assert {r["queue"] for r in records} == {QUEUE}
    assert {r["worker"] for r in records} <= fleet.hostnames()
    assert all(r["duration_s"] > 0 for r in records[::2])  # answered attempts took time
    started = [r["started_at"] for r in records]
    assert started == sorted(started) and all(s.endswith("Z") for s in started)
    assert "500" in records[0]["error"] and "boom" in records[0]["response_excerpt"]
    assert records[1]["error"] and records[2]["error"] == ""

    # And the table says the same, one row per attempt
    code, out, _ = cli("log", "--message-id", message_id)
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:]]
    assert len(rows) == 3
    for row, record in zip(rows, records, strict=True):
        assert row[0] == record["started_at"]
        assert row[1:5] == [message_id, webhook_id, str(record["attempt"]), record["outcome"]]
        assert row[5] == str(record["status"] or "-")
        assert row[7:10] == [QUEUE, record["worker"], record["endpoint"]]
    assert "boom" in out.splitlines()[2]

    # And the conversation's log lists it too
    code, out, _ = cli("log", "--conversation-id", cid, "--json")
    assert code == 0
    assert json.loads(out) == records


def test_the_log_and_the_configuration_answer_the_guides_support_checklist(
    fleet: Fleet, receiver: Receiver, cli: Cli
) -> None:
    # Given a delivery that failed once and then succeeded
    path = unique_path()
    cid, secret = registered(fleet.conversations, receiver, path)
    receiver.script(path, [Respond(503, body=b"maintenance")])
    webhook_id, message_id = publish(cid)
    fleet.wait_outcome(webhook_id, "delivered")

    # When support looks up the conversation and the message
    code_config, config_out, _ = cli("conversations", "get", cid)
    code_log, log_out, _ = cli("log", "--message-id", message_id, "--json")

    # Then: conversation id, message id, timestamps, webhook configuration,
    # error messages and the retry attempt log, and no secret
    assert (code_config, code_log) == (0, 0)
    config = json.loads(config_out)
    assert config["conversation_id"] == cid
    assert config["config"]["callback_url"] == receiver.url(path)
    assert secret not in config_out and secret not in log_out
    attempts = json.loads(log_out)
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, 503), (2, 200)]
    assert all(a["message_id"] == message_id and a["conversation_id"] == cid for a in attempts)
    assert all(a["started_at"] for a in attempts)
    assert "503" in attempts[0]["error"] and attempts[0]["response_excerpt"] == "maintenance"


def test_an_unknown_message_has_no_log(cli: Cli) -> None:
    code, out, err = cli("log", "--message-id", "no-such-message")

    assert (code, out) == (EXIT_NOT_FOUND, "")
    assert "no attempts" in err


# --- 2. dead letters -----------------------------------------------------------


def test_an_exhausted_delivery_is_listed_and_replayed_once_with_its_webhook_id(
    fleet: Fleet, receiver: Receiver, cli: Cli
) -> None:
    # Given an endpoint that always answers 503, and an event that used up its retries
    path = unique_path()
    cid, _ = registered(fleet.conversations, receiver, path)
    receiver.always(path, Respond(503))
    webhook_id, message_id = publish(cid)
    failed = fleet.wait_outcome(webhook_id, "failed")
    assert (failed.attempts, failed.error_kind) == (4, "http_5xx")

    # Then it is a dead letter, in the listing, as JSON, and by endpoint
    code, out, err = cli("dead", "list")
    assert code == 0
    (line,) = [line for line in out.splitlines() if webhook_id in line]
    assert message_id in line and receiver.url(path) in line and "http_5xx" in line
    code, out, _ = cli("dead", "list", "--json")
    (letter,) = [d for d in json.loads(out) if d["webhook_id"] == webhook_id]
    assert letter["message_id"] == message_id
    assert letter["url"] == receiver.url(path)
    assert letter["outcome"]["attempts"] == 4
    assert letter["event"]["data"]["id"] == message_id
    same_endpoint = f"HTTPS://127.0.0.1:{receiver.port}{path}?any=query"
    code, out, _ = cli("dead", "list", "--endpoint", same_endpoint, "--json")
    assert [d["webhook_id"] for d in json.loads(out)] == [webhook_id]
    code, out, _ = cli("dead", "list", "--endpoint", receiver.url(path + "-other"), "--json")
    assert json.loads(out) == []

    # When the receiver recovers and the dead letter is replayed
    receiver.always(path, Respond(200))
    code, _, err = cli("dead", "replay", "--message-id", message_id)
    assert code == 0 and "replayed 1" in err

    # Then it is delivered once more, under the same webhook-id, and no longer dead
    fleet.wait_outcome(webhook_id, "delivered")
    requests = receiver.wait_for(5, path)
    assert len(requests) == 5
    assert requests[-1].headers["webhook-id"] == webhook_id
    assert requests[-1].signature_ok is True
    code, out, _ = cli("dead", "list", "--json")
    assert webhook_id not in {d["webhook_id"] for d in json.loads(out)}

    # And replaying it again does nothing
    code, _, err = cli("dead", "replay", "--message-id", message_id)
    assert code == EXIT_NOT_FOUND and "nothing to replay" in err
    time.sleep(1.5)  # longer than a delivery to this receiver takes
    assert len(receiver.received(path)) == 5


def test_two_replays_of_one_endpoint_at_once_deliver_each_letter_once(
    fleet: Fleet, receiver: Receiver, cli: Cli
) -> None:
    # Given two dead letters of one endpoint
    path = unique_path()
    cid, _ = registered(fleet.conversations, receiver, path)
    receiver.always(path, Respond(500))
    published = [publish(cid)[0] for _ in range(2)]
    for webhook_id in published:
        fleet.wait_outcome(webhook_id, "failed")
    receiver.always(path, Respond(200))
    before = len(receiver.received(path))

    # When two operators replay the endpoint at the same time
    results: list[int] = []
    barrier = threading.Barrier(2)

    def operator() -> None:
        barrier.wait()
        results.append(main(["dead", "replay", "--endpoint", receiver.url(path)]))

    threads = [threading.Thread(target=operator) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # Then each letter is delivered exactly once
    assert results == [0, 0]
    for webhook_id in published:
        fleet.wait_outcome(webhook_id, "delivered")
    time.sleep(1.0)
    replays = receiver.received(path)[before:]
    assert sorted(r.headers["webhook-id"] for r in replays) == sorted(published)


# --- 3. metrics over HTTP, across two worker processes ---------------------------


def test_metrics_scraped_over_http_add_up_across_two_worker_processes(
    fleet: Fleet, receiver: Receiver, cli: Cli, metrics_port: int
) -> None:
    # Given a fresh endpoint that takes a moment to answer, so both workers get work
    n = 12
    path = unique_path()
    cid, _ = registered(fleet.conversations, receiver, path)
    receiver.always(path, Respond(200, delay_s=0.1))
    endpoint = endpoint_label(normalize_endpoint(receiver.url(path)))

    # When N events are delivered
    published = [publish(cid)[0] for _ in range(n)]
    for webhook_id in published:
        fleet.wait_outcome(webhook_id, "delivered")

    # Then both worker processes delivered some of them
    code, out, _ = cli("log", "--conversation-id", cid, "--json")
    records = json.loads(out)
    assert code == 0 and len(records) == n
    assert {r["worker"] for r in records} == fleet.hostnames()
    assert len(fleet.hostnames()) == 2

    # And /metrics, served by its own process, counts every one of them once
    # (as soon as both workers flushed their sums)
    attempts = ("webhooks_attempts_total", (("endpoint", endpoint), ("result", "success")))

    def all_counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        got = scrape(metrics_port)
        return got if got.get(attempts) == n else None

    found = wait_until(all_counted, 10, f"{n} attempts on /metrics")
    assert (
        found[("webhooks_deliveries_total", (("endpoint", endpoint), ("outcome", "delivered")))]
        == n
    )
    ours = {key: v for key, v in found.items() if ("endpoint", endpoint) in key[1]}
    histogram = "webhooks_attempt_duration_seconds"
    assert ours[(f"{histogram}_count", (("endpoint", endpoint),))] == n
    assert ours[(f"{histogram}_bucket", (("endpoint", endpoint), ("le", "+Inf")))] == n
    assert ours[(f"{histogram}_bucket", (("endpoint", endpoint), ("le", "0.05")))] == 0
    assert ours[(f"{histogram}_sum", (("endpoint", endpoint),))] >= 0.1 * n
    assert not [
        key for key in ours if key[0] in ("webhooks_errors_total", "webhooks_retries_total")
    ]
    assert found[("webhooks_queue_depth", (("queue", QUEUE),))] == 0


# --- 4. stats -------------------------------------------------------------------


def test_stats_reflect_recent_deliveries_retries_and_errors_by_type(
    fleet: Fleet, receiver: Receiver, cli: Cli
) -> None:
    # Given an endpoint that fails twice (a 500, a dropped connection) before answering,
    # and a healthy one
    flaky, healthy = unique_path(), unique_path()
    flaky_cid, _ = registered(fleet.conversations, receiver, flaky)
    healthy_cid, _ = registered(fleet.conversations, receiver, healthy)
    receiver.script(flaky, [Respond(500), Drop()])
    published = [publish(flaky_cid)[0] for _ in range(2)] + [publish(healthy_cid)[0]]
    for webhook_id in published:
        fleet.wait_outcome(webhook_id, "delivered")

    # When the last five minutes are summarized, once the workers flushed
    # their sums (4 attempts to the flaky endpoint, 1 to the healthy one)
    def summary() -> tuple[int, str] | None:
        code, out, _ = cli("stats", "--minutes", "5", "--json")
        counts = {e["endpoint"]: e["attempts"] for e in json.loads(out)["endpoints"]}
        wanted = {
            normalize_endpoint(receiver.url(flaky)): 4,
            normalize_endpoint(receiver.url(healthy)): 1,
        }
        return (code, out) if all(counts.get(e) == n for e, n in wanted.items()) else None

    code, out = wait_until(summary, 10, "4 and 1 attempts in stats")

    # Then each endpoint has its attempts, success rate, retries and error rates
    assert code == 0
    report = json.loads(out)
    assert report["minutes"] == 5
    by_endpoint: dict[str, Any] = {e["endpoint"]: e for e in report["endpoints"]}
    bad = by_endpoint[normalize_endpoint(receiver.url(flaky))]
    assert bad["attempts"] == 4
    assert bad["success_rate"] == 0.5
    assert bad["retries"] == 2
    assert bad["deliveries"] == {"delivered": 2, "failed": 0}
    assert bad["error_rates"] == {"connection": 0.25, "http_5xx": 0.25}
    assert bad["mean_s"] > 0 and bad["p50_s"] is not None
    good = by_endpoint[normalize_endpoint(receiver.url(healthy))]
    assert (good["attempts"], good["success_rate"], good["retries"]) == (1, 1.0, 0)
    assert good["error_rates"] == {}
    overall = report["endpoints"][0]
    assert overall["endpoint"] == "(all endpoints)"
    assert overall["attempts"] >= 5

    # And the table shows the same row
    code, out, _ = cli("stats", "--minutes", "5")
    assert code == 0
    (row,) = [line for line in out.splitlines() if line.startswith(bad["endpoint"])]
    assert row.split()[1:3] == ["4", "50.0%"]
    assert "connection 25.0%" in row and "http_5xx 25.0%" in row
