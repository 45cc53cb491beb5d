"""Times as operators type them: ISO 8601 (naive means UTC) or epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["parse_time"]


def parse_time(text: str) -> float:
    """Epoch seconds for ``text``; raises ``ValueError`` naming what was given."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
