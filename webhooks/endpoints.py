"""What counts as one endpoint: the normalized callback URL.

Rate limits, concurrency caps and holds apply per endpoint, so two
conversations pointing at the same receiver share its budget, and every
spelling of one receiver URL (``HTTPS://Example.com./hook/``,
``https://example.com:443//h%6Fok``) is the same endpoint: otherwise each
spelling would get a budget of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
from urllib.parse import urlsplit

import idna

__all__ = ["endpoint_tag", "normalize_endpoint"]

_DEFAULT_PORTS = {"https": 443, "http": 80}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: What a path may carry literally (RFC 3986 pchar and "/"); the rest is escaped.
_PATH_SAFE = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_endpoint(url: str) -> str:
    """``scheme://host:port/path``: one string for every spelling of one receiver URL.

    Scheme and host are lowercased, the host IDNA-encoded without a trailing
    dot, the port explicit; in the path, escaped unreserved characters are
    decoded, other escapes uppercased, dot segments resolved, runs of ``/``
    collapsed and a trailing ``/`` dropped. The query string and fragment are
    dropped: they select what a receiver does with a request, not which
    server receives it.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    return f"{scheme}://{_host(parts.hostname or '')}:{port}{_path(parts.path)}"


def _host(hostname: str) -> str:
    host = _ESCAPE.sub(_unescape_unreserved, hostname).lower().rstrip(".")
    try:
        return f"[{ipaddress.IPv6Address(host.split('%', 1)[0])}]"
    except ValueError:
        pass
    if not host.isascii():
        # A host IDNA refuses is not deliverable anyway; keep it as it is.
        with contextlib.suppress(idna.IDNAError, UnicodeError):
            host = idna.encode(host, uts46=True).decode("ascii")
    return host


def _path(path: str) -> str:
    segments: list[str] = []
    for segment in _canonical_escapes(path).split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def _unescape_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()


def _canonical_escapes(path: str) -> str:
    """Decode escaped unreserved characters, uppercase other escapes, escape the rest."""
    out: list[str] = []
    i = 0
    while i < len(path):
        match = _ESCAPE.match(path, i)
        if match:
            out.append(_unescape_unreserved(match))
            i = match.end()
            continue
        char = path[i]
        if char in _PATH_SAFE:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        i += 1
    return "".join(out)


def endpoint_tag(endpoint: str) -> str:
    """A short stable digest, used as the Redis Cluster hash tag of its keys."""
    return hashlib.sha1(endpoint.encode(), usedforsecurity=False).hexdigest()[:16]
