"""webhooks.parking: the per-endpoint waiting lines in a real Redis.

These tests run on a Redis of their own: the session's shared worker runs a
pump that would republish (and so remove) whatever is parked in the
session's Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace

import pytest
import redis

from tests.support import make_event, release_slot
from webhooks import keys
from webhooks.endpoints import normalize_endpoint
from webhooks.parking import ParkedDelivery, ParkingLot, Room
from webhooks.progress import Delivery
from webhooks.ratelimit import Granted, Limiter, Limits, RateLimit

LEASE_S = 30.0
ROOMY = Limits(rate=RateLimit(1000, 60), max_concurrency=100)


@pytest.fixture
def lot(own_client: redis.Redis) -> ParkingLot:
    return ParkingLot(own_client)


@pytest.fixture
def limiter(own_client: redis.Redis) -> Limiter:
    return Limiter(own_client, lease_s=LEASE_S)


@pytest.fixture
def endpoint() -> str:
    return normalize_endpoint(f"https://receiver.example/hook/{uuid.uuid4().hex}")


def delivery(webhook_id: str | None = None, **progress: int | float) -> Delivery:
    fields: dict[str, int | float] = {"attempt": 1, "retries": 0, "waited_s": 0.0, **progress}
    return Delivery(
        event=make_event(),
        callback_url=None,
        webhook_id=webhook_id or f"msg_{uuid.uuid4().hex}",
        attempt=int(fields["attempt"]),
        retries=int(fields["retries"]),
        waited_s=float(fields["waited_s"]),
        place_ms=int(fields.get("place_ms", 0)),
    )


def park_all(lot: ParkingLot, endpoint: str, count: int, limits: Limits = ROOMY) -> list[Delivery]:
    parked = []
    for _ in range(count):
        item = delivery()
        lot.park(endpoint, item, limits, wait_s=0)
        parked.append(item)
        time.sleep(0.002)  # a distinct millisecond each: the line's order is by time
    return parked


def ids(room: Room) -> list[str]:
    return [p.delivery.webhook_id for p in room.deliveries]


def index_score(client: redis.Redis, endpoint: str) -> float | None:
    return client.zscore(keys.PARKED_ENDPOINTS, endpoint)


def now_ms() -> int:
    return int(time.time() * 1000)


# --- park ---------------------------------------------------------------------------


def test_parked_delivery_round_trips_through_json() -> None:
    # Given a parked delivery with progress
    item = ParkedDelivery(delivery(attempt=4, retries=2, waited_s=12.5, place_ms=1234), "p1")

    # Then what is stored is what comes back, in the flat form lines have
    # always held (so deliveries parked before an upgrade still load)
    assert ParkedDelivery.from_json(item.to_json()) == item
    assert set(json.loads(item.to_json())) == {
        "event", "callback_url", "webhook_id", "attempt", "retries", "waited_s", "place_ms",
        "sequence", "parked_id",
    }  # fmt: skip
    # And a line written before ordering existed (no "sequence") still loads
    legacy = {k: v for k, v in json.loads(item.to_json()).items() if k != "sequence"}
    assert ParkedDelivery.from_json(json.dumps(legacy)) == item


def test_park_queues_and_indexes_the_endpoint(
    lot: ParkingLot, own_client: redis.Redis, endpoint: str
) -> None:
    # Given an endpoint with nothing parked
    assert lot.backlog(endpoint) == 0

    # When a delivery is parked to be looked at in 5 s
    before = now_ms()
    length = lot.park(endpoint, delivery(), ROOMY, wait_s=5)

    # Then its line holds it, the limits are stored for the pump, and the
    # endpoint is indexed for then (not due now)
    assert length == 1
    assert lot.backlog(endpoint) == 1
    assert own_client.get(keys.endpoint(endpoint).limits) == "1000 60000 100"
    score = index_score(own_client, endpoint)
    assert score is not None
    assert before + 5000 <= score <= now_ms() + 5000
    assert endpoint not in lot.due()


def test_park_is_idempotent_per_webhook_id(lot: ParkingLot, endpoint: str) -> None:
    # Given a delivery parked once, behind another
    first, second = park_all(lot, endpoint, 2)

    # When the same webhook id is parked again (a redelivered task), with progress
    again = delivery(first.webhook_id, attempt=2)
    length = lot.park(endpoint, again, ROOMY, wait_s=0)

    # Then the line still holds two, the first keeps its place at the head,
    # and the latest payload is the one released
    assert length == 2
    room = lot.take(endpoint, max_batch=10)
    assert ids(room) == [first.webhook_id, second.webhook_id]
    assert room.deliveries[0].delivery.attempt == 2


def test_the_line_is_in_order_of_place(lot: ParkingLot, endpoint: str) -> None:
    # Given three deliveries parked one after another
    parked = park_all(lot, endpoint, 3)

    # When one parked again carries an earlier place in line than all of them
    # (it had waited before, was released, and found no room again)
    early = delivery(place_ms=now_ms() - 60_000)
    lot.park(endpoint, early, ROOMY, wait_s=0)

    # Then it is at the head, and the others follow in the order they came
    room = lot.take(endpoint, max_batch=10)
    assert ids(room) == [early.webhook_id, *(p.webhook_id for p in parked)]


def test_a_delivery_released_and_parked_again_keeps_its_place(
    lot: ParkingLot, own_client: redis.Redis, endpoint: str
) -> None:
    # Given three deliveries waiting, the head one released by the pump
    # (taken, republished, then removed from the line)
    head, second, third = park_all(lot, endpoint, 3)
    place = own_client.zscore(keys.endpoint(endpoint).parked, head.webhook_id)
    (released,) = lot.take(endpoint, max_batch=1).deliveries
    lot.done(endpoint, [released])
    assert released.delivery.webhook_id == head.webhook_id
    assert released.delivery.place_ms == place  # taken with its place in line

    # When its task finds no room after all and parks it again, as released
    lot.park(endpoint, released.delivery, ROOMY, wait_s=0)

    # Then it is at the head of the line again, not behind those that came later
    room = lot.take(endpoint, max_batch=10)
    assert ids(room) == [head.webhook_id, second.webhook_id, third.webhook_id]


def test_a_later_park_never_postpones_the_endpoints_look(
    lot: ParkingLot, own_client: redis.Redis, endpoint: str
) -> None:
    # Given an endpoint to be looked at in 1 s
    lot.park(endpoint, delivery(), ROOMY, wait_s=1)
    soon = index_score(own_client, endpoint)

    # When another delivery is parked to be looked at in 60 s
    lot.park(endpoint, delivery(), ROOMY, wait_s=60)

    # Then the look stays in 1 s; a park asking for sooner brings it forward
    assert index_score(own_client, endpoint) == soon
    lot.park(endpoint, delivery(), ROOMY, wait_s=0)
    assert endpoint in lot.due()


# --- take ---------------------------------------------------------------------------


def test_take_from_an_empty_line(lot: ParkingLot, endpoint: str) -> None:
    # Given an endpoint with nothing parked
    # When the pump takes from it
    room = lot.take(endpoint, max_batch=10)

    # Then there is nothing to release and no wait: the line is empty
    assert room == Room(deliveries=[], wait_s=None)


def test_take_does_not_remove(lot: ParkingLot, endpoint: str) -> None:
    # Given two parked deliveries
    parked = park_all(lot, endpoint, 2)

    # When they are taken twice without done()
    first, second = lot.take(endpoint, max_batch=10), lot.take(endpoint, max_batch=10)

    # Then both times they are offered, and still parked (a crash can only duplicate)
    assert ids(first) == ids(second) == [p.webhook_id for p in parked]
    assert first.wait_s == 0.0
    assert lot.backlog(endpoint) == 2


def test_take_is_bounded_by_the_batch(lot: ParkingLot, endpoint: str) -> None:
    parked = park_all(lot, endpoint, 5)

    room = lot.take(endpoint, max_batch=2)

    assert ids(room) == [p.webhook_id for p in parked[:2]]


def test_take_is_bounded_by_free_slots(lot: ParkingLot, limiter: Limiter, endpoint: str) -> None:
    # Given a cap of 3 at once, 2 attempts in flight, and 5 deliveries parked
    limits = Limits(rate=RateLimit(1000, 60), max_concurrency=3)
    for _ in range(2):
        assert isinstance(limiter.acquire(endpoint, limits), Granted)
    parked = park_all(lot, endpoint, 5, limits)

    # When the pump takes
    room = lot.take(endpoint, max_batch=50)

    # Then only one is released: the endpoint has one free slot
    assert ids(room) == [parked[0].webhook_id]


def test_take_is_bounded_by_the_windows_budget(
    lot: ParkingLot, limiter: Limiter, endpoint: str, own_client: redis.Redis
) -> None:
    # Given 4 per minute, 3 used (slots released), and 5 deliveries parked
    limits = Limits(rate=RateLimit(4, 60), max_concurrency=10)
    for _ in range(3):
        grant = limiter.acquire(endpoint, limits)
        assert isinstance(grant, Granted)
        release_slot(limiter, own_client, endpoint, grant.token)
    parked = park_all(lot, endpoint, 5, limits)

    # When the pump takes
    room = lot.take(endpoint, max_batch=50)

    # Then only one is released: one attempt is left in the window
    assert ids(room) == [parked[0].webhook_id]


def test_take_uses_the_limits_stored_by_the_latest_park(lot: ParkingLot, endpoint: str) -> None:
    # Given deliveries parked under a cap of 10, then one under a cap of 2
    park_all(lot, endpoint, 4, Limits(rate=RateLimit(1000, 60), max_concurrency=10))
    park_all(lot, endpoint, 1, Limits(rate=RateLimit(1000, 60), max_concurrency=2))

    # When the pump takes
    # Then it releases no more than the latest cap allows
    assert len(lot.take(endpoint, max_batch=50).deliveries) == 2


def test_take_says_how_long_to_wait_when_the_slots_are_full(
    lot: ParkingLot, limiter: Limiter, endpoint: str
) -> None:
    # Given a cap of 1, the slot taken, and a delivery parked
    limits = Limits(rate=RateLimit(1000, 60), max_concurrency=1)
    assert isinstance(limiter.acquire(endpoint, limits), Granted)
    park_all(lot, endpoint, 1, limits)

    # When the pump takes
    room = lot.take(endpoint, max_batch=50)

    # Then nothing is released, and the wait is at most the holder's lease
    assert room.deliveries == []
    assert room.wait_s is not None
    assert 0 < room.wait_s <= LEASE_S


def test_take_says_how_long_to_wait_when_the_window_is_full(
    lot: ParkingLot, limiter: Limiter, endpoint: str, own_client: redis.Redis
) -> None:
    # Given 2 per second, both used, and a delivery parked
    limits = Limits(rate=RateLimit(2, 1), max_concurrency=10)
    for _ in range(2):
        grant = limiter.acquire(endpoint, limits)
        assert isinstance(grant, Granted)
        release_slot(limiter, own_client, endpoint, grant.token)
    (parked,) = park_all(lot, endpoint, 1, limits)

    # When the pump takes
    room = lot.take(endpoint, max_batch=50)

    # Then it waits for the window, and after that wait the delivery is released
    assert room.deliveries == []
    assert room.wait_s is not None
    assert 0 < room.wait_s <= 1.0
    time.sleep(room.wait_s)
    assert ids(lot.take(endpoint, max_batch=50)) == [parked.webhook_id]


def test_take_waits_out_a_hold(
    lot: ParkingLot, limiter: Limiter, endpoint: str, own_client: redis.Redis
) -> None:
    # Given an endpoint held for 2 s (a Retry-After), and a delivery parked
    grant = limiter.acquire(endpoint, ROOMY)
    assert isinstance(grant, Granted)
    release_slot(limiter, own_client, endpoint, grant.token, hold_s=2)
    park_all(lot, endpoint, 1)

    # When the pump takes
    room = lot.take(endpoint, max_batch=50)

    # Then nothing is released before the hold ends
    assert room.deliveries == []
    assert room.wait_s is not None
    assert 1.5 < room.wait_s <= 2.0


def test_take_cleans_orphan_ids(lot: ParkingLot, own_client: redis.Redis, endpoint: str) -> None:
    # Given a line whose head has lost its payload (e.g. a half-finished done())
    parked = park_all(lot, endpoint, 2)
    own_client.hdel(keys.endpoint(endpoint).payloads, parked[0].webhook_id)

    # When the pump takes
    room = lot.take(endpoint, max_batch=50)

    # Then the orphan is not offered and is gone from the line; the rest is kept
    assert ids(room) == [parked[1].webhook_id]
    assert lot.backlog(endpoint) == 1
    assert ids(lot.take(endpoint, max_batch=50)) == [parked[1].webhook_id]


# --- done, reschedule, wake, due, claim --------------------------------------------------


def test_done_removes_from_the_line(
    lot: ParkingLot, own_client: redis.Redis, endpoint: str
) -> None:
    # Given three parked deliveries, the first two taken by the pump
    parked = park_all(lot, endpoint, 3)
    taken = lot.take(endpoint, max_batch=2).deliveries

    # When those two are done (republished)
    lot.done(endpoint, taken)

    # Then only the third is left, payload and all
    assert lot.backlog(endpoint) == 1
    assert own_client.hkeys(keys.endpoint(endpoint).payloads) == [parked[2].webhook_id]
    assert ids(lot.take(endpoint, max_batch=50)) == [parked[2].webhook_id]
    lot.done(endpoint, [])  # nothing to do is fine


def test_done_keeps_a_delivery_parked_again_since_it_was_taken(
    lot: ParkingLot, endpoint: str
) -> None:
    # Given a delivery taken by the pump and republished
    (item,) = park_all(lot, endpoint, 1)
    (taken,) = lot.take(endpoint, max_batch=1).deliveries

    # When its task runs before the pump is done with it, finds no room after
    # all, and parks it again; and only then the pump marks it done
    lot.park(endpoint, taken.delivery, ROOMY, wait_s=0)
    lot.done(endpoint, [taken])

    # Then it is still parked, in its place: the queue has no copy of it, so
    # removing it would lose it
    assert lot.backlog(endpoint) == 1
    (again,) = lot.take(endpoint, max_batch=1).deliveries
    assert (again.delivery.webhook_id, again.delivery.place_ms) == (
        item.webhook_id,
        taken.delivery.place_ms,
    )

    # And once that park is taken and done, it is removed
    lot.done(endpoint, [again])
    assert lot.backlog(endpoint) == 0


def test_every_park_is_stamped_anew(lot: ParkingLot, endpoint: str) -> None:
    # Given a delivery parked, taken, and parked again
    (item,) = park_all(lot, endpoint, 1)
    (first,) = lot.take(endpoint, max_batch=1).deliveries
    lot.park(endpoint, first.delivery, ROOMY, wait_s=0)
    (second,) = lot.take(endpoint, max_batch=1).deliveries

    # Then each park has its own id, and the delivery is unchanged
    assert first.parked_id and second.parked_id
    assert first.parked_id != second.parked_id
    assert first.delivery == second.delivery
    assert replace(first.delivery, place_ms=0) == item


def test_reschedule_forgets_an_empty_line(
    lot: ParkingLot, own_client: redis.Redis, endpoint: str
) -> None:
    # Given an indexed endpoint whose line has been emptied
    park_all(lot, endpoint, 1)
    lot.done(endpoint, lot.take(endpoint, max_batch=1).deliveries)

    # When the pump reschedules it with nothing left
    lot.reschedule(endpoint, wait_s=None)

    # Then the endpoint is no longer indexed
    assert index_score(own_client, endpoint) is None


def test_reschedule_keeps_a_line_that_is_not_empty(
    lot: ParkingLot, own_client: redis.Redis, endpoint: str
) -> None:
    # Given an endpoint that was found empty, and a delivery parked since
    park_all(lot, endpoint, 1)

    # When the pump reschedules it as empty
    lot.reschedule(endpoint, wait_s=None)

    # Then it stays indexed, due at once
    assert index_score(own_client, endpoint) is not None
    assert endpoint in lot.due()


def test_a_park_racing_a_reschedule_of_its_empty_line_stays_indexed(
    lot: ParkingLot, own_client: redis.Redis, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a park whose index entry a pump drops, the line still empty,
    # before the park's script puts the delivery in the line
    park_script = lot._park

    def dropped_first(**kwargs: object) -> object:
        lot.reschedule(endpoint, wait_s=None)
        return park_script(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lot, "_park", dropped_first)

    # When the park completes
    park_all(lot, endpoint, 1)

    # Then the endpoint is indexed again: the pump will find the delivery
    assert index_score(own_client, endpoint) is not None


def test_reschedule_later(lot: ParkingLot, own_client: redis.Redis, endpoint: str) -> None:
    # Given a due endpoint
    park_all(lot, endpoint, 1)
    assert endpoint in lot.due()

    # When the pump reschedules it in 30 s
    before = now_ms()
    lot.reschedule(endpoint, wait_s=30)

    # Then it is not due now, and is due in 30 s
    assert endpoint not in lot.due()
    score = index_score(own_client, endpoint)
    assert score is not None
    assert before + 30_000 <= score <= now_ms() + 30_000


def test_wake_brings_the_look_forward(
    lot: ParkingLot, own_client: redis.Redis, endpoint: str
) -> None:
    # Given an endpoint to be looked at in a minute
    park_all(lot, endpoint, 1)
    lot.reschedule(endpoint, wait_s=60)
    assert endpoint not in lot.due()

    # When a slot comes free and the releaser wakes it
    lot.wake(endpoint)

    # Then it is due now
    assert endpoint in lot.due()


def test_wake_never_postpones(lot: ParkingLot, own_client: redis.Redis, endpoint: str) -> None:
    # Given an endpoint due since a while
    park_all(lot, endpoint, 1)
    own_client.zadd(keys.PARKED_ENDPOINTS, {endpoint: now_ms() - 10_000})

    # When it is woken
    lot.wake(endpoint)

    # Then its earlier time is kept
    score = index_score(own_client, endpoint)
    assert score is not None
    assert score <= now_ms() - 10_000


def test_due_lists_only_endpoints_whose_time_has_come(
    lot: ParkingLot, own_client: redis.Redis
) -> None:
    # Given three endpoints: due, due, and due in a minute
    now_due = [normalize_endpoint(f"https://r.example/{i}") for i in range(2)]
    later = normalize_endpoint("https://r.example/later")
    for e in now_due:
        lot.park(e, delivery(), ROOMY, wait_s=0)
    lot.park(later, delivery(), ROOMY, wait_s=60)

    # Then the pump is shown only the first two, and never more than asked
    assert sorted(lot.due()) == sorted(now_due)
    assert len(lot.due(limit=1)) == 1


def test_claim_is_one_owner_at_a_time(lot: ParkingLot, endpoint: str) -> None:
    # Given a pump that claimed an endpoint
    assert lot.claim(endpoint, "pump-a", ttl_s=5)

    # Then another cannot, nor can it drop a claim it does not own
    assert not lot.claim(endpoint, "pump-b", ttl_s=5)
    lot.unclaim(endpoint, "pump-b")
    assert not lot.claim(endpoint, "pump-b", ttl_s=5)

    # When the owner unclaims, the other can
    lot.unclaim(endpoint, "pump-a")
    assert lot.claim(endpoint, "pump-b", ttl_s=5)


def test_a_claim_expires(lot: ParkingLot, endpoint: str) -> None:
    # Given a pump that claimed for 0.2 s and died
    assert lot.claim(endpoint, "pump-a", ttl_s=0.2)

    # When the claim's time is over
    time.sleep(0.3)

    # Then another pump can claim
    assert lot.claim(endpoint, "pump-b", ttl_s=5)


# --- waking the line when a slot comes free ---------------------------------------


def held(
    limiter: Limiter, endpoint: str, limits: Limits = ROOMY, *, from_line: bool = False
) -> str:
    grant = limiter.acquire(endpoint, limits, from_line=from_line)
    assert isinstance(grant, Granted)
    return grant.token


def test_a_park_asks_the_next_release_to_wake_the_line_once(
    lot: ParkingLot, limiter: Limiter, endpoint: str, own_client: redis.Redis
) -> None:
    # Given two slots taken, then a delivery parked
    first, second = held(limiter, endpoint), held(limiter, endpoint)
    park_all(lot, endpoint, 1)

    # When both slots are released
    # Then the first release wakes the line, the second need not: the pump
    # is due already, and its pass asks again
    assert release_slot(limiter, own_client, endpoint, first)
    assert not release_slot(limiter, own_client, endpoint, second)


@pytest.mark.parametrize("hold_s", [0.0, 5.0], ids=["plain", "with-hold"])
def test_a_pump_pass_over_a_waiting_line_asks_again(
    lot: ParkingLot, limiter: Limiter, endpoint: str, own_client: redis.Redis, hold_s: float
) -> None:
    # Given a cap of 1, its slot taken, two deliveries parked, and a release
    # that already woke the line
    limits = Limits(rate=RateLimit(1000, 60), max_concurrency=1)
    token = held(limiter, endpoint, limits)
    park_all(lot, endpoint, 2, limits)
    assert release_slot(limiter, own_client, endpoint, token)
    token = held(limiter, endpoint, limits, from_line=True)  # the first one, released

    # When the pump takes (and finds no free slot)
    assert lot.take(endpoint, max_batch=50).deliveries == []

    # Then the next release wakes the line again, with a hold or without
    assert release_slot(limiter, own_client, endpoint, token, hold_s=hold_s)


def test_released_leases_are_swept_now_and_then(
    limiter: Limiter, endpoint: str, own_client: redis.Redis
) -> None:
    # Given 300 attempts, each slot given back at once
    for _ in range(300):
        release_slot(limiter, own_client, endpoint, held(limiter, endpoint))

    # Then none is in flight, and the given-back leases did not pile up
    # (one grant in 16 sweeps them: 300 in a row without one has odds of 4e-9)
    inflight = keys.endpoint(endpoint).inflight
    assert own_client.zcount(inflight, "(0", "+inf") == 0
    assert own_client.zcard(inflight) < 300
