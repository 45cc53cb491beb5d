"""Route each delivery by its endpoint's health: ``webhooks`` or ``webhooks.slow``.

A delivery to an endpoint that answers slowly or times out would hold a
worker slot for up to the whole timeout; on the slow queue it waits among
its peers, served by workers sized for waiting (a gevent pool), and fast
endpoints never queue behind it.

The router runs on every publish, so it reads Redis only to refresh its
caches: the set of slow endpoints every ``WEBHOOKS_ROUTE_CACHE_S`` seconds,
and a conversation (found or not) once per minute per conversation, through
the same :class:`~webhooks.conversations.CachedConversations` the workers use.
Retries and releases from a waiting line are routed again, at that moment.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from config import wiring
from config.celery_app import WebhooksCelery, app
from config.wiring import conversation_store
from webhooks.conversations import CachedConversations, normalize_id
from webhooks.endpoints import normalize_endpoint
from webhooks.errors import InvalidConfiguration
from webhooks.health import HealthStore
from webhooks.ordering import OrderedLines
from webhooks.queues import QUEUE, SLOW_QUEUE
from webhooks.store import Store

log = logging.getLogger(__name__)

__all__ = ["EndpointRouter", "router"]

_CONVERSATION_TTL_S = 60.0


class EndpointRouter:
    """A Celery router (``task_routes``) for ``deliver_webhook``."""

    def __init__(self, celery: WebhooksCelery) -> None:
        self._app = celery
        self._lock = threading.Lock()
        self._client: Store | None = None
        self._client_url = ""
        self._slow: set[str] = set()
        self._slow_read_at = float("-inf")
        self._conversations: CachedConversations | None = None
        self._lookup_failed_at = float("-inf")
        self._lines: OrderedLines | None = None
        self._lines_client: Store | None = None

    def __call__(
        self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
    ) -> dict[str, str] | None:
        if name != "deliver_webhook":
            return None
        return {"queue": self.queue_for(kwargs or {})}

    def queue_for(self, kwargs: dict[str, Any]) -> str:
        """The queue for a delivery with these task kwargs, as of now."""
        try:
            endpoint = self._endpoint(kwargs)
        except (redis.RedisError, InvalidConfiguration, ValueError, TypeError):
            return QUEUE  # routing is an optimisation; never fail a publish over it
        return SLOW_QUEUE if endpoint and self.is_slow(endpoint) else QUEUE

    def ordered_lines(self, kwargs: dict[str, Any]) -> OrderedLines | None:
        """The ordered lines, if this delivery's conversation is delivered in order.

        Decided at publication, from the conversation's configuration as the
        router last read it (``WEBHOOKS_ROUTE_CACHE_S``). If the store cannot
        be read the event is published unordered, with a warning: it could
        not be numbered anyway.
        """
        event = kwargs.get("event") or {}
        try:
            conversation = self._conversation_cache().get(
                normalize_id(str(event.get("conversation_id", "")))
            )
        except (redis.RedisError, InvalidConfiguration, ValueError):
            log.warning("cannot read the conversation's configuration; published unordered")
            return None
        mode = conversation.config.ordering if conversation is not None else None
        if (mode or self._app.settings.ordering) != "conversation":
            return None
        client = self._redis()
        with self._lock:
            if self._lines is None or self._lines_client is not client:
                self._lines, self._lines_client = OrderedLines(client), client
            return self._lines

    def is_slow(self, endpoint: str) -> bool:
        try:
            return endpoint in self._slow_set()
        except redis.RedisError:
            return False

    def _slow_set(self) -> set[str]:
        settings = self._app.settings
        now = time.monotonic()
        with self._lock:
            if now - self._slow_read_at >= settings.route_cache_s:
                client = self._redis()
                # Stamped before the read: a store that is down or hung is
                # asked again after a period, not on every publish.
                self._slow_read_at = now
                self._slow = HealthStore(client, settings.health_policy).slow_endpoints()
            return self._slow

    def _endpoint(self, kwargs: dict[str, Any]) -> str | None:
        url = kwargs.get("callback_url")
        if not url:
            event = kwargs.get("event") or {}
            url = self._configured_url(str(event.get("conversation_id", "")))
        return normalize_endpoint(url) if url else None

    def _configured_url(self, conversation_id: str) -> str | None:
        cid = normalize_id(conversation_id)
        now = time.monotonic()
        if now - self._lookup_failed_at < self._app.settings.route_cache_s:
            return None  # the store just failed: route by default rather than wait on it
        try:
            conversation = self._conversation_cache().get(cid)
        except redis.RedisError:
            self._lookup_failed_at = now
            raise
        return None if conversation is None else conversation.config.callback_url

    def _conversation_cache(self) -> CachedConversations:
        client = self._redis()
        with self._lock:
            if self._conversations is None:
                store = conversation_store(client, self._app.settings)
                # Unknown conversations are remembered too: a producer may
                # publish for many, and a publish never waits on a read twice.
                self._conversations = CachedConversations(
                    store, ttl_s=_CONVERSATION_TTL_S, remember_missing=True, clock=_monotonic
                )
            return self._conversations

    def _redis(self) -> Store:
        settings = self._app.settings
        if self._client is None or self._client_url != settings.redis_url:
            self._client = wiring.store_client(settings)
            self._client_url = settings.redis_url
            self._slow_read_at = float("-inf")
            self._conversations = None
        return self._client


def _monotonic() -> float:
    """``time.monotonic`` as looked up at each call (tests replace this module's ``time``)."""
    return time.monotonic()


router = EndpointRouter(app)
app.conf.task_routes = (router,)
