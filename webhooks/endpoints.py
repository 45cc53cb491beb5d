"""What counts as one endpoint: the normalized callback URL.

Rate limits, concurrency caps and holds apply per endpoint, so two
conversations pointing at the same receiver share its budget, and
``HTTPS://Example.com/hook`` and ``https://example.com:443/hook`` are the
same receiver.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

__all__ = ["endpoint_tag", "normalize_endpoint"]

_DEFAULT_PORTS = {"https": 443, "http": 80}


def normalize_endpoint(url: str) -> str:
    """``scheme://host:port/path``: lowercased scheme and host, explicit port.

    The query string and fragment are dropped: they select what a receiver
    does with a request, not which server receives it.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    return f"{scheme}://{host}:{port}{parts.path or '/'}"


def endpoint_tag(endpoint: str) -> str:
    """A short stable digest, used as the Redis Cluster hash tag of its keys."""
    return hashlib.sha1(endpoint.encode(), usedforsecurity=False).hexdigest()[:16]
