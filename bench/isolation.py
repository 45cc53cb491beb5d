"""``python -m bench.isolation``: does one slow endpoint delay the fast ones?

Real parts throughout: a fresh ``redis-server`` per contender, real ``celery
worker`` processes and one local HTTPS receiver with two endpoints. ``/slow``
accepts each request and says nothing for 2 s, past ``WEBHOOKS_TIMEOUT_S``
(1 s), so every attempt times out and is retried once (``WEBHOOKS_RETRY_SCHEDULE
=0.5``) before it fails; ``/hook`` answers 200 at once. N events to each,
interleaved, published at a steady rate after a warm-up that made ``/slow``
known slow. The same two worker processes in every contender, prefork 2 +
gevent K:

1. split: the Procfile's layout. Prefork consumes ``webhooks,webhooks.released``,
   gevent consumes ``webhooks.slow``, where the router sends ``/slow``.
2. single queue: routing off, both workers consume every queue, so ``/slow``
   takes whatever slot is free, prefork's included. No setting turns routing
   off (a timeout marks an endpoint slow whatever ``WEBHOOKS_SLOW_THRESHOLD_MS``
   says), so after the warm-up the bench deletes the router's one input, the
   ``webhooks:slow-endpoints`` set: health adds an endpoint there only when it
   flips to slow and ``/slow`` never recovers, so from then on every attempt
   and retry goes to ``webhooks``, in arrival order with ``/hook``'s.
3. baseline: ``/hook`` alone at the same publish times, split layout.

Latency: the receiver's arrival time of a ``/hook`` delivery minus the time
the bench read just before ``delay()``. Not a test: it exits 0 whatever it
measures. The report is printed and written to ``bench-results/isolation.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from bench.rig import (
    PATH,
    Rig,
    load_average,
    machine,
    message_event,
    rig,
    wait_until,
    write_report,
)
from config.celery_app import app
from config.wiring import conversation_store
from tasks import deliver_webhook
from tasks.routing import router
from testing.receiver import Hang, TestCA
from testing.worker import ALL_QUEUES, FAST_QUEUES, SLOW_QUEUES, WorkerProcess
from webhooks import keys
from webhooks.attempts import AttemptLog
from webhooks.endpoints import normalize_endpoint

__all__ = ["main"]

FAST, SLOW = PATH, "/slow"
TIMEOUT_S, HANG_S, RETRY_S = 1.0, 2.0, 0.5
ENV = {
    "WEBHOOKS_TIMEOUT_S": str(TIMEOUT_S),
    "WEBHOOKS_RETRY_SCHEDULE": str(RETRY_S),
    "WEBHOOKS_RATE_LIMIT": "1000000/second",
    "WEBHOOKS_MAX_CONCURRENCY": "200",
}
PREFORK = 2
WARM_FAST, WARM_SLOW = 5, 2
TARGET_RATIO, TARGET_P99_S = 3.0, 1.0
RESULTS = Path(__file__).resolve().parent.parent / "bench-results" / "isolation.md"


@dataclass(frozen=True)
class Contender:
    name: str
    slow_endpoint: bool
    split: bool


CONTENDERS = (
    Contender("baseline", slow_endpoint=False, split=True),
    Contender("split", slow_endpoint=True, split=True),
    Contender("single queue", slow_endpoint=True, split=False),
)


@dataclass(frozen=True)
class Sent:
    path: str
    published_at: float  # epoch s, read just before delay()
    message_id: str
    conversation_id: str


@dataclass(frozen=True)
class Result:
    latencies_s: list[float]  # /hook deliveries, publish -> arrival, sorted
    fast_sent: int
    slow: Counter[str]  # /slow outcome state -> deliveries ("pending": none by the deadline)
    attempts: Counter[tuple[str, str, str]]  # (path, queue, worker) -> HTTP attempts
    slow_rate: float  # /slow attempts/s, first attempt's start to last one's end
    publish_rate: float  # events/s achieved
    drain_s: float  # last publish -> every outcome in (or the deadline)


def publish(cid: str, path: str) -> tuple[str, Sent]:
    event = message_event(cid)
    published_at = time.time()
    webhook_id = str(deliver_webhook.delay(event).id)
    return webhook_id, Sent(path, published_at, str(event["data"]["id"]), cid)


def settled(r: Rig, sent: dict[str, Sent]) -> bool:
    arrived = {req.headers.get("webhook-id") for req in r.receiver.received(FAST)}
    if any(s.path == FAST and w not in arrived for w, s in sent.items()):
        return False
    slow = [keys.delivery(w) for w, s in sent.items() if s.path == SLOW]
    return not slow or None not in r.client.mget(slow)


def warm_up(r: Rig, slow_cid: str | None) -> None:
    """Open /hook's connections; make /slow known slow and let its warm-up events fail."""
    warm = dict(publish(r.conversation_id, FAST) for _ in range(WARM_FAST))
    if slow_cid is not None:
        warm |= dict(publish(slow_cid, SLOW) for _ in range(WARM_SLOW))
        slow_endpoint = normalize_endpoint(r.receiver.url(SLOW))
        wait_until(lambda: router.is_slow(slow_endpoint), 30)
    wait_until(lambda: settled(r, warm), 60)


