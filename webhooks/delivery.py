"""One delivery attempt, from a queued event to a classified result.

The Celery task stays thin: it hands its arguments to :meth:`Deliverer.attempt`
and maps the outcome to done, retry, or dead letter. Everything here is
plain Python, testable without a worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import redis

from config.settings import Settings
from webhooks.conversations import Conversation, ConversationStore
from webhooks.errors import (
    DeliveryError,
    ErrorKind,
    InvalidEvent,
    PermanentDeliveryError,
    PolicyRefusal,
    RetryableDeliveryError,
)
from webhooks.events import MessageEvent, event_body, parse_event
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.sender import Sender, SentResponse
from webhooks.signing import signature_headers
from webhooks.store import connect
from webhooks.urlpolicy import check_url

__all__ = ["USER_AGENT", "Deliverer"]

log = logging.getLogger(__name__)

USER_AGENT = f"celery-webhooks/{version('celery-webhooks')}"


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    secrets: list[str]


class Deliverer:
    """Resolves where and how to send an event, sends it, records the outcome."""

    def __init__(
        self,
        *,
        sender: Sender,
        conversations: ConversationStore,
        outcomes: OutcomeStore,
        allow_http: bool,
        allow_private: bool,
        default_secret: str | None,
    ) -> None:
        self.sender = sender
        self.conversations = conversations
        self.outcomes = outcomes
        self._allow_http = allow_http
        self._allow_private = allow_private
        self._default_secret = default_secret

    @classmethod
    def from_settings(cls, settings: Settings) -> Deliverer:
        client = connect(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_s)
        return cls(
            sender=Sender(
                connect_timeout_s=settings.connect_timeout_s,
                read_timeout_s=settings.timeout_s,
                allow_private=settings.allow_private_networks,
                ca_bundle=settings.ca_bundle,
                user_agent=USER_AGENT,
            ),
            conversations=conversation_store(client, settings),
            outcomes=OutcomeStore(client, retention_s=settings.outcome_retention_s),
            allow_http=settings.allow_http,
            allow_private=settings.allow_private_networks,
            default_secret=(
                settings.signing_secret.get_secret_value() if settings.signing_secret else None
            ),
        )

    def attempt(
        self, event: dict[str, Any], *, webhook_id: str, callback_url: str | None, attempt: int
    ) -> SentResponse:
        """Make attempt number ``attempt``; raise a :class:`DeliveryError` unless 2xx."""
        parsed = _parse(event)
        target = self._target(parsed, callback_url)
        body = event_body(parsed)
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Attempt": str(attempt),
            **signature_headers(target.secrets, webhook_id, body),
        }
        response = self.sender.post(target.url, body, headers)
        outcome = Outcome(
            webhook_id=webhook_id,
            state="delivered",
            conversation_id=str(parsed.conversation_id),
            message_id=str(parsed.data.id),
            url=target.url,
            attempts=attempt,
            status=response.status,
            duration_s=round(response.duration_s, 6),
        )
        try:
            self.outcomes.delivered(outcome)
        except redis.RedisError:
            # The receiver has it; failing the task now would dead-letter a
            # delivered event. The log line is the record.
            log.exception(
                "delivered but could not record the outcome",
                extra={"webhook_id": webhook_id, "url": target.url},
            )
        return response

    def record_failure(
        self,
        event: Any,
        *,
        webhook_id: str,
        callback_url: str | None,
        attempts: int,
        error: BaseException,
    ) -> Outcome:
        """Keep a failed delivery as a dead letter with its last error."""
        ids = event.get("data", {}) if isinstance(event, dict) else {}
        kind = error.kind if isinstance(error, DeliveryError) else _kind_of(error)
        outcome = Outcome(
            webhook_id=webhook_id,
            state="failed",
            conversation_id=_str_or_none(event.get("conversation_id"))
            if isinstance(event, dict)
            else None,
            message_id=_str_or_none(ids.get("id")) if isinstance(ids, dict) else None,
            url=callback_url,
            attempts=attempts,
            status=error.status if isinstance(error, DeliveryError) else None,
            error_kind=str(kind),
            error=str(error)[:500] or type(error).__name__,
        )
        self.outcomes.failed(outcome, event=event, callback_url=callback_url)
        return outcome

    def _target(self, event: MessageEvent, callback_url: str | None) -> _Target:
        try:
            conversation: Conversation | None = self.conversations.get(str(event.conversation_id))
        except redis.RedisError as exc:
            # Nothing was sent yet; another attempt may find Redis back.
            raise RetryableDeliveryError(
                f"cannot read the conversation configuration: {exc}", kind=ErrorKind.INTERNAL
            ) from exc
        url = callback_url or (conversation.config.callback_url if conversation else None)
        if not url:
            raise PermanentDeliveryError(
                f"conversation {event.conversation_id} has no configuration and the event "
                "has no callback_url",
                kind=ErrorKind.NO_CALLBACK,
            )
        try:
            check_url(url, allow_http=self._allow_http, allow_private=self._allow_private)
        except PolicyRefusal as exc:
            raise PermanentDeliveryError(str(exc), kind=ErrorKind.REFUSED_BY_POLICY) from exc
        except ValueError as exc:
            raise PermanentDeliveryError(str(exc), kind=ErrorKind.NO_CALLBACK) from exc
        if conversation is not None:
            secrets = conversation.signing_secrets()
        elif self._default_secret:
            secrets = [self._default_secret]
        else:
            raise PermanentDeliveryError(
                f"conversation {event.conversation_id} is not registered, so it has no signing "
                "secret; register it or set WEBHOOKS_SIGNING_SECRET",
                kind=ErrorKind.NO_SECRET,
            )
        return _Target(url=url, secrets=secrets)


def conversation_store(client: redis.Redis, settings: Settings) -> ConversationStore:
    return ConversationStore(
        client,
        allow_http=settings.allow_http,
        allow_private=settings.allow_private_networks,
        rotation_overlap_s=settings.secret_rotation_overlap_s,
    )


def _parse(event: dict[str, Any]) -> MessageEvent:
    try:
        return parse_event(event)
    except InvalidEvent as exc:
        raise PermanentDeliveryError(str(exc), kind=ErrorKind.INVALID_EVENT) from exc


def _kind_of(error: BaseException) -> ErrorKind:
    # Celery's soft time limit is the only non-DeliveryError that is expected.
    if type(error).__name__ == "SoftTimeLimitExceeded":
        return ErrorKind.TIMEOUT
    return ErrorKind.INTERNAL


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
