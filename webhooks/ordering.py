"""Ordered delivery per conversation: event n+1 waits until event n has ended.

Each event of an ordered conversation takes a sequence number when it is
published (:meth:`OrderedLines.admit`, one script, so any number of
producers share one order). The conversation's next event goes to the
broker as usual; a later one waits in the conversation's line in Redis,
published nowhere, using no worker and no retry budget. When event n ends,
delivered or dead-lettered, :meth:`OrderedLines.end` moves the line on and
hands out event n+1, which the caller publishes at once: the successor is
woken, not polled. A task always asks :meth:`OrderedLines.enter` first, so
a delivery the broker hands out again (a retry, a redelivery after a crash)
goes through only while it is the line's next.

Crash safety: a delivery that a dead worker held is handed out again by the
broker and, still being the next, goes through again while its successor
waits. Every event stays kept in the line until it ends, and the line's
next is due for the pump (:meth:`due`) unless a worker starts it within
``START_WITHIN_S`` and, once started, starts it again (a retry) or ends it
within ``in_flight_s``. So an event whose broker message was lost (a
publisher killed before it published, a worker killed between taking a
message from its queue and recording it, which kombu's Redis transport
cannot make atomic) is published again, from its last progress: at least
once, never skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import cast

from webhooks import keys
from webhooks.progress import Delivery
from webhooks.ratelimit import load_script
from webhooks.store import Store

__all__ = ["BlockedLine", "OrderedLines", "Turn"]

#: The line's next event, published, is published again by the pump if no
#: worker has started it within this long (it may wait behind a backlog:
#: too short a time costs duplicates, too long a stall after a lost message).
START_WITHIN_S = 30.0


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
    def __init__(self, client: Store, *, in_flight_s: float = 120.0) -> None:
        """``in_flight_s``: longer than an attempt plus the longest retry countdown."""
        self._redis = client
        self._in_flight_ms = int(in_flight_s * 1000)
        self._admit = load_script(client, "line_admit")
        self._enter = load_script(client, "line_enter")
        self._end = load_script(client, "line_end")

    def admit(self, conversation_id: str, delivery: Delivery) -> tuple[int, Turn]:
        """Number a newly published event: :attr:`Turn.NOW` to publish it, or
        :attr:`Turn.WAIT`: it is kept in the line, and published when its turn comes."""
        seq, now = self._admit(
            keys=_script_keys(conversation_id),
            args=[_to_json(delivery), conversation_id, _START_WITHIN_MS],
        )
        return int(seq), Turn.NOW if int(now) else Turn.WAIT

    def enter(self, conversation_id: str, delivery: Delivery) -> Turn:
        """May ``delivery`` be attempted now? If not, it waits in the line."""
        if delivery.sequence is None:
            raise ValueError(f"{delivery.webhook_id} has no place in an ordered line")
        verdict = self._enter(
            keys=_script_keys(conversation_id),
            args=[delivery.sequence, _to_json(delivery), conversation_id, self._in_flight_ms],
        )
        return Turn(int(verdict))

    def end(self, conversation_id: str, sequence: int) -> Delivery | None:
        """Event ``sequence`` ended: move the line on; returns the event to publish now."""
        reply = self._end(
            keys=_script_keys(conversation_id),
            args=[sequence, conversation_id, _START_WITHIN_MS],
        )
        if not reply:
            return None
        return _from_json(str(reply[1]), sequence=int(reply[0]))

    def due(self, *, limit: int = 100) -> list[tuple[str, Delivery]]:
        """Lines whose next event was not started, or not started again or ended,
        in time, for the caller to publish again from its last progress; each
        is given its time again (ZREM first: one pump gets it)."""
        found = []
        now_ms = int(time.time() * 1000)
        for conversation_id in self._redis.zrangebyscore(
            keys.ORDERED_DUE, "-inf", now_ms, start=0, num=limit
        ):
            cid = str(conversation_id)
            if not self._redis.zrem(keys.ORDERED_DUE, cid):
                continue  # another pump took it
            line = keys.line(cid)
            next_seq = int(self._redis.get(line.next) or 1)
            payload = self._redis.hget(line.waiting, str(next_seq))
            if payload is not None:  # else it ended meanwhile
                self._redis.zadd(keys.ORDERED_DUE, {cid: now_ms + _START_WITHIN_MS})
                found.append((cid, _from_json(str(payload), sequence=next_seq)))
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
            next_seq = int(self._redis.get(line.next) or 1)
            pipe = self._redis.pipeline(transaction=False)
            pipe.hlen(line.waiting)
            pipe.hexists(line.waiting, str(next_seq))
            kept, head_kept = pipe.execute()
            lines.append(
                BlockedLine(
                    conversation_id=cid,
                    next_sequence=next_seq,
                    waiting=int(kept) - int(bool(head_kept)),
                    blocked_s=max(0.0, (now_ms - float(since_ms)) / 1000),
                )
            )
        return lines


_START_WITHIN_MS = int(START_WITHIN_S * 1000)


def _script_keys(conversation_id: str) -> list[str]:
    return [*keys.line(conversation_id).for_script(), keys.ORDERED_BLOCKED, keys.ORDERED_DUE]


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


def _from_json(raw: str, *, sequence: int) -> Delivery:
    """A kept delivery; its number is the line's (admit stores it unnumbered)."""
    return replace(Delivery(**json.loads(raw)), sequence=sequence)
