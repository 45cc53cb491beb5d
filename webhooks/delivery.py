"""One delivery attempt, from a queued event to a classified result.

The Celery task stays thin: it hands a :class:`Job` to
:meth:`Deliverer.attempt` and maps the result to done, retry, or dead
letter. Everything here is plain Python, testable without a worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import version
from typing import Any, Protocol

import redis

from webhooks import backoff
from webhooks.conversations import ConversationReader
from webhooks.endpoints import normalize_endpoint
from webhooks.errors import (
    DeliveryError,
    ErrorKind,
    InvalidEvent,
    OutcomeNotRecorded,
    PermanentDeliveryError,
    RetryableDeliveryError,
    kind_of,
    redis_unavailable,
)
from webhooks.events import MessageEvent, event_body, parse_event
from webhooks.observer import AttemptFacts, Observer
from webhooks.ordering import OrderedLines, Turn
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.parking import ParkingLot
from webhooks.progress import Delivery
from webhooks.ratelimit import Denied, Granted, Limiter
from webhooks.sender import SentResponse
from webhooks.signing import signature_headers
from webhooks.store import Store, StorePipeline
from webhooks.targets import DeliveryPolicy, Target, resolve_target

__all__ = [
    "USER_AGENT",
    "AlreadyEnded",
    "Delivered",
    "Deliverer",
    "DeliveryPolicy",
    "Job",
    "Parked",
    "Poster",
]

log = logging.getLogger(__name__)

USER_AGENT = f"celery-webhooks/{version('celery-webhooks')}"


class Poster(Protocol):
    """What the deliverer sends with: :class:`webhooks.sender.Sender`, or a fake in unit tests."""

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> SentResponse: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt: the delivery's progress, and where the attempt runs."""

    delivery: Delivery
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
class AlreadyEnded:
    """A redelivered event of an ordered conversation that had already ended."""

    sequence: int


@dataclass(frozen=True, slots=True)
class Parked:
    """Waiting in Redis for the endpoint; the task is done with it."""

    wait_s: float
    reason: str


def _cannot_wake(delivery: Delivery) -> None:
    raise RuntimeError(f"no publisher for {delivery.webhook_id}, next in its line")


