"""Prompt redelivery of what a dead worker held, driven by worker heartbeats.

With late acknowledgement, a delivery a worker has taken sits in kombu's
``unacked`` hash until the worker acknowledges it. If the whole worker dies
(SIGKILL, OOM kill, a vanished machine), kombu hands the message out again
only after the broker's visibility timeout, an hour by default: far too late
for a chat message. Lowering the visibility timeout instead would redeliver,
and so duplicate, deliveries that are merely slow, waiting out a countdown,
or queued behind others in a busy worker.

So each worker incarnation (one consumer connection of one worker process)
records the delivery tags it takes (``task_received``) in a set of its own
and beats every ``WEBHOOKS_WORKER_HEARTBEAT_S`` into ``webhooks:workers``.
Every live worker also reaps: an incarnation silent for
``WEBHOOKS_WORKER_DEAD_AFTER_S`` is dead, and the first worker to lock it
puts each of its still-unacknowledged messages back on its queue with
kombu's own transactional ``restore_by_tag``. A consumer that reconnects
after a broker outage starts a new incarnation and reclaims its previous
one at once: Celery drops what the old channel held.

Tags a worker acknowledged are pruned at each beat. Times are Redis' own
clock, so machines' clocks need not agree.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import bootsteps
from celery.signals import task_received

from config import wiring
from config.celery_app import app
from webhooks import keys

__all__ = ["Reclaimer", "WorkerReclaim"]

log = logging.getLogger(__name__)

#: kombu's hash of delivered, unacknowledged messages (its ``unacked_key``).
UNACKED = "unacked"


class Reclaimer:
    """One worker incarnation's heartbeat, and the reaping of dead ones."""

    def __init__(
        self,
        client: redis.Redis,
        restore: Callable[[str], None],
        *,
        incarnation: str,
        dead_after_s: float,
    ) -> None:
        self._redis = client
        self._restore = restore
        self.incarnation = incarnation
        self._dead_after_s = dead_after_s

    def took(self, delivery_tag: str) -> None:
        self._redis.sadd(keys.worker_held(self.incarnation), delivery_tag)

    def beat(self) -> None:
        """Say this incarnation is alive, and forget the tags it acknowledged."""
        held_key = keys.worker_held(self.incarnation)
        self._redis.zadd(keys.WORKERS, {self.incarnation: self._now()})
        tags = self._held(held_key)
        done = tags - set(self._unacked(tags))
        if done:
            self._redis.srem(held_key, *done)

    def reap(self) -> int:
        """Restore what every dead incarnation held; returns how many messages."""
        silent_since = self._now() - self._dead_after_s
        dead = self._redis.zrangebyscore(keys.WORKERS, "-inf", silent_since)
        return sum(self.reclaim(str(incarnation)) for incarnation in dead)

    def reclaim(self, incarnation: str) -> int:
        """Put ``incarnation``'s unacknowledged messages back on their queues."""
        lock = keys.worker_reaping(incarnation)
        if not self._redis.set(lock, self.incarnation, nx=True, ex=60):
            return 0  # another worker is at it
        held_key = keys.worker_held(incarnation)
        unacked = self._unacked(self._held(held_key))
        for tag in unacked:
            # kombu's own transaction: a no-op if it was acknowledged meanwhile.
            self._restore(tag)
        self._redis.delete(held_key)
        self._redis.zrem(keys.WORKERS, incarnation)
        if unacked:
            log.warning(
                "worker %s went silent: %d unacknowledged deliveries handed out again",
                incarnation,
                len(unacked),
            )
        return len(unacked)

    def _held(self, held_key: str) -> set[str]:
        return {str(tag) for tag in self._redis.smembers(held_key)}

    def _unacked(self, tags: set[str]) -> list[str]:
        """Those of ``tags`` kombu still holds unacknowledged: one HMGET for them all,
        not a command per tag, as every delivery's tag passes through here once."""
        if not tags:
            return []
        ordered = sorted(tags)
        held = self._redis.hmget(UNACKED, ordered)
        return [tag for tag, message in zip(ordered, held, strict=True) if message is not None]

    def _now(self) -> float:
        seconds, micros = self._redis.time()
        return float(seconds) + micros / 1e6


@task_received.connect  # type: ignore[untyped-decorator]
def _record_taken(request: Any, **_: Any) -> None:
    reclaimer = WorkerReclaim.current
    if reclaimer is None:
        return
    try:
        reclaimer.took(str(request.message.delivery_tag))
    except redis.RedisError:
        # Not fatal: the message is still in kombu's hash, and comes back
        # after the visibility timeout if this worker dies.
        log.warning("could not record a received delivery", exc_info=True)


class WorkerReclaim(bootsteps.StartStopStep):  # type: ignore[misc]
    """Heartbeat and reaper thread; restarts with the consumer's connection."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    #: The reclaimer of this process's current consumer connection, if any.
    current: Reclaimer | None = None

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: str | None = None
        self._connections: tuple[Any, ...] = ()

    def start(self, consumer: Any) -> None:
        settings = consumer.app.settings
        client = wiring.broker_client(settings)
        connection = consumer.app.connection_for_write()
        reclaimer = Reclaimer(
            client,
            lambda tag: connection.default_channel.qos.restore_by_tag(tag, leftmost=True),
            incarnation=f"{consumer.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            dead_after_s=settings.worker_dead_after_s,
        )
        self._connections = (client, connection)  # a reconnect makes new ones
        previous, self._previous = self._previous, reclaimer.incarnation
        WorkerReclaim.current = reclaimer
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(reclaimer, previous, settings.worker_heartbeat_s, self._stopping),
            name="webhooks-reclaim",
            daemon=True,
        )
        self._thread.start()

    @staticmethod
    def _run(
        reclaimer: Reclaimer, previous: str | None, interval_s: float, stopping: threading.Event
    ) -> None:
        while True:
            try:
                reclaimer.beat()
                if previous is not None:
                    reclaimer.reclaim(previous)
                    previous = None
                reclaimer.reap()
            except Exception:
                log.warning("worker heartbeat or reaping failed", exc_info=True)
            if stopping.wait(interval_s):
                return

    def stop(self, consumer: Any) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for connection in self._connections:
            with contextlib.suppress(Exception):  # the broker may be the reason we stop
                connection.close()
        self._connections = ()


app.steps["consumer"].add(WorkerReclaim)
