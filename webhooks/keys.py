"""Every Redis key this package writes, in one place, under one prefix.

Celery's own broker keys (``webhooks`` queue list, ``unacked`` hash) are
kombu's business and are not listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from webhooks.endpoints import endpoint_tag

__all__ = [
    "CONVERSATIONS",
    "DEAD_LETTERS",
    "KNOWN_ENDPOINTS",
    "METRICS_ENDPOINTS",
    "METRICS_TOTALS",
    "ORDERED_BLOCKED",
    "ORDERED_DUE",
    "PARKED_ENDPOINTS",
    "PREFIX",
    "SECRETS_CANARY",
    "SLOW_ENDPOINTS",
    "WORKERS",
    "EndpointKeys",
    "LineKeys",
    "attempts_by_conversation",
    "attempts_by_message",
    "conversation",
    "dead_letter",
    "delivery",
    "endpoint",
    "line",
    "metrics_minute",
    "worker_held",
    "worker_reaping",
]

PREFIX = "webhooks"

#: Set of registered conversation ids.
CONVERSATIONS = f"{PREFIX}:conversations"
#: A known text sealed with the secrets key, written with the first encrypted
#: secret: its presence says secrets are encrypted, opening it checks the key.
SECRETS_CANARY = f"{PREFIX}:secrets:canary"
#: Sorted set of dead-lettered webhook ids, scored by failure time (epoch s).
DEAD_LETTERS = f"{PREFIX}:dead"
#: Broker Redis: sorted set of live worker incarnations, scored by their last
#: heartbeat (Redis' clock, epoch s).
WORKERS = f"{PREFIX}:workers"
#: Sorted set of endpoints with parked deliveries, scored by when (epoch ms)
#: the pump should next look at them.
PARKED_ENDPOINTS = f"{PREFIX}:parked"
#: Index of ordered conversations whose line may hold waiting events (each
#: line's own ``blocked`` key says since when); readers drop stale entries.
ORDERED_BLOCKED = f"{PREFIX}:ordered:blocked"
#: Index of ordered conversations the pump should look at, scored (epoch ms)
#: no later than the line's own ``due`` time: an entry may be early or
#: stale, never missing (docs/cluster.md).
ORDERED_DUE = f"{PREFIX}:ordered:due"
#: Set of endpoints currently judged slow: the router's snapshot source.
SLOW_ENDPOINTS = f"{PREFIX}:slow-endpoints"
#: Set of endpoints with a health record, for ``webhooks endpoints``.
KNOWN_ENDPOINTS = f"{PREFIX}:endpoints"
#: Metrics keys share the {metrics} hash tag: one script updates them all.
#: Hash: "name\tendpoint\tlabel=value,..." -> running total.
METRICS_TOTALS = f"{PREFIX}:{{metrics}}:totals"
#: Set of endpoints that have their own metrics label (bounded).
METRICS_ENDPOINTS = f"{PREFIX}:{{metrics}}:endpoints"


def worker_held(incarnation: str) -> str:
    """Broker Redis: set of the kombu delivery tags a worker incarnation took."""
    return f"{PREFIX}:worker:{incarnation}:held"


def worker_reaping(incarnation: str) -> str:
    """Broker Redis: lock held by the one worker reclaiming a dead incarnation."""
    return f"{PREFIX}:worker:{incarnation}:reaping"


def conversation(conversation_id: str) -> str:
    """JSON: the conversation's configuration and signing secrets."""
    return f"{PREFIX}:conversation:{conversation_id}"


def delivery(webhook_id: str) -> str:
    """JSON: the latest outcome of one delivery; expires after the retention."""
    return f"{PREFIX}:delivery:{webhook_id}"


def metrics_minute(minute: int) -> str:
    """Hash like METRICS_TOTALS for one minute (epoch minute); expires after a day."""
    return f"{PREFIX}:{{metrics}}:min:{minute}"


def attempts_by_message(message_id: str) -> str:
    """String: the conversation whose attempt stream holds the message's attempts; expiring.

    (Before, ``log:msg:`` and ``log:conv:`` lists held the records; they expire unread.)
    """
    return f"{PREFIX}:attempts:msg:{message_id}"


def attempts_by_conversation(conversation_id: str) -> str:
    """Stream of attempt records (field ``r``: JSON), oldest first, capped, expiring."""
    return f"{PREFIX}:attempts:conv:{conversation_id}"


def dead_letter(webhook_id: str) -> str:
    """JSON: a failed delivery with its payload and last error, kept until replayed."""
    return f"{PREFIX}:dead:{webhook_id}"


@dataclass(frozen=True, slots=True)
class EndpointKeys:
    """The per-endpoint keys; all share one hash tag so a Lua script may
    touch any of them on a Redis Cluster.
    """

    window: str  # zset: attempt token -> start (ms), the sliding window; ~w -> -length
    inflight: str  # zset: attempt token -> lease expiry (ms), 0 once released; ~wake
    hold: str  # string: no attempt before this time (ms), from Retry-After
    parked: str  # zset: webhook id -> first parked (ms), the waiting line
    payloads: str  # hash: webhook id -> parked delivery (JSON)
    limits: str  # string: "count window_ms max_concurrency" of the latest park
    health: str  # hash: latency average, recent outcomes, slow flag
    pump_lock: str  # string: which pump is releasing this endpoint's backlog
    fresh: str  # string: present while window and inflight expire late enough (acquire.lua)

    def for_script(self) -> list[str]:
        return [
            self.window, self.inflight, self.hold, self.parked, self.payloads, self.limits,
            self.fresh,
        ]  # fmt: skip


def endpoint(normalized: str) -> EndpointKeys:
    base = f"{PREFIX}:ep:{{{endpoint_tag(normalized)}}}"
    return EndpointKeys(
        window=f"{base}:window",
        inflight=f"{base}:inflight",
        hold=f"{base}:hold",
        parked=f"{base}:parked",
        payloads=f"{base}:payloads",
        limits=f"{base}:limits",
        health=f"{base}:health",
        pump_lock=f"{base}:pump",
        fresh=f"{base}:fresh",
    )


@dataclass(frozen=True, slots=True)
class LineKeys:
    """One ordered conversation's keys; the {conversation} hash tag keeps
    them in one Cluster slot for the scripts."""

    sequence: str  # string: the last sequence number given out
    next: str  # string: the sequence number now allowed to be delivered
    waiting: str  # hash: sequence number -> delivery JSON, events held back
    ended: str  # set: sequence numbers that ended before their turn came
    blocked: str  # string: since when (ms) the event at the head holds others back
    due: str  # string: when (ms) the pump publishes the line's next event again

    def for_script(self) -> list[str]:
        return [self.sequence, self.next, self.waiting, self.ended, self.blocked, self.due]


def line(conversation_id: str) -> LineKeys:
    base = f"{PREFIX}:line:{{{conversation_id}}}"
    return LineKeys(
        sequence=f"{base}:sequence",
        next=f"{base}:next",
        waiting=f"{base}:waiting",
        ended=f"{base}:ended",
        blocked=f"{base}:blocked",
        due=f"{base}:due",
    )
