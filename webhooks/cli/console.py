"""``webhooks console``: serve the web console (pages in :mod:`webhooks.console`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from config import wiring
from webhooks.cli.context import EXIT_INVALID, Context

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    console = commands.add_parser(
        "console", help="web console: find deliveries, dead letters, endpoints, overview"
    )
    console.add_argument("--host", help="listen address (default: WEBHOOKS_CONSOLE_BIND)")
    console.add_argument("--port", type=int, default=8088)


def run(args: argparse.Namespace, context: Context) -> int:
    settings = context.settings
    if not settings.console_users:
        # As Flower does: support data and replay are never served without a login.
        sys.stderr.write(
            "error: set WEBHOOKS_CONSOLE_AUTH (e.g. 'viewer:ann:PASSWORD,operator:bob:PASSWORD'); "
            "the console does not start without credentials\n"
        )
        return EXIT_INVALID
    from webhooks.console.server import ConsoleServer  # noqa: PLC0415 - only this command

    host = args.host or settings.console_bind
    server = ConsoleServer(wiring.console(settings, context.store), host, args.port)
    sys.stderr.write(f"serving the webhooks console on {server.url}/\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