class Deliverer:
    """Resolves where and how to send an event, sends it, records the outcome."""

    def __init__(
        self,
        *,
        redis_client: Store,
        sender: Poster,
        conversations: ConversationReader,
        outcomes: OutcomeStore,
        limiter: Limiter | None,
        parking: ParkingLot,
        policy: DeliveryPolicy,
        observer: Observer | None = None,
        lines: OrderedLines | None = None,
        wake: Callable[[Delivery], object] = _cannot_wake,
    ) -> None:
        self.redis = redis_client
        self.sender = sender
        self.conversations = conversations
        self.outcomes = outcomes
        self.limiter = limiter
        self.parking = parking
        self.policy = policy
        self.observer = observer
        self.lines = lines
        self.wake = wake  # publishes an ordered conversation's next event

    def attempt(self, job: Job) -> Delivered | Parked | AlreadyEnded:
        """Make one attempt, or park the job if its endpoint has no room.

        Raises :class:`RetryableDeliveryError` or :class:`PermanentDeliveryError`
        when the attempt was made and failed.
        """
        delivery = job.delivery
        parsed, body = _parse(delivery.event)
        conversation_id = str(parsed.conversation_id)
        if delivery.sequence is not None and self.lines is not None:
            with redis_unavailable("enter the conversation's line"):
                turn = self.lines.enter(conversation_id, delivery)
            if turn is Turn.WAIT:
                return Parked(wait_s=0.0, reason=f"order: after {delivery.sequence - 1}")
            if turn is Turn.ENDED:
                return AlreadyEnded(delivery.sequence)
        try:
            target = resolve_target(parsed, delivery.callback_url, self.conversations, self.policy)
        except PermanentDeliveryError as exc:
            url = delivery.callback_url
            endpoint = normalize_endpoint(url) if url else ""
            self._observe(job, parsed, endpoint, Ended(time.time(), 0.0, error=exc), sent=False)
            raise
        # Everything that can fail before the request is done before the
        # endpoint's slot is taken, so a failure here holds no slot.
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Attempt": str(delivery.attempt),
            **signature_headers(target.secrets, delivery.webhook_id, body),
        }
        if delivery.sequence is not None:
            headers["X-Webhook-Sequence"] = str(delivery.sequence)
        grant = self._acquire(target, delivery)
        if isinstance(grant, Denied):
            return self._park(target, delivery, wait_s=grant.wait_s, reason=grant.reason)
        if grant is not None:
            headers.update(grant.headers())
        started = time.time()
        try:
            response = self.sender.post(target.url, body, headers)
        except DeliveryError as exc:
            hold_s = backoff.hold_s(
                exc.status,
                exc.retry_after_s,
                retries_done=delivery.retries,
                schedule=self.policy.retry_schedule,
                cap_s=self.policy.retry_after_cap_s,
            )
            ended = Ended(started, time.time() - started, error=exc, hold_s=hold_s)
            self._finish(job, parsed, target, grant, ended)
            if exc.status == 429 and isinstance(exc, RetryableDeliveryError):
                return self._back_off(target, delivery, exc, hold_s)
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
        try:
            self._move_line_on(conversation_id, delivery)
        except redis.RedisError as exc:
            # Acknowledged now, the line would wait on this event for ever.
            raise OutcomeNotRecorded(
                f"{delivery.webhook_id} was delivered but its line could not move on"
            ) from exc
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
        self, delivery: Delivery, error: BaseException, *, event: Any = None
    ) -> Outcome:
        """Keep a failed delivery as a dead letter with its last error; its
        ordered line, if any, moves on.

        ``event`` is the task's argument as given, when that may not be the
        dict the delivery carries.
        """
        event = delivery.event if event is None else event
        event_dict = event if isinstance(event, dict) else {}
        data = event_dict.get("data")
        url = delivery.callback_url or self._configured_url(event_dict.get("conversation_id"))
        outcome = Outcome(
            webhook_id=delivery.webhook_id,
            state="failed",
            conversation_id=_str_or_none(event_dict.get("conversation_id")),
            message_id=_str_or_none(data.get("id")) if isinstance(data, dict) else None,
            url=url,
            attempts=delivery.attempt,
            status=error.status if isinstance(error, DeliveryError) else None,
            error_kind=str(kind_of(error)),
            error=str(error)[:500] or type(error).__name__,
            sequence=delivery.sequence,
        )
        self.outcomes.failed(outcome, event=event, callback_url=delivery.callback_url)
        if self.observer is not None:
            self.observer.ended(normalize_endpoint(url) if url else "", delivered=False)
        if outcome.conversation_id is not None:
            self._move_line_on(outcome.conversation_id, delivery)
        return outcome

    def _move_line_on(self, conversation_id: str, delivery: Delivery) -> None:
        """``delivery`` ended: let its ordered conversation's next event go, at once."""
        if delivery.sequence is None or self.lines is None:
            return
        successor = self.lines.end(conversation_id, delivery.sequence)
        if successor is None:
            return
        try:
            self.wake(successor)
        except Exception:
            # The line keeps it until it starts; the pump publishes it again.
            log.warning(
                "could not publish %s, next in its line; the pump will",
                successor.webhook_id,
                exc_info=True,
            )

    def _observe(
        self,
        job: Job,
        event: MessageEvent,
        endpoint: str,
        ended: Ended,
        *,
        sent: bool = True,
        pipe: StorePipeline | None = None,
    ) -> None:
        if self.observer is None:
            return
        facts = AttemptFacts(
            webhook_id=job.delivery.webhook_id,
            conversation_id=str(event.conversation_id),
            message_id=str(event.data.id),
            endpoint=endpoint,
            attempt=job.delivery.attempt,
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
        released_at = None
        if grant is not None and self.limiter is not None:
            self.limiter.release_into(pipe, target.endpoint, grant.token, hold_s=ended.hold_s)
            released_at = len(pipe) - 1
        if ended.error is None:
            self.outcomes.delivered(self._delivered(event, job.delivery, target, ended), pipe=pipe)
            if self.observer is not None:
                # Summed before the attempt, so no flush shows the attempt
                # without its delivery.
                self.observer.ended(target.endpoint, delivered=True)
        try:
            self._observe(job, event, target.endpoint, ended, pipe=pipe)
        finally:
            # Even if observing was interrupted (a soft time limit during a
            # flush), the slot goes back and the outcome is kept.
            self._write(pipe, job.delivery, target, ended, released_at)

    def _write(
        self,
        pipe: StorePipeline,
        delivery: Delivery,
        target: Target,
        ended: Ended,
        released_at: int | None,
    ) -> None:
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            # Leases expire on their own. A failed attempt goes on to its
            # retry or dead letter; a delivered one must not end unrecorded.
            log.exception(
                "attempt %d of %s ended (%s) but Redis could not record it",
                delivery.attempt,
                delivery.webhook_id,
                "delivered" if ended.error is None else type(ended.error).__name__,
            )
            if ended.error is None:
                raise OutcomeNotRecorded(
                    f"{delivery.webhook_id} was delivered but Redis could not record it"
                ) from exc
            return
        for result in results:
            if isinstance(result, Exception):
                log.warning(
                    "could not record part of %s's attempt: %s", delivery.webhook_id, result
                )
        released = results[released_at] if released_at is not None else 0
        if self.limiter is not None and self.limiter.wakes_line(released):
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

    def _acquire(self, target: Target, delivery: Delivery) -> Granted | Denied | None:
        if self.limiter is None:
            return None
        with redis_unavailable("reach the rate limiter"):
            return self.limiter.acquire(
                target.endpoint, target.limits, from_line=delivery.place_ms > 0
            )

    def _back_off(
        self, target: Target, delivery: Delivery, exc: RetryableDeliveryError, hold_s: float
    ) -> Parked:
        """A 429 is back-pressure: wait as asked, without using the retry budget."""
        max_wait_s = self.policy.max_rate_limited_wait_s
        waited = backoff.rate_limited_wait_s(delivery.waited_s, hold_s, max_wait_s=max_wait_s)
        if waited is None:
            raise PermanentDeliveryError(
                f"receiver kept answering 429 for {delivery.waited_s + hold_s:.0f} s, longer "
                f"than the {max_wait_s:.0f} s allowed",
                kind=ErrorKind.RATE_LIMITED,
                status=429,
                response_excerpt=exc.response_excerpt,
            ) from exc
        later = replace(delivery, attempt=delivery.attempt + 1, waited_s=waited)
        return self._park(target, later, wait_s=max(hold_s, 0.001), reason="retry_after")

    def _park(self, target: Target, delivery: Delivery, *, wait_s: float, reason: str) -> Parked:
        with redis_unavailable("park the delivery"):
            self.parking.park(target.endpoint, delivery, target.limits, wait_s=wait_s)
        return Parked(wait_s=wait_s, reason=reason)

    @staticmethod
    def _delivered(
        event: MessageEvent, delivery: Delivery, target: Target, ended: Ended
    ) -> Outcome:
        return Outcome(
            webhook_id=delivery.webhook_id,
            state="delivered",
            conversation_id=str(event.conversation_id),
            message_id=str(event.data.id),
            url=target.url,
            attempts=delivery.attempt,
            status=ended.status,
            duration_s=round(ended.duration_s, 6),
            sequence=delivery.sequence,
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
