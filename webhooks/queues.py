"""The broker queues' names, and how much work is waiting in them (read
straight from Redis at scrape time)."""

from __future__ import annotations

import redis

from webhooks import keys
from webhooks.store import Store

__all__ = [
    "QUEUE",
    "QUEUES",
    "RELEASED_QUEUE",
    "SLOW_QUEUE",
    "dead_letter_count",
    "queue_depths",
]

#: Where deliveries are published (Celery's default queue for the app).
QUEUE = "webhooks"
#: Deliveries the pump releases from an endpoint's waiting line. Workers
#: consume it beside QUEUE (kombu alternates between a worker's queues), so a
#: released delivery does not wait again behind the whole QUEUE backlog.
RELEASED_QUEUE = "webhooks.released"
#: Deliveries to endpoints judged slow or failing (tasks/routing.py), served
#: by workers sized for waiting so they never hold the fast workers' slots.
SLOW_QUEUE = "webhooks.slow"
#: Broker queues (kombu keeps each as a Redis list of that name).
QUEUES = (QUEUE, RELEASED_QUEUE, SLOW_QUEUE)


def queue_depths(broker: redis.Redis, store: Store) -> dict[str, int]:
    """Messages per broker queue, plus deliveries parked for their endpoint."""
    pipe = broker.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(queue)
    depths = dict(zip(QUEUES, (int(n) for n in pipe.execute()), strict=True))
    endpoints = [str(e) for e in store.zrange(keys.PARKED_ENDPOINTS, 0, -1)]
    parked = 0
    if endpoints:
        pipe = store.pipeline(transaction=False)
        for endpoint in endpoints:
            pipe.zcard(keys.endpoint(endpoint).parked)
        parked = sum(int(n) for n in pipe.execute())
    depths["parked"] = parked
    return depths


def dead_letter_count(store: Store) -> int:
    return int(store.zcard(keys.DEAD_LETTERS))
