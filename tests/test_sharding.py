"""The conversation -> broker group mapping: stable, even, minimal moves."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter

import pytest

from webhooks.sharding import broker_index

IDS = [str(uuid.UUID(int=i * 7919 + 1, version=4)) for i in range(6000)]


@pytest.mark.parametrize(
    ("conversation_id", "expected"),
    [
        ("5b0c3f0e-1f7e-4a86-9b7b-3d6f9c1f2a10", [0, 0, 0, 0, 6, 60]),
        ("0d9c2a4e-8a53-4c52-9d6e-6f1f0f5f3b21", [0, 1, 2, 2, 5, 58]),
        ("00000000-0000-0000-0000-000000000000", [0, 0, 0, 4, 4, 84]),
    ],
)
def test_the_mapping_is_pinned(conversation_id: str, expected: list[int]) -> None:
    # Given fixed ids, when mapped onto 1..100 groups, then the answers never
    # change: every producer, worker and release must agree on them.
    assert [broker_index(conversation_id, n) for n in (1, 2, 3, 5, 10, 100)] == expected


def test_another_process_maps_the_same_way() -> None:
    # Given a fresh interpreter (its own hash() salt), when it maps the same ids
    code = "import sys; from webhooks.sharding import broker_index as b; " + (
        "print([b(c, 7) for c in sys.argv[1:]])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *IDS[:50]], capture_output=True, text=True, check=True
    )
    # Then it gets our answers
    assert out.stdout.strip() == str([broker_index(c, 7) for c in IDS[:50]])


@pytest.mark.parametrize("groups", [2, 3, 8])
def test_conversations_spread_evenly(groups: int) -> None:
    counts = Counter(broker_index(c, groups) for c in IDS)
    assert set(counts) == set(range(groups))
    expected = len(IDS) / groups
    assert all(abs(n - expected) < 0.1 * expected for n in counts.values()), counts


def test_adding_a_group_moves_only_its_share_and_only_to_it() -> None:
    # Given conversations mapped onto 3 groups, when a fourth is appended
    moved = [
        (before, after)
        for before, after in ((broker_index(c, 3), broker_index(c, 4)) for c in IDS)
        if before != after
    ]
    # Then about a quarter move, every one of them to the new group
    assert {after for _, after in moved} == {3}
    assert abs(len(moved) / len(IDS) - 0.25) < 0.03


def test_no_groups_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one broker group"):
        broker_index(IDS[0], 0)
