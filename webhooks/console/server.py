"""Serving the console: waitress, a production WSGI server, on one address."""

from __future__ import annotations

import threading

from flask import Flask
from waitress.server import create_server

__all__ = ["ConsoleServer"]


class ConsoleServer:
    """The console listening on ``host:port`` (port 0: any free one, see :attr:`port`)."""

    def __init__(self, app: Flask, host: str, port: int, *, threads: int = 4) -> None:
        self._server = create_server(app, host=host, port=port, threads=threads)
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        self._server.run()

    def start(self) -> ConsoleServer:
        """Serve from a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
