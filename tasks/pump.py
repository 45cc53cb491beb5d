"""The pump: republish parked deliveries as their endpoints get room.

Every worker runs one, in a thread of its main process; endpoints are
claimed one pump at a time through Redis, so any number of workers on any
number of machines share the work without releasing a delivery twice.
A delivery is republished first and removed from its line after, so a
crash in between can duplicate it (at-least-once) but never lose it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from config import wiring
from config.celery_app import app
from tasks.delivery import deliver_webhook
from tasks.routing import router
from webhooks.ordering import OrderedLines
from webhooks.parking import ParkedDelivery, ParkingLot
from webhooks.queues import RELEASED_QUEUE, SLOW_QUEUE

__all__ = ["ParkedDeliveryPump", "Pump"]

log = logging.getLogger(__name__)

#: Most deliveries one pass releases for one endpoint.
MAX_BATCH = 50
#: After releasing a batch, look again this soon unless a release wakes us
#: earlier: the batch has not taken its slots yet, so the room is unknown.
SETTLE_S = 1.0
CLAIM_TTL_S = 10.0


class Pump:
    def __init__(self, lot: ParkingLot, *, owner: str, lines: OrderedLines | None = None) -> None:
        self._lot = lot
        self._owner = owner
        self._lines = lines

    def tick(self) -> int:
        """One pass over the due endpoints; returns how many were republished."""
        released = self._publish_due_lines()
        for endpoint in self._lot.due():
            if not self._lot.claim(endpoint, self._owner, ttl_s=CLAIM_TTL_S):
                continue
            try:
                released += self._release(endpoint)
            finally:
                self._lot.unclaim(endpoint, self._owner)
        return released

    def _publish_due_lines(self) -> int:
        """Ordered lines whose next event was published but never started: its
        publisher died first, or its message was lost on the way."""
        if self._lines is None:
            return 0
        due = self._lines.due()
        for _, delivery in due:
            deliver_webhook.publish(delivery)
        return len(due)

    def _release(self, endpoint: str) -> int:
        room = self._lot.take(endpoint, max_batch=MAX_BATCH)
        published: list[ParkedDelivery] = []
        try:
            for parked in room.deliveries:
                deliver_webhook.apply_async(
                    kwargs=parked.delivery.task_kwargs(),
                    retries=parked.delivery.retries,
                    queue=SLOW_QUEUE if router.is_slow(endpoint) else RELEASED_QUEUE,
                )
                published.append(parked)
        finally:
            self._lot.done(endpoint, published)
        self._lot.reschedule(endpoint, wait_s=SETTLE_S if published else room.wait_s)
        return len(published)


class ParkedDeliveryPump(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs a :class:`Pump` every ``WEBHOOKS_PUMP_INTERVAL_S`` in the worker."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        settings = worker.app.settings
        client = wiring.store_client(settings)
        pump = Pump(ParkingLot(client), owner=worker.hostname, lines=OrderedLines(client))
        self._thread = threading.Thread(
            target=self._run, args=(pump, settings.pump_interval_s), name="webhooks-pump"
        )
        self._thread.daemon = True
        self._thread.start()

    def _run(self, pump: Pump, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            try:
                pump.tick()
            except Exception:
                # Redis away or a publish failed: nothing was removed from a
                # line that was not republished; try again next tick.
                log.warning("parked-delivery pump pass failed", exc_info=True)

    def stop(self, worker: Any) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


app.steps["worker"].add(ParkedDeliveryPump)
