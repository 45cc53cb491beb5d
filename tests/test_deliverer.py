"""webhooks.delivery.Deliverer: what one attempt leaves in Redis, in its one round trip.

A real Redis of the module's own (the session worker's pump would take
whatever is parked in the shared one) and a fake sender: the HTTP side is
covered by tests/test_sender.py and the integration tests; here the subject
is the pipeline after the attempt: the record, the lease, the outcome, the
wake of a waiting line.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
import redis

from config import wiring
from config.settings import Settings
from config.wiring import conversation_store
from testing.redis_server import RedisServer
from tests.support import make_event
from webhooks import keys
from webhooks.attempts import AttemptLog
from webhooks.delivery import Delivered, Deliverer, Job
from webhooks.endpoints import normalize_endpoint
from webhooks.errors import ErrorKind, PermanentDeliveryError, RetryableDeliveryError
from webhooks.events import parse_event
from webhooks.outcomes import OutcomeStore
from webhooks.progress import Delivery
from webhooks.queues import QUEUE
from webhooks.ratelimit import Usage, usage
from webhooks.sender import SentResponse

URL = "https://127.0.0.1:9/hook"
OK = SentResponse(status=200, duration_s=0.01)
ENDPOINT = normalize_endpoint(URL)


class FakeSender:
    """Answers every POST as told: a response, or an error to raise."""

    def __init__(self, answer: SentResponse | Exception) -> None:
        self.answer = answer
        self.posts: list[dict[str, str]] = []

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> SentResponse:
        self.posts.append(headers)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def close(self) -> None:
        pass


@pytest.fixture
def settings(own_redis: RedisServer) -> Settings:
    return Settings(redis_url=own_redis.url, allow_private_networks=True, metrics_flush_s=0)


def deliverer_with(
    settings: Settings, answer: SentResponse | Exception
) -> tuple[Deliverer, FakeSender]:
    """The worker's deliverer, as wired, sending through a fake."""
    sender = FakeSender(answer)
    return wiring.deliverer(settings, sender=sender), sender


def a_job(own_client: redis.Redis, settings: Settings) -> Job:
    cid = str(uuid.uuid4())
    conversation_store(own_client, settings).set(cid, {"config": {"callback_url": URL}})
    event = parse_event(make_event(cid)).model_dump(mode="json")
    return Job(Delivery(event, f"msg_{uuid.uuid4().hex}"), queue=QUEUE, worker="test")


def test_a_delivered_attempt_leaves_its_record_its_outcome_and_no_lease(
    own_client: redis.Redis, settings: Settings
) -> None:
    # Given a receiver that answers 200
    deliverer, sender = deliverer_with(settings, OK)
    job = a_job(own_client, settings)

    # When one attempt is made
    result = deliverer.attempt(job)

    # Then it was delivered, with rate-limit headers, and Redis holds the
    # outcome and the attempt record, and the slot is free again
    assert result == Delivered(status=200, duration_s=0.01)
    (headers,) = sender.posts
    assert headers["X-RateLimit-Remaining"] == "99"
    outcome = OutcomeStore(own_client, retention_s=60).get(job.delivery.webhook_id)
    assert outcome is not None
    assert (outcome.state, outcome.status, outcome.attempts) == ("delivered", 200, 1)
    (record,) = AttemptLog(own_client, retention_s=60).for_message(job.delivery.event["data"]["id"])
    assert (record.webhook_id, record.outcome, record.status) == (
        job.delivery.webhook_id,
        "delivered",
        200,
    )
    assert usage(own_client, [ENDPOINT]) == [Usage(in_window=1, in_flight=0)]


def test_a_failed_attempt_frees_its_slot_and_records_no_outcome(
    own_client: redis.Redis, settings: Settings
) -> None:
    # Given a receiver that answers 500
    error = RetryableDeliveryError("HTTP 500", kind=ErrorKind.HTTP_5XX, status=500)
    deliverer, _sender = deliverer_with(settings, error)
    job = a_job(own_client, settings)

    # When one attempt is made, Then the error reaches the caller (Celery retries)
    with pytest.raises(RetryableDeliveryError):
        deliverer.attempt(job)

    # And the slot is free, the attempt is recorded, and no outcome exists yet
    assert usage(own_client, [ENDPOINT])[0].in_flight == 0
    (record,) = AttemptLog(own_client, retention_s=60).for_message(job.delivery.event["data"]["id"])
    assert (record.outcome, record.status) == ("http_5xx", 500)
    assert OutcomeStore(own_client, retention_s=60).get(job.delivery.webhook_id) is None


def test_a_freed_slot_wakes_the_endpoints_waiting_line(
    own_client: redis.Redis, settings: Settings
) -> None:
    # Given an endpoint with a delivery waiting in line, due only in an hour
    deliverer, _sender = deliverer_with(settings, OK)
    job = a_job(own_client, settings)
    later_ms = int((time.time() + 3600) * 1000)
    own_client.zadd(keys.endpoint(ENDPOINT).parked, {"someone-waiting": 1})
    own_client.zadd(keys.PARKED_ENDPOINTS, {ENDPOINT: later_ms})

    # When a delivery released from the line finishes its attempt
    deliverer.attempt(replace(job, delivery=replace(job.delivery, place_ms=1)))

    # Then the pump is told to look at the line now, not in an hour
    due = own_client.zscore(keys.PARKED_ENDPOINTS, ENDPOINT)
    assert due is not None and due <= time.time() * 1000


def test_an_event_that_cannot_be_encoded_fails_at_once_and_takes_no_slot(
    own_client: redis.Redis, settings: Settings
) -> None:
    # Given a queued event with a lone surrogate, as a producer that skipped
    # delay()'s checks could publish
    deliverer, _sender = deliverer_with(settings, OK)
    job = a_job(own_client, settings)
    job.delivery.event["data"]["content"] = "half an emoji \ud83d"

    # When an attempt is made, Then it is refused as an invalid event
    with pytest.raises(PermanentDeliveryError) as caught:
        deliverer.attempt(job)
    assert caught.value.kind is ErrorKind.INVALID_EVENT
    assert "lone surrogate" in str(caught.value)

    # And nothing was sent, and the endpoint's slot and window were never touched
    assert deliverer.sender.posts == []  # type: ignore[attr-defined]
    ek = keys.endpoint(ENDPOINT)
    assert (own_client.zcard(ek.inflight), own_client.zcard(ek.window)) == (0, 0)
