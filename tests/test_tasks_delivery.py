"""deliver_webhook end to end: real Redis, real worker, real HTTPS receiver."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import celery
import pytest
from standardwebhooks.webhooks import Webhook

from tasks import deliver_webhook
from testing.receiver import Drop, Hang, Receiver, Respond
from testing.worker import WorkerProcess
from tests.support import make_event, registered, unique_path
from webhooks.conversations import ConversationStore
from webhooks.errors import InvalidEvent, PolicyRefusal
from webhooks.outcomes import Outcome, OutcomeStore

pytestmark = pytest.mark.usefixtures("worker")

GUIDE_DATA_FIELDS = {
    "id", "content", "content_type", "type", "channel", "status",
    "created_by", "updated_by", "created_at", "updated_at",
}  # fmt: skip


def test_delivers_the_guides_payload_signed(
    receiver: Receiver,
    conversations: ConversationStore,
    wait_outcome: Callable[..., Outcome],
) -> None:
    # Given a registered conversation
    path = unique_path()
    cid, secret = registered(conversations, receiver, path)
    event = make_event(cid)

    # When the producer publishes one event
    result = deliver_webhook.delay(event)

    # Then the receiver gets exactly the guide's body, signed, once
    (request,) = receiver.wait_for(1, path)
    body = json.loads(request.body)
    assert set(body) == {"conversation_id", "data", "timestamp"}
    assert set(body["data"]) == GUIDE_DATA_FIELDS  # filename/metadata absent, not null
    assert body["conversation_id"] == cid
    assert body["data"]["id"] == event["data"]["id"]
    assert body["timestamp"].endswith("Z") and "." in body["timestamp"]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-webhook-attempt"] == "1"
    assert request.headers["user-agent"].startswith("celery-webhooks/")
    assert request.headers["webhook-id"] == result.id
    Webhook(secret).verify(request.body, request.headers)  # independent verifier
    assert request.signature_ok is True
    outcome = wait_outcome(result.id)
    assert (outcome.state, outcome.attempts, outcome.status) == ("delivered", 1, 200)


def test_media_message_keeps_filename_and_metadata(
    receiver: Receiver, conversations: ConversationStore
) -> None:
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)
    event = make_event(cid, content_type="DOCUMENT", filename="document.pdf", metadata={"k": 1})

    deliver_webhook.delay(event)

    (request,) = receiver.wait_for(1, path)
    data = json.loads(request.body)["data"]
    assert data["filename"] == "document.pdf"
    assert data["metadata"] == {"k": 1}


@pytest.mark.parametrize(
    "failure",
    [Respond(500), Respond(404), Respond(429), Respond(302, headers={"Location": "/x"}), Drop(),
     Hang(30)],
    ids=["5xx", "4xx", "429", "3xx-not-followed", "dropped-connection", "timeout"],
)  # fmt: skip
def test_each_retry_condition_retries_with_the_same_webhook_id(
    failure: Respond | Drop | Hang,
    receiver: Receiver,
    conversations: ConversationStore,
    wait_outcome: Callable[..., Outcome],
) -> None:
    # Given an endpoint that fails once in this way, then recovers
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)
    receiver.script(path, [failure])

    # When an event is published
    result = deliver_webhook.delay(make_event(cid))

    # Then a second attempt follows, with the same webhook-id, and succeeds
    first, second = receiver.wait_for(2, path, timeout=30)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == result.id
    assert [first.headers["x-webhook-attempt"], second.headers["x-webhook-attempt"]] == ["1", "2"]
    assert first.headers["webhook-signature"] != "" and second.signature_ok
    outcome = wait_outcome(result.id)
    assert (outcome.state, outcome.attempts) == ("delivered", 2)
    assert receiver.received("/x") == []  # the redirect was not followed


def test_exhausted_delivery_becomes_a_dead_letter(
    receiver: Receiver,
    conversations: ConversationStore,
    outcomes: OutcomeStore,
    wait_outcome: Callable[..., Outcome],
) -> None:
    # Given an endpoint that always answers 503
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)
    receiver.script(path, [Respond(503, body=b"down for maintenance")] * 10)

    # When an event is published
    event = make_event(cid)
    result = deliver_webhook.delay(event)

    # Then it is tried once plus three retries, then kept with its last error
    outcome = wait_outcome(result.id)
    assert len(receiver.received(path)) == 4
    assert [r.headers["x-webhook-attempt"] for r in receiver.received(path)] == ["1", "2", "3", "4"]
    assert (outcome.state, outcome.attempts, outcome.status) == ("failed", 4, 503), outcome
    assert outcome.error_kind == "http_5xx"
    letter = outcomes.dead_letter(result.id)
    assert letter is not None
    assert letter["event"]["data"]["id"] == event["data"]["id"]
    assert result.id in outcomes.dead_letter_ids()


def test_unconfigured_conversation_fails_at_once_without_retries(
    outcomes: OutcomeStore, wait_outcome: Callable[..., Outcome]
) -> None:
    result = deliver_webhook.delay(make_event(str(uuid.uuid4())))

    outcome = wait_outcome(result.id)
    assert (outcome.state, outcome.attempts, outcome.error_kind) == ("failed", 1, "no_callback")
    assert "no configuration" in (outcome.error or "")
    assert outcomes.dead_letter(result.id) is not None


def test_callback_url_overrides_the_configured_one(
    receiver: Receiver, conversations: ConversationStore
) -> None:
    configured, override = unique_path(), unique_path()
    cid, _ = registered(conversations, receiver, configured)
    receiver.verify_with(override, conversations.get(cid).secret)  # type: ignore[union-attr]

    deliver_webhook.delay(make_event(cid), callback_url=receiver.url(override))

    (request,) = receiver.wait_for(1, override)
    assert request.signature_ok is True
    assert receiver.received(configured) == []


def malformed_event(conversation_id: str | None = None) -> dict[str, object]:
    """Two schema errors: ``data.content_type`` and ``data.created_by``."""
    bad = make_event(conversation_id)
    bad["data"]["content_type"] = "PDF"
    del bad["data"]["created_by"]
    return bad


def test_invalid_event_is_refused_before_publishing(redis_client: object) -> None:
    bad = malformed_event()

    with pytest.raises(InvalidEvent) as caught:
        deliver_webhook.delay(bad)

    paths = [path for path, _ in caught.value.problems]
    assert paths == ["data.content_type", "data.created_by"]
    assert isinstance(caught.value, ValueError)


def test_a_malformed_event_published_past_delay_is_refused_by_the_worker(
    receiver: Receiver,
    conversations: ConversationStore,
    outcomes: OutcomeStore,
    wait_outcome: Callable[..., Outcome],
) -> None:
    # Given a malformed event for a registered conversation, published the way
    # any other client of the broker could: Celery's own publish, not delay()
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)
    bad = malformed_event(cid)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    kwargs = {"event": bad, "webhook_id": webhook_id}
    celery.Task.apply_async(deliver_webhook, (), kwargs, task_id=webhook_id)

    # When the worker takes it, Then it is dead-lettered at once as invalid,
    # naming what is wrong, and nothing is sent
    outcome = wait_outcome(webhook_id)
    assert (outcome.state, outcome.attempts, outcome.error_kind) == ("failed", 1, "invalid_event")
    assert "data.content_type" in (outcome.error or "")
    assert "data.created_by" in (outcome.error or "")
    letter = outcomes.dead_letter(webhook_id)
    assert letter is not None and letter["event"] == bad
    assert receiver.received(path) == []


@pytest.fixture
def nothing_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the task reaches Celery's own publish."""

    def publish(*args: object, **kwargs: object) -> None:
        pytest.fail("an invalid event was published")

    monkeypatch.setattr(celery.Task, "apply_async", publish)


