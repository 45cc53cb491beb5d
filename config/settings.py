"""The one place configuration is read.

Every ``WEBHOOKS_*`` environment variable is a field here. The Celery app and
the CLI build one :class:`Settings` at start-up and pass it down; nothing else
reads the environment, so a test can build any configuration it needs
without patching globals.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from webhooks.console.auth import User, parse_users
from webhooks.health import HealthPolicy
from webhooks.metrics_http import parse_auth
from webhooks.outcomes import DEFAULT_DEAD_LETTER_RETENTION_S
from webhooks.ratelimit import Limits, RateLimit
from webhooks.secretbox import parse_keys
from webhooks.signing import secret_key
from webhooks.store import is_cluster_url, is_sentinel_url, parse_cluster_url, parse_sentinel_url

__all__ = ["Settings", "child_environment", "without_password"]

DEFAULT_RETRY_SCHEDULE_S = (4.0, 8.0, 10.0)
BROKER_SCHEMES = ("redis", "rediss", "redis+sentinel")


class Settings(BaseSettings):
    """Typed, validated service settings (env prefix ``WEBHOOKS_``)."""

    model_config = SettingsConfigDict(
        env_prefix="WEBHOOKS_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    # Out of repr: a URL may carry Redis' password.
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Store for conversations, secrets and outcomes; also the broker by default. "
        "redis+cluster:// names a Redis Cluster (then WEBHOOKS_BROKER_URL is required).",
        repr=False,
    )
    broker_url: str | None = Field(
        None,
        description="A separate Celery broker, if any; with WEBHOOKS_BROKER_URLS, the group "
        "this worker consumes (default: the first).",
        repr=False,
    )
    broker_urls: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Several broker groups, separated by spaces: every publisher sends a "
        "conversation's deliveries to one of them, chosen by a stable hash of its id.",
        repr=False,
    )
    redis_sentinel_password: SecretStr | None = Field(
        None,
        description="Password of the sentinels themselves, when a redis+sentinel:// store or "
        "broker's sentinels require one (the URL's password is the master's).",
    )
    redis_ca_bundle: Path | None = Field(
        None,
        description="CA certificates (PEM) that a rediss:// store or broker is verified "
        "against, instead of the system store.",
    )

    timeout_s: float = Field(30.0, gt=0, description="Read timeout of one delivery attempt.")
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP+TLS connect timeout.")
    retry_schedule: Annotated[tuple[float, ...], NoDecode] = Field(
        DEFAULT_RETRY_SCHEDULE_S,
        description="Countdown before each retry, in seconds; its length is the retry budget.",
    )

    allow_http: bool = Field(False, description="Development only: accept http:// callbacks.")
    allow_private_networks: bool = Field(
        False, description="Development only: deliver to loopback/private/link-local addresses."
    )
    ca_bundle: Path | None = Field(
        None, description="Extra CA certificates (PEM) trusted besides the system store."
    )
    signing_secret: SecretStr | None = Field(
        None,
        description="whsec_ secret for deliveries to a conversation that has none registered.",
    )

    ordering: Literal["conversation", "off"] = Field(
        "off",
        description="conversation: every conversation's events arrive in publication order "
        "unless its config says ordering none; off: only those whose config says conversation.",
    )
    max_event_bytes: int = Field(
        256 * 1024,
        gt=0,
        description="Largest serialized event delay() accepts; it is republished on every retry.",
    )

    rate_limit: str = Field(
        "100/minute", description="Per endpoint, sliding window: '100/minute', '10/second'."
    )
    max_concurrency: int = Field(10, ge=1, description="Per endpoint: attempts in flight at once.")
    limits_enabled: bool = Field(
        True, description="Enforce rate limits and concurrency caps (off only for benchmarks)."
    )
    retry_after_cap_s: float = Field(
        600.0, gt=0, description="Longest hold a receiver's Retry-After can impose."
    )
    max_rate_limited_wait_s: float = Field(
        3600.0,
        gt=0,
        description="Total time a delivery may wait on 429s before it is failed.",
    )
    pump_interval_s: float = Field(
        0.2, gt=0, description="How often each worker looks for parked deliveries that are due."
    )

    slow_threshold_ms: float = Field(
        5000.0, gt=0, description="An endpoint whose mean response time passes this is slow."
    )
    recover_threshold_ms: float = Field(
        2500.0, gt=0, description="A slow endpoint is fast again once under this (hysteresis)."
    )
    route_cache_s: float = Field(
        2.0, ge=0, description="How long a process trusts its copy of the slow-endpoint set."
    )
    config_cache_s: float = Field(
        1.0,
        ge=0,
        description="How long a worker process reuses a conversation's configuration "
        "before reading it again (0: on every attempt).",
    )
    metrics_flush_s: float = Field(
        1.0,
        ge=0,
        description="How long a worker process sums metrics and endpoint health before "
        "writing them to Redis in one round trip (0: after every attempt).",
    )
    task_events: bool = Field(
        False,
        description="Workers always send Celery task events. Off, Flower switches them on "
        "while it runs (its enable_events), so nobody pays for events nobody reads.",
    )

    visibility_timeout_s: int = Field(
        3600, gt=0, description="Redis broker: when an unacknowledged task is redelivered."
    )
    worker_heartbeat_s: float = Field(
        10.0, gt=0, description="How often a worker says it is alive and looks for dead ones."
    )
    worker_dead_after_s: float = Field(
        60.0,
        gt=0,
        description="A worker silent this long is dead: what it held is delivered again.",
    )
    redis_socket_timeout_s: float = Field(5.0, gt=0)
    outcome_retention_s: int = Field(
        7 * 24 * 3600, gt=0, description="How long a delivery's outcome record is kept."
    )
    dead_letter_retention_s: int = Field(
        DEFAULT_DEAD_LETTER_RETENTION_S,
        gt=0,
        description="How long a dead letter is kept for replay before Redis drops it.",
    )
    log_retention_s: int = Field(
        7 * 24 * 3600,
        gt=0,
        validation_alias=AliasChoices("WEBHOOKS_LOG_RETENTION", "log_retention_s"),
        description="Seconds the attempt log keeps a message's attempts (WEBHOOKS_LOG_RETENTION).",
    )
    secrets_key: SecretStr | None = Field(
        None,
        description="Fernet keys, comma-separated, sealing signing secrets in Redis: the first "
        "seals, all open (rotation). Unset: secrets are stored plain.",
    )
    metrics_bind: str = Field(
        "127.0.0.1",
        description="Address webhooks metrics-server listens on (loopback unless opened).",
    )
    metrics_auth: SecretStr | None = Field(
        None,
        description="'bearer:TOKEN' or 'basic:user:password' that /metrics requires (unset: none).",
    )
    metrics_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long a metrics connection may take to send its request, and each "
        "socket read or write after that.",
    )
    console_auth: SecretStr | None = Field(
        None,
        description="Console users, 'viewer:user:password,operator:user:password' (basic auth; "
        "operators may replay). Unset: webhooks console refuses to start.",
    )
    console_bind: str = Field(
        "127.0.0.1", description="Address webhooks console listens on (loopback unless opened)."
    )
    secret_rotation_overlap_s: int = Field(
        24 * 3600, ge=0, description="How long the old secret keeps signing after a rotation."
    )

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        # A mistyped Sentinel URL must stop the worker at start, with what is
        # wrong and without the password (hide_input_in_errors).
        if value is None:
            return None
        if value.split("://", 1)[0].lower() == "sentinel":
            raise ValueError(
                "give a Sentinel group as redis+sentinel://host:26379,host:26380/MASTER/DB; "
                "kombu's sentinel:// form is built from it"
            )
        if is_sentinel_url(value):
            parse_sentinel_url(value)
        if is_cluster_url(value):
            parse_cluster_url(value)
        return value

    @model_validator(mode="after")
    def _check_cluster_broker(self) -> Settings:
        # kombu has no Redis Cluster transport: a cluster can only be the store.
        if self.broker_url is not None and is_cluster_url(self.broker_url):
            raise ValueError(
                "WEBHOOKS_BROKER_URL cannot be a Redis Cluster (kombu has no Cluster "
                "transport): give one Redis or a redis+sentinel:// group"
            )
        if self.broker_url is None and not self.broker_urls and is_cluster_url(self.redis_url):
            raise ValueError(
                "a Redis Cluster store (WEBHOOKS_REDIS_URL=redis+cluster://…) needs "
                "WEBHOOKS_BROKER_URL (or WEBHOOKS_BROKER_URLS): one Redis or a redis+sentinel:// "
                "group as the broker"
            )
        return self

    @field_validator("broker_urls", mode="before")
    @classmethod
    def _split_broker_urls(cls, value: object) -> object:
        # Spaces, not commas: a Sentinel group's URL has commas of its own.
        return tuple(value.split()) if isinstance(value, str) else value

    @field_validator("broker_urls")
    @classmethod
    def _check_broker_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for position, url in enumerate(value, 1):
            named = f"broker {position} of WEBHOOKS_BROKER_URLS ({without_password(url)})"
            if url.split("://", 1)[0].lower() not in BROKER_SCHEMES or "://" not in url:
                raise ValueError(
                    f"{named}: expected a redis://, rediss:// or redis+sentinel:// URL"
                )
            try:
                cls._check_redis_url(url)
            except ValueError as exc:
                raise ValueError(f"{named}: {exc}") from None
            if url in value[: position - 1]:
                raise ValueError(f"{named} is listed twice")
        return value

    @model_validator(mode="after")
    def _check_own_broker(self) -> Settings:
        # A worker consumes WEBHOOKS_BROKER_URL; if no publisher maps anything
        # there, it would wait for work that never comes.
        if self.broker_urls and self.broker_url and self.broker_url not in self.broker_urls:
            raise ValueError(
                f"WEBHOOKS_BROKER_URL ({without_password(self.broker_url)}) is not one of "
                "WEBHOOKS_BROKER_URLS: a worker must consume one of the groups publishers use"
            )
        return self

    @property
    def sentinel_password(self) -> str | None:
        password = self.redis_sentinel_password
        return password.get_secret_value() or None if password else None

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                return tuple(float(p) for p in parts)
            except ValueError:
                raise ValueError(
                    f"expected comma-separated seconds like '4,8,10', got {value!r}"
                ) from None
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _check_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("give at least one countdown, e.g. '4,8,10'")
        if not all(math.isfinite(v) and v >= 0 for v in value):
            raise ValueError("retry countdowns must be finite and not negative")
        return value

    @field_validator("signing_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # It is only used when an attempt is signed; a typo must stop the
        # worker at start, not dead-letter every delivery.
        if value is not None:
            secret_key(value.get_secret_value())
        return value

    @field_validator("secrets_key")
    @classmethod
    def _check_secrets_key(cls, value: SecretStr | None) -> SecretStr | None:
        # A mistyped key must stop the worker at start, not lock every secret.
        if value is None or not value.get_secret_value().strip():
            return None
        parse_keys(value.get_secret_value())
        return value

    @property
    def secrets_keys(self) -> tuple[str, ...]:
        """The keys of WEBHOOKS_SECRETS_KEY, the sealing one first (none: plain)."""
        return parse_keys(self.secrets_key.get_secret_value()) if self.secrets_key else ()

    @field_validator("metrics_auth")
    @classmethod
    def _check_metrics_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            parse_auth(value.get_secret_value())
            return value
        return None  # empty (compose passes it through unset): no auth

    @property
    def metrics_credentials(self) -> tuple[str, str] | None:
        """(scheme, expected credentials) for the metrics server, or None."""
        return parse_auth(self.metrics_auth.get_secret_value()) if self.metrics_auth else None

    @field_validator("console_auth")
    @classmethod
    def _check_console_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            parse_users(value.get_secret_value())
            return value
        return None  # empty (compose passes it through unset): the console refuses to start

    @property
    def console_users(self) -> tuple[User, ...]:
        """Who may sign in to the console (none: it refuses to start)."""
        return parse_users(self.console_auth.get_secret_value()) if self.console_auth else ()

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str) -> str:
        RateLimit.parse(value)
        return value

    @model_validator(mode="after")
    def _check_visibility(self) -> Settings:
        # A task held by a worker for a countdown is unacknowledged; if it
        # outlives the visibility timeout the broker hands it to a second
        # worker and the receiver gets it twice.
        needed = self.task_time_limit_s + max(self.retry_schedule, default=0.0)
        if self.visibility_timeout_s <= needed:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed the task time "
                f"limit plus the longest retry countdown ({needed:.0f} s)"
            )
        return self

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        # A worker that misses one beat (a slow Redis call, a GC pause) must
        # not be taken for dead: its deliveries would go out twice.
        if self.worker_dead_after_s < 3 * self.worker_heartbeat_s:
            raise ValueError(
                f"worker_dead_after_s ({self.worker_dead_after_s:g}) must be at least three "
                f"heartbeats ({3 * self.worker_heartbeat_s:g} s)"
            )
        return self

    @property
    def default_limits(self) -> Limits:
        return Limits(rate=RateLimit.parse(self.rate_limit), max_concurrency=self.max_concurrency)

    @property
    def health_policy(self) -> HealthPolicy:
        return HealthPolicy(
            slow_ms=self.slow_threshold_ms,
            recover_ms=min(self.recover_threshold_ms, self.slow_threshold_ms),
        )

    @property
    def lease_s(self) -> float:
        """A concurrency slot outlives any attempt, even one the time limit kills."""
        return self.task_time_limit_s + 5.0

    @property
    def effective_broker_url(self) -> str:
        """The broker this process consumes, and publishes to unless told otherwise."""
        return self.broker_url or next(iter(self.broker_urls), self.redis_url)

    @property
    def soft_time_limit_s(self) -> float:
        """Past this a stuck attempt is abandoned and retried like a timeout.

        ``requests`` applies the read timeout per socket read, so a receiver
        that trickles bytes can exceed it; the soft limit bounds the whole
        attempt.
        """
        return self.connect_timeout_s + self.timeout_s + 5.0

    @property
    def task_time_limit_s(self) -> float:
        return self.soft_time_limit_s + 10.0


def without_password(url: str) -> str:
    """``url`` with its credentials masked, fit for an error message or a log line."""
    return re.sub(r"^([^:/]+://)[^@/]*@", r"\1***@", url)


def child_environment(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``overrides``, for a worker we spawn.

    Lives here because ``config`` is the only package that touches
    ``os.environ``.
    """
    return {**os.environ, **overrides}
