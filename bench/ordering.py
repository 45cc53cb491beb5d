"""``python -m bench.ordering``: what ordered delivery costs against unordered, in one run.

Real parts: a fresh ``redis-server``, one prefork worker (``--concurrency
4``, the Procfile's layout) and a local HTTPS receiver that answers 200 at
once. Limits are set too high to bind. Contenders, each on its own Redis:

* unordered: ``--events`` events over 100 conversations;
* ordered, 100 conversations: the same, every conversation ordered;
* ordered, 1 conversation: ``--single`` events to one ordered conversation,
  whose rate is bounded by the round trip of one delivery.

For each: drain throughput (publish everything, then time until the last
arrives), the hand-off of an ordered line (from event n's arrival at the
receiver to event n+1's: n's answer, its outcome, the line moved on, n+1
published, taken and sent), latency from ``delay()`` to arrival at a steady
100 events/s, and Redis commands per delivery (``INFO commandstats``, the
commands Lua runs included). Ratios are to the unordered run of the same
invocation. Not a test: prints a report and writes
``bench-results/ordering.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.rig import (
    NEVER_BINDS,
    PATH,
    Rig,
    commandstats,
    machine,
    message_event,
    rig,
    wait_until,
    write_report,
)
from config.celery_app import app
from config.wiring import conversation_store
from tasks import deliver_webhook
from testing.receiver import ReceivedRequest, TestCA
from testing.worker import FAST_QUEUES, WorkerProcess

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent.parent / "bench-results" / "ordering.md"
CONCURRENCY = 4
STEADY_RATE = 100.0  # events/s for the latency run
STEADY_S = 5.0


@dataclass
class Result:
    name: str
    events: int
    drain_s: float = 0.0
    handoff_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    commands_per_delivery: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.drain_s if self.drain_s else 0.0


def conversations(r: Rig, count: int, *, ordered: bool) -> list[str]:
    store = conversation_store(r.client, app.settings)
    config: dict[str, object] = {"callback_url": r.receiver.url(PATH)}
    if ordered:
        config["ordering"] = "conversation"
    cids = [str(uuid.uuid4()) for _ in range(count)]
    for cid in cids:
        store.set(cid, {"config": config})
    return cids


def publish(cids: list[str], count: int, *, rate: float | None = None) -> dict[str, float]:
    """``count`` events round-robin over ``cids``; webhook id -> publish time."""
    sent: dict[str, float] = {}
    started = time.time()
    for i in range(count):
        if rate is not None and (pause := started + i / rate - time.time()) > 0:
            time.sleep(pause)
        at = time.time()
        sent[str(deliver_webhook.delay(message_event(cids[i % len(cids)])).id)] = at
    return sent


def arrivals(requests: list[ReceivedRequest]) -> dict[str, float]:
    first: dict[str, float] = {}
    for request in requests:
        first.setdefault(request.headers["webhook-id"], request.received_at)
    return first


def handoffs(requests: list[ReceivedRequest]) -> list[float]:
    """Per ordered conversation, ms from event n's arrival to n+1's."""
    by_line: dict[str, dict[int, float]] = defaultdict(dict)
    for request in requests:
        sequence = request.headers.get("x-webhook-sequence")
        if sequence is not None:
            line = by_line[json.loads(request.body)["conversation_id"]]
            line.setdefault(int(sequence), request.received_at)
    gaps = []
    for line in by_line.values():
        gaps += [(line[n + 1] - line[n]) * 1000 for n in sorted(line) if n + 1 in line]
    return gaps


def run(ca: TestCA, name: str, conversations_count: int, events: int, *, ordered: bool) -> Result:
    result = Result(name, events)
    with rig(ca, NEVER_BINDS) as r:
        worker = WorkerProcess(r.env, concurrency=CONCURRENCY, name=name, queues=FAST_QUEUES)
        worker.start()
        try:
            cids = conversations(r, conversations_count, ordered=ordered)
            # Drain: publish everything, then wait for the last arrival.
            r.client.config_resetstat()
            started = time.time()
            publish(cids, events)
            wait_until(lambda: len(arrivals(r.receiver.received())) >= events, 600)
            result.drain_s = max(arrivals(r.receiver.received()).values()) - started
            result.commands_per_delivery = sum(commandstats(r.client).values()) / events
            if ordered and conversations_count == 1:
                result.handoff_ms = handoffs(r.receiver.received())
            # Latency at a steady rate, on the same worker.
            before = len(r.receiver.received())
            steady = publish(cids, int(STEADY_RATE * STEADY_S), rate=STEADY_RATE)
            wait_until(lambda: len(r.receiver.received()) >= before + len(steady), 600)
            seen = arrivals(r.receiver.received())
            result.latency_ms = [(seen[w] - at) * 1000 for w, at in steady.items()]
        finally:
            worker.stop()
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(results: list[Result], facts: list[str]) -> list[str]:
    base = results[0]
    lines = [
        "# Ordered delivery against unordered",
        "",
        *facts,
        "",
        f"One prefork worker (--concurrency {CONCURRENCY}), limits too high to bind, a "
        "receiver answering 200 at once, a fresh Redis per contender. Latency: delay() to "
        f"arrival at a steady {STEADY_RATE:g} events/s for {STEADY_S:g} s.",
        "",
        "| contender | events | drain /s | ratio | latency p50 / p99 ms | Redis commands "
        "per delivery | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.events} | {r.rate:.0f} | {r.rate / base.rate:.2f}x | "
            f"{pct(r.latency_ms, 50):.0f} / {pct(r.latency_ms, 99):.0f} | "
            f"{r.commands_per_delivery:.1f} | "
            f"{r.commands_per_delivery / base.commands_per_delivery:.2f}x |"
        )
    single = next((r for r in results if r.handoff_ms), None)
    if single is not None:
        lines += [
            "",
            f"Hand-off in one ordered line (event n's arrival to n+1's, {len(single.handoff_ms)} "
            f"hand-offs): p50 {pct(single.handoff_ms, 50):.1f} ms, p99 "
            f"{pct(single.handoff_ms, 99):.1f} ms, max {max(single.handoff_ms):.1f} ms, mean "
            f"{statistics.fmean(single.handoff_ms):.1f} ms (target: p99 under 50 ms).",
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1000, help="for the 100-conversation runs")
    parser.add_argument("--single", type=int, default=300, help="for the one-line run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ordering-") as tmp:
        ca = TestCA(Path(tmp))
        results = [
            run(ca, "unordered, 100 conversations", 100, args.events, ordered=False),
            run(ca, "ordered, 100 conversations", 100, args.events, ordered=True),
            run(ca, "ordered, 1 conversation", 1, args.single, ordered=True),
        ]
        with rig(ca, {}) as r:
            facts = machine(str(r.client.info("server")["redis_version"]))
    write_report(report(results, facts), RESULTS)


if __name__ == "__main__":
    main()
