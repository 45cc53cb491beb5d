"""Send one signed POST and classify what came back.

This is the only module that knows about ``requests`` exceptions: each is
translated into :mod:`webhooks.errors` here, so callers decide on retries
from ``ErrorKind`` alone.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
import urllib3.exceptions
from urllib3.exceptions import NameResolutionError

from webhooks.deadline import Guard, Watchdog
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

#: Everything a request or a body read can raise below ``requests``: its own
#: exceptions, urllib3's (a body read is not wrapped), http.client's (a
#: garbage status line) and the socket's.
_TRANSPORT_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


@dataclass(frozen=True, slots=True)
class SentResponse:
    status: int
    duration_s: float
    #: How the body read ended when it did not end cleanly (a 2xx still
    #: counts as delivered: the receiver had accepted the event).
    body_error: str = ""


class Sender:
    """One pooled, policy-guarded HTTP connection pool; build one per worker process.

    Each attempt has one deadline, ``connect_timeout_s + read_timeout_s``,
    from the first byte sent to the last byte read (see
    :mod:`webhooks.deadline`); the per-read timeouts alone would let a
    trickling receiver hold an attempt for ever.
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        allow_private: bool,
        ca_bundle: Path | None,
        user_agent: str,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._timeout = (connect_timeout_s, read_timeout_s)
        self.deadline_s = connect_timeout_s + read_timeout_s
        self._watchdog = watchdog or Watchdog()
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
        with self._watchdog.guard(self.deadline_s) as guard:
            try:
                # identity: a compressed answer could be a bomb, and only
                # 200 characters of it are ever shown.
                headers = {"User-Agent": self._user_agent, "Accept-Encoding": "identity", **headers}
                request = _prepare(url, body, headers)
                response = self._adapter.send(
                    request, stream=True, timeout=self._timeout, verify=True, proxies=None
                )
            except PolicyRefusal as exc:
                raise PermanentDeliveryError(str(exc), kind=ErrorKind.REFUSED_BY_POLICY) from exc
            except _TRANSPORT_ERRORS as exc:
                raise _translate(exc, guard) from exc
            try:
                excerpt, body_error = _read_excerpt(response, guard)
            finally:
                response.close()
        duration = time.perf_counter() - started
        status = response.status_code
        if 200 <= status < 300:
            return SentResponse(status=status, duration_s=duration, body_error=body_error)
        detail = f"receiver answered HTTP {status}"
        if 300 <= status < 400:
            detail += f" (redirects are not followed; location: {response.headers.get('Location')})"
        if body_error:
            detail += f"; {body_error}"
        raise RetryableDeliveryError(
            detail,
            kind=ErrorKind.for_status(status),
            status=status,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            response_excerpt=excerpt,
        )


def _prepare(url: str, body: bytes, headers: dict[str, str]) -> requests.PreparedRequest:
    """The POST as ``PreparedRequest.prepare`` builds it, without its cookie and auth steps.

    Those would only parse the URL twice more per attempt: the request never
    carries cookies, and credentials in a callback URL are refused before it
    is stored (:func:`webhooks.urlpolicy.check_url`).
    """
    request = requests.PreparedRequest()
    request.prepare_method("POST")
    request.prepare_url(url, None)
    request.prepare_headers(headers)
    request.prepare_body(body, None)
    return request


def _read_excerpt(response: requests.Response, guard: Guard) -> tuple[str, str]:
    """The body's first characters, and how its read broke ("" if it did not).

    At most 64 KiB is read, never decoded (a larger body costs us its
    connection). The status line already came, so a broken body is noted,
    not raised: what the attempt means is the status's to say.

    The body is read from the standard library's ``http.client`` response
    under urllib3's, not through urllib3's reader, whose decoding and chunk
    parsing have changed between 2.x releases (some decoded a whole
    ``gzip, gzip`` body before any cap, some read a chunk-size line with an
    unbounded ``readline``). ``http.client`` never decodes and bounds every
    line it reads (64 KiB, else ``LineTooLong``), whatever urllib3 is installed.
    """
    raw = response.raw
    fp = getattr(raw, "_fp", None)
    if not isinstance(fp, http.client.HTTPResponse):
        # Not a urllib3 we know: better no excerpt than an unbounded read.
        return "", "body not read: no http.client response under urllib3's"
    chunks: list[bytes] = []
    size = 0
    body_error = ""
    try:
        # read1: what has arrived, so bytes before a break are kept; for a
        # chunked body at most to the end of the current chunk.
        while chunk := fp.read1(8192):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                break
        else:
            if fp.length:
                # http.client ends a short body quietly; urllib3 would raise.
                raise http.client.IncompleteRead(b"".join(chunks), fp.length)
            if not guard.expired:
                # Fully read: hand the connection back for keep-alive.
                raw.release_conn()
    except _TRANSPORT_ERRORS as exc:
        body_error = f"body read failed after {size} bytes: {type(exc).__name__}: {exc}"
    if guard.expired:
        body_error = (
            f"body not complete within the {guard.seconds:g} s deadline ({size} bytes read)"
        )
    data = b"".join(chunks)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if data and encoding not in ("", "identity"):
        return f"[{encoding}-encoded body, not decoded]", body_error
    return data[:_EXCERPT_CHARS].decode("utf-8", "replace"), body_error


def _translate(exc: BaseException, guard: Guard) -> RetryableDeliveryError:
    """The one mapping from a failed request to its :class:`ErrorKind`."""
    if guard.expired:
        return RetryableDeliveryError(
            f"no complete answer within the {guard.seconds:g} s deadline",
            kind=ErrorKind.TIMEOUT,
        )
    if isinstance(exc, requests.Timeout | TimeoutError):
        return RetryableDeliveryError(f"timed out: {exc}", kind=ErrorKind.TIMEOUT)
    if isinstance(exc, requests.exceptions.SSLError) or _caused_by(exc, ssl.SSLError):
        return RetryableDeliveryError(f"TLS error: {exc}", kind=ErrorKind.TLS)
    if _caused_by(exc, NameResolutionError):
        return RetryableDeliveryError(f"DNS lookup failed: {exc}", kind=ErrorKind.DNS)
    # RemoteDisconnected is both: a receiver that hung up is a connection error.
    if _caused_by(exc, http.client.HTTPException) and not _caused_by(exc, ConnectionError):
        return RetryableDeliveryError(
            f"the receiver's answer is not valid HTTP: {exc}", kind=ErrorKind.PROTOCOL
        )
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
