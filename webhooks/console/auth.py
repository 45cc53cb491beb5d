"""Who may use the console: basic-auth users with a role, and CSRF tokens for POSTs.

``WEBHOOKS_CONSOLE_AUTH`` is ``role:user:password`` entries, comma-separated;
the role is ``viewer`` (read only) or ``operator`` (may also replay). Every
comparison is constant-time, and every user is compared, so the time a
refusal takes says nothing about which part was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

__all__ = ["OPERATOR", "ROLES", "VIEWER", "User", "authenticate", "csrf_token", "parse_users"]

VIEWER = "viewer"
OPERATOR = "operator"
ROLES = (VIEWER, OPERATOR)


@dataclass(frozen=True, slots=True)
class User:
    role: str
    name: str
    password: str

    @property
    def may_replay(self) -> bool:
        return self.role == OPERATOR

    def __repr__(self) -> str:  # never the password
        return f"User(role={self.role!r}, name={self.name!r})"


def parse_users(spec: str) -> tuple[User, ...]:
    """``viewer:ann:pw1,operator:bob:pw2`` → users; ValueError naming the entry's
    position (not its text: it holds a password)."""
    users = []
    for position, entry in enumerate((e.strip() for e in spec.split(",")), start=1):
        role, _, rest = entry.partition(":")
        name, _, password = rest.partition(":")
        if role not in ROLES or not name or not password:
            raise ValueError(
                f"entry {position}: expected 'viewer:user:password' or 'operator:user:password'"
            )
        users.append(User(role, name, password))
    if len({u.name for u in users}) != len(users):
        raise ValueError("each user name may appear once")
    return tuple(users)


def authenticate(header: str | None, users: tuple[User, ...]) -> User | None:
    """The user an ``Authorization: Basic …`` header names, if its password matches."""
    scheme, _, encoded = (header or "").strip().partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    name, _, password = decoded.partition(":")
    found = None
    for user in users:
        same_name = hmac.compare_digest(name.encode(), user.name.encode())
        same_password = hmac.compare_digest(password.encode(), user.password.encode())
        if same_name and same_password:
            found = user
    return found if scheme.lower() == "basic" else None


def csrf_token(key: bytes, user: User) -> str:
    """A token bound to the user and this console's key: a page from another
    site cannot read it, so it cannot forge a replay with the browser's
    stored basic-auth credentials."""
    return hmac.new(key, f"{user.role}:{user.name}".encode(), hashlib.sha256).hexdigest()
