"""Ordered delivery per conversation: event n+1 waits until event n has ended.

Each event of an ordered conversation takes a sequence number when it is
published (``INCR``, so any number of producers share one order) and is
published as usual. When its task runs, :meth:`OrderedLines.enter` lets it
through only if it is the conversation's next; otherwise it waits in the
conversation's line in Redis, and its task finishes without an attempt or
any retry budget used. When event n ends, delivered or dead-lettered,
:meth:`OrderedLines.end` moves the line on and hands out event n+1, which
the caller publishes at once: the successor is woken, not polled.

Crash safety comes from the broker: a delivery that a dead worker held is
handed out again and, still being the next, goes through again, while its
successor waits. A handed-out successor stays in the line until
:meth:`released` (publish first, then remove); should that publish never
happen, the pump publishes it from :meth:`due` after ``PUBLISH_WITHIN_S``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from enum import Enum
from typing import cast

import redis

from webhooks import keys
from webhooks.progress import Delivery
from webhooks.ratelimit import load_script

__all__ = ["BlockedLine", "OrderedLines", "Turn"]

#: A handed-out successor is published by the pump if its publisher has not
#: said it did within this long.
PUBLISH_WITHIN_S = 10.0


class Turn(Enum):
    NOW = 1  # its turn: deliver it
    WAIT = 0  # held back in the line; woken when its predecessor ends
    ENDED = -1  # ended before (a redelivered duplicate): do not send again


@dataclass(frozen=True, slots=True)
class BlockedLine:
    conversation_id: str
    next_sequence: int  # the event the line waits on
    waiting: int  # events held back behind it
    blocked_s: float  # since the event at the head began to hold them back


class OrderedLines:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._enter = load_script(client, "line_enter")
        self._end = load_script(client, "line_end")

    def assign(self, conversation_id: str) -> int:
        """The next sequence number of the conversation: publication order."""
        return int(self._redis.incr(keys.line(conversation_id).sequence))

    def enter(self, conversation_id: str, delivery: Delivery) -> Turn:
        """May ``delivery`` be attempted now? If not, it waits in the line."""
        if delivery.sequence is None:
            raise ValueError(f"{delivery.webhook_id} has no place in an ordered line")
        line = keys.line(conversation_id)
        verdict = self._enter(
            keys=[*line.for_script(), keys.ORDERED_BLOCKED],
            args=[delivery.sequence, _to_json(delivery), conversation_id],
        )
        return Turn(int(verdict))

    def end(self, conversation_id: str, sequence: int) -> Delivery | None:
        """Event ``sequence`` ended: move the line on; returns the event to publish now."""
        line = keys.line(conversation_id)
        reply = self._end(
            keys=[*line.for_script(), keys.ORDERED_BLOCKED, keys.ORDERED_DUE],
            args=[sequence, conversation_id, int(PUBLISH_WITHIN_S * 1000)],
        )
        if not reply:
            return None
        return _from_json(str(reply[1]))

    def released(self, conversation_id: str, delivery: Delivery) -> None:
        """``delivery``, handed out by :meth:`end` or :meth:`due`, is published."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(keys.line(conversation_id).waiting, str(delivery.sequence))
        pipe.zrem(keys.ORDERED_DUE, conversation_id)
        pipe.execute()

    def due(self, *, limit: int = 100) -> list[tuple[str, Delivery]]:
        """Handed-out successors whose publish was never confirmed, claimed for
        the caller to publish (ZREM: one pump gets each)."""
        found = []
        now_ms = int(time.time() * 1000)
        for conversation_id in self._redis.zrangebyscore(
            keys.ORDERED_DUE, "-inf", now_ms, start=0, num=limit
        ):
            cid = str(conversation_id)
            if not self._redis.zrem(keys.ORDERED_DUE, cid):
                continue  # another pump took it
            line = keys.line(cid)
            next_seq = self._redis.get(line.next) or "1"
            payload = self._redis.hget(line.waiting, str(next_seq))
            if payload is not None:
                found.append((cid, _from_json(str(payload))))
        return found

    def blocked(self) -> list[BlockedLine]:
        """Every line with events held back, longest blocked first."""
        now_ms = time.time() * 1000
        lines = []
        blocked = cast(
            "list[tuple[str, float]]",
            self._redis.zrange(keys.ORDERED_BLOCKED, 0, -1, withscores=True),
        )
        for conversation_id, since_ms in blocked:
            cid = str(conversation_id)
            line = keys.line(cid)
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(line.next)
            pipe.hlen(line.waiting)
            next_seq, waiting = pipe.execute()
            lines.append(
                BlockedLine(
                    conversation_id=cid,
                    next_sequence=int(next_seq or 1),
                    waiting=int(waiting),
                    blocked_s=max(0.0, (now_ms - float(since_ms)) / 1000),
                )
            )
        return lines


def ordered_line_gauges(lines: OrderedLines) -> dict[str, dict[str, float]]:
    """Blocked ordered lines for the metrics server: how many, and the oldest's age."""
    blocked = lines.blocked()
    return {
        "ordered_lines_blocked": {"all": float(len(blocked))},
        "ordered_line_blocked_seconds": {
            "oldest": max((b.blocked_s for b in blocked), default=0.0)
        },
    }


def _to_json(delivery: Delivery) -> str:
    return json.dumps(asdict(delivery), separators=(",", ":"))


def _from_json(raw: str) -> Delivery:
    return Delivery(**json.loads(raw))
