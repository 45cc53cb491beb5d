"""One delivery attempt, from a queued event to a classified result.

The Celery task stays thin: it hands a :class:`Job` to
:meth:`Deliverer.attempt` and maps the result to done, retry, or dead
letter. Everything here is plain Python, testable without a worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import redis
from redis.client import Pipeline

from config.settings import Settings
from webhooks import backoff
from webhooks.attempts import AttemptLog
from webhooks.conversations import CachedConversations, ConversationReader, ConversationStore
from webhooks.endpoints import normalize_endpoint
from webhooks.errors import (
    DeliveryError,
    ErrorKind,
    InvalidEvent,
    PermanentDeliveryError,
    RetryableDeliveryError,
    kind_of,
)
from webhooks.events import MessageEvent, event_body, parse_event
from webhooks.health import HealthStore
from webhooks.metrics import Metrics
from webhooks.observer import AttemptFacts, Observer
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.parking import ParkedDelivery, ParkingLot
from webhooks.ratelimit import Denied, Granted, Limiter
from webhooks.sender import Sender
from webhooks.signing import signature_headers
from webhooks.store import connect
from webhooks.targets import DeliveryPolicy, Target, resolve_target

__all__ = ["USER_AGENT", "Delivered", "Deliverer", "DeliveryPolicy", "Job", "Parked"]

log = logging.getLogger(__name__)

USER_AGENT = f"celery-webhooks/{version('celery-webhooks')}"


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt's inputs, as the task received them."""

    event: dict[str, Any]
    webhook_id: str
    callback_url: str | None
    attempt: int  # the HTTP attempt number, X-Webhook-Attempt
    retries: int  # retry budget used so far
    waited_s: float = 0.0  # time already spent waiting on 429s
    place_ms: int = 0  # place in the endpoint's waiting line, if it was parked
    queue: str = ""  # where the task came from, for the attempt log
    worker: str = ""
    routed_slow: bool = False  # it came from the slow endpoints' queue


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class Ended:
    """How one HTTP attempt ended."""

    started_at: float
    duration_s: float
    status: int | None = None
    error: BaseException | None = None
    hold_s: float = 0.0  # how long the receiver asked every attempt to wait
    note: str = ""  # a delivered attempt's broken body, for the attempt log


@dataclass(frozen=True, slots=True)
class Parked:
    """Waiting in Redis for the endpoint; the task is done with it."""

    wait_s: float
    reason: str


