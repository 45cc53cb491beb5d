"""``webhooks send-test CONVERSATION_ID [--wait]``: fire the guide's sample event for real.

The event goes through the real pipeline (``deliver_webhook.delay``: signing,
limits, retries, dead letters), marked ``"test": true`` in its metadata so a
receiver can tell it apart. With ``--wait`` the command reports the outcome,
and its exit code says whether it was delivered, as ``stripe trigger`` does.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from config.wiring import conversation_store
from webhooks.cli.context import EXIT_NOT_FOUND, Context
from webhooks.cli.terminal import printable
from webhooks.outcomes import Outcome, OutcomeStore

__all__ = ["EXIT_NOT_DELIVERED", "EXIT_NO_OUTCOME", "add_parser", "run", "sample_event"]

#: The delivery failed for good (dead-lettered, or refused).
EXIT_NOT_DELIVERED = 4
#: No outcome within --timeout: still retrying, or no worker is running.
EXIT_NO_OUTCOME = 5


def add_parser(commands: Any) -> None:
    send = commands.add_parser(
        "send-test", help="deliver the guide's sample event (marked as a test) to a conversation"
    )
    send.add_argument("conversation_id")
    send.add_argument("--wait", action="store_true", help="wait for the outcome and report it")
    send.add_argument(
        "--timeout", type=float, default=120.0, help="seconds --wait waits (default 120)"
    )


def sample_event(conversation_id: str) -> dict[str, Any]:
    """The README's sample payload, fresh ids and times, flagged as a test."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "conversation_id": conversation_id,
        "data": {
            "id": str(uuid.uuid4()),
            "content": "Message content",
            "content_type": "TEXT",
            "type": "USER_INPUT",
            "channel": "API",
            "status": "RECEIVED",
            "created_by": "user123",
            "updated_by": "user123",
            "created_at": now,
            "updated_at": now,
            "metadata": {"test": True, "sent_by": "webhooks send-test"},
        },
        "timestamp": now,
    }


def run(args: argparse.Namespace, context: Context) -> int:
    if conversation_store(context.store, context.settings).get(args.conversation_id) is None:
        sys.stderr.write(f"error: conversation {args.conversation_id} is not registered\n")
        return EXIT_NOT_FOUND
    # Imported here: only this command needs the Celery app and its broker.
    from tasks import deliver_webhook  # noqa: PLC0415

    event = sample_event(args.conversation_id)
    webhook_id = str(deliver_webhook.delay(event).id)
    sys.stdout.write(f"sent test event: webhook-id {webhook_id}, message {event['data']['id']}\n")
    if not args.wait:
        return 0
    outcomes = OutcomeStore(context.store, retention_s=context.settings.outcome_retention_s)
    outcome = _wait(outcomes, webhook_id, args.timeout)
    if outcome is None:
        sys.stdout.write(
            f"no outcome within {args.timeout:g} s: still retrying, or no worker is running "
            f"(webhooks log --message-id {event['data']['id']})\n"
        )
        return EXIT_NO_OUTCOME
    sys.stdout.write(printable(_report(outcome)) + "\n")
    return 0 if outcome.state == "delivered" else EXIT_NOT_DELIVERED


def _wait(outcomes: OutcomeStore, webhook_id: str, timeout_s: float) -> Outcome | None:
    deadline = time.monotonic() + timeout_s
    while (outcome := outcomes.get(webhook_id)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return outcome


def _report(outcome: Outcome) -> str:
    duration = "-" if outcome.duration_s is None else f"{outcome.duration_s * 1000:.0f} ms"
    error = f"{outcome.error_kind}: {outcome.error}" if outcome.error_kind else "-"
    return (
        f"{outcome.state}: status {outcome.status or '-'}, duration {duration}, "
        f"attempts {outcome.attempts}, error {error}"
    )
