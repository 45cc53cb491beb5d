"""``webhooks log | dead | stats | metrics-server``: what operators and support use."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from config import wiring
from webhooks.attempts import AttemptLog, AttemptRecord
from webhooks.cli.context import (
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    Context,
    print_json,
)
from webhooks.cli.terminal import printable
from webhooks.deadletters import DeadLetter, DeadLetters
from webhooks.metrics import Metrics
from webhooks.metrics_http import serve
from webhooks.ordering import OrderedLines, ordered_line_gauges
from webhooks.prometheus import render
from webhooks.queues import dead_letter_count, queue_depths
from webhooks.stats import format_table, summarize
from webhooks.times import parse_time

__all__ = ["add_parsers", "run"]


def add_parsers(commands: Any) -> None:
    log = commands.add_parser("log", help="every attempt of a message or conversation")
    which = log.add_mutually_exclusive_group(required=True)
    which.add_argument("--message-id")
    which.add_argument("--conversation-id")
    log.add_argument("--json", action="store_true", help="JSON instead of a table")

    dead = commands.add_parser("dead", help="deliveries that used up their retries")
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list dead letters, oldest first")
    listing.add_argument("--endpoint", help="only this callback URL (normalized)")
    listing.add_argument("--since", type=_parse_time, help="ISO 8601 time or epoch seconds")
    listing.add_argument("--json", action="store_true")
    replay = actions.add_parser("replay", help="re-enqueue with a fresh retry budget")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("--message-id")
    target.add_argument("--endpoint")
    target.add_argument("--all", action="store_true")

    stats = commands.add_parser("stats", help="success rate, latency, retries, errors")
    stats.add_argument("--minutes", type=int, default=15)
    stats.add_argument("--json", action="store_true")

    server = commands.add_parser("metrics-server", help="serve Prometheus /metrics")
    server.add_argument("--host", help="listen address (default: WEBHOOKS_METRICS_BIND)")
    server.add_argument("--port", type=int, default=9808)


def run(args: argparse.Namespace, context: Context) -> int:
    if args.command == "log":
        return _log(args, context)
    if args.command == "dead":
        return _dead(args, context)
    if args.command == "stats":
        return _stats(args, context)
    return _metrics_server(args, context)


def _parse_time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _log(args: argparse.Namespace, context: Context) -> int:
    attempts = AttemptLog(context.store, retention_s=context.settings.log_retention_s)
    if args.message_id:
        records = attempts.for_message(args.message_id)
    else:
        records = attempts.for_conversation(args.conversation_id)
    if not records:
        sys.stderr.write("error: no attempts recorded (or older than the retention)\n")
        return EXIT_NOT_FOUND
    if args.json:
        print_json([_record_dict(r) for r in records])
        return 0
    sys.stdout.write(_log_table(records) + "\n")
    return 0


def _record_dict(record: AttemptRecord) -> dict[str, Any]:
    from dataclasses import asdict  # noqa: PLC0415 - only the JSON path needs it

    return {**asdict(record), "started_at": _when(record.started_at)}


def _log_table(records: list[AttemptRecord]) -> str:
    # Whole worker names: truncating "celery@host" would cut off the host.
    width = max([20, *(len(r.worker) for r in records)])
    header = (
        f"{'started (UTC)':<24} {'message':<36} {'webhook-id':<36} {'#':>2} {'outcome':<17} "
        f"{'status':>6} {'ms':>7}  {'queue':<9} {'worker':<{width}} endpoint / error / response"
    )
    lines = [header, "-" * len(header)]
    for r in records:
        detail = r.endpoint
        if r.error:
            detail += f"  {r.error[:120]}"
        if r.response_excerpt:
            detail += f"  body: {r.response_excerpt[:80]!r}"
        line = (
            f"{_when(r.started_at):<24} {r.message_id:<36} {r.webhook_id:<36} {r.attempt:>2} "
            f"{r.outcome:<17} {r.status or '-':>6} {r.duration_s * 1000:>7.0f}  "
            f"{r.queue:<9} {r.worker:<{width}} {detail}"
        )
        lines.append(printable(line))  # the error and body are the receiver's words
    return "\n".join(lines)


def _dead(args: argparse.Namespace, context: Context) -> int:
    letters = DeadLetters(context.store)
    if args.action == "list":
        found = letters.find(endpoint=args.endpoint, since=args.since)
        if args.json:
            print_json([_letter_dict(d) for d in found])
        else:
            for d in found:
                line = (
                    f"{_when(d.failed_at)}  {d.webhook_id}  message {d.message_id}  "
                    f"{d.url}  {d.outcome.get('error_kind')}: {d.outcome.get('error')}"
                )
                sys.stdout.write(printable(line) + "\n")
            sys.stderr.write(f"{len(found)} dead letter(s)\n")
        return 0
    if args.message_id:
        chosen = [d for d in letters.find() if d.message_id == args.message_id]
    else:
        chosen = letters.find(endpoint=args.endpoint)
    if not chosen:
        sys.stderr.write("nothing to replay\n")
        return EXIT_NOT_FOUND if args.message_id else 0
    replayed, failed = 0, 0
    for letter in chosen:
        try:
            replayed += letters.replay([letter], _republish)
        except Exception as exc:  # report each, go on with the rest
            failed += 1
            sys.stderr.write(
                printable(f"error: {letter.webhook_id} not replayed, kept: {exc}") + "\n"
            )
    sys.stderr.write(f"replayed {replayed} delivery(ies) with their original webhook-id\n")
    return EXIT_UNAVAILABLE if failed else 0


def _letter_dict(letter: DeadLetter) -> dict[str, Any]:
    return {
        "webhook_id": letter.webhook_id,
        "failed_at": _when(letter.failed_at),
        "message_id": letter.message_id,
        "url": letter.url,
        "outcome": letter.outcome,
        "event": letter.event,
    }


def _republish(letter: DeadLetter) -> None:
    # Imported here: only a replay needs the Celery app and its broker.
    from tasks.replay import republish  # noqa: PLC0415

    republish(letter)


def _stats(args: argparse.Namespace, context: Context) -> int:
    if args.minutes < 1:
        sys.stderr.write("error: --minutes must be at least 1\n")
        return EXIT_INVALID
    summaries = summarize(Metrics(context.store).last_minutes(args.minutes))
    if args.json:
        print_json({"minutes": args.minutes, "endpoints": [s.as_dict() for s in summaries]})
    else:
        table = format_table(summaries, args.minutes)
        sys.stdout.write("\n".join(printable(row) for row in table.split("\n")) + "\n")
    return 0


def _metrics_server(args: argparse.Namespace, context: Context) -> int:
    settings = context.settings
    broker = wiring.broker_client(settings)
    metrics = Metrics(context.store)

    def scrape() -> str:
        gauges: dict[str, dict[str, float]] = {
            "queue_depth": {k: float(v) for k, v in queue_depths(broker, context.store).items()},
            "dead_letters": {"all": float(dead_letter_count(context.store))},
            **ordered_line_gauges(OrderedLines(context.store)),
        }
        return render(metrics.totals(), gauges)

    host = args.host or settings.metrics_bind
    server = serve(
        host,
        args.port,
        scrape,
        auth=settings.metrics_credentials,
        timeout_s=settings.metrics_timeout_s,
    )
    guarded = "with auth" if settings.metrics_credentials else "without auth"
    sys.stderr.write(f"serving Prometheus metrics on http://{host}:{args.port}/metrics {guarded}\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
