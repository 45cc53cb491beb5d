"""The Celery app (``celery -A config.celery_app``).

All reliability choices live here, each with the failure it prevents:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a delivery is
  acknowledged only after it finished, so a worker process killed mid-request
  is redelivered instead of lost.
* ``worker_prefetch_multiplier=1``: a worker holds no queued work it is not
  about to run, so a dead worker strands at most its running tasks.
* ``visibility_timeout`` above the task time limit plus the longest retry
  countdown: the Redis broker never redelivers a task that is still running or
  waiting out a countdown (see ``Settings``).
* worker heartbeats (``tasks/reclaim.py``): what a worker that died without
  warning held is handed out again once it has been silent for
  ``WEBHOOKS_WORKER_DEAD_AFTER_S``, not after the visibility timeout.
* a ``redis+sentinel://`` broker becomes kombu's sentinel transport, so
  workers and producers reconnect to whichever server the sentinels name
  master after a failover.
* with ``WEBHOOKS_BROKER_URLS`` a delivery is published to the broker group
  its conversation maps to (:meth:`WebhooksCelery.producer_for`), from every
  publisher: producers, retries, the pump, replays.
* JSON only, no result backend: payloads are data, never pickles, and
  delivery outcomes go to :mod:`webhooks.outcomes`, not to Celery results.
* a worker whose ``WEBHOOKS_SECRETS_KEY`` cannot open the stored signing
  secrets refuses to start, instead of failing every delivery.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import redis
from celery import Celery
from celery.signals import worker_init
from kombu import pools
from kombu.connection import Connection
from kombu.messaging import Producer
from kombu.utils.collections import eqhash

from config import wiring
from config.settings import Settings
from webhooks.errors import SecretsLocked
from webhooks.queues import QUEUE, RELEASED_QUEUE, SLOW_QUEUE  # re-exported for tasks/
from webhooks.sharding import broker_index
from webhooks.store import is_sentinel_url, parse_sentinel_url

__all__ = [
    "QUEUE",
    "RELEASED_QUEUE",
    "SLOW_QUEUE",
    "WebhooksCelery",
    "app",
    "broker_target",
    "create_app",
]


class WebhooksCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries the service's settings for its tasks."""

    settings: Settings
    #: kombu connections, one per broker group, that key kombu's pools
    #: (which kombu empties in a forked child).
    _groups: dict[str, Connection]

    def configure(self, settings: Settings) -> None:
        """Apply ``settings``; safe to call again, e.g. to re-point a producer."""
        self._drop_group_pools()
        self.settings = settings
        self._drop_broker_pools()
        redis_options: dict[str, Any] = {
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_timeout": settings.redis_socket_timeout_s,
            "socket_connect_timeout": settings.redis_socket_timeout_s,
            "health_check_interval": 30,
        }
        broker_url, sentinel_options = broker_target(settings)
        redis_options.update(sentinel_options)
        self.conf.update(
            broker_url=broker_url,
            broker_use_ssl=_broker_tls(settings),
            broker_transport_options=redis_options,
            broker_connection_retry_on_startup=True,
            result_backend=None,
            task_ignore_result=True,
            task_serializer="json",
            accept_content=["json"],
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            task_acks_on_failure_or_timeout=True,
            worker_prefetch_multiplier=1,
            worker_cancel_long_running_tasks_on_connection_loss=True,
            task_default_queue=QUEUE,
            task_time_limit=settings.task_time_limit_s,
            task_soft_time_limit=settings.soft_time_limit_s,
            worker_send_task_events=settings.task_events,
            task_send_sent_event=settings.task_events,
            enable_utc=True,
        )

    @contextlib.contextmanager
    def producer_for(self, conversation_id: str) -> Iterator[Producer | None]:
        """A producer on the broker group ``conversation_id`` maps to, from a
        pool per group; None without ``WEBHOOKS_BROKER_URLS`` (the app's own).
        """
        urls = self.settings.broker_urls
        if not urls:
            yield None
            return
        url = urls[broker_index(conversation_id, len(urls))]
        connection = self._groups.get(url)
        if connection is None:
            target, options = broker_target(self.settings, url)
            ssl_options = _broker_tls(self.settings, url)
            connection = self.connection_for_write(
                target, transport_options=options, ssl=ssl_options or False
            )
            self._groups[url] = connection
        with pools.producers[connection].acquire(block=True) as producer:
            yield producer

    def _drop_group_pools(self) -> None:
        # Closed and forgotten, as _drop_broker_pools does for the app's own.
        for connection in self.__dict__.get("_groups", {}).values():
            for group in (pools.producers, pools.connections):
                if eqhash(connection) in group:  # type: ignore[no-untyped-call]  # kombu keys by it
                    group[connection].force_close_all()
                    del group[connection]
        self._groups = {}

    def _drop_broker_pools(self) -> None:
        # Celery builds the connection and producer pools on first publish
        # and keeps them; without this a reconfigured app would keep
        # publishing to the old broker.
        pool: Any = self.__dict__.get("_pool")
        if pool is not None:
            pool.force_close_all()
            self._pool = None
            # kombu keeps one pool per broker URL for the whole process: forget
            # the closed one, or every later publish to that URL fails with
            # "Acquire on closed pool" (configure() again with the same settings).
            # Keyed as kombu keyed it: a fresh connection for the old settings.
            old = self.connection_for_write()
            for group in (pools.connections, pools.producers):
                with contextlib.suppress(KeyError):
                    del group[old]
        amqp = self.__dict__.get("amqp")
        if amqp is not None:
            amqp._producer_pool = None


