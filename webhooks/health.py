"""Endpoint health: is this receiver slow or failing right now?

Updated after every HTTP attempt by one script call: an exponentially
weighted mean of response time and the last few outcomes. An endpoint turns
slow when its mean passes ``slow_ms`` or a recent attempt timed out, and
turns fast again only when the mean is under ``recover_ms`` and no recent
attempt timed out: the gap between the two thresholds keeps it from
flapping between queues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from webhooks import keys
from webhooks.ratelimit import load_script
from webhooks.store import Store

__all__ = ["EndpointHealth", "HealthPolicy", "HealthStore"]

_FORGET_AFTER_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    slow_ms: float = 5000.0
    recover_ms: float = 2500.0
    recent_n: int = 5
    alpha: float = 0.3


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    endpoint: str
    ewma_ms: float
    recent: str
    slow: bool
    attempts: int


class HealthStore:
    def __init__(self, client: Store, policy: HealthPolicy) -> None:
        self._redis = client
        self.policy = policy
        self._observe = load_script(client, "health")

    def observe(self, endpoint: str, *, duration_s: float, outcome: str) -> bool:
        """Fold in one attempt (``outcome``: ok, error or timeout); True if slow now."""
        return self.observe_many(endpoint, [(duration_s, outcome)])

    def observe_many(self, endpoint: str, attempts: Sequence[tuple[float, str]]) -> bool:
        """Fold in ``(duration_s, outcome)`` pairs, oldest first, in one round trip."""
        p = self.policy
        pairs: list[float | str] = []
        for duration_s, outcome in attempts:
            pairs += [round(duration_s * 1000, 1), {"ok": "o", "timeout": "t"}.get(outcome, "e")]
        slow, changed, new = self._observe(
            keys=[keys.endpoint(endpoint).health],
            args=[p.alpha, p.slow_ms, p.recover_ms, p.recent_n, _FORGET_AFTER_S, *pairs],
        )
        if changed or new:
            pipe = self._redis.pipeline(transaction=False)
            if new:
                pipe.sadd(keys.KNOWN_ENDPOINTS, endpoint)
            if slow:
                pipe.sadd(keys.SLOW_ENDPOINTS, endpoint)
            else:
                pipe.srem(keys.SLOW_ENDPOINTS, endpoint)
            pipe.execute()
        return bool(slow)

    def slow_endpoints(self) -> set[str]:
        return {str(e) for e in self._redis.smembers(keys.SLOW_ENDPOINTS)}

    def all(self) -> list[EndpointHealth]:
        endpoints = sorted(str(e) for e in self._redis.smembers(keys.KNOWN_ENDPOINTS))
        pipe = self._redis.pipeline(transaction=False)
        for endpoint in endpoints:
            pipe.hgetall(keys.endpoint(endpoint).health)
        found = []
        for endpoint, h in zip(endpoints, pipe.execute(), strict=True):
            if h:
                found.append(
                    EndpointHealth(
                        endpoint=endpoint,
                        ewma_ms=float(h.get("ewma_ms", 0)),
                        recent=str(h.get("recent", "")),
                        slow=h.get("slow") == "1",
                        attempts=int(h.get("attempts", 0)),
                    )
                )
        return found
