"""Each page's data, as template variables: no Flask here, so each is a plain function."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from webhooks.console.chart import latency_bars
from webhooks.console.queries import endpoint_rows, find_deliveries, masked_config
from webhooks.deadletters import DeadLetter, DeadLetters
from webhooks.metrics import Metrics
from webhooks.stats import summarize
from webhooks.store import Store
from webhooks.times import parse_time

if TYPE_CHECKING:
    from webhooks.console.app import ConsoleDeps

__all__ = ["ReplayResult", "dead", "deliveries", "endpoints", "overview", "replay"]

#: The overview's window, as ``webhooks stats`` defaults to.
OVERVIEW_MINUTES = 15


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: list[str]
    gone: list[str]  # already replayed by someone else, or expired
    failed: list[tuple[str, str]]  # (webhook id, error): kept for another try


def overview(client: Store) -> dict[str, Any]:
    summaries = summarize(Metrics(client).last_minutes(OVERVIEW_MINUTES))
    return {
        "minutes": OVERVIEW_MINUTES,
        "summaries": summaries,
        "chart": latency_bars(summaries[0]),
    }


def deliveries(deps: ConsoleDeps, term: str) -> dict[str, Any]:
    found = find_deliveries(term, deps.attempts, deps.outcomes) if term else []
    conversation_ids = sorted({a.conversation_id for d in found for a in d.attempts})
    # Shown as the CLI prints it; plain text, so the template escapes it.
    configs = {
        c: None if (config := masked_config(deps.conversations, c)) is None else _json(config)
        for c in conversation_ids
    }
    return {"term": term, "deliveries": found, "configs": configs}


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def dead(letters: DeadLetters, args: Mapping[str, str]) -> dict[str, Any]:
    endpoint = (args.get("endpoint") or "").strip() or None
    error = (args.get("error") or "").strip() or None
    since_text = (args.get("since") or "").strip()
    since = _parse_time(since_text)
    found = letters.find(endpoint=endpoint, since=since)
    kinds = sorted({str(d.outcome.get("error_kind")) for d in found})
    if error:
        found = [d for d in found if d.outcome.get("error_kind") == error]
    return {
        "letters": found,
        "kinds": kinds,
        "filters": {"endpoint": endpoint or "", "error": error or "", "since": since_text},
        "bad_since": bool(since_text) and since is None,
    }


def _parse_time(text: str) -> float | None:
    """A filter the form left empty or mistyped filters nothing."""
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None


def replay(
    letters: DeadLetters, webhook_ids: list[str], republish: Callable[[DeadLetter], None]
) -> ReplayResult:
    """The CLI's idempotent replay, one letter at a time so one failure stops none."""
    wanted = set(webhook_ids)
    chosen = [d for d in letters.find() if d.webhook_id in wanted]
    replayed: list[str] = []
    failed: list[tuple[str, str]] = []
    for letter in chosen:
        try:
            if letters.replay([letter], republish):
                replayed.append(letter.webhook_id)
        except Exception as exc:  # report each, go on with the rest
            failed.append((letter.webhook_id, str(exc)))
    done = set(replayed) | {i for i, _ in failed}
    return ReplayResult(replayed, sorted(wanted - done), failed)


def endpoints(deps: ConsoleDeps) -> dict[str, Any]:
    return {"rows": endpoint_rows(deps.client, deps.health_policy)}
