"""webhooks.times: the times operators type, for the CLI and the console alike."""

from __future__ import annotations

import pytest

from webhooks.times import parse_time


@pytest.mark.parametrize(
    ("text", "epoch_s"),
    [
        ("1700000000", 1_700_000_000.0),
        ("1700000000.5", 1_700_000_000.5),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),  # naive: UTC
    ],
)
def test_iso_8601_and_epoch_seconds(text: str, epoch_s: float) -> None:
    assert parse_time(text) == epoch_s


def test_anything_else_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'yesterday' is not an ISO 8601 time"):
        parse_time("yesterday")
