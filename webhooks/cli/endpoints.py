"""``webhooks endpoints``: every known endpoint, its health, queue and counters."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from webhooks.cli.context import Context, print_json
from webhooks.console.queries import endpoint_rows

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    endpoints = commands.add_parser(
        "endpoints", help="known endpoints: health, current queue, counters"
    )
    endpoints.add_argument("--json", action="store_true")


def run(args: argparse.Namespace, context: Context) -> int:
    rows = [r.as_dict() for r in endpoint_rows(context.store, context.settings.health_policy)]
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
