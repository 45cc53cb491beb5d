"""Ordered delivery end to end: real workers, real producers, a flaky receiver, a kill.

Each test runs on a Redis of its own (``broker``), with ``celery worker``
subprocesses and producer subprocesses publishing through
``deliver_webhook.delay()``, to a real HTTPS receiver whose answers are
scripted per conversation, so the test knows which request got a 2xx.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks import deliver_webhook
from tasks.replay import republish
from testing.receiver import Behaviour, Hang, ReceivedRequest, Receiver, Respond
from testing.worker import WorkerProcess
from tests.support import Broker, make_event, unique_path, wait_until
from webhooks import keys
from webhooks.deadletters import DeadLetter
from webhooks.ordering import OrderedLines

ROOT = Path(__file__).resolve().parent.parent
#: Fast retries, a 1 s read timeout (a 1.5 s hang is a timeout), heartbeats
#: that take a worker silent for 2 s for dead.
SETTINGS = {
    "WEBHOOKS_RETRY_SCHEDULE": "0.2,0.4,0.6",
    "WEBHOOKS_TIMEOUT_S": "1",
    "WEBHOOKS_CONNECT_TIMEOUT_S": "1",
    "WEBHOOKS_WORKER_HEARTBEAT_S": "0.5",
    "WEBHOOKS_WORKER_DEAD_AFTER_S": "2",
}
PRODUCER = """
import json, sys
from tasks import deliver_webhook
from tasks.replay import republish
from tests.support import make_event
cids, count = json.loads(sys.argv[1]), int(sys.argv[2])
ids = [str(deliver_webhook.delay(make_event(cid)).id) for _ in range(count) for cid in cids]
print(json.dumps(ids))
"""


@pytest.fixture
def workers(broker: Broker) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str, concurrency: int = 2, **overrides: str) -> WorkerProcess:
        process = WorkerProcess(
            broker.worker_env(**{**SETTINGS, **overrides}), concurrency=concurrency, name=name
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


def ordered_conversation(broker: Broker, receiver: Receiver, path: str) -> str:
    cid = str(uuid.uuid4())
    config = {"callback_url": receiver.url(path), "ordering": "conversation"}
    conversation = broker.conversations.set(cid, {"config": config})
    receiver.verify_with(path, conversation.secret)
    return cid


def flaky(seed: int, count: int) -> list[Behaviour]:
    """20% answered 500, 4% left to time out, the rest 200."""
    rng = random.Random(seed)
    return [
        Respond(500) if r < 0.2 else Hang(1.5) if r < 0.24 else Respond(200)
        for r in (rng.random() for _ in range(count))
    ]


def sequence(request: ReceivedRequest) -> int:
    return int(request.headers["x-webhook-sequence"])


def assert_in_order(requests: list[ReceivedRequest], answers: list[Behaviour]) -> None:
    """Each event first arrives after its predecessor ended: its first 2xx,
    or its last attempt if it was dead-lettered. No number is missing."""
    first_seen: dict[int, float] = {}
    delivered_at: dict[int, float] = {}
    last_seen: dict[int, float] = {}
    for request, answer in zip(requests, answers, strict=False):
        n = sequence(request)
        first_seen.setdefault(n, request.received_at)
        last_seen[n] = request.received_at
        if isinstance(answer, Respond) and answer.status == 200:
            delivered_at.setdefault(n, request.received_at)
    numbers = sorted(first_seen)
    assert numbers == list(range(1, len(numbers) + 1))
    for n in numbers[1:]:
        ended = delivered_at.get(n - 1, last_seen[n - 1])
        assert first_seen[n] > ended, f"{n} arrived before {n - 1} ended"


def test_ordered_conversations_arrive_in_order_through_failures_and_a_killed_worker(
    broker: Broker, workers: Callable[..., WorkerProcess], receiver: Receiver
) -> None:
    # Given 3 workers and 5 ordered conversations whose receiver fails 20% of
    # requests with a 500 and lets 4% time out
    started = [workers(f"ordered-{n}") for n in range(3)]
    paths = [unique_path() for _ in range(5)]
    cids = [ordered_conversation(broker, receiver, path) for path in paths]
    answers = {path: flaky(seed, 400) for seed, path in enumerate(paths)}
    for path, script in answers.items():
        receiver.script(path, script)

    # When 2 producer processes publish 20 events to each, interleaved
    env = {**os.environ, **broker.worker_env(**SETTINGS), "PYTHONPATH": str(ROOT)}
    producers = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, json.dumps(cids), "20"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    # ... and one worker is SIGKILLed midway
    receiver.wait_for(60, timeout=60)
    started[0].kill()
    webhook_ids = [i for p in producers for i in json.loads(p.communicate(timeout=60)[0])]

    # Then every event ends, delivered or dead-lettered
    assert len(webhook_ids) == 200
    outcomes = broker.wait_outcomes(webhook_ids, timeout=120)
    assert {o.state for o in outcomes} <= {"delivered", "failed"}

    # And each conversation's receiver saw its events in publication order:
    # none missing, each only after its predecessor ended
    for path in paths:
        requests = receiver.received(path)
        assert {sequence(r) for r in requests} == set(range(1, 41))
        assert_in_order(requests, answers[path])
        assert all(r.signature_ok for r in requests)


def test_an_unordered_conversation_is_not_held_back_by_a_blocked_line(
    broker: Broker, workers: Callable[..., WorkerProcess], receiver: Receiver
) -> None:
    # Given one worker, and an ordered conversation whose first event fails
    # and is retried 3 s later
    workers("mixed", WEBHOOKS_RETRY_SCHEDULE="3")
    blocked_path, free_path = unique_path(), unique_path()
    ordered = ordered_conversation(broker, receiver, blocked_path)
    receiver.script(blocked_path, [Respond(500)])
    head = deliver_webhook.delay(make_event(ordered))
    receiver.wait_for(1, blocked_path)
    behind = [deliver_webhook.delay(make_event(ordered)) for _ in range(3)]

    # When an unordered conversation publishes meanwhile
    free = str(uuid.uuid4())
    broker.conversations.set(free, {"config": {"callback_url": receiver.url(free_path)}})
    unordered = [deliver_webhook.delay(make_event(free)) for _ in range(5)]

    # Then the line is seen blocked, its successors waiting, while every
    # unordered event is delivered before the head's retry even starts
    lines = OrderedLines(broker.client)
    (line,) = wait_until(lambda: [b for b in lines.blocked() if b.waiting == 3], 10, "blocked")
    assert (line.conversation_id, line.next_sequence) == (ordered, 1)
    broker.wait_outcomes([r.id for r in unordered], timeout=10)
    assert len(receiver.received(blocked_path)) == 1
    assert "x-webhook-sequence" not in receiver.received(free_path)[0].headers

    # And once the head is delivered, the line drains in order
    outcomes = broker.wait_outcomes([head.id] + [r.id for r in behind], timeout=30)
    assert [o.sequence for o in outcomes] == [1, 2, 3, 4]
    assert [sequence(r) for r in receiver.received(blocked_path)] == [1, 1, 2, 3, 4]
    wait_until(lambda: not lines.blocked(), 5, "the line unblocked")


def test_a_replayed_dead_letter_joins_the_back_of_its_line(
    broker: Broker, receiver: Receiver
) -> None:
    # Given an ordered conversation whose event 1 is published (no worker runs)
    cid = ordered_conversation(broker, receiver, unique_path())
    first = deliver_webhook.delay(make_event(cid))

    # When a dead letter of that conversation is replayed, as the CLI and the
    # console do
    letter = DeadLetter("msg_replayed", 0.0, make_event(cid), None, {"sequence": 7})
    republish(letter)

    # Then it is a new event of the line, numbered after the ones before it,
    # waiting its turn
    waiting = broker.client.hgetall(keys.line(cid).waiting)
    assert set(waiting) == {"1", "2"}
    assert json.loads(waiting["1"])["webhook_id"] == first.id
    assert json.loads(waiting["2"])["webhook_id"] == "msg_replayed"
