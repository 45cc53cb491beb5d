"""The obvious alternative to our pipeline, as a team would write it by hand.

A separate Celery app (``celery -A bench.contenders worker``) on the broker in
``BENCH_BROKER_URL``, with Celery's defaults for everything else: early acks,
prefetch multiplier 4, no result backend, no task events. Two tasks:

* :func:`plain_send` POSTs the event with ``requests`` and lets Celery retry
  network errors and non-2xx answers. It makes a new ``Session`` per call,
  exactly what ``requests.post()`` does and what most hand-written webhook
  tasks do: no connection reuse, so every delivery pays a TCP and TLS
  handshake. No signing, no attempt log, no rate limits, no metrics.
* :func:`empty` does nothing: the ceiling of any design that runs one Celery
  task per event on this broker.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from celery import Celery

__all__ = ["app", "empty", "plain_send"]

app = Celery("contenders", broker=os.environ.get("BENCH_BROKER_URL", "redis://localhost:6379/0"))


@app.task(  # type: ignore[untyped-decorator]
    autoretry_for=(requests.RequestException,), retry_backoff=True, max_retries=3
)
def plain_send(url: str, event: dict[str, Any]) -> None:
    """POST ``event`` to ``url`` as JSON; an error or non-2xx answer is retried."""
    verify: str | bool = os.environ.get("BENCH_CA_BUNDLE") or True
    with requests.Session() as session:  # what requests.post() does: a pool per call
        session.post(url, json=event, timeout=30, verify=verify).raise_for_status()


@app.task  # type: ignore[untyped-decorator]
def empty(event: dict[str, Any]) -> None:
    """Nothing: what one Celery task per event costs before any work."""
