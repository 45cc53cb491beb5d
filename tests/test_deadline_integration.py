"""Answers that never end, on both Procfile pools: each attempt ends at its
deadline, and every delivery ends delivered or dead-lettered.

Real parts: a private Redis, a real ``celery worker`` on the prefork pool and
one on gevent (the Procfile's ``worker_slow``, which has no soft time limit),
and a real HTTPS receiver that trickles, stalls or cuts its answers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tasks import deliver_webhook
from testing.receiver import Hang, Raw, Receiver, http_head
from testing.worker import WorkerProcess
from tests.support import Broker, make_event, registered
from webhooks.attempts import AttemptLog, AttemptRecord

#: connect 0.5 s + read 1 s: each attempt's deadline.
DEADLINE_S = 1.5
TIMEOUTS = {"WEBHOOKS_CONNECT_TIMEOUT_S": "0.5", "WEBHOOKS_TIMEOUT_S": "1"}
#: An attempt's record may show a little more than the deadline: the
#: watchdog's wake-up, TLS teardown, a loaded 2-core machine.
SLACK_S = 1.5
#: Both Procfile pools; the gevent one is what slow endpoints are routed to.
POOLS = {"prefork": (), "gevent": ("--pool", "gevent")}

#: Status line and headers one byte every 0.2 s: each read is quick, the
#: whole would take 20 s.
TRICKLED_HEAD = Raw(
    http_head(200, {"X-Pad": "p" * 80}, content_length=2), chunk_bytes=1, interval_s=0.2
)
STALLED_BODY = Raw(http_head(200, content_length=100_000) + b"partial", then="hang")
CUT_BODY = Raw(http_head(200, content_length=100_000) + b"partial")
TRICKLED_BODY = Raw(
    b"y" * 100, head=http_head(200, content_length=100), chunk_bytes=1, interval_s=0.2
)


@pytest.fixture(params=list(POOLS))
def pool(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The worker arguments that choose the pool."""
    return POOLS[request.param]


@pytest.fixture
def pool_worker(broker: Broker, pool: tuple[str, ...]) -> Iterator[WorkerProcess]:
    with WorkerProcess(broker.worker_env(**TIMEOUTS), concurrency=5, extra_args=pool) as worker:
        yield worker


def publish(broker: Broker, receiver: Receiver, path: str) -> tuple[str, str]:
    """One event to a fresh conversation at ``path``: (webhook id, message id)."""
    cid, _ = registered(broker.conversations, receiver, path)
    event = make_event(cid)
    return deliver_webhook.delay(event).id, event["data"]["id"]


def attempts(broker: Broker, message_id: str) -> list[AttemptRecord]:
    return AttemptLog(broker.client, retention_s=60).for_message(message_id)


#: A 200 whose body then breaks, and what its attempt record says about it.
BROKEN_2XX = {
    "/stalled": (STALLED_BODY, "body read failed after 7 bytes: TimeoutError"),
    "/cut": (CUT_BODY, "body read failed after 7 bytes"),
    "/trickled": (TRICKLED_BODY, "body not complete within the 1.5 s deadline"),
}


def test_answers_that_never_end_end_at_the_deadline_as_the_readme_says(
    broker: Broker, receiver: Receiver, pool_worker: WorkerProcess
) -> None:
    # Given receivers that trickle their status line or stay silent, and
    # receivers that answer 200 and then stall, cut or trickle the body
    receiver.always("/trickle", TRICKLED_HEAD)
    receiver.always("/silent", Hang(30))
    for path, (answer, _) in BROKEN_2XX.items():
        receiver.always(path, answer)
    never = {path: publish(broker, receiver, path) for path in ("/trickle", "/silent")}
    broken = {path: publish(broker, receiver, path) for path in BROKEN_2XX}

    # When they are delivered
    ids = [webhook_id for webhook_id, _ in [*never.values(), *broken.values()]]
    broker.wait_outcomes(ids, timeout=90)

    # Then an answer that never completes got the first attempt and three
    # retries, each a timeout at its deadline, and then a dead letter
    for path, (webhook_id, message_id) in never.items():
        outcome = broker.outcomes.get(webhook_id)
        assert outcome is not None
        assert (outcome.state, outcome.attempts, outcome.error_kind) == ("failed", 4, "timeout")
        records = attempts(broker, message_id)
        assert [(r.attempt, r.outcome) for r in records] == [(n, "timeout") for n in (1, 2, 3, 4)]
        assert max(r.duration_s for r in records) < DEADLINE_S + SLACK_S
        assert broker.outcomes.dead_letter(webhook_id) is not None
        assert len(receiver.received(path)) == 4
    # And a 200 stands however its body ends: delivered on the first
    # attempt, within the deadline, the broken body noted in the attempt log
    for path, (webhook_id, message_id) in broken.items():
        outcome = broker.outcomes.get(webhook_id)
        assert outcome is not None
        assert (outcome.state, outcome.attempts, outcome.status) == ("delivered", 1, 200)
        (record,) = attempts(broker, message_id)
        assert record.outcome == "delivered"
        assert BROKEN_2XX[path][1] in record.error
        assert record.duration_s < DEADLINE_S + SLACK_S
        assert len(receiver.received(path)) == 1


def test_the_hard_time_limit_retries_and_dead_letters_instead_of_forgetting(
    broker: Broker, receiver: Receiver
) -> None:
    # Given a gevent worker (its pool has no soft time limit: the hard limit
    # is all there is) whose attempts may take 5.5 s, and a delivery
    # published with a 1 s hard limit, as a hung resolver or a starved
    # process would make an attempt outlive the task's own limit. (Prefork
    # raises the soft limit first, which autoretry handles; the same
    # DeliveryRequest serves its hard limit.)
    pool = POOLS["gevent"]
    receiver.always("/slow", Hang(30))
    cid, _ = registered(broker.conversations, receiver, "/slow")
    env = broker.worker_env(**{**TIMEOUTS, "WEBHOOKS_TIMEOUT_S": "5"})
    with WorkerProcess(env, concurrency=2, extra_args=pool) as worker:
        # When every attempt is ended by the hard limit
        result = deliver_webhook.apply_async((make_event(cid),), time_limit=1)
        outcome = broker.wait_outcome(result.id, timeout=60)

    # Then the delivery was retried on the schedule and then dead-lettered,
    # as a timeout, instead of acknowledged and forgotten
    assert worker.output().count("Hard time limit (1") == 4
    assert (outcome.state, outcome.attempts, outcome.error_kind) == ("failed", 4, "timeout")
    assert "hard time limit" in (outcome.error or "")
    assert len(receiver.received("/slow")) == 4
