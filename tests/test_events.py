"""webhooks.events: the guide's payload, validated and serialized exactly."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from webhooks.errors import InvalidEvent
from webhooks.events import MessageEvent, event_body, parse_event

GUIDE_TOP_FIELDS = {"conversation_id", "data", "timestamp"}
GUIDE_DATA_FIELDS = {
    "id", "content", "content_type", "filename", "type", "channel", "status",
    "metadata", "created_by", "updated_by", "created_at", "updated_at",
}  # fmt: skip
OPTIONAL_DATA_FIELDS = {"filename", "metadata"}


def guide_event(**data: Any) -> dict[str, Any]:
    """The guide's "Webhook Payload" example, with real UUIDs, as a media message."""
    return {
        "conversation_id": str(uuid.uuid4()),
        "data": {
            "id": str(uuid.uuid4()),
            "content": "Message content",
            "content_type": "DOCUMENT",
            "filename": "document.pdf",
            "type": "USER_INPUT",
            "channel": "API",
            "status": "RECEIVED",
            "metadata": {"source": "crm", "tags": ["a", "b"]},
            "created_by": "user123",
            "updated_by": "user123",
            "created_at": "2024-03-21T10:00:00Z",
            "updated_at": "2024-03-21T10:00:00Z",
            **data,
        },
        "timestamp": "2024-03-21T10:00:00.000Z",
    }


def text_event(**data: Any) -> dict[str, Any]:
    """A TEXT message without the optional fields."""
    event = guide_event(**{"content_type": "TEXT", **data})
    for name in OPTIONAL_DATA_FIELDS - set(data):
        del event["data"][name]
    return event


