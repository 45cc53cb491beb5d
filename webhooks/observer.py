"""What the deliverer reports after each attempt: the attempt log and metrics.

Observability must never change a delivery's fate: a Redis error here is
logged and swallowed, never raised into the delivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from webhooks.attempts import AttemptLog, AttemptRecord
from webhooks.errors import DeliveryError, ErrorKind
from webhooks.health import HealthStore
from webhooks.metrics import Metrics

__all__ = ["AttemptFacts", "Observer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    webhook_id: str
    conversation_id: str
    message_id: str
    endpoint: str
    attempt: int
    queue: str
    worker: str


class Observer:
    def __init__(self, attempts: AttemptLog, metrics: Metrics, health: HealthStore) -> None:
        self._attempts = attempts
        self._metrics = metrics
        self._health = health

    def attempted(
        self,
        facts: AttemptFacts,
        *,
        started_at: float,
        duration_s: float,
        status: int | None = None,
        error: BaseException | None = None,
        sent: bool = True,
    ) -> None:
        """One attempt ended: ``error`` is None on success.

        An attempt refused before any request (``sent=False``: no callback,
        policy refusal) goes to the attempt log only: counting it as a 0 s
        HTTP attempt would skew latency and error rates.
        """
        outcome = "delivered" if error is None else _kind(error)
        if isinstance(error, DeliveryError):
            status = error.status
        record = AttemptRecord(
            webhook_id=facts.webhook_id,
            conversation_id=facts.conversation_id,
            message_id=facts.message_id,
            endpoint=facts.endpoint,
            attempt=facts.attempt,
            started_at=round(started_at, 3),
            duration_s=round(duration_s, 6),
            outcome=outcome,
            status=status,
            error="" if error is None else str(error)[:300],
            response_excerpt=error.response_excerpt if isinstance(error, DeliveryError) else "",
            queue=facts.queue,
            worker=facts.worker,
        )
        try:
            self._attempts.record(record)
            if not sent:
                return
            self._metrics.observe_attempt(
                facts.endpoint,
                result="success" if error is None else outcome,
                duration_s=duration_s,
                attempt=facts.attempt,
            )
            self._health.observe(
                facts.endpoint,
                duration_s=duration_s,
                outcome="ok"
                if error is None
                else ("timeout" if outcome == ErrorKind.TIMEOUT else "error"),
            )
        except redis.RedisError:
            log.warning("could not record attempt %s", record.to_json(), exc_info=True)

    def ended(self, endpoint: str, *, delivered: bool) -> None:
        try:
            self._metrics.observe_delivery(endpoint, outcome="delivered" if delivered else "failed")
        except redis.RedisError:
            log.warning("could not count the end of a delivery to %s", endpoint, exc_info=True)


def _kind(error: BaseException) -> str:
    if isinstance(error, DeliveryError):
        return "rate_limited" if error.status == 429 else str(error.kind)
    if type(error).__name__ == "SoftTimeLimitExceeded":
        return "timeout"
    return "internal"
