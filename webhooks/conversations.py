"""Conversation configurations and their signing secrets, kept in Redis.

The stored shape is the guide's ``{"channel", "usecase", "config":
{"workflow_id", "callback_url"}}`` plus the secrets. A rotated-out secret
keeps signing beside the new one for the overlap period, so a receiver can
deploy the new secret without rejecting a single webhook.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol
from uuid import UUID

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from webhooks import keys
from webhooks.errors import InvalidConfiguration
from webhooks.events import Channel
from webhooks.ratelimit import Limits, RateLimit
from webhooks.signing import generate_secret, secret_key
from webhooks.urlpolicy import check_url, resolve_public

__all__ = [
    "CachedConversations",
    "CallbackConfig",
    "Conversation",
    "ConversationConfig",
    "ConversationReader",
    "ConversationStore",
]


class CallbackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    callback_url: str
    workflow_id: str | None = None
    rate_limit: str | None = None  # overrides WEBHOOKS_RATE_LIMIT, e.g. "300/minute"
    max_concurrency: int | None = Field(None, ge=1)  # overrides WEBHOOKS_MAX_CONCURRENCY

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value is not None:
            RateLimit.parse(value)
        return value

    def limits(self, default: Limits) -> Limits:
        return Limits(
            rate=RateLimit.parse(self.rate_limit) if self.rate_limit else default.rate,
            max_concurrency=self.max_concurrency or default.max_concurrency,
        )


class ConversationConfig(BaseModel):
    """What an operator registers for one conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Channel = Channel.API
    usecase: str | None = None
    config: CallbackConfig


class Conversation(ConversationConfig):
    """A stored configuration with its secrets."""

    conversation_id: str
    secret: str
    previous_secret: str | None = None
    previous_secret_expires_at: float | None = None
    updated_at: float = Field(default_factory=time.time)

    def signing_secrets(self, now: float | None = None) -> list[str]:
        current = time.time() if now is None else now
        found = [self.secret]
        if (
            self.previous_secret
            and self.previous_secret_expires_at is not None
            and current < self.previous_secret_expires_at
        ):
            found.append(self.previous_secret)
        return found


def normalize_id(conversation_id: str) -> str:
    try:
        return str(UUID(str(conversation_id)))
    except ValueError:
        raise InvalidConfiguration(f"conversation id {conversation_id!r} is not a UUID") from None


class ConversationStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        allow_http: bool,
        allow_private: bool,
        rotation_overlap_s: int,
    ) -> None:
        self._redis = client
        self._allow_http = allow_http
        self._allow_private = allow_private
        self._overlap_s = rotation_overlap_s

    def validate(self, config: ConversationConfig | dict[str, Any]) -> ConversationConfig:
        """Check shape and URL policy, resolving the host once (registration only)."""
        if not isinstance(config, ConversationConfig):
            try:
                config = ConversationConfig.model_validate(config)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_url=False, include_input=False)
                )
                raise InvalidConfiguration(
                    f"invalid conversation configuration: {problems}"
                ) from exc
        url = check_url(
            config.config.callback_url,
            allow_http=self._allow_http,
            allow_private=self._allow_private,
        )
        try:
            resolve_public(url.host, url.port, allow_private=self._allow_private)
        except socket.gaierror as exc:
            raise InvalidConfiguration(
                f"callback_url host {url.host!r} does not resolve: {exc.strerror}"
            ) from exc
        return config

    def set(
        self,
        conversation_id: str,
        config: ConversationConfig | dict[str, Any],
        *,
        secret: str | None = None,
    ) -> Conversation:
        """Register or update; keeps the existing secret unless one is given."""
        cid = normalize_id(conversation_id)
        valid = self.validate(config)
        if secret is not None:
            secret_key(secret)
        existing = self.get(cid)
        conversation = Conversation(
            conversation_id=cid,
            **valid.model_dump(),
            secret=secret or (existing.secret if existing else generate_secret()),
            previous_secret=None if secret or not existing else existing.previous_secret,
            previous_secret_expires_at=(
                None if secret or not existing else existing.previous_secret_expires_at
            ),
        )
        self._save(conversation)
        return conversation

    def rotate_secret(self, conversation_id: str, *, now: float | None = None) -> Conversation:
        cid = normalize_id(conversation_id)
        existing = self.get(cid)
        if existing is None:
            raise InvalidConfiguration(f"conversation {cid} is not registered")
        current = time.time() if now is None else now
        rotated = existing.model_copy(
            update={
                "secret": generate_secret(),
                "previous_secret": existing.secret,
                "previous_secret_expires_at": current + self._overlap_s,
                "updated_at": current,
            }
        )
        self._save(rotated)
        return rotated

    def get(self, conversation_id: str) -> Conversation | None:
        raw = self._redis.get(keys.conversation(normalize_id(conversation_id)))
        return None if raw is None else Conversation.model_validate_json(raw)

    def list_all(self) -> list[Conversation]:
        ids = sorted(str(i) for i in self._redis.smembers(keys.CONVERSATIONS))
        if not ids:
            return []
        raws = self._redis.mget([keys.conversation(i) for i in ids])
        return [Conversation.model_validate_json(r) for r in raws if r is not None]

    def delete(self, conversation_id: str) -> bool:
        cid = normalize_id(conversation_id)
        pipe = self._redis.pipeline()
        pipe.delete(keys.conversation(cid))
        pipe.srem(keys.CONVERSATIONS, cid)
        deleted, _ = pipe.execute()
        return bool(deleted)

    def _save(self, conversation: Conversation) -> None:
        pipe = self._redis.pipeline()
        pipe.set(keys.conversation(conversation.conversation_id), conversation.model_dump_json())
        pipe.sadd(keys.CONVERSATIONS, conversation.conversation_id)
        pipe.execute()


class ConversationReader(Protocol):
    def get(self, conversation_id: str) -> Conversation | None: ...


class CachedConversations:
    """A process's view of the conversations, at most ``ttl_s`` old.

    Reading and parsing the configuration was one Redis round trip of three
    per attempt. With a cache, a changed callback, rotated secret or new limit
    reaches attempts that start up to ``ttl_s`` later (1 s by default);
    ``ttl_s=0`` reads on every attempt. A missing conversation is not cached,
    so one registered a moment ago is found at once; ``remember_missing``
    caches that answer too, for a reader that sees many unknown ids and must
    not pay a round trip for each (the producer's router).
    """

    def __init__(
        self,
        store: ConversationStore,
        *,
        ttl_s: float,
        max_entries: int = 10_000,
        remember_missing: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._remember_missing = remember_missing
        self._seen: dict[str, tuple[float, Conversation | None]] = {}

    def get(self, conversation_id: str) -> Conversation | None:
        if self._ttl_s <= 0:
            return self.store.get(conversation_id)
        now = self._clock()
        cached = self._seen.get(conversation_id)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        found = self.store.get(conversation_id)
        if found is None and not self._remember_missing:
            self._seen.pop(conversation_id, None)
            return None
        if len(self._seen) >= self._max_entries:
            self._seen.clear()  # bounded; one round trip each to refill
        self._seen[conversation_id] = (now, found)
        return found


def as_json(conversation: Conversation) -> str:
    return json.dumps(conversation.model_dump(mode="json", exclude_none=True), indent=2)