def attempts(r: Rig, sent: dict[str, Sent]) -> tuple[Counter[tuple[str, str, str]], float]:
    """HTTP attempts by (path, queue, worker), and /slow's attempts per second, first to last."""
    by_message = {s.message_id: s for s in sent.values()}
    log = AttemptLog(r.client, retention_s=3600)
    found: Counter[tuple[str, str, str]] = Counter()
    spans: list[tuple[float, float]] = []
    for cid in {s.conversation_id for s in sent.values()}:  # each conversation's log once
        for record in log.for_conversation(cid):
            if (s := by_message.get(record.message_id)) is None:
                continue  # a warm-up event
            found[s.path, record.queue, record.worker.split("-", 1)[0]] += 1
            if s.path == SLOW:
                spans.append((record.started_at, record.started_at + record.duration_s))
    if len(spans) < 2:
        return found, math.nan
    return found, len(spans) / (max(end for _, end in spans) - min(start for start, _ in spans))


def run(ca: TestCA, c: Contender, events: int, rate: float, slow_slots: int) -> Result:
    with rig(ca, ENV) as r, ExitStack() as stack:
        slow_cid = str(uuid.uuid4())
        config = {"config": {"callback_url": r.receiver.url(SLOW)}}
        conversation_store(r.client, app.settings).set(slow_cid, config)
        r.receiver.always(SLOW, Hang(HANG_S))
        fast_q, slow_q = (FAST_QUEUES, SLOW_QUEUES) if c.split else (ALL_QUEUES, ALL_QUEUES)
        prefork = WorkerProcess(r.env, concurrency=PREFORK, name="prefork", queues=fast_q)
        gevent = WorkerProcess(r.env, concurrency=slow_slots, name="gevent", queues=slow_q,
                               extra_args=("--pool", "gevent"))  # fmt: skip
        for worker in (prefork, gevent):
            stack.callback(worker.stop)  # before start(): a SIGTERM while it starts stops it too
            worker.start()
        warm_up(r, slow_cid if c.slow_endpoint else None)
        if not c.split:
            r.client.delete(keys.SLOW_ENDPOINTS)
            time.sleep(app.settings.route_cache_s + 0.5)  # every router's cached copy expired
        sent: dict[str, Sent] = {}
        started = time.monotonic()
        for i in range(2 * events):  # /hook, /slow, /hook, ...; baseline skips /slow's turns
            if (pause := started + i / rate - time.monotonic()) > 0:
                time.sleep(pause)
            if i % 2 == 0:
                webhook_id, s = publish(r.conversation_id, FAST)
            elif c.slow_endpoint:
                webhook_id, s = publish(slow_cid, SLOW)
            else:
                continue
            sent[webhook_id] = s
        published = time.monotonic()
        publish_rate = 2 * events / (published - started)
        work_s = events * (1 + 1) * TIMEOUT_S / (PREFORK + slow_slots)  # /slow's slot-seconds
        deadline = published + 60 + 3 * work_s
        while not settled(r, sent) and time.monotonic() < deadline:
            time.sleep(0.2)
        drain_s = time.monotonic() - published
        arrivals: dict[str, float] = {}
        for req in r.receiver.received(FAST):  # /hook answers every request with 200
            arrivals.setdefault(req.headers.get("webhook-id", ""), req.received_at)
        fast = {w: s for w, s in sent.items() if s.path == FAST}
        latencies = sorted(arrivals[w] - s.published_at for w, s in fast.items() if w in arrivals)
        slow_ids = [w for w, s in sent.items() if s.path == SLOW]
        raws = r.client.mget([keys.delivery(w) for w in slow_ids]) if slow_ids else []
        slow = Counter(json.loads(raw)["state"] if raw else "pending" for raw in raws)
        found, slow_rate = attempts(r, sent)
    return Result(latencies, len(fast), slow, found, slow_rate, publish_rate, drain_s)


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``xs``."""
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)] if xs else math.nan


def breakdown(found: Counter[tuple[str, str, str]], path: str, field: int) -> str:
    by: Counter[str] = Counter()
    for key, n in found.items():
        if key[0] == path:
            by[key[field]] += n
    return ", ".join(f"{name or '?'} {n}" for name, n in sorted(by.items())) or "-"


def table(results: dict[str, Result]) -> list[str]:
    lines = [
        "| contender | /hook delivered | p50 ms | p95 ms | p99 ms | max ms | /slow outcomes "
        "| /slow attempts by queue | /slow attempts by worker | /slow attempts/s "
        "| /hook attempts by worker | publish rate /s | drain s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        ms = [f"{pct(res.latencies_s, q) * 1000:.0f}" for q in (50, 95, 99, 100)]
        slow = ", ".join(f"{k} {v}" for k, v in sorted(res.slow.items())) or "-"
        lines.append(
            f"| {name} | {len(res.latencies_s)}/{res.fast_sent} | {' | '.join(ms)} | {slow} | "
            f"{breakdown(res.attempts, SLOW, 1)} | {breakdown(res.attempts, SLOW, 2)} | "
            f"{'-' if math.isnan(res.slow_rate) else f'{res.slow_rate:.1f}'} | "
            f"{breakdown(res.attempts, FAST, 2)} | "
            f"{res.publish_rate:.1f} | {res.drain_s:.1f} |"
        )
    return lines


def verdicts(results: dict[str, Result]) -> list[str]:
    p99 = {name: pct(res.latencies_s, 99) for name, res in results.items()}
    base, split, single = p99["baseline"], p99["split"], p99["single queue"]
    all_in = len(results["split"].latencies_s) == results["split"].fast_sent
    ratio_ok = split <= TARGET_RATIO * base and all_in
    return [
        f"- split p99 / baseline p99 = {split * 1000:.0f} / {base * 1000:.0f} ms = "
        f"**{split / base:.2f}x** (target <= {TARGET_RATIO:.0f}x, every /hook event "
        f"delivered): **{'PASS' if ratio_ok else 'MISS'}**",
        f"- split p99 = **{split * 1000:.0f} ms** (target < {TARGET_P99_S * 1000:.0f} ms): "
        f"**{'PASS' if split < TARGET_P99_S and all_in else 'MISS'}**",
        f"- single-queue p99 / split p99 = {single * 1000:.0f} / {split * 1000:.0f} ms = "
        f"**{single / split:.1f}x**",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200, help="per endpoint")
    parser.add_argument("--rate", type=float, default=50.0, help="events/s, both endpoints")
    parser.add_argument("--slow-concurrency", type=int, default=20, help="gevent slots, K")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every worker and Redis started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    slots = PREFORK + args.slow_concurrency
    demand = args.rate / 2 * 2 * TIMEOUT_S  # /slow: events/s x attempts x seconds held
    with tempfile.TemporaryDirectory(prefix="bench-ca-") as tmp:
        ca = TestCA(Path(tmp))
        with rig(ca, {}) as r:
            facts = machine(str(r.client.info("server")["redis_version"]))
        results: dict[str, Result] = {}
        for c in CONTENDERS:
            res = run(ca, c, args.events, args.rate, args.slow_concurrency)
            results[c.name] = res
            print(f"{c.name}: /hook p99 {pct(res.latencies_s, 99) * 1000:.0f} ms, "
                  f"{len(res.latencies_s)}/{res.fast_sent} delivered", flush=True)  # fmt: skip
    report = [
        "# Slow-endpoint isolation",
        "",
        *facts,
        f"- gevent {version('gevent')}",
        f"\n## /hook latency with a timing-out /slow, {args.events} events each\n",
        f"Workers in every contender: prefork --concurrency {PREFORK} + gevent --concurrency "
        f"{args.slow_concurrency} = {slots} slots. Events interleaved /hook, /slow at "
        f"{args.rate:g}/s in all (baseline publishes /hook's at the same times, no /slow). "
        f"/slow hangs {HANG_S:g} s, WEBHOOKS_TIMEOUT_S={TIMEOUT_S:g}, one retry after "
        f"{RETRY_S:g} s, so it asks for about {demand:.0f} slot-seconds per second, more than "
        f"the {slots} slots: a slow endpoint that would take every slot it can get. Limits set "
        f"too high to bind: {ENV['WEBHOOKS_RATE_LIMIT']}, max concurrency "
        f"{ENV['WEBHOOKS_MAX_CONCURRENCY']}. Latency = receiver arrival - time read just "
        "before delay(); percentiles nearest-rank over the /hook events delivered. Attempts "
        "(from the attempt log) exclude the warm-up. Drain = last publish to every outcome "
        "recorded (/slow's backlog dominates it).\n",
        *table(results),
        "",
        *verdicts(results),
        f"\nWith every gevent slot busy, /slow could at best take {args.slow_concurrency} / "
        f"{TIMEOUT_S:g} s = {args.slow_concurrency / TIMEOUT_S:.0f} attempts/s in the split "
        f"layout; it took {results['split'].slow_rate:.1f}/s (attempt log, first start to "
        "last end), which bounds how fast a saturated worker_slow drains.",
        "\nOne run of each contender, in the order of the table; other work on the machine "
        f"(tests run concurrently) shows up as noise. Load average at the end: "
        f"{load_average()}.",
    ]
    write_report(report, RESULTS)


if __name__ == "__main__":
    main()
