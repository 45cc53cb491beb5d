"""``webhooks conversations …``: manage conversation configurations."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from config.wiring import conversation_store
from webhooks.cli.context import EXIT_NOT_FOUND, Context, print_json
from webhooks.cli.terminal import printable
from webhooks.conversations import Conversation, ConversationStore
from webhooks.errors import InvalidConfiguration
from webhooks.ordering import OrderedLines

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
    given = set_.add_mutually_exclusive_group()
    given.add_argument(
        "--secret-file",
        type=Path,
        help="read the whsec_ signing secret from this file (default: keep or generate)",
    )
    given.add_argument(
        "--secret-stdin", action="store_true", help="read the whsec_ signing secret from stdin"
    )
    given.add_argument(
        "--secret", help="the secret itself: visible in ps and shell history, prefer the above"
    )
    set_.add_argument("--now", action="store_true", help=_NOW_HELP)

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
    rotate.add_argument("--now", action="store_true", help=_NOW_HELP)

    lines = actions.add_parser(
        "lines", help="ordered conversations whose later events wait on an earlier one"
    )
    lines.add_argument("--json", action="store_true", help="machine-readable output")

    actions.add_parser(
        "encrypt-secrets",
        help="seal plain secrets with WEBHOOKS_SECRETS_KEY, move sealed ones to its first key",
    )


_NOW_HELP = "old secrets stop signing at once (a leaked secret); default: they overlap"


def _secret_from(args: argparse.Namespace) -> str | None:
    """The secret given by --secret-file, --secret-stdin or --secret, if any."""
    if args.secret_file is not None:
        try:
            text = Path(args.secret_file).read_text()
        except OSError as exc:
            raise InvalidConfiguration(f"cannot read {args.secret_file}: {exc.strerror}") from exc
    elif args.secret_stdin:
        text = sys.stdin.read()
    else:
        return None if args.secret is None else str(args.secret)
    secret = text.strip()
    if not secret:
        raise InvalidConfiguration("the secret given is empty")
    return secret


def _masked(secret: str | None) -> str | None:
    return None if secret is None else secret[:10] + "…"


def _render(conversation: Conversation, *, show_secret: bool) -> dict[str, Any]:
    data = conversation.model_dump(mode="json", exclude_none=True)
    if not show_secret:
        data["secret"] = _masked(data["secret"])
        for previous in data.get("previous_secrets", []):
            previous["secret"] = _masked(previous["secret"])
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
        conversation = store.set(
            args.conversation_id, _config_from(args), secret=_secret_from(args), at_once=args.now
        )
        print_json(_render(conversation, show_secret=True))
        return 0
    listings = {
        "lines": lambda: _lines(OrderedLines(context.store), as_json=args.json),
        "encrypt-secrets": lambda: _encrypt_secrets(store),
        "list": lambda: _list(store),
    }
    if action in listings:
        return listings[action]()
    if action == "rotate-secret":
        rotated = store.rotate_secret(args.conversation_id, at_once=args.now)
        print_json(_render(rotated, show_secret=True))
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


def _encrypt_secrets(store: ConversationStore) -> int:
    rewritten, seen = store.encrypt_secrets()
    sys.stderr.write(
        f"{rewritten} of {seen} conversation(s) rewritten; every stored secret is now "
        "sealed with the first key of WEBHOOKS_SECRETS_KEY\n"
    )
    return 0


def _list(store: ConversationStore) -> int:
    print_json([_render(c, show_secret=False) for c in store.list_all()])
    return 0


def _lines(lines: OrderedLines, *, as_json: bool) -> int:
    blocked = lines.blocked()
    if as_json:
        print_json([asdict(b) for b in blocked])
        return 0
    if not blocked:
        sys.stdout.write("no ordered line is blocked\n")
        return 0
    sys.stdout.write(f"{'conversation':36}  {'waits on':>8}  {'behind':>6}  blocked for\n")
    for b in blocked:
        sys.stdout.write(
            f"{printable(b.conversation_id):36}  {b.next_sequence:>8}  {b.waiting:>6}  "
            f"{b.blocked_s:.0f} s\n"
        )
    return 0
