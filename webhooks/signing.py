"""Standard Webhooks signatures: sign on our side, verify on the receiver's.

Scheme (https://www.standardwebhooks.com): the secret is ``whsec_`` plus
base64 key bytes; the signature is ``v1,`` plus the base64 HMAC-SHA256 of
``"{webhook-id}.{webhook-timestamp}.{body}"``. Several signatures are sent
space-separated while a rotated-out secret is still valid, so receivers can
switch secrets without a gap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping

from webhooks.errors import InvalidConfiguration, SignatureMismatch

__all__ = [
    "SECRET_PREFIX",
    "SignatureMismatch",
    "generate_secret",
    "new_webhook_id",
    "signature_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix
_KEY_BYTES = 32
DEFAULT_TOLERANCE_S = 5 * 60


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode()


def new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def secret_key(secret: str) -> bytes:
    """Decode a ``whsec_`` secret; raise :class:`InvalidConfiguration` if malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidConfiguration(f"signing secrets start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise InvalidConfiguration("signing secret is not valid base64 after 'whsec_'") from exc
    if not 24 <= len(key) <= 64:
        raise InvalidConfiguration("signing secret must encode 24 to 64 bytes")
    return key


def _sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_headers(
    secrets_in_use: Iterable[str], webhook_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three ``webhook-*`` headers for one attempt, signed with every secret."""
    ts = int(time.time()) if timestamp is None else timestamp
    signatures = " ".join(_sign(secret_key(s), webhook_id, ts, body) for s in secrets_in_use)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signatures,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Receiver side: raise :class:`SignatureMismatch` unless ``headers`` sign ``body``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        webhook_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        offered = lowered["webhook-signature"].split()
    except (KeyError, ValueError) as exc:
        raise SignatureMismatch("missing or malformed webhook-* headers") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureMismatch("webhook-timestamp outside the tolerance window")
    expected = _sign(secret_key(secret), webhook_id, timestamp, body)
    if not any(hmac.compare_digest(expected, sig) for sig in offered):
        raise SignatureMismatch("no matching signature")
