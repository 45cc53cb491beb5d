"""``webhooks conversations …``: manage conversation configurations."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from config.wiring import conversation_store
from webhooks.cli.context import EXIT_NOT_FOUND, Context, print_json
from webhooks.conversations import Conversation
from webhooks.errors import InvalidConfiguration

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
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


def _masked(secret: str | None) -> str | None:
    return None if secret is None else secret[:10] + "…"


def _render(conversation: Conversation, *, show_secret: bool) -> dict[str, Any]:
    data = conversation.model_dump(mode="json", exclude_none=True)
    if not show_secret:
        for key in ("secret", "previous_secret"):
            if key in data:
                data[key] = _masked(data[key])
    return data


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


def run(args: argparse.Namespace, context: Context) -> int:
    store = conversation_store(context.store, context.settings)
    action = args.action
    if action == "set":
        conversation = store.set(args.conversation_id, _config_from(args), secret=args.secret)
        print_json(_render(conversation, show_secret=True))
        return 0
    if action == "list":
        print_json([_render(c, show_secret=False) for c in store.list_all()])
        return 0
    if action == "rotate-secret":
        print_json(_render(store.rotate_secret(args.conversation_id), show_secret=True))
        return 0
    if action == "get":
        found = store.get(args.conversation_id)
        if found is not None:
            print_json(_render(found, show_secret=args.show_secret))
            return 0
    elif action == "delete" and store.delete(args.conversation_id):
        sys.stderr.write(f"deleted {args.conversation_id}\n")
        return 0
    sys.stderr.write(f"error: conversation {args.conversation_id} is not registered\n")
    return EXIT_NOT_FOUND
