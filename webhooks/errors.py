"""Every error the delivery pipeline raises, in one tree.

::

    WebhookError
    ├── InvalidEvent (ValueError)        the event does not match the guide's payload
    ├── InvalidConfiguration (ValueError) a conversation configuration is unusable
    │   ├── PolicyRefusal                 a URL or address the security policy forbids
    │   └── SecretsLocked                 stored secrets are encrypted and no key opens them
    ├── DeliveryError                     one attempt did not end in a 2xx
    │   ├── RetryableDeliveryError        network error, timeout, any non-2xx: try again
    │   └── PermanentDeliveryError        retrying cannot help (no callback, refused URL)
    ├── OutcomeNotRecorded                delivered, but Redis could not record it: send again
    └── SignatureMismatch                 receiver side: a request's signature does not verify

Each error is classified where it is born and carries its :class:`ErrorKind`:
the sender is the only place that turns ``requests``/``urllib3`` exceptions
into this tree, and :func:`redis_unavailable` the only one that turns a
Redis failure during an attempt into a retry. Tasks map
``RetryableDeliveryError`` to a Celery retry and everything else to a
recorded failure; :func:`kind_of` names whatever ended a delivery.
"""

from __future__ import annotations

__all__ = [
    "DeliveryError",
    "ErrorKind",
    "InvalidConfiguration",
    "InvalidEvent",
    "OutcomeNotRecorded",
    "PermanentDeliveryError",
    "PolicyRefusal",
    "RetryableDeliveryError",
    "SecretsLocked",
    "SignatureMismatch",
    "WebhookError",
    "kind_of",
    "redis_unavailable",
]

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

import redis
from celery.exceptions import SoftTimeLimitExceeded


class ErrorKind(StrEnum):
    """Why an attempt failed; stable strings for logs, metrics and dead letters."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    PROTOCOL = "protocol"  # an answer that is not valid HTTP
    TLS = "tls"
    DNS = "dns"
    HTTP_3XX = "http_3xx"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    RATE_LIMITED = "rate_limited"
    REFUSED_BY_POLICY = "refused_by_policy"
    NO_CALLBACK = "no_callback"
    NO_SECRET = "no_secret"  # noqa: S105 - a label, not a secret
    INVALID_EVENT = "invalid_event"
    INTERNAL = "internal"

    @classmethod
    def for_status(cls, status: int) -> ErrorKind:
        if status == 429:
            return cls.RATE_LIMITED  # back-pressure, not a client error
        if 300 <= status < 400:
            return cls.HTTP_3XX
        if 400 <= status < 500:
            return cls.HTTP_4XX
        return cls.HTTP_5XX


class WebhookError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidEvent(WebhookError, ValueError):
    """The event failed validation; ``problems`` lists ``(field path, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        detail = "; ".join(f"{path}: {msg}" for path, msg in problems)
        super().__init__(f"invalid message event: {detail}")


class InvalidConfiguration(WebhookError, ValueError):
    """A conversation configuration or callback URL cannot be used."""


class PolicyRefusal(InvalidConfiguration):
    """The security policy forbids this URL or address (http, private network)."""


class SecretsLocked(InvalidConfiguration):
    """Signing secrets in Redis are encrypted and no configured key opens them.

    Raised at start (worker, CLI) rather than on the first delivery: without
    the key nothing can be signed, and nothing should be attempted.
    """


class DeliveryError(WebhookError):
    """One delivery attempt failed.

    ``status`` is the HTTP status when the receiver answered (``None`` for a
    network failure) and ``retry_after_s`` its ``Retry-After`` header, parsed.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        status: int | None = None,
        retry_after_s: float | None = None,
        response_excerpt: str = "",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s
        self.response_excerpt = response_excerpt

    def __reduce__(self) -> tuple[object, ...]:
        # Celery hands on_failure a pickle round-trip of the exception;
        # keyword-only fields would otherwise be lost on the way.
        state = {
            "kind": self.kind,
            "status": self.status,
            "retry_after_s": self.retry_after_s,
            "response_excerpt": self.response_excerpt,
        }
        return (_rebuild, (type(self), str(self), state))


def _rebuild(cls: type[DeliveryError], message: str, state: dict[str, object]) -> DeliveryError:
    return cls(message, **state)  # type: ignore[arg-type]


class RetryableDeliveryError(DeliveryError):
    """Network error, timeout or non-2xx answer: the guide says try again."""


class PermanentDeliveryError(DeliveryError):
    """Trying again cannot succeed; the delivery is recorded as failed at once."""


class OutcomeNotRecorded(WebhookError):
    """The receiver answered 2xx, but Redis could not record the delivery.

    Acknowledged as it is, the event would be delivered with no record
    anywhere; the task sends it again instead (at least once).
    """


class SignatureMismatch(WebhookError):
    """No signature in the header matches any of the receiver's secrets."""


@contextmanager
def redis_unavailable(what: str) -> Iterator[None]:
    """Turn a Redis failure during an attempt into a retry: "cannot {what}".

    Nothing was sent yet when these steps fail, and another attempt may
    find Redis back.
    """
    try:
        yield
    except redis.RedisError as exc:
        raise RetryableDeliveryError(f"cannot {what}: {exc}", kind=ErrorKind.INTERNAL) from exc


def kind_of(error: BaseException) -> ErrorKind:
    """Why an attempt or a delivery failed, whatever was raised.

    Celery's soft time limit is the only non-DeliveryError that is expected;
    anything else is our bug.
    """
    if isinstance(error, DeliveryError):
        return error.kind
    if isinstance(error, SoftTimeLimitExceeded):
        return ErrorKind.TIMEOUT
    return ErrorKind.INTERNAL
