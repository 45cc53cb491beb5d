"""Send one signed POST and classify what came back.

This is the only module that knows about ``requests`` exceptions: each is
translated into :mod:`webhooks.errors` here, so callers decide on retries
from ``ErrorKind`` alone.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
from urllib3.exceptions import NameResolutionError

from webhooks.errors import (
    ErrorKind,
    PermanentDeliveryError,
    PolicyRefusal,
    RetryableDeliveryError,
)
from webhooks.transport import GuardedAdapter

__all__ = ["MAX_RESPONSE_BYTES", "Sender", "SentResponse", "parse_retry_after"]

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024
_EXCERPT_CHARS = 200


@dataclass(frozen=True, slots=True)
class SentResponse:
    status: int
    duration_s: float
    excerpt: str


class Sender:
    """One pooled, policy-guarded HTTP connection pool; build one per worker process."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        allow_private: bool,
        ca_bundle: Path | None,
        user_agent: str,
    ) -> None:
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._user_agent = user_agent
        # The adapter alone, without a requests.Session around it: no cookies
        # carried from one receiver's answer into the next delivery, no proxies
        # or .netrc from the environment (the address policy must see the
        # real destination), no redirects, and about a tenth of a millisecond
        # less per request than Session.request's merging of settings.
        self._adapter = GuardedAdapter(allow_private=allow_private, ca_bundle=ca_bundle)

    def close(self) -> None:
        self._adapter.close()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> SentResponse:
        """POST ``body``; return on 2xx, raise a :class:`DeliveryError` otherwise."""
        started = time.perf_counter()
        try:
            request = requests.PreparedRequest()
            request.prepare(
                method="POST",
                url=url,
                headers={"User-Agent": self._user_agent, **headers},
                data=body,
            )
            response = self._adapter.send(
                request, stream=True, timeout=self._timeout, verify=True, proxies=None
            )
        except PolicyRefusal as exc:
            raise PermanentDeliveryError(str(exc), kind=ErrorKind.REFUSED_BY_POLICY) from exc
        except requests.RequestException as exc:
            raise _translate(exc) from exc
        try:
            excerpt = _read_excerpt(response)
        except requests.RequestException as exc:
            raise _translate(exc) from exc
        finally:
            response.close()
        duration = time.perf_counter() - started
        status = response.status_code
        if 200 <= status < 300:
            return SentResponse(status=status, duration_s=duration, excerpt=excerpt)
        detail = f"receiver answered HTTP {status}"
        if 300 <= status < 400:
            detail += f" (redirects are not followed; location: {response.headers.get('Location')})"
        raise RetryableDeliveryError(
            detail,
            kind=ErrorKind.for_status(status),
            status=status,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            response_excerpt=excerpt,
        )


def _read_excerpt(response: requests.Response) -> str:
    """Read at most 64 KiB of the body; a larger one costs us its connection."""
    raw = response.raw
    chunks: list[bytes] = []
    size = 0
    for chunk in raw.stream(8192, decode_content=True):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            break
    else:
        # Fully read: hand the connection back for keep-alive.
        raw.release_conn()
    return b"".join(chunks)[:_EXCERPT_CHARS].decode("utf-8", "replace")


def _translate(exc: requests.RequestException) -> RetryableDeliveryError:
    if isinstance(exc, requests.Timeout):
        return RetryableDeliveryError(f"timed out: {exc}", kind=ErrorKind.TIMEOUT)
    if isinstance(exc, requests.exceptions.SSLError) or _caused_by(exc, ssl.SSLError):
        return RetryableDeliveryError(f"TLS error: {exc}", kind=ErrorKind.TLS)
    if _caused_by(exc, NameResolutionError):
        return RetryableDeliveryError(f"DNS lookup failed: {exc}", kind=ErrorKind.DNS)
    return RetryableDeliveryError(f"connection failed: {exc}", kind=ErrorKind.CONNECTION)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` appears among the exceptions ``requests`` wrapped.

    requests wraps urllib3's ``MaxRetryError`` whose ``reason`` holds the
    real cause; causes and contexts may wrap further.
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        linked = [*current.args, getattr(current, "reason", None)]
        linked += [current.__cause__, current.__context__]
        pending.extend(e for e in linked if isinstance(e, BaseException))
    return False


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    # RFC 9110 delta-seconds are ASCII digits; str.isdigit() alone also
    # accepts "²", which a Latin-1 header can carry and float() rejects.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
