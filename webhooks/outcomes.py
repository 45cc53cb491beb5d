"""Where each delivery ended: delivered, or failed and kept as a dead letter.

Every event handed to ``deliver_webhook`` ends in one of these two records,
which is what lets support answer "did message X arrive?" and lets an
operator replay what failed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from typing import Any

from webhooks import keys
from webhooks.store import Store, StorePipeline

__all__ = ["Outcome", "OutcomeStore"]


@dataclass(frozen=True, slots=True)
class Outcome:
    webhook_id: str
    state: str  # "delivered" or "failed"
    conversation_id: str | None
    message_id: str | None
    url: str | None
    attempts: int
    status: int | None = None
    error_kind: str | None = None
    error: str | None = None
    duration_s: float | None = None
    finished_at: float = field(default_factory=time.time)
    sequence: int | None = None  # its place in an ordered conversation

    def to_dict(self) -> dict[str, Any]:
        """Shallow, as every field is a plain value: asdict() deep-copies each."""
        return {name: getattr(self, name) for name in _OUTCOME_FIELDS}

    @classmethod
    def from_json(cls, raw: str) -> Outcome:
        return cls(**json.loads(raw))


_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))


#: Dead letters are kept longer than outcomes by default: a replay may come
#: days after the incident that caused them.
DEFAULT_DEAD_LETTER_RETENTION_S = 30 * 24 * 3600


class OutcomeStore:
    def __init__(
        self,
        client: Store,
        *,
        retention_s: int,
        dead_letter_retention_s: int = DEFAULT_DEAD_LETTER_RETENTION_S,
    ) -> None:
        self._redis = client
        self._retention_s = retention_s
        self._dead_letter_retention_s = dead_letter_retention_s

    def delivered(self, outcome: Outcome, *, pipe: StorePipeline | None = None) -> None:
        """Record a delivery; with ``pipe``, queue the write for its caller."""
        (pipe if pipe is not None else self._redis).set(
            keys.delivery(outcome.webhook_id), json.dumps(outcome.to_dict()), ex=self._retention_s
        )

    def failed(self, outcome: Outcome, *, event: Any, callback_url: str | None) -> None:
        """Record the failure and keep the payload as a dead letter.

        The index entry is written first, then the records (on a Redis
        Cluster they live in other slots, so no transaction spans them): a
        crash in between leaves an entry without a letter, which readers skip
        and :meth:`DeadLetters.find` removes; never a letter nobody can list.
        Every write is idempotent, so the caller may simply try again.

        Both records expire (Redis runs ``noeviction``: what never expires
        fills it), and the index forgets letters past their retention as new
        ones come.
        """
        letter = {"outcome": outcome.to_dict(), "event": event, "callback_url": callback_url}
        kept_s = self._dead_letter_retention_s
        index = self._redis.pipeline(transaction=False)
        index.zadd(keys.DEAD_LETTERS, {outcome.webhook_id: outcome.finished_at})
        index.zremrangebyscore(keys.DEAD_LETTERS, "-inf", f"({outcome.finished_at - kept_s}")
        index.execute()
        records = self._redis.pipeline(transaction=False)
        records.set(
            keys.delivery(outcome.webhook_id),
            json.dumps(outcome.to_dict()),
            ex=max(self._retention_s, kept_s),
        )
        records.set(keys.dead_letter(outcome.webhook_id), json.dumps(letter), ex=kept_s)
        records.execute()

    def get(self, webhook_id: str) -> Outcome | None:
        raw = self._redis.get(keys.delivery(webhook_id))
        return None if raw is None else Outcome.from_json(str(raw))

    def dead_letter(self, webhook_id: str) -> dict[str, Any] | None:
        raw = self._redis.get(keys.dead_letter(webhook_id))
        return None if raw is None else dict(json.loads(raw))

    def dead_letter_ids(self) -> list[str]:
        return [str(i) for i in self._redis.zrange(keys.DEAD_LETTERS, 0, -1)]