def body_of(event: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(event_body(parse_event(event)))
    return parsed


def problem_paths(excinfo: pytest.ExceptionInfo[InvalidEvent]) -> list[str]:
    return [path for path, _ in excinfo.value.problems]


# --- valid payloads -------------------------------------------------------------


def test_guide_payload_parses_into_an_event() -> None:
    # Given the guide's example payload
    event = guide_event()

    # When it is parsed
    parsed = parse_event(event)

    # Then every field carries the given value
    assert isinstance(parsed, MessageEvent)
    assert str(parsed.conversation_id) == event["conversation_id"]
    assert str(parsed.data.id) == event["data"]["id"]
    assert parsed.data.content_type == "DOCUMENT"
    assert parsed.data.filename == "document.pdf"
    assert parsed.data.metadata == {"source": "crm", "tags": ["a", "b"]}
    assert parsed.timestamp == datetime(2024, 3, 21, 10, tzinfo=UTC)


def test_parse_event_returns_an_already_parsed_event_as_is() -> None:
    # Given an event that was already validated
    parsed = parse_event(guide_event())

    # When it is parsed again
    again = parse_event(parsed)

    # Then it is the very same object
    assert again is parsed


def test_body_has_exactly_the_guides_field_names() -> None:
    # Given the guide's full example
    event = guide_event()

    # When the body is built
    body = body_of(event)

    # Then it has the guide's names, no more, no fewer, and the values round-trip
    assert set(body) == GUIDE_TOP_FIELDS
    assert set(body["data"]) == GUIDE_DATA_FIELDS
    assert body["conversation_id"] == event["conversation_id"]
    assert body["data"] == {**event["data"]}
    assert body["timestamp"] == "2024-03-21T10:00:00.000Z"


def test_body_is_compact_utf8_json() -> None:
    # Given content with non-ASCII characters
    event = text_event(content="héllo wörld ✓")

    # When the body is built
    raw = event_body(parse_event(event))

    # Then it is compact JSON with the characters as UTF-8, not \u escapes
    assert "héllo wörld ✓".encode() in raw
    assert b", " not in raw and b'": ' not in raw


def test_absent_optional_fields_are_omitted_not_null() -> None:
    # Given a TEXT message with neither filename nor metadata
    event = text_event()

    # When the body is built
    body = body_of(event)

    # Then the optional keys are absent rather than null
    assert set(body["data"]) == GUIDE_DATA_FIELDS - OPTIONAL_DATA_FIELDS
    assert None not in body["data"].values()


@pytest.mark.parametrize("name", sorted(OPTIONAL_DATA_FIELDS))
def test_explicit_null_optional_field_is_omitted(name: str) -> None:
    # Given a media message whose optional field is sent as null
    event = guide_event(**{name: None})

    # When the body is built
    body = body_of(event)

    # Then the key is dropped, the other optional field stays
    assert name not in body["data"]
    (other,) = OPTIONAL_DATA_FIELDS - {name}
    assert other in body["data"]


def test_empty_metadata_object_is_kept() -> None:
    # Given metadata sent as an empty object (present, just empty)
    event = text_event(metadata={})

    # When the body is built
    body = body_of(event)

    # Then it is kept as an empty object
    assert body["data"]["metadata"] == {}


@pytest.mark.parametrize("content_type", ["IMAGE", "VIDEO", "DOCUMENT", "AUDIO"])
def test_media_messages_accept_a_filename(content_type: str) -> None:
    # Given a media message with a filename
    event = guide_event(content_type=content_type, filename="clip.bin")

    # When the body is built
    body = body_of(event)

    # Then the filename goes out
    assert body["data"]["filename"] == "clip.bin"


# --- datetimes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2024-03-21T10:00:00Z", "2024-03-21T10:00:00Z"),
        ("2024-03-21T10:00:00", "2024-03-21T10:00:00Z"),  # naive: read as UTC
        ("2024-03-21T12:00:00+02:00", "2024-03-21T10:00:00Z"),
        ("2024-03-21T05:30:00-04:30", "2024-03-21T10:00:00Z"),
        ("2024-03-21T10:00:00.123456Z", "2024-03-21T10:00:00.123Z"),
        ("2024-03-21T11:00:00.5+01:00", "2024-03-21T10:00:00.500Z"),
    ],
)
def test_created_and_updated_at_go_out_as_utc_with_z(given: str, expected: str) -> None:
    # Given message times in various ISO 8601 forms
    event = text_event(created_at=given, updated_at=given)

    # When the body is built
    body = body_of(event)

    # Then both are ISO 8601 UTC with a "Z"
    assert body["data"]["created_at"] == expected
    assert body["data"]["updated_at"] == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2024-03-21T10:00:00Z", "2024-03-21T10:00:00.000Z"),
        ("2024-03-21T10:00:00", "2024-03-21T10:00:00.000Z"),
        ("2024-03-21T12:00:00.250+02:00", "2024-03-21T10:00:00.250Z"),
        ("2024-03-21T10:00:00.123999Z", "2024-03-21T10:00:00.123Z"),
    ],
)
def test_timestamp_always_has_milliseconds(given: str, expected: str) -> None:
    # Given an event timestamp with or without a fraction
    event = text_event()
    event["timestamp"] = given

    # When the body is built
    body = body_of(event)

    # Then it always carries exactly three fraction digits and a "Z"
    assert body["timestamp"] == expected


