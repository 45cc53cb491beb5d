"""webhooks.errors: each failure is classified where it is born."""

from __future__ import annotations

import pickle

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded

from webhooks.errors import (
    DeliveryError,
    ErrorKind,
    RetryableDeliveryError,
    SignatureMismatch,
    WebhookError,
    kind_of,
    redis_unavailable,
)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (301, ErrorKind.HTTP_3XX),
        (404, ErrorKind.HTTP_4XX),
        (429, ErrorKind.RATE_LIMITED),
        (500, ErrorKind.HTTP_5XX),
        (503, ErrorKind.HTTP_5XX),
    ],
)
def test_a_status_names_its_kind(status: int, kind: ErrorKind) -> None:
    # A 429 is back-pressure, not a client error
    assert ErrorKind.for_status(status) is kind


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RetryableDeliveryError("x", kind=ErrorKind.DNS), ErrorKind.DNS),
        (SoftTimeLimitExceeded(), ErrorKind.TIMEOUT),
        (RuntimeError("bug"), ErrorKind.INTERNAL),
    ],
)
def test_kind_of_whatever_ended_a_delivery(error: BaseException, kind: ErrorKind) -> None:
    assert kind_of(error) is kind


def test_only_the_soft_time_limit_class_is_a_timeout() -> None:
    # Given an unrelated exception that merely shares the name
    class SoftTimeLimitExceeded(Exception):
        pass

    # Then it is a bug, not a timeout: matched by class, not by name
    assert kind_of(SoftTimeLimitExceeded()) is ErrorKind.INTERNAL


def test_redis_unavailable_turns_a_redis_failure_into_a_retry() -> None:
    # When a Redis call fails inside the block
    with (
        pytest.raises(RetryableDeliveryError) as caught,
        redis_unavailable("park the delivery"),
    ):
        raise redis.ConnectionError("Connection refused")

    # Then the attempt is retried, said in plain words, with the cause chained
    assert str(caught.value) == "cannot park the delivery: Connection refused"
    assert caught.value.kind is ErrorKind.INTERNAL
    assert isinstance(caught.value.__cause__, redis.ConnectionError)


def test_redis_unavailable_lets_everything_else_through() -> None:
    with pytest.raises(ValueError, match="not redis"), redis_unavailable("park the delivery"):
        raise ValueError("not redis")


def test_signature_mismatch_is_in_the_tree() -> None:
    assert issubclass(SignatureMismatch, WebhookError)


def test_a_delivery_error_survives_celerys_pickle_round_trip() -> None:
    error = RetryableDeliveryError(
        "HTTP 429", kind=ErrorKind.RATE_LIMITED, status=429, retry_after_s=7.0
    )
    again = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert isinstance(again, DeliveryError)
    assert (again.kind, again.status, again.retry_after_s) == (ErrorKind.RATE_LIMITED, 429, 7.0)
