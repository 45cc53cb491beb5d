"""The message event exactly as the integration guide's "Webhook Payload".

Validation happens in the producer, before anything is published, so a bad
event is the caller's exception rather than a dead letter nobody reads. The
worker validates again because anything can publish to the queue.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic.functional_validators import AfterValidator

from webhooks.errors import InvalidEvent

__all__ = [
    "Channel",
    "ContentType",
    "MessageData",
    "MessageEvent",
    "MessageStatus",
    "MessageType",
    "event_body",
    "parse_event",
]


class ContentType(StrEnum):
    TEXT = "TEXT"
    IMAGE = "IMAGE"
    VIDEO = "VIDEO"
    DOCUMENT = "DOCUMENT"
    AUDIO = "AUDIO"


class MessageType(StrEnum):
    USER_INPUT = "USER_INPUT"
    SYSTEM = "SYSTEM"
    BOT = "BOT"


class Channel(StrEnum):
    API = "API"
    WHATSAPP = "WHATSAPP"
    SMS = "SMS"


class MessageStatus(StrEnum):
    RECEIVED = "RECEIVED"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"


def _as_utc(value: datetime) -> datetime:
    # The guide's own test generator sends naive ``datetime.now()``; we read
    # a naive time as UTC rather than guess the producer's zone.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _iso_utc(value: datetime) -> str:
    """``2024-03-21T10:00:00Z``, with milliseconds only when there are any."""
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def _iso_utc_ms(value: datetime) -> str:
    """``2024-03-21T10:00:00.000Z``: the event timestamp always has milliseconds."""
    return value.strftime("%Y-%m-%dT%H:%M:%S") + f".{value.microsecond // 1000:03d}Z"


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]


def _iso_only(value: object) -> object:
    # pydantic would read a number as Unix time; the guide says ISO 8601.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("must be an ISO 8601 date-time string, not a number")  # noqa: TRY004
    return value


_Iso = BeforeValidator(_iso_only)
UtcDatetime = Annotated[datetime, _Iso, AfterValidator(_as_utc), PlainSerializer(_iso_utc)]
UtcDatetimeMs = Annotated[datetime, _Iso, AfterValidator(_as_utc), PlainSerializer(_iso_utc_ms)]

#: How deep ``metadata`` may nest (containers inside containers). pydantic
#: cannot serialize much beyond 255 levels and a receiver has no use for it.
MAX_METADATA_DEPTH = 32

_MEDIA = frozenset({ContentType.IMAGE, ContentType.VIDEO, ContentType.DOCUMENT, ContentType.AUDIO})
_OPTIONAL = ("filename", "metadata")


class MessageData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: UUID
    content: str
    content_type: ContentType
    filename: str | None = None
    type: MessageType
    channel: Channel
    status: MessageStatus
    metadata: dict[str, Any] | None = None
    created_by: NonEmptyStr
    updated_by: NonEmptyStr
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @field_validator("filename")
    @classmethod
    def _filename_only_for_media(cls, value: str | None, info: ValidationInfo) -> str | None:
        # content_type is declared first, so it is validated by now (absent
        # from info.data only if it was itself invalid).
        content_type = info.data.get("content_type")
        if value is not None and content_type is not None and content_type not in _MEDIA:
            raise ValueError("filename is only allowed for media messages")
        return value

    @field_validator("metadata")
    @classmethod
    def _json_encodable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Checked here, not when encoding: dumped "as JSON" pydantic would
        # quietly turn NaN into null and a lone surrogate in a key into
        # U+FFFD, changing what the producer sent. Depth first: deep nesting
        # would otherwise fail only at apply_async, as a serialization error.
        too_deep = _deeper_than(value, MAX_METADATA_DEPTH)
        if too_deep is not None:
            raise ValueError(
                f"nested deeper than {MAX_METADATA_DEPTH} levels (at {_shorten(too_deep)})"
            )
        for path, problem in _unencodable(value, ""):
            raise ValueError(f"{path}: {problem}")
        return value

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: Any) -> dict[str, Any]:
        # The guide: optional fields are absent, never null.
        data: dict[str, Any] = handler(self)
        for name in _OPTIONAL:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class MessageEvent(BaseModel):
    """One webhook payload: a message created or processed in a conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversation_id: UUID
    data: MessageData
    timestamp: UtcDatetimeMs


def parse_event(event: MessageEvent | dict[str, Any]) -> MessageEvent:
    """Validate ``event``; raise :class:`InvalidEvent` naming every bad field."""
    if isinstance(event, MessageEvent):
        return event
    if not isinstance(event, dict):
        raise InvalidEvent([("(event)", f"expected an object, got {type(event).__name__}")])
    try:
        return MessageEvent.model_validate(event)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in err["loc"]) or "(event)", err["msg"])
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise InvalidEvent(problems) from exc


def event_body(event: MessageEvent) -> bytes:
    """The exact bytes POSTed and signed: compact JSON, UTF-8.

    Raises :class:`InvalidEvent` for what JSON or UTF-8 cannot carry (NaN,
    infinities, lone surrogates), naming where it is.
    """
    dumped = event.model_dump(mode="json")
    try:
        text = json.dumps(dumped, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        raise InvalidEvent(list(_unencodable(dumped, ""))) from None


def _unencodable(value: Any, path: str) -> Iterator[tuple[str, str]]:
    for where, leaf in _leaves(value, path):
        if isinstance(leaf, float) and not math.isfinite(leaf):
            yield where, f"{leaf} is not a JSON number"
        elif isinstance(leaf, str):
            try:
                leaf.encode("utf-8")
            except UnicodeEncodeError as exc:
                yield (
                    where,
                    f"{leaf[exc.start]!a} at character {exc.start} is a lone surrogate, "
                    "which UTF-8 cannot encode",
                )


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every scalar in a JSON-like value, with its dotted path ("" for the root)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}(key {key!r})", key
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}.{index}" if path else str(index))
    else:
        yield path or "(event)", value


def _deeper_than(value: Any, limit: int) -> str | None:
    """The path of the first container nested more than ``limit`` deep, if any.

    Iterative, so that a metadata nested thousands deep cannot exhaust the
    interpreter's stack while it is being judged.
    """
    pending: list[tuple[Any, int, str]] = [(value, 1, "")]
    while pending:
        current, depth, path = pending.pop()
        if isinstance(current, dict):
            items: Iterator[tuple[Any, Any]] = iter(current.items())
        elif isinstance(current, list):
            items = iter(enumerate(current))
        else:
            continue
        if depth > limit:
            return path or "(metadata)"
        for key, item in items:
            pending.append((item, depth + 1, f"{path}.{key}" if path else str(key)))
    return None


def _shorten(path: str, keep: int = 80) -> str:
    return path if len(path) <= keep else f"{path[: keep // 2]}…{path[-keep // 2 :]}"
