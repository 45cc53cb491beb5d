"""Conversation records' secrets in Redis, sealed: the canary and the migration.

:mod:`webhooks.secretbox` seals one value; this module applies it to the
stored records. A sealed canary is written with the first sealed secret, so
a process can tell at start, with one GET, whether secrets are encrypted and
whether its keys open them (:func:`check_key`), instead of failing on the
first delivery. :func:`encrypt_all` is the migration for plain secrets and
the second half of a key rotation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from webhooks import keys
from webhooks.secretbox import SecretBox, open_secret
from webhooks.store import Store, StorePipeline

__all__ = ["check_key", "encrypt_all", "mark_sealed", "open_record", "seal_record"]

#: What the canary holds, sealed.
CANARY = "webhooks secrets canary"


def _each_secret(data: dict[str, Any], change: Callable[[str], str]) -> None:
    """Apply ``change`` to every secret of a stored record, in place."""
    for holder in (data, *data.get("previous_secrets", ())):
        if holder.get("secret"):
            holder["secret"] = change(holder["secret"])
    if data.get("previous_secret"):  # records from before previous_secrets
        data["previous_secret"] = change(data["previous_secret"])


def seal_record(data: dict[str, Any], box: SecretBox) -> None:
    _each_secret(data, box.seal)


def open_record(data: dict[str, Any], box: SecretBox | None) -> None:
    """Open every secret; :class:`SecretsLocked` if one is sealed and unopenable."""
    _each_secret(data, lambda stored: open_secret(stored, box))


def mark_sealed(pipe: StorePipeline, box: SecretBox) -> None:
    """Queue the canary on ``pipe`` (kept if one exists): secrets are sealed now."""
    pipe.set(keys.SECRETS_CANARY, box.seal(CANARY), nx=True)


def check_key(client: Store, box: SecretBox | None) -> None:
    """Raise :class:`SecretsLocked` if secrets are sealed and ``box`` cannot open them."""
    canary = client.get(keys.SECRETS_CANARY)
    if canary is not None:
        open_secret(str(canary), box)


def encrypt_all(client: Store, box: SecretBox) -> tuple[int, int]:
    """Seal every plain secret and move sealed ones to the first key.

    Idempotent: a value already sealed under the first key is left as it is,
    so a second run writes nothing. Each record is rewritten in a WATCH
    transaction, so a concurrent ``set`` is not overwritten. Gives
    (conversations rewritten, conversations seen).
    """
    found = client.get(keys.SECRETS_CANARY)
    client.set(keys.SECRETS_CANARY, box.reseal(CANARY if found is None else str(found)))
    ids = sorted(str(i) for i in client.smembers(keys.CONVERSATIONS))
    return sum(_reseal(client, keys.conversation(cid), box) for cid in ids), len(ids)


def _reseal(client: Store, key: str, box: SecretBox) -> int:
    changed = [0]

    def reseal(pipe: StorePipeline) -> None:
        changed[0] = 0
        raw = pipe.get(key)
        if raw is None:
            return
        data = json.loads(raw)
        before = json.dumps(data, sort_keys=True)
        _each_secret(data, box.reseal)
        if json.dumps(data, sort_keys=True) != before:
            pipe.multi()
            pipe.set(key, json.dumps(data))
            changed[0] = 1

    # transaction() WATCHes key and runs reseal again if it changed meanwhile
    client.transaction(reseal, key)
    return changed[0]
