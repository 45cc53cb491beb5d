"""Dead letters: list them, and take them out exactly once for a replay.

A replay must be idempotent: two operators replaying the same entry at the
same moment must not deliver it twice. Taking an entry out is a ``ZREM`` on
the index, which only one caller can win; the winner republishes, and puts
the entry back if that fails, so a replay never loses one either.

The index is written before the letter (:meth:`OutcomeStore.failed`; on a
Redis Cluster no transaction spans the two): an entry whose letter is gone
is skipped, and removed once it is older than ``ORPHAN_GRACE_S``, by then
not a letter still being written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webhooks import keys
from webhooks.endpoints import normalize_endpoint
from webhooks.store import Store, get_many

__all__ = ["ORPHAN_GRACE_S", "DeadLetter", "DeadLetters"]

#: An index entry without its letter this long after the failure is an orphan.
ORPHAN_GRACE_S = 60.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    webhook_id: str
    failed_at: float
    event: Any
    callback_url: str | None
    outcome: dict[str, Any]

    @property
    def url(self) -> str | None:
        return self.outcome.get("url") or self.callback_url

    @property
    def message_id(self) -> str | None:
        value = self.outcome.get("message_id")
        return None if value is None else str(value)


class DeadLetters:
    def __init__(self, client: Store) -> None:
        self._redis = client

    def find(self, *, endpoint: str | None = None, since: float | None = None) -> list[DeadLetter]:
        """Oldest first; ``endpoint`` matches the normalized callback URL."""
        found: list[Any] = self._redis.zrangebyscore(
            keys.DEAD_LETTERS, since or "-inf", "+inf", withscores=True
        )
        letters = self._load([(str(i), float(score)) for i, score in found])
        if endpoint is None:
            return letters
        wanted = normalize_endpoint(endpoint)
        return [d for d in letters if d.url and normalize_endpoint(d.url) == wanted]

    def replay(self, letters: list[DeadLetter], publish: Callable[[DeadLetter], None]) -> int:
        """Republish each letter this caller manages to take out; returns how many."""
        replayed = 0
        for letter in letters:
            if not self._redis.zrem(keys.DEAD_LETTERS, letter.webhook_id):
                continue  # someone else replayed it
            try:
                publish(letter)
            except BaseException:
                self._redis.zadd(keys.DEAD_LETTERS, {letter.webhook_id: letter.failed_at})
                raise
            self._redis.delete(keys.dead_letter(letter.webhook_id))
            replayed += 1
        return replayed

    def _load(self, ids: list[tuple[str, float]]) -> list[DeadLetter]:
        if not ids:
            return []
        raws = get_many(self._redis, [keys.dead_letter(i) for i, _ in ids])
        letters = []
        orphans = []
        for (webhook_id, failed_at), raw in zip(ids, raws, strict=True):
            if raw is None:
                if failed_at < time.time() - ORPHAN_GRACE_S:
                    orphans.append(webhook_id)
                continue
            data = json.loads(raw)
            letters.append(
                DeadLetter(
                    webhook_id=webhook_id,
                    failed_at=failed_at,
                    event=data.get("event"),
                    callback_url=data.get("callback_url"),
                    outcome=data.get("outcome", {}),
                )
            )
        if orphans:
            self._redis.zrem(keys.DEAD_LETTERS, *orphans)
        return letters
