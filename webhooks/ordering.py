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

Each script touches only its line's keys (one Redis Cluster slot). The
pump finds due lines through a global index, :data:`keys.ORDERED_DUE`,
written outside the scripts: an entry no later than the line's due time
first, then the script; and, when the script gave a line its first due
time, that time again after it (the pump may have dropped the entry in
between). An index entry may be early or stale (the pump asks the line and
moves or drops it); it is never missing. docs/cluster.md has the reasoning.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any, cast

from redis.commands.core import Script

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
        # No script sets a due time sooner than this from now.
        self._soonest_ms = min(_START_WITHIN_MS, self._in_flight_ms)
        self._admit = load_script(client, "line_admit")
        self._enter = load_script(client, "line_enter")
        self._end = load_script(client, "line_end")
        self._due = load_script(client, "line_due")

    def admit(self, conversation_id: str, delivery: Delivery) -> tuple[int, Turn]:
        """Number a newly published event: :attr:`Turn.NOW` to publish it, or
        :attr:`Turn.WAIT`: it is kept in the line, and published when its turn comes."""
        seq, now = self._run(
            self._admit, conversation_id, [_to_json(delivery), conversation_id, _START_WITHIN_MS]
        )
        return int(seq), Turn.NOW if int(now) else Turn.WAIT

    def enter(self, conversation_id: str, delivery: Delivery) -> Turn:
        """May ``delivery`` be attempted now? If not, it waits in the line."""
        if delivery.sequence is None:
            raise ValueError(f"{delivery.webhook_id} has no place in an ordered line")
        (verdict,) = self._run(
            self._enter,
            conversation_id,
            [delivery.sequence, _to_json(delivery), conversation_id, self._in_flight_ms],
        )
        return Turn(int(verdict))

    def end(self, conversation_id: str, sequence: int) -> Delivery | None:
        """Event ``sequence`` ended: move the line on; returns the event to publish now."""
        reply = self._run(self._end, conversation_id, [sequence, conversation_id, _START_WITHIN_MS])
        if not reply:
            return None
        return _from_json(str(reply[1]), sequence=int(reply[0]))

    def _run(self, script: Script, conversation_id: str, args: list[Any]) -> list[Any]:
        """Run a line script between the index writes that keep the line findable;
        returns the script's own reply, after the index fields."""
        soonest = int(time.time() * 1000) + self._soonest_ms
        # LT: adds the line, or brings its look forward; never puts it off.
        self._redis.zadd(keys.ORDERED_DUE, {conversation_id: soonest}, lt=True)
        fresh_due, blocked_since, *reply = script(keys=_script_keys(conversation_id), args=args)
        self._index(conversation_id, due=int(fresh_due), blocked_since=int(blocked_since))
        return list(reply)

    def _index(self, conversation_id: str, *, due: int, blocked_since: int) -> None:
        if not due and not blocked_since:
            return
        pipe = self._redis.pipeline(transaction=False)
        if due:
            pipe.zadd(keys.ORDERED_DUE, {conversation_id: due}, lt=True)
        if blocked_since:
            pipe.zadd(keys.ORDERED_BLOCKED, {conversation_id: blocked_since}, nx=True)
        pipe.execute()

    def due(self, *, limit: int = 100) -> list[tuple[str, Delivery]]:
        """Lines whose next event was not started, or not started again or ended,
        in time, for the caller to publish again from its last progress; each
        is given its time again (the line's script decides: one pump gets it)."""
        found = []
        now_ms = int(time.time() * 1000)
        for conversation_id in self._redis.zrangebyscore(
            keys.ORDERED_DUE, "-inf", now_ms, start=0, num=limit
        ):
            cid = str(conversation_id)
            due, blocked_since, next_seq, *payload = self._due(
                keys=_script_keys(cid), args=[_START_WITHIN_MS]
            )
            if int(blocked_since):  # repairs an index write lost in a crash
                self._redis.zadd(keys.ORDERED_BLOCKED, {cid: int(blocked_since)}, nx=True)
            if not int(due):
                self._forget(keys.ORDERED_DUE, cid, self._due_at)
                continue
            self._redis.zadd(keys.ORDERED_DUE, {cid: int(due)})
            if payload:
                found.append((cid, _from_json(str(payload[0]), sequence=int(next_seq))))
        return found

    def _due_at(self, cid: str) -> Any:
        return self._redis.get(keys.line(cid).due)

    def _forget(self, index: str, cid: str, score: Callable[[str], Any]) -> None:
        """Drop a stale index entry, then look again: a script that ran
        meanwhile either shows in ``score`` or indexes the line after our removal."""
        self._redis.zrem(index, cid)
        again = score(cid)
        if again is not None:
            self._redis.zadd(index, {cid: int(float(again))}, lt=True)

    def blocked(self) -> list[BlockedLine]:
        """Every line with events held back, longest blocked first."""
        now_ms = time.time() * 1000
        lines = []
        indexed = cast(
            "list[tuple[str, float]]",
            self._redis.zrange(keys.ORDERED_BLOCKED, 0, -1, withscores=True),
        )
        for conversation_id, indexed_ms in indexed:
            cid = str(conversation_id)
            next_seq, waiting, since_ms = self._line_state(cid)
            if since_ms is None and waiting <= 0:
                self._forget(keys.ORDERED_BLOCKED, cid, self._blocked_at)
                continue
            if waiting <= 0:
                continue  # its `:blocked` outlived the wait; the line's next end clears it
            lines.append(
                BlockedLine(
                    conversation_id=cid,
                    next_sequence=next_seq,
                    waiting=waiting,
                    # A line blocked before lines kept their own time: the index's.
                    blocked_s=max(0.0, (now_ms - (since_ms or indexed_ms)) / 1000),
                )
            )
        return sorted(lines, key=lambda b: -b.blocked_s)

    def _line_state(self, cid: str) -> tuple[int, int, float | None]:
        """The line's next, how many wait behind it, and since when it is blocked."""
        line = keys.line(cid)
        next_seq = int(self._redis.get(line.next) or 1)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hlen(line.waiting)
        pipe.hexists(line.waiting, str(next_seq))
        pipe.get(line.blocked)
        kept, head_kept, since = pipe.execute()
        return next_seq, int(kept) - int(bool(head_kept)), None if since is None else float(since)

    def _blocked_at(self, cid: str) -> Any:
        return self._redis.get(keys.line(cid).blocked)


_START_WITHIN_MS = int(START_WITHIN_S * 1000)


def _script_keys(conversation_id: str) -> list[str]:
    return keys.line(conversation_id).for_script()


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