@pytest.mark.usefixtures("nothing_published")
@pytest.mark.parametrize(
    ("change", "where", "problem"),
    [
        ({"content": "x" * 256 * 1024}, "(event)", "more than WEBHOOKS_MAX_EVENT_BYTES (262144)"),
        ({"content": "half an emoji \ud83d"}, "data.content", "lone surrogate"),
        ({"metadata": {"score": float("nan")}}, "data.metadata", "score: nan is not a JSON"),
        ({"metadata": {"big": [1, float("inf")]}}, "data.metadata", "big.1: inf is not a JSON"),
    ],
    ids=["oversized", "lone-surrogate", "nan", "infinity"],
)
def test_events_json_cannot_carry_are_refused_at_publish(
    change: dict[str, object], where: str, problem: str
) -> None:
    # Given an event the schema accepts but whose JSON would be too large or invalid
    event = make_event()
    event["data"].update(change)

    # When published, then it is the producer's InvalidEvent, naming the problem
    with pytest.raises(InvalidEvent) as caught:
        deliver_webhook.delay(event)
    ((path, message),) = caught.value.problems
    assert path == where
    assert problem in message


def test_http_callback_is_refused_at_publish() -> None:
    with pytest.raises(PolicyRefusal, match="HTTPS only"):
        deliver_webhook.delay(make_event(), callback_url="http://example.com/hook")


@pytest.mark.parametrize("url", ["https://①②⑦.0.0.1/hook", "https://[fec0::1]/hook"])
def test_a_disguised_private_callback_is_refused_at_publish(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Both passed delay() before and failed later, at every attempt."""
    # Given a producer with the production address policy
    strict = deliver_webhook.app.settings.model_copy(update={"allow_private_networks": False})
    monkeypatch.setattr(deliver_webhook.app, "settings", strict)
    # When publishing to a private address spelt in a form Python's tables or
    # a plain parse miss, then it is refused right there
    with pytest.raises(PolicyRefusal, match="not a public address"):
        deliver_webhook.delay(make_event(), callback_url=url)


def test_worker_refuses_private_addresses_by_default(
    start_worker: Callable[..., WorkerProcess],
    receiver: Receiver,
    conversations: ConversationStore,
    wait_outcome: Callable[..., Outcome],
    worker: WorkerProcess,
) -> None:
    # Given a worker with the default policy, consuming alone
    worker.stop()
    try:
        start_worker(WEBHOOKS_ALLOW_PRIVATE_NETWORKS="false")
        path = unique_path()
        cid, _ = registered(conversations, receiver, path)

        result = deliver_webhook.delay(make_event(cid))

        outcome = wait_outcome(result.id)
        assert (outcome.state, outcome.error_kind) == ("failed", "refused_by_policy")
        assert "127.0.0.1" in (outcome.error or "")
        assert receiver.received(path) == []
    finally:
        worker.start()
