"""Per-endpoint rate limits and concurrency caps, shared by every worker.

The counters live in Redis and change inside ``acquire.lua`` (one round
trip per acquire) and, on release, in one ``ZADD XX CH`` that rides on the
attempt's pipeline (a Retry-After hold is ``hold.lua``, called on its own),
so the guide's promise (100 per minute, 10 at
once, per endpoint) holds however many worker processes and machines run.
The window is a sliding log (a sorted set of attempt start times), exact
rather than approximated. Concurrency slots are leases: a worker that dies
mid-request loses its slot when the lease expires, never for good.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from contextlib import suppress
from dataclasses import dataclass
from importlib.resources import files

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from webhooks import keys
from webhooks.store import Store, StorePipeline, redis_now_ms

__all__ = ["Denied", "Granted", "Limiter", "Limits", "RateLimit", "Usage", "load_script", "usage"]

log = logging.getLogger(__name__)

_UNITS_S = {"second": 1, "minute": 60, "hour": 3600}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)s?\s*$")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``count`` attempts per sliding ``window_s``; parsed from ``"100/minute"``."""

    count: int
    window_s: int

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        match = _RATE.match(text)
        if not match or int(match.group(1)) < 1:
            raise ValueError(
                f"rate limit {text!r} must look like '100/minute', '10/second' or '1000/hour'"
            )
        return cls(int(match.group(1)), _UNITS_S[match.group(2)])

    def __str__(self) -> str:
        unit = {v: k for k, v in _UNITS_S.items()}[self.window_s]
        return f"{self.count}/{unit}"


@dataclass(frozen=True, slots=True)
class Limits:
    rate: RateLimit
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class Granted:
    token: str
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        """The endpoint's budget with us, sent on every webhook request."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }


@dataclass(frozen=True, slots=True)
class Denied:
    wait_s: float
    reason: str  # "hold", "concurrency" or "rate"


def load_script(client: Store, name: str) -> Script:
    """Register ``webhooks/lua/<name>.lua`` once; calls then use EVALSHA."""
    source = files("webhooks").joinpath("lua", f"{name}.lua").read_text()
    script = client.register_script(source)
    if isinstance(client, RedisCluster):
        # A cluster pipeline sends EVALSHA without loading the script first
        # (a direct call reloads it on NOSCRIPT): load it on every primary now.
        with suppress(redis.RedisError):
            client.script_load(source)
    return script


class Limiter:
    def __init__(self, client: Store, *, lease_s: float) -> None:
        self._lease_ms = math.ceil(lease_s * 1000)
        self._acquire = load_script(client, "acquire")
        self._hold = load_script(client, "hold")

    def acquire(
        self, endpoint: str, limits: Limits, *, from_line: bool = False
    ) -> Granted | Denied:
        """``from_line``: the delivery was released from the endpoint's waiting
        line; a fresh one is refused while that line is not empty.
        """
        token = uuid.uuid4().hex
        ek = keys.endpoint(endpoint)
        granted, value, extra = self._acquire(
            keys=ek.for_script(),
            args=[
                limits.rate.count,
                limits.rate.window_s * 1000,
                limits.max_concurrency,
                self._lease_ms,
                token,
                1 if from_line else 0,
            ],
        )
        if granted:
            return Granted(
                token=token,
                limit=limits.rate.count,
                remaining=int(value),
                reset_s=math.ceil(int(extra) / 1000),
            )
        return Denied(wait_s=max(int(value), 1) / 1000, reason=str(extra))

    def release_into(
        self, pipe: StorePipeline, endpoint: str, token: str, *, hold_s: float = 0.0
    ) -> None:
        """Queue freeing the slot on ``pipe``; ``hold_s`` keeps every attempt to
        the endpoint back. Pass the pipe's last result to :meth:`wakes_line`.

        One ZADD marks the lease released and, from how many members it
        changed, tells whether the endpoint's waiting line asked to be woken
        (``~wake``, see ``acquire.lua``). A hold (a 429 or 503's Retry-After)
        is set at once, before the slot is given back; if Redis cannot take
        it, the retry schedule still spaces the next attempt.
        """
        ek = keys.endpoint(endpoint)
        if hold_s > 0:
            try:
                self._hold(keys=[ek.hold], args=[math.ceil(hold_s * 1000)])
            except redis.RedisError:
                log.warning("could not hold %s back for %.1f s", endpoint, hold_s, exc_info=True)
        pipe.zadd(ek.inflight, {token: RELEASED, WAKE: DISARMED}, xx=True, ch=True)

    @staticmethod
    def wakes_line(released: object) -> bool:
        """Whether the release whose reply this is should wake the endpoint's line."""
        return released == 2


#: Members and scores of an endpoint's sets besides attempts and live leases.
WAKE, RELEASED, DISARMED = "~wake", 0, -1
WINDOW_LENGTH = "~w"  # in ``window``, scored minus the window's length (ms)


@dataclass(frozen=True, slots=True)
class Usage:
    in_window: int  # attempts the sliding window counts now
    in_flight: int  # slots held now: leases neither given back nor expired


def usage(client: Store, endpoints: list[str], *, now_ms: int | None = None) -> list[Usage]:
    """What each endpoint uses at ``now_ms`` (default: now) on Redis' clock,
    counted as ``acquire.lua`` counts."""
    if now_ms is None:
        now_ms = redis_now_ms(client)
    pipe = client.pipeline(transaction=False)
    for endpoint in endpoints:
        pipe.zscore(keys.endpoint(endpoint).window, WINDOW_LENGTH)
    lengths = pipe.execute()
    for endpoint, minus_length in zip(endpoints, lengths, strict=True):
        ek = keys.endpoint(endpoint)
        # Without ~w (a set an older version wrote, swept on every grant): all of it.
        since = "0" if minus_length is None else f"({now_ms + float(minus_length)}"
        pipe.zcount(ek.window, since, "+inf")
        pipe.zcount(ek.inflight, f"({now_ms}", "(+inf")
    counts = [int(n) for n in pipe.execute()]
    return [Usage(counts[i], counts[i + 1]) for i in range(0, len(counts), 2)]
