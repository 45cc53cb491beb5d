"""``deliver_webhook``: one Celery task per message event.

The task body is one call into :class:`webhooks.delivery.Deliverer`. What
makes it a reliable delivery lives in :class:`DeliveryTask`:

* ``apply_async`` validates in the producer, so an invalid event or URL is
  the caller's ``ValueError`` and nothing is published, and publishes to the
  broker group the conversation maps to (``WEBHOOKS_BROKER_URLS``), whoever
  publishes: a producer, a retry, the pump, a replay;
* ``retry`` supplies the countdown sequence (``WEBHOOKS_RETRY_SCHEDULE``)
  for ``autoretry_for`` and sizes the retry budget from it;
* ``__call__`` turns the last failure, of whatever kind, into a dead letter
  before the message is acknowledged, and hands back a delivery whose end
  could not be recorded;
* :class:`tasks.request.DeliveryRequest` retries or dead-letters when
  Celery's hard time limit ends an attempt, and keeps a delivery cancelled
  on a connection loss unacknowledged.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import replace
from functools import cached_property
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from celery.signals import worker_process_shutdown, worker_shutdown
from celery.worker.request import Request

from config import wiring
from config.celery_app import WebhooksCelery, app
from tasks.routing import router
from webhooks import backoff
from webhooks.delivery import AlreadyEnded, Deliverer, Job, Parked
from webhooks.errors import (
    DeliveryError,
    ErrorKind,
    InvalidEvent,
    OutcomeNotRecorded,
    RetryableDeliveryError,
)
from webhooks.events import MessageEvent, event_body, parse_event
from webhooks.ordering import OrderedLines, Turn
from webhooks.progress import Delivery
from webhooks.queues import SLOW_QUEUE
from webhooks.signing import new_webhook_id
from webhooks.urlpolicy import check_url

__all__ = ["DeliveryTask", "deliver_webhook"]

log = logging.getLogger(__name__)


class DeliveryTask(Task):  # type: ignore[misc]
    app: WebhooksCelery

    @cached_property
    def deliverer(self) -> Deliverer:
        # Built on first use, i.e. inside the pool process after the fork, so
        # each process gets its own HTTP connection pool and Redis client.
        return wiring.deliverer(self.app.settings, wake=self.publish)

    def publish(self, delivery: Delivery) -> None:
        """Publish ``delivery`` where it left off (an ordered line's next event)."""
        kwargs = delivery.task_kwargs()
        self.apply_async(
            kwargs=kwargs,
            task_id=delivery.webhook_id,
            retries=delivery.retries,
            queue=router.queue_for(kwargs),
        )

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> Any:
        """Validate and normalise before publishing; raise instead of enqueueing junk."""
        bound = inspect.signature(self.run).bind(*(args or ()), **(kwargs or {}))
        event: MessageEvent | dict[str, Any] = bound.arguments["event"]
        callback_url: str | None = bound.arguments.get("callback_url")
        webhook_id: str | None = bound.arguments.get("webhook_id")
        parsed = parse_event(event)
        settings = self.app.settings
        size = len(event_body(parsed))  # also refuses what JSON or UTF-8 cannot carry
        if size > settings.max_event_bytes:
            raise InvalidEvent(
                [
                    (
                        "(event)",
                        f"{size} bytes serialized, more than WEBHOOKS_MAX_EVENT_BYTES "
                        f"({settings.max_event_bytes})",
                    )
                ]
            )
        if callback_url is not None:
            check_url(
                callback_url,
                allow_http=settings.allow_http,
                allow_private=settings.allow_private_networks,
            )
        webhook_id = webhook_id or new_webhook_id()
        normalized = {
            **bound.arguments,  # progress kwargs (attempt, ...) of a retry or unpark
            "event": parsed.model_dump(mode="json"),
            "callback_url": callback_url,
            "webhook_id": webhook_id,
        }
        lines = None
        if normalized.get("sequence") is None:
            lines = router.ordered_lines(normalized)
            if lines is not None:
                delivery = Delivery.from_task(
                    normalized, retries=int(options.get("retries") or 0), task_id=webhook_id
                )
                sequence, turn = lines.admit(str(parsed.conversation_id), delivery)
                normalized["sequence"] = sequence
                if turn is Turn.WAIT:
                    # Kept in Redis, in its line: published when its turn comes.
                    return self.AsyncResult(task_id or webhook_id)
        # The first publish uses the webhook-id as task id, so the
        # AsyncResult a producer gets back names the delivery in our records.
        try:
            # With several broker groups, the one this conversation maps to.
            with self.app.producer_for(str(parsed.conversation_id)) as producer:
                if producer is not None:
                    options.setdefault("producer", producer)
                return super().apply_async((), normalized, task_id or webhook_id, **options)
        except Exception:
            if lines is not None:
                # Never published: the line must not wait for it.
                self._skip(lines, str(parsed.conversation_id), normalized)
            raise

    def _skip(self, lines: OrderedLines, conversation_id: str, kwargs: dict[str, Any]) -> None:
        sequence = int(kwargs["sequence"])
        try:
            successor = lines.end(conversation_id, sequence)
            if successor is not None:
                self.publish(successor)
        except Exception:
            # Still kept and due: the pump publishes the line's next in time.
            log.exception(
                "sequence %d of conversation %s was not published and could not be skipped",
                sequence,
                conversation_id,
            )

    def retry(  # noqa: PLR0917 - Celery's own signature
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        schedule = self.app.settings.retry_schedule
        if countdown is None and eta is None:
            countdown = backoff.countdown(self.request.retries, schedule)
        if max_retries is None:
            max_retries = len(schedule)
        delivery = _delivery(self.request)
        if self.request.retries < max_retries:
            log.info(
                "delivery %s attempt %d failed (%s); retrying in %.1f s",
                delivery.webhook_id,
                delivery.attempt,
                exc,
                countdown or 0.0,
            )
        if kwargs is None:
            # The next HTTP attempt carries the next number; 429 back-offs
            # (parked, not retried) also advance it, so it is not retries + 1.
            kwargs = replace(delivery, attempt=delivery.attempt + 1).task_kwargs()
        # Celery keeps a retry on its original queue; route it by the
        # endpoint's health now instead.
        options.setdefault("queue", router.queue_for(kwargs))
        try:
            return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
        except Reject as rejected:
            # Celery rejects *without* requeue when it cannot publish the
            # retry (broker down), which would drop the event. Requeue
            # instead; if even that fails the message stays unacknowledged
            # and the broker redelivers it after the visibility timeout.
            log.exception("could not schedule the retry; requeueing: %s", rejected.reason)
            raise Reject(rejected.reason, requeue=True) from exc

    def after_hard_limit(self, request: Request, timeout: float) -> None:
        """What ``retry`` and ``on_failure`` would have done, from the main process."""
        retries = int(request.request_dict.get("retries") or 0)
        delivery = Delivery.from_task(request.kwargs, retries=retries, task_id=request.id)
        error = RetryableDeliveryError(
            f"the attempt passed the task's hard time limit ({timeout:g} s)",
            kind=ErrorKind.TIMEOUT,
        )
        schedule = self.app.settings.retry_schedule
        if retries < len(schedule):
            kwargs = replace(delivery, attempt=delivery.attempt + 1).task_kwargs()
            log.warning("delivery %s attempt %d: %s; retrying", request.id, delivery.attempt, error)
            hard, soft = request.time_limits  # a producer's own limits, kept as retry() does
            self.apply_async(
                kwargs=kwargs,
                task_id=request.id,
                retries=retries + 1,
                countdown=backoff.countdown(retries, schedule),
                queue=router.queue_for(kwargs),
                time_limit=hard,
                soft_time_limit=soft,
            )
            return
        # Not the cached deliverer: in a prefork parent it would be inherited
        # by every pool process forked later.
        deliverer = wiring.deliverer(self.app.settings, wake=self.publish)
        try:
            _dead_letter(deliverer, delivery, error)
        finally:
            deliverer.close()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the delivery; what ends it must be on record before Celery acks it.

        A failure for good is dead-lettered here, in the task body, rather
        than in ``on_failure``: if the dead letter cannot be stored (Redis
        away), the body can still hand the delivery back instead of letting
        Celery acknowledge it. So is a 2xx whose outcome could not be stored.
        """
        try:
            return super().__call__(*args, **kwargs)
        except (Retry, Reject, Ignore):
            raise
        except Exception as exc:
            given = {"event": args[0] if args else None, **kwargs}
            request = self.request
            delivery = Delivery.from_task(given, retries=request.retries, task_id=request.id)
            if isinstance(exc, OutcomeNotRecorded):
                raise self._hand_back(delivery) from exc
            self._give_up(delivery, exc, event=given["event"])
            raise

    def _give_up(self, delivery: Delivery, exc: Exception, *, event: Any) -> None:
        """Keep the failed delivery as a dead letter, or hand it back to the broker."""
        try:
            _dead_letter(self.deliverer, delivery, exc, event=event)
        except Exception as unstored:
            log.exception(
                "delivery %s failed and its dead letter could not be stored; trying it again",
                delivery.webhook_id,
            )
            raise self._hand_back(delivery) from unstored
        self.request.dead_lettered = True

    def _hand_back(self, delivery: Delivery) -> Ignore | Reject:
        """What ends a delivery whose end could not be recorded, unacknowledged.

        The same attempt again after the last countdown, if the broker takes
        it (then the original is acknowledged); else a requeue, and if even
        that fails, the message stays unacknowledged for the reclaim.
        """
        kwargs = delivery.task_kwargs()
        countdown = backoff.countdown(delivery.retries, self.app.settings.retry_schedule)
        try:
            self.apply_async(
                kwargs=kwargs,
                task_id=self.request.id,
                retries=delivery.retries,
                countdown=countdown,
                queue=router.queue_for(kwargs),
            )
        except Exception:
            log.exception(
                "delivery %s could not be published again; requeueing it", delivery.webhook_id
            )
            return Reject("its end could not be recorded", requeue=True)
        log.warning(
            "delivery %s attempt %d could not be recorded; made again in %.1f s",
            delivery.webhook_id,
            delivery.attempt,
            countdown,
        )
        return Ignore()

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if getattr(self.request, "dead_lettered", False):
            return  # by __call__
        # A failure outside the task body (a signal handler, the tracer).
        kwargs = {"event": args[0] if args else None, **(kwargs or {})}
        delivery = Delivery.from_task(kwargs, retries=self.request.retries, task_id=task_id)
        try:
            _dead_letter(self.deliverer, delivery, exc, event=kwargs["event"])
        except Exception:
            # Last resort: the log line must carry what is needed to replay.
            log.exception(
                "delivery %s failed and its dead letter could not be stored; event: %r",
                delivery.webhook_id,
                kwargs["event"],
            )


@app.task(  # type: ignore[untyped-decorator]
    bind=True,
    base=DeliveryTask,
    name="deliver_webhook",
    autoretry_for=(RetryableDeliveryError, SoftTimeLimitExceeded),
    throws=(DeliveryError,),
    acks_late=True,
    Request="tasks.request:DeliveryRequest",
)
def deliver_webhook(
    self: DeliveryTask,
    event: dict[str, Any],
    callback_url: str | None = None,
    webhook_id: str | None = None,
    *,
    attempt: int | None = None,
    waited_s: float = 0.0,
    place_ms: int = 0,
    sequence: int | None = None,
) -> dict[str, Any]:
    """POST ``event`` to its conversation's callback (or ``callback_url``).

    ``attempt``, ``waited_s`` and ``place_ms`` carry a delivery's progress
    across retries and parking; producers leave them out.
    """
    queue = (self.request.delivery_info or {}).get("routing_key") or ""
    delivery = _delivery(self.request)
    job = Job(
        delivery, queue=queue, worker=self.request.hostname or "", routed_slow=queue == SLOW_QUEUE
    )
    result = self.deliverer.attempt(job)
    if isinstance(result, AlreadyEnded):
        log.info(
            "delivery %s (sequence %d) had already ended; not sent again",
            delivery.webhook_id,
            result.sequence,
        )
        return {"already_ended": result.sequence}
    if isinstance(result, Parked):
        log.info(
            "delivery %s parked for about %.1f s (%s)",
            delivery.webhook_id,
            result.wait_s,
            result.reason,
        )
        return {"parked": result.reason, "attempt": delivery.attempt}
    # The attempt's JSON log line (webhooks.attempts) and Celery's "succeeded"
    # line already say so; a third line per delivery is only cost.
    return {"status": result.status, "attempt": delivery.attempt}


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
@worker_shutdown.connect  # type: ignore[untyped-decorator]
def flush_observations(**_: Any) -> None:
    """Metrics and health a process summed since its last flush die with it
    otherwise: prefork children leave through ``os._exit``, past ``atexit``.
    """
    deliverer: Deliverer | None = deliver_webhook.__dict__.get("deliverer")
    if deliverer is not None:
        deliverer.flush()


def _delivery(request: Any) -> Delivery:
    """The delivery the running task's request describes."""
    return Delivery.from_task(request.kwargs, retries=request.retries, task_id=request.id)


def _dead_letter(
    deliverer: Deliverer, delivery: Delivery, error: BaseException, *, event: Any = None
) -> None:
    """Store the dead letter and say so; raises if it could not be stored.

    ``event`` is the task's argument as given, when that may not be a dict.
    """
    outcome = deliverer.record_failure(delivery, error, event=event)
    log.warning(
        "delivery %s dead-lettered after %d attempt(s): %s: %s",
        delivery.webhook_id,
        delivery.attempt,
        outcome.error_kind,
        outcome.error,
    )
