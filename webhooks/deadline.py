"""One deadline per attempt, enforced by shutting its socket down.

``requests`` and urllib3 apply their timeouts per socket operation, so a
receiver that sends one byte every half second (of its status line, its
headers, its TLS handshake or its body) keeps an attempt alive forever.
Celery's time limits cannot be the answer either: the gevent pool has no
soft limit, and a hard limit acknowledges the message without running
``on_failure``.

A :class:`Watchdog` (one thread, or greenlet under gevent, per process)
keeps the attempts' deadlines in a heap. When one passes it shuts down every
socket the attempt registered: the blocked read returns at once with an
end of file, on every pool, and the sender sees ``guard.expired`` and
classifies the failure as a timeout. Name resolution is the one step it
cannot cut; it is bounded by the resolver's own timeout.

The transport finds the attempt through :data:`current`, a context
variable, so it works per thread and per greenlet alike.
"""

from __future__ import annotations

import _socket
import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["Guard", "Watchdog", "current"]


class Guard:
    """One attempt's deadline and the sockets it must cut when it passes.

    It keeps a duplicate of each socket's descriptor: shutting a duplicate
    down shuts the shared socket down, so the cut still reaches a socket
    that TLS has since wrapped (``wrap_socket`` detaches the plain one) and
    the guard never touches a descriptor number the pool may have reused.
    """

    __slots__ = ("_dups", "_lock", "done", "expired", "expires_at", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds
        self.expired = False
        self.done = False
        self._dups: list[_socket.socket] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def watch(self, sock: Any) -> None:
        """Cut ``sock`` when the deadline passes (at once if it already has)."""
        try:
            dup = _socket.socket(fileno=os.dup(sock.fileno()))
        except (OSError, ValueError):
            return  # already closed: nothing left to cut
        with self._lock:
            if not self.done:
                self._dups.append(dup)
                if not self.expired:
                    return
        _cut(dup)
        if self.done:
            dup.close()

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            dups = list(self._dups)
        for dup in dups:
            _cut(dup)

    def finish(self) -> None:
        """The attempt is over: its sockets may go back to the pool untouched."""
        with self._lock:
            self.done = True
            dups, self._dups = self._dups, []
        for dup in dups:
            dup.close()


def _cut(dup: _socket.socket) -> None:
    # A blocked recv on the shared socket returns end of file at once, on
    # every pool: gevent's hub sees the descriptor readable.
    with contextlib.suppress(OSError):
        dup.shutdown(socket.SHUT_RDWR)


#: The attempt the current thread or greenlet is making, if any.
current: ContextVar[Guard | None] = ContextVar("webhooks_deadline", default=None)


class Watchdog:
    """Expires guards on time; lazily starts its thread, again after a fork."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Guard]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._pid = 0

    @contextlib.contextmanager
    def guard(self, seconds: float) -> Iterator[Guard]:
        guard = Guard(seconds)
        self._add(guard)
        token = current.set(guard)
        try:
            yield guard
        finally:
            current.reset(token)
            guard.finish()

    def _add(self, guard: Guard) -> None:
        with self._wake:
            if self._pid != os.getpid():
                # First use, or a forked child: threads do not survive fork.
                self._pid = os.getpid()
                self._heap.clear()
                threading.Thread(target=self._run, name="webhooks-deadline", daemon=True).start()
            heapq.heappush(self._heap, (guard.expires_at, next(self._order), guard))
            if self._heap[0][2] is guard:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap:
                    self._wake.wait()
                expires_at, _, guard = self._heap[0]
                wait = expires_at - time.monotonic()
                if guard.done:
                    heapq.heappop(self._heap)
                    continue
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
            guard.expire()
