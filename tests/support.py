"""Helpers the tests share: plain functions and classes, no fixtures (those are in conftest)."""

from __future__ import annotations

import redis

from webhooks.ratelimit import Limiter


def release_slot(
    limiter: Limiter, client: redis.Redis, endpoint: str, token: str, *, hold_s: float = 0.0
) -> int:
    """Give a slot back as an attempt's end does (:meth:`Limiter.release_into`
    on a pipeline of its own); how many deliveries are parked for the endpoint."""
    pipe = client.pipeline(transaction=False)
    limiter.release_into(pipe, endpoint, token, hold_s=hold_s)
    return int(pipe.execute()[-1])
