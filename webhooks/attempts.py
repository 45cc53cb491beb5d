"""The attempt log: every HTTP attempt, findable by message and conversation.

Support's questions ("did message X arrive? what did the receiver say?")
are answered from here. Each attempt is one JSON record appended to its
conversation's stream, capped and expiring after the retention, so memory
stays bounded however much traffic flows; a message's pointer names the
conversation whose stream holds its attempts. Two commands per attempt (the
stream entry, the pointer), plus the stream's expiry when this process has
not pushed it back lately, where a list per message and per conversation
took six. Each record is also logged as one JSON line, without
payload or secrets.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, fields
from typing import cast

from webhooks import keys
from webhooks.store import Store, StorePipeline

__all__ = ["AttemptLog", "AttemptRecord"]

log = logging.getLogger(__name__)

#: Attempts kept per conversation, and the most shown for one message: a
#: message's attempts are found among its conversation's newest ones.
MAX_PER_MESSAGE = 50
MAX_PER_CONVERSATION = 1000
_FIELD = "r"  # the stream entry's one field: the record's JSON


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    webhook_id: str
    conversation_id: str
    message_id: str
    endpoint: str
    attempt: int
    started_at: float  # epoch seconds
    duration_s: float
    outcome: str  # "delivered", or an ErrorKind value ("http_5xx", "timeout", ...)
    status: int | None
    error: str
    response_excerpt: str
    queue: str
    worker: str

    def to_json(self) -> str:
        # Every field is a plain value: a shallow dict is what asdict() builds,
        # without its deep copy of each one (a tenth of a millisecond per attempt).
        return json.dumps(
            {name: getattr(self, name) for name in _RECORD_FIELDS}, separators=(",", ":")
        )


_RECORD_FIELDS = tuple(f.name for f in fields(AttemptRecord))


#: Conversations whose stream expiry one process remembers setting; past
#: this it forgets them all (and sets each once more).
_REMEMBERED = 10_000


#: How long a stream whose expiry was sent but which is not there yet is
#: looked for again.
_RECHECK_S = 60.0


class AttemptLog:
    """``refresh_s``: how long a process trusts the expiry it set on a
    conversation's stream; the expiry is the retention plus that, so every
    record lives at least the retention. Default: a tenth of the retention,
    at most an hour.
    """

    def __init__(self, client: Store, *, retention_s: int, refresh_s: float | None = None) -> None:
        self._redis = client
        self._retention_s = retention_s
        self._refresh_s = min(3600.0, retention_s / 10) if refresh_s is None else refresh_s
        self._expiry_set: dict[str, float] = {}  # stream -> when (monotonic s) this process set it
        # Streams whose expiry was sent but not yet seen in place, with when
        # (monotonic s): an EXPIRE that failed (a full Redis, a lost
        # connection) must not leave a stream without one.
        self._unchecked: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, record: AttemptRecord, *, pipe: StorePipeline | None = None) -> None:
        """Log and store ``record``; with ``pipe``, queue the writes for its caller."""
        line = record.to_json()
        log.info("%s", line)
        stream = keys.attempts_by_conversation(record.conversation_id)
        writes = pipe if pipe is not None else self._redis.pipeline(transaction=False)
        # "~": trimmed a whole stream node at a time, cheaply; at least the cap is kept.
        writes.xadd(stream, {_FIELD: line}, maxlen=MAX_PER_CONVERSATION, approximate=True)
        # A busy conversation's stream needs its expiry pushed back only now
        # and then, not on every attempt.
        now = time.monotonic()
        if now - self._expiry_set.get(stream, -math.inf) >= self._refresh_s:
            if len(self._expiry_set) >= _REMEMBERED:
                self._expiry_set.clear()
            writes.expire(stream, math.ceil(self._retention_s + self._refresh_s))
            with self._lock:
                self._expiry_set[stream] = now
                self._unchecked[stream] = now
        writes.set(
            keys.attempts_by_message(record.message_id),
            record.conversation_id,
            ex=self._retention_s,
        )
        if pipe is None:
            writes.execute()

    def check_expiries(self) -> None:
        """See that every stream given an expiry since the last check has one.

        Run now and then (the observer's flush), it costs one TTL per stream
        per refresh period. A stream found without an expiry gets it now. One
        not there (yet: the check may run before the caller's pipeline) is
        looked at again for a minute, and the next attempt sends its expiry
        again.
        """
        with self._lock:
            unchecked, self._unchecked = self._unchecked, {}
        if not unchecked:
            return
        streams = list(unchecked)
        try:
            reads = self._redis.pipeline(transaction=False)
            for stream in streams:
                reads.ttl(stream)
            ttls = reads.execute()
            fixes = self._redis.pipeline(transaction=False)
            now = time.monotonic()
            for stream, ttl in zip(streams, ttls, strict=True):
                if ttl == -1:
                    fixes.expire(stream, math.ceil(self._retention_s + self._refresh_s))
                elif ttl == -2:
                    with self._lock:
                        self._expiry_set.pop(stream, None)
                        if now - unchecked[stream] < _RECHECK_S:
                            self._unchecked.setdefault(stream, unchecked[stream])
            if len(fixes):
                fixes.execute()
        except Exception:
            with self._lock:
                for stream, since in unchecked.items():  # the next check tries again
                    self._unchecked.setdefault(stream, since)
            raise

    def for_message(self, message_id: str) -> list[AttemptRecord]:
        """Oldest first, the newest ``MAX_PER_MESSAGE``."""
        conversation_id = self._redis.get(keys.attempts_by_message(message_id))
        if conversation_id is None:
            return []
        found = [
            r for r in self.for_conversation(str(conversation_id)) if r.message_id == message_id
        ]
        return found[-MAX_PER_MESSAGE:]

    def for_conversation(self, conversation_id: str) -> list[AttemptRecord]:
        """Oldest first, the newest ``MAX_PER_CONVERSATION``."""
        entries = cast(
            list[tuple[str, dict[str, str]]],
            self._redis.xrevrange(
                keys.attempts_by_conversation(conversation_id), count=MAX_PER_CONVERSATION
            ),
        )
        return [AttemptRecord(**json.loads(fields[_FIELD])) for _, fields in reversed(entries)]
