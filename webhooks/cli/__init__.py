"""The ``webhooks`` command: conversations, endpoints, delivery logs, dead letters, metrics.

Settings are read once here, at the edge, and passed down. Errors are one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import redis
from pydantic import ValidationError

from config import wiring
from config.settings import Settings
from config.wiring import check_secrets_key
from webhooks.cli import console, conversations, endpoints, listen, operations, send_test
from webhooks.cli.context import EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, Context
from webhooks.errors import InvalidConfiguration

__all__ = ["EXIT_INVALID", "EXIT_NOT_FOUND", "EXIT_UNAVAILABLE", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webhooks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    conversations.add_parser(commands)
    endpoints.add_parser(commands)
    console.add_parser(commands)
    send_test.add_parser(commands)
    listen.add_parser(commands)
    operations.add_parsers(commands)
    return parser


#: Each subcommand's module; the rest are in :mod:`webhooks.cli.operations`.
_RUNS: dict[str, Callable[[argparse.Namespace, Context], int]] = {
    "conversations": conversations.run,
    "console": console.run,
    "endpoints": endpoints.run,
    "send-test": send_test.run,
    "listen": listen.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"error: invalid WEBHOOKS_ settings: {exc}\n")
        return EXIT_INVALID
    client = wiring.store_client(settings)
    context = Context(settings=settings, store=client)
    try:
        if not (args.command == "conversations" and args.action == "encrypt-secrets"):
            check_secrets_key(client, settings)
        return _RUNS.get(args.command, operations.run)(args, context)
    except InvalidConfiguration as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_INVALID
    except redis.RedisError as exc:
        sys.stderr.write(f"error: cannot reach Redis at WEBHOOKS_REDIS_URL: {exc}\n")
        return EXIT_UNAVAILABLE
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