def test_datetime_objects_are_accepted_naive_as_utc_and_aware_converted() -> None:
    # Given Python datetimes, as the guide's generator produces with datetime.now()
    naive = datetime(2024, 3, 21, 10, 0, 0)
    plus_two = datetime(2024, 3, 21, 12, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    event = text_event(created_at=naive, updated_at=plus_two)
    event["timestamp"] = naive

    # When the body is built
    body = body_of(event)

    # Then all of them go out as the same UTC instant
    assert body["data"]["created_at"] == "2024-03-21T10:00:00Z"
    assert body["data"]["updated_at"] == "2024-03-21T10:00:00Z"
    assert body["timestamp"] == "2024-03-21T10:00:00.000Z"


def test_parsed_datetimes_are_timezone_aware_utc() -> None:
    # Given a naive and an offset time
    event = text_event(created_at="2024-03-21T10:00:00", updated_at="2024-03-21T12:00:00+02:00")

    # When parsed
    data = parse_event(event).data

    # Then both are aware and in UTC
    assert data.created_at.utcoffset() == timedelta(0)
    assert data.updated_at.utcoffset() == timedelta(0)
    assert data.created_at == data.updated_at


# --- rejections -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "good"),
    [
        ("content_type", ["TEXT", "IMAGE", "VIDEO", "DOCUMENT", "AUDIO"]),
        ("type", ["USER_INPUT", "SYSTEM", "BOT"]),
        ("channel", ["API", "WHATSAPP", "SMS"]),
        ("status", ["RECEIVED", "PROCESSED", "FAILED"]),
    ],
)
def test_every_enum_accepts_the_guides_values_and_rejects_others(
    field: str, good: list[str]
) -> None:
    # Given each of the guide's values, then an unknown and a lower-case one
    for value in good:
        event = text_event(**{field: value})
        if field == "content_type" and value != "TEXT":
            event["data"]["filename"] = "f.bin"
        assert body_of(event)["data"][field] == value

    for bad in ["UNKNOWN", good[0].lower(), ""]:
        # When an unknown value is parsed
        with pytest.raises(InvalidEvent) as excinfo:
            parse_event(text_event(**{field: bad}))

        # Then the problem names that field
        assert problem_paths(excinfo) == [f"data.{field}"]


@pytest.mark.parametrize("where", ["top", "data"])
def test_unknown_extra_field_is_rejected(where: str) -> None:
    # Given an event with a field the guide does not define
    event = text_event()
    target = event if where == "top" else event["data"]
    target["conversationId"] = event["conversation_id"]

    # When parsed
    with pytest.raises(InvalidEvent) as excinfo:
        parse_event(event)

    # Then the extra field is named
    expected = "conversationId" if where == "top" else "data.conversationId"
    assert problem_paths(excinfo) == [expected]


def test_filename_on_a_text_message_is_rejected() -> None:
    # Given a TEXT message carrying a filename
    event = text_event(filename="document.pdf")

    # When parsed
    with pytest.raises(InvalidEvent) as excinfo:
        parse_event(event)

    # Then the problem is reported under data.filename
    ((path, message),) = excinfo.value.problems
    assert path == "data.filename"
    assert "media messages" in message


@pytest.mark.parametrize("field", ["created_at", "updated_at"])
def test_numeric_timestamps_are_rejected(field: str) -> None:
    # Given a Unix time where the guide wants ISO 8601
    event = text_event()
    event["data"][field] = 1711015200

    # When parsed
    with pytest.raises(InvalidEvent) as excinfo:
        parse_event(event)

    # Then the field is named and the problem explained
    assert problem_paths(excinfo) == [f"data.{field}"]
    assert "ISO 8601" in str(excinfo.value)


@pytest.mark.parametrize("field", ["created_by", "updated_by"])
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_creator_or_modifier_is_rejected(field: str, value: str) -> None:
    # Given an empty or blank creator/modifier
    event = text_event(**{field: value})

    # When parsed
    with pytest.raises(InvalidEvent) as excinfo:
        parse_event(event)

    # Then that field is named
    assert problem_paths(excinfo) == [f"data.{field}"]


