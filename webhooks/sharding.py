"""Which broker group a conversation's deliveries go to.

One broker (a Redis or a Sentinel group) carries a bounded number of
deliveries per second (docs/capacity.md). Past that a deployment runs
several broker groups, each with its own workers, against one shared store,
and every publisher maps a conversation to one group with
:func:`broker_index`. All of one conversation's deliveries then travel
through one group, so an ordered conversation stays on one line of workers.

The hash is Lamping and Veach's jump consistent hash over the SHA-1 of the
conversation id: the same answer in every process and Python version (never
``hash()``, which is salted per process), an even spread, and when a group is
appended to the list only ``1/n`` of the conversations move, all of them to
the new group.
"""

from __future__ import annotations

import hashlib

__all__ = ["broker_index"]

_MASK_64 = (1 << 64) - 1
_LCG = 2862933555777941757  # jump hash's linear congruential multiplier


def broker_index(conversation_id: str, groups: int) -> int:
    """The group, ``0 <= i < groups``, that ``conversation_id`` (as normalized) maps to."""
    if groups < 1:
        raise ValueError(f"need at least one broker group, got {groups}")
    key = int.from_bytes(
        hashlib.sha1(conversation_id.encode(), usedforsecurity=False).digest()[:8], "big"
    )
    chosen, candidate = -1, 0
    while candidate < groups:
        chosen = candidate
        key = (key * _LCG + 1) & _MASK_64
        candidate = int((chosen + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return chosen
