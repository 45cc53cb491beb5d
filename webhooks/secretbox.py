"""Signing secrets sealed at rest: Fernet under one or more keys.

Whoever reads Redis (a backup, a replica, a ``MONITOR``) must not get
secrets that forge webhooks. Stored values are ``enc:v1:`` plus a Fernet
token (AES-128-CBC and HMAC-SHA256, from ``cryptography``). Several keys
allow key rotation: the first seals, every one opens, and
:meth:`SecretBox.reseal` moves a value to the first key. A value without the
prefix is a plain secret from before encryption, read as it is until the
migration (``webhooks conversations encrypt-secrets``) seals it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from webhooks.errors import SecretsLocked

__all__ = ["PREFIX", "SecretBox", "is_sealed", "new_key", "open_secret", "parse_keys"]

PREFIX = "enc:v1:"


def new_key() -> str:
    """A fresh key for ``WEBHOOKS_SECRETS_KEY``."""
    return Fernet.generate_key().decode()


def parse_keys(text: str) -> tuple[str, ...]:
    """Comma-separated keys, first the one that seals; checked, never echoed."""
    found = tuple(k.strip() for k in text.split(",") if k.strip())
    for position, key in enumerate(found, 1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ValueError(
                f"key {position} is not a Fernet key (32 bytes, url-safe base64)"
            ) from None
    return found


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


class SecretBox:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._first = Fernet(keys[0])
        self._all = MultiFernet([Fernet(k) for k in keys])

    def seal(self, plain: str) -> str:
        return PREFIX + self._all.encrypt(plain.encode()).decode()

    def open(self, stored: str) -> str:
        """The plain secret; a value stored before encryption passes through."""
        if not is_sealed(stored):
            return stored
        try:
            return self._all.decrypt(stored.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretsLocked(
                "a stored secret was encrypted with a key that WEBHOOKS_SECRETS_KEY does not "
                "hold (keep the old key after the new one until encrypt-secrets has run)"
            ) from None

    def reseal(self, stored: str) -> str:
        """``stored`` sealed under the first key; unchanged if it already is."""
        if not is_sealed(stored):
            return self.seal(stored)
        token = stored.removeprefix(PREFIX).encode()
        try:
            self._first.decrypt(token)
        except InvalidToken:
            self.open(stored)  # raises SecretsLocked if no key opens it
            return PREFIX + self._all.rotate(token).decode()
        return stored


def open_secret(stored: str, box: SecretBox | None) -> str:
    """The plain secret, or :class:`SecretsLocked` if it is sealed and no box was given."""
    if box is None:
        if is_sealed(stored):
            raise SecretsLocked(
                "stored signing secrets are encrypted and WEBHOOKS_SECRETS_KEY is not set"
            )
        return stored
    return box.open(stored)
