"""What the deliverer reports after each attempt: the attempt log, metrics, health.

The attempt log is per delivery and written with the attempt's other
records, in the caller's round trip. Metrics and endpoint health are
aggregates: each process sums them and writes them every ``flush_s``
seconds, one round trip per endpoint, instead of about twenty Redis commands
per attempt. The price is a lag of up to ``flush_s`` on /metrics and
``webhooks stats``, and, if a worker is SIGKILLed, its last ``flush_s`` of
them (never an outcome or an attempt record). A warm shutdown flushes. An
attempt that may move its endpoint between queues is written at once, so
routing does not lag.

Observability must never change a delivery's fate: a Redis error here is
logged and swallowed, never raised into the delivery; sums that could not be
written are kept for the next flush.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from webhooks.attempts import AttemptLog, AttemptRecord
from webhooks.errors import DeliveryError, ErrorKind, kind_of
from webhooks.health import HealthStore
from webhooks.metrics import Metrics, attempt_fields, delivery_fields
from webhooks.store import StorePipeline

__all__ = ["AttemptFacts", "Observer"]

log = logging.getLogger(__name__)

#: Health keeps a moving average and the last few outcomes; a flush folds at
#: most this many attempts per endpoint (the newest) so a Redis outage cannot
#: grow the buffer without bound.
MAX_PENDING_HEALTH = 200


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    webhook_id: str
    conversation_id: str
    message_id: str
    endpoint: str
    attempt: int
    queue: str
    worker: str


@dataclass
class _Pending:
    """What one process observed since its last flush, per endpoint."""

    metrics: defaultdict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    health: defaultdict[str, list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def merge(self, older: _Pending) -> None:
        for endpoint, counts in older.metrics.items():
            _add(self.metrics[endpoint], counts.items())
        for endpoint, attempts in older.health.items():
            joined = attempts + self.health[endpoint]
            self.health[endpoint] = joined[-MAX_PENDING_HEALTH:]


class Observer:
    def __init__(
        self,
        attempts: AttemptLog,
        metrics: Metrics,
        health: HealthStore,
        *,
        flush_s: float = 0.0,
    ) -> None:
        self._attempts = attempts
        self._metrics = metrics
        self._health = health
        self._flush_s = flush_s
        self._pending = _Pending()
        self._lock = threading.Lock()  # guards _pending
        self._flushing = threading.Lock()  # one flush at a time
        self._flusher_pid = 0

    def attempted(
        self,
        facts: AttemptFacts,
        *,
        started_at: float,
        duration_s: float,
        status: int | None = None,
        error: BaseException | None = None,
        note: str = "",
        sent: bool = True,
        pipe: StorePipeline | None = None,
        urgent: bool = False,
    ) -> None:
        """One attempt ended: ``error`` is None on success, ``note`` says
        what went wrong after a success (a 2xx whose body broke).

        With ``pipe`` the attempt record joins the caller's round trip, which
        the caller executes. An attempt refused before any request
        (``sent=False``: no callback, policy refusal) goes to the attempt log
        only: counting it as a 0 s HTTP attempt would skew latency and error
        rates.
        """
        outcome = "delivered" if error is None else str(kind_of(error))
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
            error=note[:300] if error is None else str(error)[:300],
            response_excerpt=error.response_excerpt if isinstance(error, DeliveryError) else "",
            queue=facts.queue,
            worker=facts.worker,
        )
        try:
            self._attempts.record(record, pipe=pipe)
        except redis.RedisError:
            log.warning("could not record attempt %s", record.to_json(), exc_info=True)
        if not sent:
            return
        result = "success" if error is None else outcome
        health = "ok" if error is None else ("timeout" if outcome == ErrorKind.TIMEOUT else "error")
        with self._lock:
            _add(
                self._pending.metrics[facts.endpoint],
                attempt_fields(result=result, duration_s=duration_s, attempt=facts.attempt),
            )
            self._pending.health[facts.endpoint].append((duration_s, health))
        # An attempt that may move its endpoint between queues is written now,
        # so the retry or next event is routed by it: a failure, a slow answer,
        # or (``urgent``) any answer of an endpoint routed as slow. Quick
        # successes of fast endpoints, nearly all attempts, wait for the flush.
        if urgent or health != "ok" or duration_s * 1000 > self._health.policy.recover_ms:
            self.flush()
        else:
            self._flush_soon()

    def ended(self, endpoint: str, *, delivered: bool) -> None:
        with self._lock:
            _add(
                self._pending.metrics[endpoint],
                delivery_fields("delivered" if delivered else "failed"),
            )
        self._flush_soon()

    def flush(self) -> None:
        """Write what this process summed since the last flush.

        One flush at a time: a flush returns only once everything summed
        before it was called is written (or kept for the next one), also when
        the background flusher had already taken part of it.
        """
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, _Pending()
            unwritten = _Pending()
            try:
                try:
                    self._attempts.check_expiries()
                except redis.RedisError:
                    log.warning("could not check the attempt log's expiries", exc_info=True)
                for endpoint in list(pending.metrics):
                    counts = pending.metrics.pop(endpoint)
                    try:
                        self._metrics.add(endpoint, counts.items())
                    except redis.RedisError as exc:
                        log.warning("could not write metrics for %s", endpoint, exc_info=True)
                        unwritten.metrics[endpoint] = counts
                        if _unreachable(exc):
                            return  # the rest would wait out the same timeout
                for endpoint in list(pending.health):
                    attempts = pending.health.pop(endpoint)
                    try:
                        self._health.observe_many(endpoint, attempts)
                    except redis.RedisError as exc:
                        log.warning("could not update the health of %s", endpoint, exc_info=True)
                        unwritten.health[endpoint] = attempts
                        if _unreachable(exc):
                            return
            finally:
                # Failed writes, and on an interruption (a soft time limit)
                # whatever was not tried yet, wait for the next flush.
                unwritten.merge(pending)
                if unwritten.metrics or unwritten.health:
                    with self._lock:
                        self._pending.merge(unwritten)

    def _flush_soon(self) -> None:
        if self._flush_s <= 0:
            self.flush()
            return
        # One flusher per process: started on first use, so in a prefork pool
        # each child (forked before any delivery) starts its own.
        if self._flusher_pid != os.getpid():
            with self._lock:
                if self._flusher_pid == os.getpid():
                    return
                self._flusher_pid = os.getpid()
            threading.Thread(target=self._flush_every, name="observer-flush", daemon=True).start()

    def _flush_every(self) -> None:
        while True:
            time.sleep(self._flush_s)
            try:
                self.flush()
            except Exception:
                log.exception("metrics flush failed; retrying in %.1f s", self._flush_s)


def _unreachable(exc: redis.RedisError) -> bool:
    """Redis itself is away: a shutdown flush should not try every endpoint in turn."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


def _add(sums: dict[str, float], fields: Iterable[tuple[str, float]]) -> None:
    for name, increment in fields:
        sums[name] = sums.get(name, 0.0) + increment
