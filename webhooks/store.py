"""The Redis client every component shares, with timeouts on every call."""

from __future__ import annotations

import redis

__all__ = ["connect"]


def connect(url: str, *, socket_timeout_s: float) -> redis.Redis:
    """A client whose calls fail within ``socket_timeout_s`` instead of hanging."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        health_check_interval=30,
        decode_responses=True,
    )
