"""tasks.reclaim's bookkeeping against a real Redis: beats, pruning, reaping.

The end-to-end behaviour (a SIGKILLed worker's delivery handed out again by
a live worker) is in test_reliability.
"""

from __future__ import annotations

import redis

from tasks.reclaim import UNACKED, Reclaimer
from webhooks import keys


def reclaimer(client: redis.Redis, restored: list[str], name: str) -> Reclaimer:
    return Reclaimer(client, restored.append, incarnation=name, dead_after_s=5)


def test_a_beat_forgets_the_tags_kombu_no_longer_holds(own_client: redis.Redis) -> None:
    # Given a worker that took two deliveries, one acknowledged since
    alive = reclaimer(own_client, [], "alive")
    alive.took("tag-acked")
    alive.took("tag-held")
    own_client.hset(UNACKED, "tag-held", "[]")

    # When it beats
    alive.beat()

    # Then it is listed alive on Redis' clock and keeps only the held tag
    assert own_client.smembers(keys.worker_held("alive")) == {"tag-held"}
    (seconds, _) = own_client.time()
    score = own_client.zscore(keys.WORKERS, "alive")
    assert score is not None and abs(score - seconds) < 2


def test_a_silent_worker_is_reaped_once_and_only_its_unacked_tags_restored(
    own_client: redis.Redis,
) -> None:
    # Given a worker last heard from 10 s ago holding one unacknowledged
    # delivery and one acknowledged since, and a worker that just beat
    (seconds, _) = own_client.time()
    own_client.zadd(keys.WORKERS, {"dead": seconds - 10})
    own_client.sadd(keys.worker_held("dead"), "tag-held", "tag-acked")
    own_client.hset(UNACKED, "tag-held", "[]")
    restored: list[str] = []
    alive = reclaimer(own_client, restored, "alive")
    alive.beat()

    # When two workers reap, one after the other
    first = alive.reap()
    second = reclaimer(own_client, restored, "other").reap()

    # Then the dead worker's held delivery was restored once, its records
    # are gone, and the live worker was left alone
    assert (first, second, restored) == (1, 0, ["tag-held"])
    assert own_client.exists(keys.worker_held("dead")) == 0
    assert own_client.zscore(keys.WORKERS, "dead") is None
    assert own_client.zscore(keys.WORKERS, "alive") is not None


def test_a_beat_asks_about_every_held_tag_in_one_command(own_client: redis.Redis) -> None:
    # Given a worker that took 50 deliveries, 3 still unacknowledged, and
    # another that took none
    busy, idle = reclaimer(own_client, [], "busy"), reclaimer(own_client, [], "idle")
    for i in range(50):
        busy.took(f"tag-{i}")
    own_client.hset(UNACKED, mapping={f"tag-{i}": "[]" for i in range(3)})
    before = _lookups(own_client)

    # When both beat
    busy.beat()
    idle.beat()

    # Then one command asked kombu's hash about all 50 (not one per tag:
    # every delivery's tag passes through a beat), and the 3 are kept
    assert _lookups(own_client) - before == 1
    assert own_client.smembers(keys.worker_held("busy")) == {"tag-0", "tag-1", "tag-2"}


def _lookups(client: redis.Redis) -> int:
    """Commands that have read kombu's unacked hash by field, from Redis' own counts."""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("hexists", "hmget"))
