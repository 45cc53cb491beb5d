"""The ``webhooks`` command: manage conversation configurations.

Settings are read once here, at the edge, and passed down. Errors are one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from config.settings import Settings
from webhooks.conversations import Conversation, ConversationStore
from webhooks.delivery import conversation_store
from webhooks.errors import InvalidConfiguration
from webhooks.store import connect

__all__ = ["main"]

EXIT_NOT_FOUND = 1
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webhooks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    conv = commands.add_parser("conversations", help="conversation webhook configurations")
    actions = conv.add_subparsers(dest="action", required=True)

    set_ = actions.add_parser("set", help="register or update a conversation's callback")
    set_.add_argument("conversation_id")
    source = set_.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config-file",
        type=Path,
        help='JSON in the guide\'s shape: {"channel", "usecase", "config": {"callback_url"}}',
    )
    source.add_argument("--callback-url", help="just the HTTPS callback URL")
    set_.add_argument("--secret", help="a whsec_ signing secret (default: keep or generate)")

    get = actions.add_parser("get", help="show one configuration")
    get.add_argument("conversation_id")
    get.add_argument("--show-secret", action="store_true", help="print secrets unmasked")

    actions.add_parser("list", help="list all configurations (secrets masked)")

    delete = actions.add_parser("delete", help="remove a configuration")
    delete.add_argument("conversation_id")

    rotate = actions.add_parser(
        "rotate-secret", help="new secret; the old one keeps signing for the overlap period"
    )
    rotate.add_argument("conversation_id")
    return parser


def _masked(secret: str | None) -> str | None:
    return None if secret is None else secret[:10] + "…"


def _render(conversation: Conversation, *, show_secret: bool) -> dict[str, Any]:
    data = conversation.model_dump(mode="json", exclude_none=True)
    if not show_secret:
        for key in ("secret", "previous_secret"):
            if key in data:
                data[key] = _masked(data[key])
    return data


def _print(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _config_from(args: argparse.Namespace) -> dict[str, Any]:
    if args.callback_url is not None:
        return {"config": {"callback_url": args.callback_url}}
    try:
        loaded = json.loads(Path(args.config_file).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidConfiguration(f"cannot read {args.config_file}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise InvalidConfiguration(f"{args.config_file} must hold a JSON object")
    return loaded


def _run(args: argparse.Namespace, store: ConversationStore) -> int:
    action = args.action
    if action == "set":
        conversation = store.set(args.conversation_id, _config_from(args), secret=args.secret)
        _print(_render(conversation, show_secret=True))
        return 0
    if action == "list":
        _print([_render(c, show_secret=False) for c in store.list_all()])
        return 0
    if action == "rotate-secret":
        _print(_render(store.rotate_secret(args.conversation_id), show_secret=True))
        return 0
    if action == "get":
        found = store.get(args.conversation_id)
        if found is not None:
            _print(_render(found, show_secret=args.show_secret))
            return 0
    elif action == "delete" and store.delete(args.conversation_id):
        sys.stderr.write(f"deleted {args.conversation_id}\n")
        return 0
    sys.stderr.write(f"error: conversation {args.conversation_id} is not registered\n")
    return EXIT_NOT_FOUND


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"error: invalid WEBHOOKS_ settings: {exc}\n")
        return EXIT_INVALID
    client = connect(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_s)
    try:
        return _run(args, conversation_store(client, settings))
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