@pytest.mark.parametrize(
    "missing",
    ["id", "content", "content_type", "type", "channel", "status",
     "created_by", "updated_by", "created_at", "updated_at"],
)  # fmt: skip
def test_each_required_data_field_is_required(missing: str) -> None:
    # Given an event lacking one required data field
    event = text_event()
    del event["data"][missing]

    # When parsed
    with pytest.raises(InvalidEvent) as excinfo:
        parse_event(event)

    # Then exactly that field is reported
    assert problem_paths(excinfo) == [f"data.{missing}"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("conversation_id", "uuid-string"),
        ("data.id", "message-uuid"),
        ("timestamp", "yesterday"),
        ("data.created_at", "21/03/2024"),
    ],
)
def test_malformed_uuids_and_times_are_rejected(path: str, value: str) -> None:
    # Given the guide's placeholder strings or a non-ISO date
    event = text_event()
    container = event["data"] if path.startswith("data.") else event
    container[path.removeprefix("data.")] = value

    # When parsed
    with pytest.raises(InvalidEvent) as excinfo:
        parse_event(event)

    # Then the field is named
    assert problem_paths(excinfo) == [path]


def test_invalid_event_lists_every_bad_field() -> None:
    # Given an event with several independent problems
    event = text_event(content_type="GIF", created_by="")
    event["conversation_id"] = "not-a-uuid"

    # When parsed
    with pytest.raises(InvalidEvent) as excinfo:
        parse_event(event)

    # Then all of them are listed, each with a message, and the error is a ValueError
    assert set(problem_paths(excinfo)) == {
        "conversation_id",
        "data.content_type",
        "data.created_by",
    }
    assert all(message for _, message in excinfo.value.problems)
    assert isinstance(excinfo.value, ValueError)
    assert "data.content_type" in str(excinfo.value)
    assert "data.created_by" in str(excinfo.value)


@pytest.mark.parametrize("value", ["{}", b"{}", ["a"], None, 42])
def test_non_object_input_gives_a_clear_invalid_event(value: object) -> None:
    # Given something that is not a JSON object
    # When parsed
    with pytest.raises(InvalidEvent) as excinfo:
        parse_event(value)  # type: ignore[arg-type]

    # Then the error says an object was expected and what came instead
    ((path, message),) = excinfo.value.problems
    assert path == "(event)"
    assert "expected an object" in message
    assert type(value).__name__ in message


def test_missing_data_object_is_reported() -> None:
    # Given an event without its data object
    event = text_event()
    del event["data"]

    # When parsed
    with pytest.raises(InvalidEvent) as excinfo:
        parse_event(event)

    # Then "data" is named
    assert problem_paths(excinfo) == ["data"]


def test_parsed_event_is_immutable() -> None:
    # Given a parsed event
    parsed = parse_event(text_event())

    # When someone tries to change it after validation
    # Then it refuses, so the signed body cannot drift from the validated one
    with pytest.raises(ValueError, match="frozen"):
        parsed.data.content = "changed"  # type: ignore[misc]


def nested(levels: int) -> dict[str, Any]:
    """A metadata object ``levels`` objects deep: {"a": {"a": ... {}}}."""
    root: dict[str, Any] = {}
    current = root
    for _ in range(levels - 1):
        current["a"] = {}
        current = current["a"]
    return root


def test_metadata_up_to_the_depth_cap_is_accepted() -> None:
    # Given metadata exactly 32 levels deep, mixing objects and lists
    metadata = nested(31)
    metadata["list"] = [nested(30)]
    # When it is parsed and serialized
    body = body_of(text_event(metadata=metadata))
    # Then it goes out unchanged
    assert body["data"]["metadata"] == metadata


@pytest.mark.parametrize("levels", [33, 300, 5000])
def test_metadata_nested_deeper_than_the_cap_is_an_invalid_event(levels: int) -> None:
    """Deep nesting used to pass validation and fail at apply_async with
    PydanticSerializationError (about 255 levels) instead of InvalidEvent."""
    # Given metadata nested deeper than 32 levels
    event = text_event(metadata=nested(levels))
    # When it is validated
    with pytest.raises(InvalidEvent) as excinfo:
        event_body(parse_event(event))
    # Then the problem names the field and the cap
    assert problem_paths(excinfo) == ["data.metadata"]
    assert "deeper than 32 levels" in str(excinfo.value)
