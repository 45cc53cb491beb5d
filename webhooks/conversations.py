"""Conversation configurations and their signing secrets, kept in Redis.

The stored shape is the guide's ``{"channel", "usecase", "config":
{"workflow_id", "callback_url"}}`` plus the secrets. A replaced secret (by
``rotate_secret`` or by ``set`` with a new one) keeps signing beside the new
one for the overlap period, so a receiver can deploy the new secret without
rejecting a single webhook. Every secret still inside its overlap keeps
signing, up to ``MAX_PREVIOUS_SECRETS``: rotating twice in a day must not
cut off receivers still on the first secret.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from webhooks import keys, secrets_at_rest
from webhooks.errors import InvalidConfiguration, SecretsLocked
from webhooks.events import Channel
from webhooks.ratelimit import Limits, RateLimit
from webhooks.secretbox import SecretBox
from webhooks.signing import generate_secret, secret_key
from webhooks.store import Store, get_many
from webhooks.urlpolicy import check_url, resolve_public

__all__ = [
    "MAX_PREVIOUS_SECRETS",
    "CachedConversations",
    "CallbackConfig",
    "Conversation",
    "ConversationConfig",
    "ConversationReader",
    "ConversationStore",
    "PreviousSecret",
]

#: Replaced secrets that may sign at once beside the current one: a bound on
#: the signature header and on the secrets a leak of one record exposes.
MAX_PREVIOUS_SECRETS = 5


class CallbackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    callback_url: str
    workflow_id: str | None = None
    rate_limit: str | None = None  # overrides WEBHOOKS_RATE_LIMIT, e.g. "300/minute"
    max_concurrency: int | None = Field(None, ge=1)  # overrides WEBHOOKS_MAX_CONCURRENCY
    # "conversation": events arrive in publication order; "none": unordered;
    # unset: as WEBHOOKS_ORDERING says (off unless set).
    ordering: Literal["conversation", "none"] | None = None

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


class PreviousSecret(BaseModel):
    """A replaced secret that keeps signing until ``expires_at`` (epoch seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str
    expires_at: float


class Conversation(ConversationConfig):
    """A stored configuration with its secrets (previous ones newest first)."""

    conversation_id: str
    secret: str
    previous_secrets: tuple[PreviousSecret, ...] = ()
    updated_at: float = Field(default_factory=time.time)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        # Records written before several previous secrets were kept.
        if isinstance(data, dict) and "previous_secret" in data:
            data = dict(data)
            old, expires_at = (
                data.pop("previous_secret"),
                data.pop("previous_secret_expires_at", None),
            )
            if old and expires_at is not None:
                data["previous_secrets"] = [{"secret": old, "expires_at": expires_at}]
        return data

    def signing_secrets(self, now: float | None = None) -> list[str]:
        """The current secret, then every previous one still inside its overlap."""
        current = time.time() if now is None else now
        return [self.secret, *(p.secret for p in self.live_previous(current))]

    def live_previous(self, now: float) -> tuple[PreviousSecret, ...]:
        return tuple(p for p in self.previous_secrets if now < p.expires_at)


def normalize_id(conversation_id: str) -> str:
    try:
        return str(UUID(str(conversation_id)))
    except ValueError:
        raise InvalidConfiguration(f"conversation id {conversation_id!r} is not a UUID") from None


class ConversationStore:
    def __init__(
        self,
        client: Store,
        *,
        allow_http: bool,
        allow_private: bool,
        rotation_overlap_s: int,
        box: SecretBox | None = None,
    ) -> None:
        """``box`` seals secrets before they reach Redis; without one they are
        stored plain, and reading a sealed one raises :class:`SecretsLocked`."""
        self._redis = client
        self._allow_http = allow_http
        self._allow_private = allow_private
        self._overlap_s = rotation_overlap_s
        self._box = box

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
        at_once: bool = False,
        now: float | None = None,
    ) -> Conversation:
        """Register or update; keeps the existing secret unless one is given.

        A new ``secret`` for an existing conversation replaces the current one
        as a rotation does: the old one keeps signing for the overlap, unless
        ``at_once`` (a leaked secret) drops every old secret now.
        """
        cid = normalize_id(conversation_id)
        valid = self.validate(config)
        if secret is not None:
            secret_key(secret)
        current = time.time() if now is None else now
        existing = self.get(cid)
        if existing is None:
            kept: tuple[PreviousSecret, ...] = ()
            secret = secret or generate_secret()
        elif secret is None or secret == existing.secret:
            kept = () if at_once else existing.previous_secrets
            secret = existing.secret
        else:
            kept = self._retire(existing, current, at_once=at_once)
        conversation = Conversation(
            conversation_id=cid,
            **valid.model_dump(),
            secret=secret,
            previous_secrets=kept,
            updated_at=current,
        )
        self._save(conversation)
        return conversation

    def rotate_secret(
        self, conversation_id: str, *, at_once: bool = False, now: float | None = None
    ) -> Conversation:
        """A new secret; the old ones keep signing for the overlap unless ``at_once``."""
        cid = normalize_id(conversation_id)
        existing = self.get(cid)
        if existing is None:
            raise InvalidConfiguration(f"conversation {cid} is not registered")
        current = time.time() if now is None else now
        rotated = existing.model_copy(
            update={
                "secret": generate_secret(),
                "previous_secrets": self._retire(existing, current, at_once=at_once),
                "updated_at": current,
            }
        )
        self._save(rotated)
        return rotated

    def _retire(
        self, existing: Conversation, now: float, *, at_once: bool
    ) -> tuple[PreviousSecret, ...]:
        """The previous secrets once ``existing.secret`` is replaced, newest first."""
        if at_once or self._overlap_s <= 0:
            return ()
        retired = PreviousSecret(secret=existing.secret, expires_at=now + self._overlap_s)
        return (retired, *existing.live_previous(now))[:MAX_PREVIOUS_SECRETS]

    def get(self, conversation_id: str) -> Conversation | None:
        raw = self._redis.get(keys.conversation(normalize_id(conversation_id)))
        return None if raw is None else self._load(raw)

    def list_all(self) -> list[Conversation]:
        ids = sorted(str(i) for i in self._redis.smembers(keys.CONVERSATIONS))
        if not ids:
            return []
        raws = get_many(self._redis, [keys.conversation(i) for i in ids])
        return [self._load(r) for r in raws if r is not None]

    def check_key(self) -> None:
        """Raise :class:`SecretsLocked` unless the stored secrets can be opened."""
        secrets_at_rest.check_key(self._redis, self._box)

    def encrypt_secrets(self) -> tuple[int, int]:
        """Seal plain secrets, move sealed ones to the first key (the migration)."""
        if self._box is None:
            raise SecretsLocked("set WEBHOOKS_SECRETS_KEY to encrypt the stored secrets")
        return secrets_at_rest.encrypt_all(self._redis, self._box)

    def delete(self, conversation_id: str) -> bool:
        cid = normalize_id(conversation_id)
        # The record goes first, its index entry after (on a Redis Cluster
        # they are in different slots): a crash in between leaves an entry
        # without a record, which readers skip; never an unlisted record.
        deleted = self._redis.delete(keys.conversation(cid))
        self._redis.srem(keys.CONVERSATIONS, cid)
        return bool(deleted)

    def _save(self, conversation: Conversation) -> None:
        data = conversation.model_dump(mode="json")
        # The canary and the index entry go first, the record after (see
        # delete): a sealed secret is never stored without its canary.
        index = self._redis.pipeline(transaction=False)
        if self._box is not None:
            secrets_at_rest.seal_record(data, self._box)
            secrets_at_rest.mark_sealed(index, self._box)
        index.sadd(keys.CONVERSATIONS, conversation.conversation_id)
        index.execute()
        self._redis.set(keys.conversation(conversation.conversation_id), json.dumps(data))

    def _load(self, raw: str | bytes) -> Conversation:
        data = json.loads(raw)
        secrets_at_rest.open_record(data, self._box)
        return Conversation.model_validate(data)


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
