"""Republishing a dead letter: what ``webhooks dead replay`` and the console's replay do."""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.delivery import deliver_webhook
from webhooks.deadletters import DeadLetter
from webhooks.progress import Delivery

__all__ = ["republish"]


def republish(letter: DeadLetter) -> None:
    """Enqueue ``letter`` again with its original webhook-id and a fresh retry budget."""
    delivery = Delivery(letter.event, letter.webhook_id, callback_url=letter.callback_url)
    deliver_webhook.apply_async(
        kwargs=delivery.task_kwargs(),
        task_id=f"{letter.webhook_id}-replay-{int(datetime.now(UTC).timestamp())}",
    )
