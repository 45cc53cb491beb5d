"""Every Redis key this package writes, in one place, under one prefix.

Celery's own broker keys (``webhooks`` queue list, ``unacked`` hash) are
kombu's business and are not listed here.
"""

from __future__ import annotations

__all__ = [
    "CONVERSATIONS",
    "DEAD_LETTERS",
    "PREFIX",
    "conversation",
    "dead_letter",
    "delivery",
]

PREFIX = "webhooks"

#: Set of registered conversation ids.
CONVERSATIONS = f"{PREFIX}:conversations"
#: Sorted set of dead-lettered webhook ids, scored by failure time (epoch s).
DEAD_LETTERS = f"{PREFIX}:dead"


def conversation(conversation_id: str) -> str:
    """JSON: the conversation's configuration and signing secrets."""
    return f"{PREFIX}:conversation:{conversation_id}"


def delivery(webhook_id: str) -> str:
    """JSON: the latest outcome of one delivery; expires after the retention."""
    return f"{PREFIX}:delivery:{webhook_id}"


def dead_letter(webhook_id: str) -> str:
    """JSON: a failed delivery with its payload and last error, kept until replayed."""
    return f"{PREFIX}:dead:{webhook_id}"
