"""How much work is waiting, read straight from Redis at scrape time."""

from __future__ import annotations

import redis

from webhooks import keys

__all__ = ["QUEUES", "dead_letter_count", "queue_depths"]

#: Broker queues (kombu keeps each as a Redis list of that name).
QUEUES = ("webhooks", "webhooks.released", "webhooks.slow")


def queue_depths(broker: redis.Redis, store: redis.Redis) -> dict[str, int]:
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


def dead_letter_count(store: redis.Redis) -> int:
    return int(store.zcard(keys.DEAD_LETTERS))
