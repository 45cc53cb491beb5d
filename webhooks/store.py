"""The Redis client every component shares, with timeouts on every call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

__all__ = ["connect"]


def connect(url: str, *, socket_timeout_s: float, ca_bundle: Path | None = None) -> redis.Redis:
    """A client whose calls fail within ``socket_timeout_s`` instead of hanging.

    Credentials come in the URL (``redis://user:password@host``); a
    ``rediss://`` URL is TLS with the server's certificate always verified,
    against ``ca_bundle`` if given, else the system's trust store.
    """
    tls: dict[str, Any] = {}
    if url.startswith("rediss://"):
        tls["ssl_cert_reqs"] = "required"
        if ca_bundle is not None:
            tls["ssl_ca_certs"] = str(ca_bundle)
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        health_check_interval=30,
        decode_responses=True,
        **tls,
    )
