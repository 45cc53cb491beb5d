"""``webhooks endpoints``: every known endpoint, its health, queue and counters."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from webhooks import keys
from webhooks.cli.context import Context, print_json
from webhooks.health import HealthStore
from webhooks.queues import QUEUE, SLOW_QUEUE

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    endpoints = commands.add_parser(
        "endpoints", help="known endpoints: health, current queue, counters"
    )
    endpoints.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, context: Context) -> int:
    health = HealthStore(context.store, context.settings.health_policy).all()
    pipe = context.store.pipeline(transaction=False)
    for h in health:
        ek = keys.endpoint(h.endpoint)
        pipe.zcard(ek.window)
        pipe.zcard(ek.inflight)
        pipe.zcard(ek.parked)
    counts = pipe.execute()
    rows = [
        {
            "endpoint": h.endpoint,
            "queue": SLOW_QUEUE if h.slow else QUEUE,
            "mean_ms": round(h.ewma_ms, 1),
            "recent": h.recent,
            "attempts": h.attempts,
            "in_window": counts[3 * i],
            "in_flight": counts[3 * i + 1],
            "parked": counts[3 * i + 2],
        }
        for i, h in enumerate(health)
    ]
    if args.json:
        print_json(rows)
        return 0
    header = (
        f"{'endpoint':<50} {'queue':<14} {'mean ms':>8} {'recent':<7} {'attempts':>8} "
        f"{'window':>6} {'flight':>6} {'parked':>6}"
    )
    lines = [header, "-" * len(header)]
    lines += [
        f"{r['endpoint']:<50} {r['queue']:<14} {r['mean_ms']:>8} {r['recent']:<7} "
        f"{r['attempts']:>8} {r['in_window']:>6} {r['in_flight']:>6} {r['parked']:>6}"
        for r in rows
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
