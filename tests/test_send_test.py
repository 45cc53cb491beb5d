"""``webhooks send-test``: the sample event through the real pipeline, and its exit codes."""

from __future__ import annotations

import json
import uuid

import pytest

from testing.receiver import Receiver, Respond
from testing.redis_server import RedisServer
from testing.worker import WorkerProcess
from tests.support import registered, unique_path
from webhooks.cli import EXIT_NOT_FOUND, main
from webhooks.cli.send_test import EXIT_NO_OUTCOME, EXIT_NOT_DELIVERED
from webhooks.conversations import ConversationStore


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, worker: WorkerProcess) -> None:
    monkeypatch.setenv("WEBHOOKS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "true")


def send_test(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["send-test", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_delivered_test_event_exits_0_and_reports_it(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, conversations: ConversationStore
) -> None:
    # Given a conversation whose receiver answers 500 once, then 200
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)
    receiver.script(path, [Respond(500)])

    # When a test event is sent and waited for
    code, out, _ = send_test(capsys, cid, "--wait", "--timeout", "30")

    # Then it was delivered on the second attempt, signed, marked as a test
    assert code == 0, out
    assert "delivered: status 200" in out and "attempts 2" in out
    arrived = receiver.received(path)[-1]
    assert arrived.signature_ok is True
    data = json.loads(arrived.body)["data"]
    assert data["metadata"] == {"test": True, "sent_by": "webhooks send-test"}
    assert data["content"] == "Message content"


def test_a_test_event_that_is_never_accepted_exits_non_zero_with_its_error(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, conversations: ConversationStore
) -> None:
    # Given a receiver that always answers 503
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)
    receiver.always(path, Respond(503))

    # When a test event is sent and waited for
    code, out, _ = send_test(capsys, cid, "--wait", "--timeout", "30")

    # Then the command fails and says how
    assert code == EXIT_NOT_DELIVERED, out
    assert "failed: status 503" in out and "attempts 4" in out and "http_5xx" in out


def test_no_outcome_within_the_timeout_is_its_own_exit_code(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, conversations: ConversationStore
) -> None:
    # Given a receiver that takes a second to answer
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)
    receiver.always(path, Respond(200, delay_s=1.0))

    # When the command waits less than that
    code, out, _ = send_test(capsys, cid, "--wait", "--timeout", "0.2")

    # Then it says it has no outcome yet
    assert code == EXIT_NO_OUTCOME, out
    assert "no outcome within 0.2 s" in out


def test_an_unknown_conversation_is_refused_before_publishing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = send_test(capsys, str(uuid.uuid4()))

    assert code == EXIT_NOT_FOUND
    assert "is not registered" in err and "sent test event" not in out


def test_without_wait_it_exits_0_once_published(
    capsys: pytest.CaptureFixture[str], receiver: Receiver, conversations: ConversationStore
) -> None:
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)

    code, out, _ = send_test(capsys, cid)

    assert code == 0 and "sent test event: webhook-id msg_" in out
    assert receiver.wait_for(1, path, timeout=30)[0].signature_ok is True
