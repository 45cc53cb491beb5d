"""What the console's pages show, read from the same Redis data as the CLI.

Plain functions over the stores the CLI uses (attempt log, outcomes, dead
letters, health, metrics), so a page and its command never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from webhooks import keys
from webhooks.attempts import AttemptLog, AttemptRecord
from webhooks.conversations import Conversation, ConversationStore
from webhooks.health import HealthPolicy, HealthStore
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.queues import QUEUE, SLOW_QUEUE
from webhooks.ratelimit import usage
from webhooks.store import Store, redis_now_ms

__all__ = ["DeliveryView", "EndpointRow", "endpoint_rows", "find_deliveries", "masked_config"]


@dataclass
class DeliveryView:
    """One delivery (one webhook-id): its attempts oldest first, and how it ended."""

    webhook_id: str
    attempts: list[AttemptRecord] = field(default_factory=list)
    outcome: Outcome | None = None
    dead: bool = False


@dataclass(frozen=True, slots=True)
class EndpointRow:
    endpoint: str
    queue: str
    mean_ms: float
    recent: str
    attempts: int
    in_window: int
    in_flight: int
    parked: int
    limits: str  # "count window_ms max_concurrency" of the latest park, or ""
    hold_until_ms: int | None  # no attempt before this (Retry-After), if in the future

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def find_deliveries(term: str, attempts: AttemptLog, outcomes: OutcomeStore) -> list[DeliveryView]:
    """Deliveries matching a conversation id, a message id or a webhook-id."""
    records = attempts.for_message(term) or attempts.for_conversation(term)
    if not records:
        outcome = outcomes.get(term)
        message_id = outcome.message_id if outcome else _dead_message_id(term, outcomes)
        if message_id:
            records = [r for r in attempts.for_message(message_id) if r.webhook_id == term]
    views: dict[str, DeliveryView] = {}
    for record in records:
        views.setdefault(record.webhook_id, DeliveryView(record.webhook_id)).attempts.append(record)
    dead = set(outcomes.dead_letter_ids()) if views else set()
    for view in views.values():
        view.outcome = outcomes.get(view.webhook_id)
        view.dead = view.webhook_id in dead
    return list(views.values())


def _dead_message_id(webhook_id: str, outcomes: OutcomeStore) -> str | None:
    letter = outcomes.dead_letter(webhook_id)
    value = (letter or {}).get("outcome", {}).get("message_id")
    return None if value is None else str(value)


def masked_config(store: ConversationStore, conversation_id: str) -> dict[str, Any] | None:
    """The conversation's configuration as ``conversations get`` shows it: secrets masked."""
    found = store.get(conversation_id)
    return None if found is None else mask(found)


def mask(conversation: Conversation) -> dict[str, Any]:
    data = conversation.model_dump(mode="json", exclude_none=True)
    data["secret"] = _masked(data["secret"])
    for previous in data.get("previous_secrets", []):
        previous["secret"] = _masked(previous["secret"])
    return data


def _masked(secret: str | None) -> str | None:
    return None if secret is None else secret[:10] + "…"


def endpoint_rows(client: Store, policy: HealthPolicy) -> list[EndpointRow]:
    """Every known endpoint: health, queue, window, in flight, parked, Retry-After hold."""
    health = HealthStore(client, policy).all()
    now_ms = redis_now_ms(client)
    used = usage(client, [h.endpoint for h in health], now_ms=now_ms)
    pipe = client.pipeline(transaction=False)
    for h in health:
        ek = keys.endpoint(h.endpoint)
        pipe.zcard(ek.parked)
        pipe.get(ek.limits)
        pipe.get(ek.hold)
    replies: Sequence[Any] = pipe.execute()
    rows = []
    for i, (h, now_used) in enumerate(zip(health, used, strict=True)):
        parked, limits, hold = replies[3 * i : 3 * i + 3]
        hold_ms = int(float(hold)) if hold else None
        rows.append(
            EndpointRow(
                endpoint=h.endpoint,
                queue=SLOW_QUEUE if h.slow else QUEUE,
                mean_ms=round(h.ewma_ms, 1),
                recent=h.recent,
                attempts=h.attempts,
                in_window=now_used.in_window,
                in_flight=now_used.in_flight,
                parked=int(parked),
                limits=str(limits or ""),
                hold_until_ms=hold_ms if hold_ms and hold_ms > now_ms else None,
            )
        )
    return rows
