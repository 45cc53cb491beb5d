"""The composition root: settings → Redis client → stores → deliverer.

The domain (``webhooks/``) receives plain parameters and never reads
settings; this is the one module that turns :class:`Settings` into wired
objects. The worker's task, the CLI, the bench scripts and the tests all
build through these functions, so they run the same objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from config.settings import Settings
from webhooks.attempts import AttemptLog
from webhooks.conversations import CachedConversations, ConversationStore
from webhooks.delivery import USER_AGENT, Deliverer, Poster
from webhooks.health import HealthStore
from webhooks.metrics import Metrics
from webhooks.observer import Observer
from webhooks.ordering import START_WITHIN_S, OrderedLines
from webhooks.outcomes import OutcomeStore
from webhooks.parking import ParkingLot
from webhooks.progress import Delivery
from webhooks.ratelimit import Limiter
from webhooks.secretbox import SecretBox
from webhooks.sender import Sender
from webhooks.store import Store, connect
from webhooks.targets import DeliveryPolicy

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "check_secrets_key",
    "console",
    "conversation_store",
    "deliverer",
    "delivery_policy",
    "secret_box",
    "store_client",
]


def store_client(settings: Settings) -> Store:
    """A client of the store (``WEBHOOKS_REDIS_URL``) with the configured timeouts;
    of the group's current master if the URL names a Sentinel group."""
    return _client(settings.redis_url, settings)


def broker_client(settings: Settings) -> redis.Redis:
    """A plain Redis client of the broker, for what kombu does not do itself
    (worker heartbeats, queue depths); it follows a Sentinel failover as
    kombu's own connections do. Settings refuse a Cluster broker, so one is a bug."""
    client = _client(settings.effective_broker_url, settings)
    if not isinstance(client, redis.Redis):
        raise TypeError("the broker cannot be a Redis Cluster (kombu has no Cluster transport)")
    return client


def _client(url: str, settings: Settings) -> Store:
    return connect(
        url,
        socket_timeout_s=settings.redis_socket_timeout_s,
        ca_bundle=settings.redis_ca_bundle,
        sentinel_password=settings.sentinel_password,
    )


def secret_box(settings: Settings) -> SecretBox | None:
    """What seals signing secrets at rest, if WEBHOOKS_SECRETS_KEY is set."""
    return SecretBox(settings.secrets_keys) if settings.secrets_keys else None


def conversation_store(client: Store, settings: Settings) -> ConversationStore:
    return ConversationStore(
        client,
        allow_http=settings.allow_http,
        allow_private=settings.allow_private_networks,
        rotation_overlap_s=settings.secret_rotation_overlap_s,
        box=secret_box(settings),
    )


def check_secrets_key(client: Store, settings: Settings) -> None:
    """Raise :class:`~webhooks.errors.SecretsLocked` if the stored secrets are
    encrypted and the configured keys cannot open them: the worker and the CLI
    call this at start, so nothing runs that could not sign."""
    conversation_store(client, settings).check_key()


def delivery_policy(settings: Settings) -> DeliveryPolicy:
    secret = settings.signing_secret
    return DeliveryPolicy(
        allow_http=settings.allow_http,
        allow_private=settings.allow_private_networks,
        default_secret=secret.get_secret_value() if secret else None,
        default_limits=settings.default_limits,
        retry_schedule=settings.retry_schedule,
        retry_after_cap_s=settings.retry_after_cap_s,
        max_rate_limited_wait_s=settings.max_rate_limited_wait_s,
    )


def deliverer(
    settings: Settings,
    *,
    sender: Poster | None = None,
    wake: Callable[[Delivery], object] | None = None,
) -> Deliverer:
    """A deliverer with its own Redis client and HTTP connection pool.

    ``sender`` replaces the real one (unit tests); the deliverer owns and
    closes whichever it gets. ``wake`` publishes an ordered conversation's
    next event (the task layer's, which knows the broker).
    """
    client = store_client(settings)
    return Deliverer(
        redis_client=client,
        sender=sender
        or Sender(
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.timeout_s,
            allow_private=settings.allow_private_networks,
            ca_bundle=settings.ca_bundle,
            user_agent=USER_AGENT,
        ),
        conversations=CachedConversations(
            conversation_store(client, settings), ttl_s=settings.config_cache_s
        ),
        outcomes=OutcomeStore(
            client,
            retention_s=settings.outcome_retention_s,
            dead_letter_retention_s=settings.dead_letter_retention_s,
        ),
        limiter=Limiter(client, lease_s=settings.lease_s) if settings.limits_enabled else None,
        parking=ParkingLot(client),
        policy=delivery_policy(settings),
        lines=OrderedLines(
            client,
            # An attempt, the longest countdown, and time to be taken from the queue.
            in_flight_s=settings.task_time_limit_s
            + max(settings.retry_schedule, default=0.0)
            + START_WITHIN_S,
        ),
        **({"wake": wake} if wake is not None else {}),
        observer=Observer(
            AttemptLog(client, retention_s=settings.log_retention_s),
            Metrics(client),
            HealthStore(client, settings.health_policy),
            flush_s=settings.metrics_flush_s,
        ),
    )


def console(settings: Settings, client: Store) -> Flask:
    """The console's app over ``client``; replays publish through the Celery app.

    Imported here, not at the top: only ``webhooks console`` needs Flask.
    """
    from tasks.replay import republish  # noqa: PLC0415
    from webhooks.console.app import ConsoleDeps, create_app  # noqa: PLC0415

    return create_app(
        ConsoleDeps(
            client=client,
            attempts=AttemptLog(client, retention_s=settings.log_retention_s),
            outcomes=OutcomeStore(client, retention_s=settings.outcome_retention_s),
            conversations=conversation_store(client, settings),
            health_policy=settings.health_policy,
            users=settings.console_users,
            republish=republish,
        )
    )
