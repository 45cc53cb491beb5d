"""The obvious alternative to our pipeline, as a team would write it by hand.

A separate Celery app (``celery -A bench.contenders worker``) on the broker in
``BENCH_BROKER_URL``, with Celery's defaults for everything else: early acks,
prefetch multiplier 4, no result backend, no task events. Three tasks:

* :func:`plain_send` POSTs the event with ``requests`` through one pooled
  ``Session`` per worker process (made on first use, after the fork) and lets
  Celery retry network errors and non-2xx answers: what a careful engineer
  ships. No signing, no attempt log, no rate limits, no metrics.
* :func:`plain_send_new_connection` is the same with a new ``Session`` per
  call, exactly what ``requests.post()`` does and what many hand-written
  webhook tasks do: every delivery pays a TCP and TLS handshake.
* :func:`empty` does nothing: the ceiling of any design that runs one Celery
  task per event on this broker.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from celery import Celery

__all__ = ["app", "empty", "plain_send", "plain_send_new_connection"]

app = Celery("contenders", broker=os.environ.get("BENCH_BROKER_URL", "redis://localhost:6379/0"))
_VERIFY: str | bool = os.environ.get("BENCH_CA_BUNDLE") or True
_RETRYING: dict[str, Any] = {
    "autoretry_for": (requests.RequestException,),
    "retry_backoff": True,
    "max_retries": 3,
}
_session: tuple[int, requests.Session] | None = None  # (pid that made it, session)


def _pooled() -> requests.Session:
    """This process's session: a prefork child must not share its parent's sockets."""
    global _session  # noqa: PLW0603 - one pool per process, made lazily after the fork
    if _session is None or _session[0] != os.getpid():
        _session = (os.getpid(), requests.Session())
    return _session[1]


@app.task(**_RETRYING)  # type: ignore[untyped-decorator]
def plain_send(url: str, event: dict[str, Any]) -> None:
    """POST ``event`` to ``url`` as JSON on a kept-alive connection; errors are retried."""
    _pooled().post(url, json=event, timeout=30, verify=_VERIFY).raise_for_status()


@app.task(**_RETRYING)  # type: ignore[untyped-decorator]
def plain_send_new_connection(url: str, event: dict[str, Any]) -> None:
    """:func:`plain_send` with a new ``Session`` (so a new connection) per call."""
    with requests.Session() as session:  # what requests.post() does: a pool per call
        session.post(url, json=event, timeout=30, verify=_VERIFY).raise_for_status()


@app.task  # type: ignore[untyped-decorator]
def empty(event: dict[str, Any]) -> None:
    """Nothing: what one Celery task per event costs before any work."""