class Deliverer:
    """Resolves where and how to send an event, sends it, records the outcome."""

    def __init__(
        self,
        *,
        redis_client: redis.Redis,
        sender: Sender,
        conversations: ConversationReader,
        outcomes: OutcomeStore,
        limiter: Limiter | None,
        parking: ParkingLot,
        policy: DeliveryPolicy,
        observer: Observer | None = None,
    ) -> None:
        self.redis = redis_client
        self.sender = sender
        self.conversations = conversations
        self.outcomes = outcomes
        self.limiter = limiter
        self.parking = parking
        self.policy = policy
        self.observer = observer

    @classmethod
    def from_settings(cls, settings: Settings) -> Deliverer:
        client = connect(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_s)
        return cls(
            redis_client=client,
            sender=Sender(
                connect_timeout_s=settings.connect_timeout_s,
                read_timeout_s=settings.timeout_s,
                allow_private=settings.allow_private_networks,
                ca_bundle=settings.ca_bundle,
                user_agent=USER_AGENT,
            ),
            conversations=CachedConversations(
                conversation_store(client, settings), ttl_s=settings.config_cache_s
            ),
            outcomes=OutcomeStore(
                client,
                retention_s=settings.outcome_retention_s,
                dead_letter_retention_s=settings.dead_letter_retention_s,
            ),
            limiter=Limiter(client, lease_s=settings.lease_s) if settings.limits_enabled else None,
            parking=ParkingLot(client),
            policy=DeliveryPolicy.from_settings(settings),
            observer=Observer(
                AttemptLog(client, retention_s=settings.log_retention_s),
                Metrics(client),
                HealthStore(client, settings.health_policy),
                flush_s=settings.metrics_flush_s,
            ),
        )

    def attempt(self, job: Job) -> Delivered | Parked:
        """Make one attempt, or park the job if its endpoint has no room.

        Raises :class:`RetryableDeliveryError` or :class:`PermanentDeliveryError`
        when the attempt was made and failed.
        """
        parsed, body = _parse(job.event)
        try:
            target = resolve_target(parsed, job.callback_url, self.conversations, self.policy)
        except PermanentDeliveryError as exc:
            endpoint = normalize_endpoint(job.callback_url) if job.callback_url else ""
            self._observe(job, parsed, endpoint, Ended(time.time(), 0.0, error=exc), sent=False)
            raise
        # Everything that can fail before the request is done before the
        # endpoint's slot is taken, so a failure here holds no slot.
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Attempt": str(job.attempt),
            **signature_headers(target.secrets, job.webhook_id, body),
        }
        grant = self._acquire(target, job)
        if isinstance(grant, Denied):
            return self._park(target, job, wait_s=grant.wait_s, reason=grant.reason)
        if grant is not None:
            headers.update(grant.headers())
        started = time.time()
        try:
            response = self.sender.post(target.url, body, headers)
        except DeliveryError as exc:
            hold_s = self._hold_for(exc, job.retries)
            ended = Ended(started, time.time() - started, error=exc, hold_s=hold_s)
            self._finish(job, parsed, target, grant, ended)
            if exc.status == 429 and isinstance(exc, RetryableDeliveryError):
                return self._back_off(target, job, exc, hold_s)
            raise
        except BaseException as exc:
            self._finish(
                job, parsed, target, grant, Ended(started, time.time() - started, error=exc)
            )
            raise
        ended = Ended(
            started, response.duration_s, status=response.status, note=response.body_error
        )
        self._finish(job, parsed, target, grant, ended)
        return Delivered(status=response.status, duration_s=response.duration_s)

    def close(self) -> None:
        """Write what is summed and let go of the connections."""
        self.flush()
        self.sender.close()
        self.redis.close()

    def flush(self) -> None:
        """Write the metrics and health this process has summed so far."""
        if self.observer is not None:
            self.observer.flush()

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
        event_dict = event if isinstance(event, dict) else {}
        data = event_dict.get("data")
        url = callback_url or self._configured_url(event_dict.get("conversation_id"))
        outcome = Outcome(
            webhook_id=webhook_id,
            state="failed",
            conversation_id=_str_or_none(event_dict.get("conversation_id")),
            message_id=_str_or_none(data.get("id")) if isinstance(data, dict) else None,
            url=url,
            attempts=attempts,
            status=error.status if isinstance(error, DeliveryError) else None,
            error_kind=str(kind_of(error)),
            error=str(error)[:500] or type(error).__name__,
        )
        self.outcomes.failed(outcome, event=event, callback_url=callback_url)
        if self.observer is not None:
            self.observer.ended(normalize_endpoint(url) if url else "", delivered=False)
        return outcome

    def _observe(
        self,
        job: Job,
        event: MessageEvent,
        endpoint: str,
        ended: Ended,
        *,
        sent: bool = True,
        pipe: Pipeline | None = None,
    ) -> None:
        if self.observer is None:
            return
        facts = AttemptFacts(
            webhook_id=job.webhook_id,
            conversation_id=str(event.conversation_id),
            message_id=str(event.data.id),
            endpoint=endpoint,
            attempt=job.attempt,
            queue=job.queue,
            worker=job.worker,
        )
        self.observer.attempted(
            facts,
            started_at=ended.started_at,
            duration_s=ended.duration_s,
            status=ended.status,
            error=ended.error,
            note=ended.note,
            sent=sent,
            pipe=pipe,
            urgent=job.routed_slow,
        )

    def _finish(
        self, job: Job, event: MessageEvent, target: Target, grant: Granted | None, ended: Ended
    ) -> None:
        """Everything an attempt leaves in Redis, in one round trip: its record,
        its slot given back and, once delivered, the outcome.
        """
        pipe = self.redis.pipeline(transaction=False)
        parked_at = None
        if grant is not None and self.limiter is not None:
            self.limiter.release_into(pipe, target.endpoint, grant.token, hold_s=ended.hold_s)
            parked_at = len(pipe) - 1
        if ended.error is None:
            self.outcomes.delivered(self._delivered(event, job, target, ended), pipe=pipe)
            if self.observer is not None:
                # Summed before the attempt, so no flush shows the attempt
                # without its delivery.
                self.observer.ended(target.endpoint, delivered=True)
        try:
            self._observe(job, event, target.endpoint, ended, pipe=pipe)
        finally:
            # Even if observing was interrupted (a soft time limit during a
            # flush), the slot goes back and the outcome is kept.
            self._write(pipe, job, target, ended, parked_at)

    def _write(
        self, pipe: Pipeline, job: Job, target: Target, ended: Ended, parked_at: int | None
    ) -> None:
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError:
            # The attempt happened; failing the task now would send it again
            # (or dead-letter a delivered event). Leases expire on their own;
            # the log line is the record.
            log.exception(
                "attempt %d of %s ended (%s) but Redis could not record it",
                job.attempt,
                job.webhook_id,
                "delivered" if ended.error is None else type(ended.error).__name__,
            )
            return
        for result in results:
            if isinstance(result, Exception):
                log.warning("could not record part of %s's attempt: %s", job.webhook_id, result)
        parked = results[parked_at] if parked_at is not None else 0
        if isinstance(parked, int) and parked > 0:
            try:
                self.parking.wake(target.endpoint)
            except redis.RedisError:
                log.warning("could not wake the line for %s", target.endpoint, exc_info=True)

    def _configured_url(self, conversation_id: Any) -> str | None:
        try:
            found = self.conversations.get(str(conversation_id)) if conversation_id else None
        except (redis.RedisError, ValueError):
            return None
        return found.config.callback_url if found else None

    def _acquire(self, target: Target, job: Job) -> Granted | Denied | None:
        if self.limiter is None:
            return None
        try:
            return self.limiter.acquire(target.endpoint, target.limits, from_line=job.place_ms > 0)
        except redis.RedisError as exc:
            raise RetryableDeliveryError(
                f"cannot reach the rate limiter: {exc}", kind=ErrorKind.INTERNAL
            ) from exc

    def _hold_for(self, exc: DeliveryError, retries: int) -> float:
        """How long the receiver asked every attempt to it to wait (429/503)."""
        if exc.status not in (429, 503):
            return 0.0
        wait = exc.retry_after_s
        if wait is None and exc.status == 429:
            wait = backoff.countdown(retries, self.policy.retry_schedule)
        return min(wait or 0.0, self.policy.retry_after_cap_s)

    def _back_off(
        self, target: Target, job: Job, exc: RetryableDeliveryError, hold_s: float
    ) -> Parked:
        """A 429 is back-pressure: wait as asked, without using the retry budget."""
        waited = job.waited_s + hold_s
        if waited > self.policy.max_rate_limited_wait_s:
            raise PermanentDeliveryError(
                f"receiver kept answering 429 for {waited:.0f} s, longer than the "
                f"{self.policy.max_rate_limited_wait_s:.0f} s allowed",
                kind=ErrorKind.RATE_LIMITED,
                status=429,
                response_excerpt=exc.response_excerpt,
            ) from exc
        later = Job(
            event=job.event,
            webhook_id=job.webhook_id,
            callback_url=job.callback_url,
            attempt=job.attempt + 1,
            retries=job.retries,
            waited_s=waited,
            place_ms=job.place_ms,
        )
        return self._park(target, later, wait_s=max(hold_s, 0.001), reason="retry_after")

    def _park(self, target: Target, job: Job, *, wait_s: float, reason: str) -> Parked:
        delivery = ParkedDelivery(
            event=job.event,
            callback_url=job.callback_url,
            webhook_id=job.webhook_id,
            attempt=job.attempt,
            retries=job.retries,
            waited_s=job.waited_s,
            place_ms=job.place_ms,
        )
        try:
            self.parking.park(target.endpoint, delivery, target.limits, wait_s=wait_s)
        except redis.RedisError as exc:
            raise RetryableDeliveryError(
                f"cannot park the delivery: {exc}", kind=ErrorKind.INTERNAL
            ) from exc
        return Parked(wait_s=wait_s, reason=reason)

    @staticmethod
    def _delivered(event: MessageEvent, job: Job, target: Target, ended: Ended) -> Outcome:
        return Outcome(
            webhook_id=job.webhook_id,
            state="delivered",
            conversation_id=str(event.conversation_id),
            message_id=str(event.data.id),
            url=target.url,
            attempts=job.attempt,
            status=ended.status,
            duration_s=round(ended.duration_s, 6),
        )


def conversation_store(client: redis.Redis, settings: Settings) -> ConversationStore:
    return ConversationStore(
        client,
        allow_http=settings.allow_http,
        allow_private=settings.allow_private_networks,
        rotation_overlap_s=settings.secret_rotation_overlap_s,
    )


def _parse(event: dict[str, Any]) -> tuple[MessageEvent, bytes]:
    """The event and the exact bytes to send; anything can publish to the queue."""
    try:
        parsed = parse_event(event)
        return parsed, event_body(parsed)
    except InvalidEvent as exc:
        raise PermanentDeliveryError(str(exc), kind=ErrorKind.INVALID_EVENT) from exc


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
