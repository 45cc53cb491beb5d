"""A ``requests`` adapter that only ever connects to vetted addresses.

Checking a host name when the URL is registered is not enough: DNS can
answer differently a second later (DNS rebinding). These connection classes
resolve the host themselves, refuse the connection if any address is not
public, and connect to the very address they checked, while TLS still
verifies the certificate against the host name.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection

from webhooks import deadline
from webhooks.urlpolicy import resolve_public

__all__ = ["GuardedAdapter"]


def _connect_vetted(conn: HTTPConnection, allow_private: bool) -> socket.socket:
    try:
        addresses = resolve_public(conn._dns_host, conn.port, allow_private=allow_private)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    guard = deadline.current.get()
    last_error: OSError | None = None
    for address, _family in addresses:
        timeout = conn.timeout
        if guard is not None:
            # The attempt's deadline bounds the connect too, not only reads.
            left = max(guard.remaining(), 0.001)
            timeout = min(timeout, left) if isinstance(timeout, int | float) else left
        try:
            # CPython bounds a TLS handshake as a whole by this timeout too;
            # the reads after it are watched from request() on.
            return connection.create_connection(
                (str(address), conn.port),
                timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={timeout})"
            ) from exc
        except OSError as exc:
            last_error = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last_error}")


class _Watched:
    """Every request joins its attempt's deadline, on a new or a reused connection.

    urllib3 connects an HTTPS connection (and shakes hands) before it calls
    ``request``; a plain one is connected here first, so ``sock`` is there.
    """

    sock: socket.socket | None

    def request(self, *args: Any, **kwargs: Any) -> None:
        guard = deadline.current.get()
        if guard is not None:
            if self.sock is None:
                self.connect()  # type: ignore[attr-defined]
            if self.sock is not None:
                guard.watch(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


def _pool_classes(allow_private: bool) -> dict[str, type[HTTPConnectionPool]]:
    class VettedHTTPConnection(_Watched, HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _connect_vetted(self, allow_private)

    class VettedHTTPSConnection(_Watched, HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _connect_vetted(self, allow_private)

    class VettedHTTPPool(HTTPConnectionPool):
        ConnectionCls = VettedHTTPConnection

    class VettedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = VettedHTTPSConnection

    return {"http": VettedHTTPPool, "https": VettedHTTPSPool}


class GuardedAdapter(HTTPAdapter):
    """Connection pooling with the address policy enforced on every connect.

    ``ca_bundle`` adds certificates to the system and certifi trust stores;
    it never replaces them.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        ca_bundle: Path | None = None,
        pool_connections: int = 100,
        pool_maxsize: int = 100,
    ) -> None:
        self._allow_private = allow_private
        self._ssl_context = ssl.create_default_context()
        if ca_bundle is not None:
            self._ssl_context.load_verify_locations(cafile=str(ca_bundle))
        # Sized for a gevent worker: up to 100 deliveries in flight in one
        # process, possibly to one host; a prefork process uses one at a time.
        super().__init__(
            pool_connections=pool_connections, pool_maxsize=pool_maxsize, max_retries=0
        )

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(
            connections, maxsize, block=block, ssl_context=self._ssl_context, **pool_kwargs
        )
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._allow_private)