def broker_target(settings: Settings, url: str | None = None) -> tuple[str, dict[str, Any]]:
    """kombu's broker URL and the transport options it needs beyond the common ones,
    for ``url`` (default: this process's own broker).

    A ``redis+sentinel://`` URL becomes kombu's ``sentinel://a;sentinel://b``
    form with ``master_name``: the transport asks the sentinels for the
    master on every (re)connection, so workers and producers follow a
    failover. Password and database ride on the first URL, which is the one
    kombu reads them from.
    """
    url = url or settings.effective_broker_url
    if not is_sentinel_url(url):
        return url, {}
    target = parse_sentinel_url(url)
    credentials = ""
    if target.password is not None:
        credentials = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    sentinels = ";".join(
        f"sentinel://{credentials}{host}:{port}/{target.db}" for host, port in target.sentinels
    )
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
    }
    if settings.sentinel_password:
        sentinel_kwargs["password"] = settings.sentinel_password
    return sentinels, {"master_name": target.master, "sentinel_kwargs": sentinel_kwargs}


def _broker_tls(settings: Settings, url: str | None = None) -> dict[str, Any] | None:
    """TLS for a ``rediss://`` broker: the certificate always verified."""
    if not (url or settings.effective_broker_url).startswith("rediss://"):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_bundle is not None:
        options["ssl_ca_certs"] = str(settings.redis_ca_bundle)
    return options


def create_app(settings: Settings | None = None) -> WebhooksCelery:
    app = WebhooksCelery(
        "webhooks", include=["tasks.routing", "tasks.delivery", "tasks.pump", "tasks.reclaim"]
    )
    app.configure(settings or Settings())
    return app


app = create_app()

log = logging.getLogger(__name__)


@worker_init.connect  # type: ignore[untyped-decorator]
def _refuse_locked_secrets(sender: Any = None, **_: Any) -> None:
    """Stop a worker that could not open the stored signing secrets.

    A Redis that cannot be reached yet is not a reason to stop: the worker
    waits for it like for the broker, and the check is the CLI's to repeat.
    """
    settings: Settings = getattr(getattr(sender, "app", None), "settings", app.settings)
    client = wiring.store_client(settings)
    try:
        wiring.check_secrets_key(client, settings)
    except SecretsLocked as exc:
        sys.stderr.write(f"error: worker not started: {exc}\n")
        raise SystemExit(2) from exc
    except redis.RedisError as exc:
        log.warning("could not check the stored secrets' key at start: %s", exc)
    finally:
        client.close()
