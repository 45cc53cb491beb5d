"""Deliveries waiting for their endpoint, parked in Redis, not in workers.

A delivery that finds its endpoint at a limit is written to the endpoint's
waiting line and its task finishes: it holds no worker slot, no place in the
``webhooks`` queue, and no memory, however long the line. The pump
(:mod:`tasks.pump`) republishes from the head of the line as the endpoint
has room again.

Why not retry with a countdown? A countdown task sits unacknowledged in a
worker's memory until it is due; thousands of them for one slow endpoint
would swell that memory and, past the broker's visibility timeout, be
delivered twice.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, replace

from webhooks import keys
from webhooks.progress import Delivery
from webhooks.ratelimit import Limits, load_script
from webhooks.store import Store

__all__ = ["ParkedDelivery", "ParkingLot", "Room"]


@dataclass(frozen=True, slots=True)
class ParkedDelivery:
    """A delivery as its line holds it: republished exactly where it left off."""

    delivery: Delivery
    parked_id: str  # new on every park: tells a park again from the one taken

    def to_json(self) -> str:
        # Flat, as lines have always stored it: the delivery's fields and parked_id.
        return json.dumps(
            {**asdict(self.delivery), "parked_id": self.parked_id}, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, raw: str) -> ParkedDelivery:
        fields = json.loads(raw)
        parked_id = str(fields.pop("parked_id", ""))
        return cls(delivery=Delivery(**fields), parked_id=parked_id)


@dataclass(frozen=True, slots=True)
class Room:
    """What :meth:`ParkingLot.take` found: deliveries to release, or a wait."""

    deliveries: list[ParkedDelivery]
    wait_s: float | None  # None: the line is empty


class ParkingLot:
    def __init__(self, client: Store) -> None:
        self._redis = client
        self._park = load_script(client, "park")
        self._unpark = load_script(client, "unpark")
        self._done = load_script(client, "done")

    def park(self, endpoint: str, delivery: Delivery, limits: Limits, *, wait_s: float) -> int:
        """Queue ``delivery`` for ``endpoint``; the pump looks again in ``wait_s``.

        Idempotent per webhook id. Returns the length of the line.
        """
        ek = keys.endpoint(endpoint)
        stored_limits = (
            f"{limits.rate.count} {limits.rate.window_s * 1000} {limits.max_concurrency}"
        )
        stamped = ParkedDelivery(delivery, parked_id=uuid.uuid4().hex)
        # Indexed before the line holds the delivery (on a Redis Cluster the
        # index is in another slot than the line, so no script spans both): a
        # crash in between leaves an entry for an empty line, which the pump
        # drops (reschedule), never a parked delivery the pump cannot find.
        # LT: adds a new endpoint, or brings an existing one's look forward.
        look = {endpoint: _ms(time.time() + wait_s)}
        self._redis.zadd(keys.PARKED_ENDPOINTS, look, lt=True)
        length = int(
            self._park(
                keys=ek.for_script(),
                args=[delivery.webhook_id, stamped.to_json(), delivery.place_ms, stored_limits],
            )
        )
        if length == 1:
            # The line was empty: a pump may have dropped the entry since
            # (reschedule) without seeing this delivery. Index it again.
            self._redis.zadd(keys.PARKED_ENDPOINTS, look, lt=True)
        return length

    def wake(self, endpoint: str) -> None:
        """A slot came free: have the pump look at ``endpoint`` now."""
        self._redis.zadd(keys.PARKED_ENDPOINTS, {endpoint: _ms(time.time())}, lt=True)

    def due(self, *, limit: int = 100) -> list[str]:
        """Endpoints whose line the pump should look at now."""
        found = self._redis.zrangebyscore(
            keys.PARKED_ENDPOINTS, "-inf", _ms(time.time()), start=0, num=limit
        )
        return [str(e) for e in found]

    def claim(self, endpoint: str, owner: str, *, ttl_s: float) -> bool:
        """One pump at a time per endpoint, across every worker."""
        return bool(
            self._redis.set(keys.endpoint(endpoint).pump_lock, owner, nx=True, px=_ms(ttl_s))
        )

    def unclaim(self, endpoint: str, owner: str) -> None:
        lock = keys.endpoint(endpoint).pump_lock
        if self._redis.get(lock) == owner:
            self._redis.delete(lock)

    def take(self, endpoint: str, *, max_batch: int) -> Room:
        """The deliveries at the head of the line that the endpoint has room for.

        They stay parked until :meth:`done`: republish first, then remove.
        """
        reply = self._unpark(keys=keys.endpoint(endpoint).for_script(), args=[max_batch])
        head = int(reply[0])
        if head == -1:
            return Room(deliveries=[], wait_s=None)
        if head > 0:
            return Room(deliveries=[], wait_s=head / 1000)
        triples = reply[1:]
        deliveries: list[ParkedDelivery] = []
        orphans: list[str] = []
        for webhook_id, payload, place in zip(
            triples[::3], triples[1::3], triples[2::3], strict=True
        ):
            if payload:
                # The place in line goes with the delivery, so that parking
                # it again (no room after all, a 429) keeps it.
                parked = ParkedDelivery.from_json(str(payload))
                placed = replace(parked.delivery, place_ms=int(float(place)))
                deliveries.append(replace(parked, delivery=placed))
            else:
                orphans.append(str(webhook_id))
        # Ids without payload would block the line.
        self._remove(endpoint, [(webhook_id, "") for webhook_id in orphans])
        return Room(deliveries=deliveries, wait_s=0.0)

    def done(self, endpoint: str, released: list[ParkedDelivery]) -> None:
        """Remove ``released`` (as taken) from the line, once republished.

        A delivery parked again since it was taken (its task ran, found no
        room, and parked it before this call) stays: it has no other copy.
        """
        self._remove(endpoint, [(p.delivery.webhook_id, p.parked_id) for p in released])

    def _remove(self, endpoint: str, taken: list[tuple[str, str]]) -> None:
        if not taken:
            return
        self._done(
            keys=keys.endpoint(endpoint).for_script(),
            args=[value for pair in taken for value in pair],
        )

    def reschedule(self, endpoint: str, *, wait_s: float | None) -> None:
        """After a pump pass: look again in ``wait_s``, or forget an empty line."""
        if wait_s is None:
            # Remove, then re-check: a park that races us either is seen by
            # the re-check or, finding the line empty, indexes the endpoint
            # again after our removal.
            self._redis.zrem(keys.PARKED_ENDPOINTS, endpoint)
            if self.backlog(endpoint) == 0:
                return
            wait_s = 0.0
        self._redis.zadd(keys.PARKED_ENDPOINTS, {endpoint: _ms(time.time() + wait_s)})

    def backlog(self, endpoint: str) -> int:
        return int(self._redis.zcard(keys.endpoint(endpoint).parked))


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
