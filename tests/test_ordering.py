"""webhooks.ordering: an ordered conversation's line, on a real Redis of the module's own."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from webhooks import keys
from webhooks.ordering import START_WITHIN_S, OrderedLines, Turn, ordered_line_gauges
from webhooks.progress import Delivery


@pytest.fixture
def lines(own_client: redis.Redis) -> OrderedLines:
    return OrderedLines(own_client)


@pytest.fixture
def cid() -> str:
    return str(uuid.uuid4())


def event(cid: str, sequence: int) -> Delivery:
    return Delivery({"conversation_id": cid}, f"msg_{sequence}", sequence=sequence)


def test_admission_numbers_each_conversation_in_publication_order(
    lines: OrderedLines, cid: str
) -> None:
    # Given two conversations, published to in turns
    other = str(uuid.uuid4())
    admitted = [
        lines.admit(c, Delivery({"conversation_id": c}, f"msg_{i}"))
        for i, c in enumerate((cid, other, cid, cid))
    ]

    # Then each has its own gapless order from 1; each first event goes to
    # the broker, the later ones wait in their line
    assert admitted == [(1, Turn.NOW), (1, Turn.NOW), (2, Turn.WAIT), (3, Turn.WAIT)]

    # And a kept event is handed out with its number when its turn comes
    assert lines.end(cid, 1) == Delivery({"conversation_id": cid}, "msg_2", sequence=2)


def test_an_event_published_after_its_line_drained_goes_at_once(
    lines: OrderedLines, cid: str
) -> None:
    # Given event 1 published and ended
    assert lines.admit(cid, Delivery({"conversation_id": cid}, "msg_1")) == (1, Turn.NOW)
    assert lines.end(cid, 1) is None

    # Then event 2 goes straight to the broker
    assert lines.admit(cid, Delivery({"conversation_id": cid}, "msg_2")) == (2, Turn.NOW)


def test_the_first_event_goes_and_its_successors_wait(lines: OrderedLines, cid: str) -> None:
    # When events 2, 3 and 1 reach workers in that order
    turns = [lines.enter(cid, event(cid, n)) for n in (2, 3, 1)]

    # Then only 1 may be delivered; 2 and 3 wait in the line
    assert turns == [Turn.WAIT, Turn.WAIT, Turn.NOW]
    (blocked,) = lines.blocked()
    assert (blocked.conversation_id, blocked.next_sequence, blocked.waiting) == (cid, 1, 2)


def test_an_end_hands_out_exactly_the_next_event(lines: OrderedLines, cid: str) -> None:
    # Given 1 in flight and 2, 3 waiting
    for n in (2, 3, 1):
        lines.enter(cid, event(cid, n))

    # When 1 ends, the line hands out 2 (and only 2)
    successor = lines.end(cid, 1)
    assert successor == event(cid, 2)

    # Then 2, published, is let through; 3 still waits behind it
    assert lines.enter(cid, successor) is Turn.NOW
    assert lines.enter(cid, event(cid, 3)) is Turn.WAIT
    assert lines.end(cid, 2) == event(cid, 3)


def test_a_redelivered_event_that_already_ended_is_not_let_through(
    lines: OrderedLines, cid: str
) -> None:
    # Given event 1 delivered and ended
    lines.enter(cid, event(cid, 1))
    lines.end(cid, 1)

    # When a worker crash makes the broker hand it out again
    # Then it is recognised as ended, and a second end changes nothing
    assert lines.enter(cid, event(cid, 1)) is Turn.ENDED
    assert lines.end(cid, 1) is None
    assert lines.enter(cid, event(cid, 2)) is Turn.NOW


def test_a_skipped_number_does_not_block_the_line(lines: OrderedLines, cid: str) -> None:
    # Given 3 waiting, and 2 never published (its producer's publish failed)
    lines.enter(cid, event(cid, 1))
    lines.enter(cid, event(cid, 3))
    assert lines.end(cid, 2) is None  # skipped while 1 is still in flight

    # When 1 ends
    # Then the line moves past 2, at once, to 3
    assert lines.end(cid, 1) == event(cid, 3)


def past(own_client: redis.Redis, cid: str) -> None:
    """As if the time to start the line's next event had run out (the line's
    own due time and its index entry both passed)."""
    due = int((time.time() - 1) * 1000)
    own_client.set(keys.line(cid).due, due)
    own_client.zadd(keys.ORDERED_DUE, {cid: due})


def test_a_handed_out_event_not_started_in_time_is_published_again(
    lines: OrderedLines, own_client: redis.Redis, cid: str
) -> None:
    # Given 2 handed out when 1 ended, and then lost (its publisher died, or
    # its message did)
    lines.enter(cid, event(cid, 2))
    lines.enter(cid, event(cid, 1))
    assert lines.end(cid, 1) == event(cid, 2)
    assert lines.due() == []  # it still has START_WITHIN_S to start
    assert START_WITHIN_S >= 10

    # When its time has run out, one pump gets it to publish again, and the
    # next pump only once its time has run out again
    past(own_client, cid)
    assert lines.due() == [(cid, event(cid, 2))]
    assert lines.due() == []
    past(own_client, cid)
    assert lines.due() == [(cid, event(cid, 2))]

    # Then once a worker starts it, it is due only after the in-flight time
    before_ms = time.time() * 1000
    assert lines.enter(cid, event(cid, 2)) is Turn.NOW
    due_at = own_client.get(keys.line(cid).due)
    assert due_at is not None and int(due_at) >= before_ms + 120_000 - 1000
    assert lines.due() == []
    # (its index entry may be early: the pump asks the line, and puts it off)
    own_client.zadd(keys.ORDERED_DUE, {cid: int(before_ms)})
    assert lines.due() == []
    assert own_client.zscore(keys.ORDERED_DUE, cid) == int(due_at)


def test_a_started_event_whose_retry_is_lost_is_published_again_from_its_progress(
    lines: OrderedLines, own_client: redis.Redis, cid: str
) -> None:
    # Given the line's first event started on its 2nd attempt, and its retry
    # message lost before any worker started it again
    second_try = Delivery({"conversation_id": cid}, "msg_1", attempt=2, retries=1, sequence=1)
    assert lines.enter(cid, second_try) is Turn.NOW

    # When its in-flight time has run out
    past(own_client, cid)

    # Then the pump publishes it again where it left off; its successor still waits
    assert lines.due() == [(cid, second_try)]
    assert lines.enter(cid, event(cid, 2)) is Turn.WAIT


def test_a_first_event_whose_message_is_lost_is_published_again(
    lines: OrderedLines, own_client: redis.Redis, cid: str
) -> None:
    # Given an event admitted to go to the broker at once, whose message
    # never reaches a worker
    assert lines.admit(cid, Delivery({"conversation_id": cid}, "msg_1"))[1] is Turn.NOW

    # When its time has run out
    past(own_client, cid)

    # Then the pump publishes it again, numbered
    assert lines.due() == [(cid, Delivery({"conversation_id": cid}, "msg_1", sequence=1))]


def test_a_line_with_no_one_waiting_is_not_blocked(lines: OrderedLines, cid: str) -> None:
    # Given 1 in flight and 2 waiting
    lines.enter(cid, event(cid, 1))
    lines.enter(cid, event(cid, 2))
    assert [b.conversation_id for b in lines.blocked()] == [cid]

    # When both end in turn
    assert lines.end(cid, 1) is not None
    assert lines.enter(cid, event(cid, 2)) is Turn.NOW
    lines.end(cid, 2)

    # Then nothing is held back any more
    assert lines.blocked() == []


def test_the_metrics_gauges_count_blocked_lines_and_the_oldest_age(
    lines: OrderedLines, own_client: redis.Redis, cid: str
) -> None:
    # Given no blocked line, the gauges are zero
    assert ordered_line_gauges(lines) == {
        "ordered_lines_blocked": {"all": 0.0},
        "ordered_line_blocked_seconds": {"oldest": 0.0},
    }

    # When a line has been blocked for about 90 s
    lines.enter(cid, event(cid, 1))
    lines.enter(cid, event(cid, 2))
    own_client.set(keys.line(cid).blocked, int((time.time() - 90) * 1000))

    # Then they count it and show its age
    gauges = ordered_line_gauges(lines)
    assert gauges["ordered_lines_blocked"] == {"all": 1.0}
    assert 89 <= gauges["ordered_line_blocked_seconds"]["oldest"] <= 95


def test_a_stale_due_entry_is_dropped(
    lines: OrderedLines, own_client: redis.Redis, cid: str
) -> None:
    # Given a line whose only event ended, and its index entry left behind
    # (as a crash between the line's script and the index write leaves it)
    lines.admit(cid, Delivery({"conversation_id": cid}, "msg_1"))
    lines.end(cid, 1)
    own_client.zadd(keys.ORDERED_DUE, {cid: 0})

    # When the pump looks, nothing is published and the entry is gone
    assert lines.due() == []
    assert own_client.zscore(keys.ORDERED_DUE, cid) is None


def test_an_event_admitted_while_the_pump_drops_the_entry_keeps_its_line_indexed(
    lines: OrderedLines, own_client: redis.Redis, cid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a drained line with a stale index entry, and an event admitted
    # just after the pump's look found nothing due
    lines.admit(cid, Delivery({"conversation_id": cid}, "msg_1"))
    lines.end(cid, 1)
    own_client.zadd(keys.ORDERED_DUE, {cid: 0})
    look = lines._due

    def look_then_admit(**kwargs: object) -> object:
        reply = look(**kwargs)  # type: ignore[arg-type]
        lines.admit(cid, Delivery({"conversation_id": cid}, "msg_2"))
        return reply

    monkeypatch.setattr(lines, "_due", look_then_admit)

    # When the pump drops the entry
    assert lines.due() == []

    # Then the line is still indexed, no later than it is due
    due, indexed = own_client.get(keys.line(cid).due), own_client.zscore(keys.ORDERED_DUE, cid)
    assert due is not None and indexed is not None and indexed <= int(due)


def test_every_due_line_is_indexed_no_later_than_it_is_due(
    lines: OrderedLines, own_client: redis.Redis, cid: str
) -> None:
    # When events are entered and ended (the line's due time first set far
    # ahead, for a started event, then brought forward by the hand-out)
    for step in (
        lambda: lines.enter(cid, event(cid, 1)),
        lambda: lines.enter(cid, event(cid, 2)),
        lambda: lines.end(cid, 1),
        lambda: lines.enter(cid, event(cid, 2)),
    ):
        step()
        # Then after each, the line's index entry is no later than its due time
        due, indexed = own_client.get(keys.line(cid).due), own_client.zscore(keys.ORDERED_DUE, cid)
        assert due is not None and indexed is not None and indexed <= int(due)


def test_a_blocked_entry_whose_line_drained_is_dropped(
    lines: OrderedLines, own_client: redis.Redis, cid: str
) -> None:
    # Given an index entry for a line that holds nothing back
    lines.enter(cid, event(cid, 1))
    own_client.zadd(keys.ORDERED_BLOCKED, {cid: 0})

    # When the blocked lines are read, it is not listed, and it is dropped
    assert lines.blocked() == []
    assert own_client.zscore(keys.ORDERED_BLOCKED, cid) is None


def test_a_line_blocked_while_a_reader_drops_its_entry_stays_listed(
    lines: OrderedLines, own_client: redis.Redis, cid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stale entry for a line with nothing held back, and an event
    # that blocks the line just after the reader looked at it
    lines.enter(cid, event(cid, 1))
    own_client.zadd(keys.ORDERED_BLOCKED, {cid: 0})
    look = lines._line_state

    def look_then_block(conversation_id: str) -> tuple[int, int, float | None]:
        state = look(conversation_id)
        lines.enter(cid, event(cid, 2))
        return state

    monkeypatch.setattr(lines, "_line_state", look_then_block)

    # When the reader drops the entry
    assert lines.blocked() == []

    # Then the line is still indexed, and listed at the next read
    monkeypatch.undo()
    assert [b.conversation_id for b in lines.blocked()] == [cid]


def test_an_out_of_turn_end_of_the_last_one_held_back_unblocks_the_line(
    lines: OrderedLines, own_client: redis.Redis, cid: str
) -> None:
    # Given 1 in flight and 2 held back
    lines.enter(cid, event(cid, 1))
    lines.enter(cid, event(cid, 2))

    # When 2 ends out of turn (its publish failed)
    assert lines.end(cid, 2) is None

    # Then nothing is held back, and the line is no longer blocked
    assert lines.blocked() == []
    assert own_client.get(keys.line(cid).blocked) is None
