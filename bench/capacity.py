"""``python -m bench.capacity``: Redis CPU per delivery, broker and store apart, and what it buys.

Two contenders, each draining N events queued before its worker starts (a
saturated worker, the regime a capacity plan is about) into :mod:`bench.sink`:

* **pipeline**: ``deliver_webhook.delay(event)``, everything on as by default,
  limits set never to bind, with the broker and the store on two separate
  fresh redis-servers, so each one's cost is measured on its own; one
  prefork worker consuming the Procfile's fast queues.
* **plain**: :func:`bench.contenders.plain_send` on one fresh redis-server (it
  has no store), the same worker layout.

Per delivery, for each Redis: commands and the microseconds they ran (``INFO
commandstats``, reset before enqueueing, so the producer's commands count),
and the server's CPU (``used_cpu_user + used_cpu_sys`` delta: command
execution plus networking, event loop and cron, what a core must really
supply). The window runs from the reset to the worker stopped (its last
metrics flush included). The bench's own polls (LLEN/HLEN until the broker
is drained, and the INFO reads) are counted; their commands and usec are
removed exactly, their CPU by a calibration of a poll on the same server.

From CPU per delivery comes the capacity table: deliveries/s one Redis core
sustains at a target utilisation (``--target-utilisation``, 50 % by default:
Redis runs commands on one thread, and the other half is headroom for
retries, bursts, replicas, AOF rewrites and failover catch-up), and how many
broker groups and store Cluster shards 1k, 10k and 100k deliveries/s need.

Not a test: it exits 0 whatever it measures. Writes
``bench-results/capacity.md`` and prints the report.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import redis

from bench.contenders import app as contenders_app
from bench.contenders import plain_send
from bench.rig import (
    NEVER_BINDS,
    PATH,
    UNACKED,
    commandstats,
    commandstats_usec,
    enqueue,
    load_average,
    machine,
    message_event,
    redis_cpu_s,
    rig,
    write_report,
)
from bench.sink import Sink
from config.celery_app import app
from config.wiring import conversation_store
from testing.receiver import TestCA
from testing.worker import FAST_QUEUES, WorkerProcess
from webhooks.queues import QUEUE, RELEASED_QUEUE

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
PIPELINE, PLAIN = "pipeline", "plain"
BROKER, STORE, ONLY = "broker", "store", "broker (no store)"
PLAIN_QUEUE = "celery"  # Celery's default queue, which the contenders app uses
POLL_S = 0.02
CALIBRATION_POLLS = 2000
RATES = (1_000, 10_000, 100_000)
TARGET_RATIO = 2.0


@dataclass
class Meter:
    """One Redis server's cost over a window, the bench's own traffic taken out."""

    client: redis.Redis
    polls: Counter[str] = field(default_factory=Counter)
    poll_cpu_s: float = 0.0  # CPU one LLEN/HLEN round trip costs this server
    cpu_at_start: float = 0.0

    def calibrate(self) -> None:
        """What a poll costs this server: the one part of its CPU not in commandstats."""
        before = redis_cpu_s(self.client)
        for _ in range(CALIBRATION_POLLS):
            self.client.llen("calibration")
        self.poll_cpu_s = max(0.0, redis_cpu_s(self.client) - before) / CALIBRATION_POLLS

    def start(self) -> None:
        self.client.config_resetstat()
        self.polls.clear()
        self.cpu_at_start = redis_cpu_s(self.client)

    def queued(self, queues: tuple[str, ...]) -> int:
        """Messages not yet acknowledged: queue lengths + kombu's unacked hash."""
        total = sum(int(self.client.llen(q)) for q in queues) + int(self.client.hlen(UNACKED))
        self.polls["llen"] += len(queues)
        self.polls["hlen"] += 1
        return total

    def stop(self) -> Cost:
        cpu = redis_cpu_s(self.client) - self.cpu_at_start
        calls, usec = commandstats(self.client), commandstats_usec(self.client)
        for command, ours in self.polls.items():
            if calls[command]:  # the bench's share of the command's time
                usec[command] -= round(usec[command] * min(1.0, ours / calls[command]))
            calls[command] -= ours
        for command in ("info", "config|resetstat"):  # only the bench sends these
            del calls[command], usec[command]
        cpu -= self.poll_cpu_s * self.polls.total()  # INFO's few reads stay in: microseconds
        return Cost(+calls, +usec, max(cpu, 0.0))


@dataclass(frozen=True)
class Cost:
    calls: Counter[str]
    usec: Counter[str]  # commandstats execution time per command
    cpu_s: float  # used_cpu_user + used_cpu_sys


@dataclass(frozen=True)
class Run:
    name: str
    delivered: int
    seconds: float  # worker ready -> sink saw the last one
    costs: dict[str, Cost]  # by role: broker, store (pipeline) or the one server (plain)


@dataclass(frozen=True)
class Contender:
    """A contender wired to fresh servers: how to publish, what to run, where to look."""

    name: str
    meters: dict[str, Meter]  # by role
    broker: str  # the role whose server holds the queues
    queues: tuple[str, ...]
    publish: Callable[[int], object]  # queue N events
    worker: WorkerProcess
    sink: Sink


@contextmanager
def contender(ca: TestCA, tmp: Path, name: str, concurrency: int) -> Iterator[Contender]:
    with ExitStack() as stack:
        sink = stack.enter_context(Sink(ca, tmp))
        r = stack.enter_context(rig(ca, NEVER_BINDS, own_broker=name == PIPELINE))
        url = r.env["WEBHOOKS_BROKER_URL"]
        prefork = ("--pool", "prefork")
        if name == PIPELINE:
            callback = {"config": {"callback_url": sink.url(PATH)}}
            conversation_store(r.client, app.settings).set(r.conversation_id, callback)
            worker = WorkerProcess(r.env, concurrency=concurrency, name="capacity-pipeline",
                                   cwd=ROOT, extra_args=prefork, queues=FAST_QUEUES)  # fmt: skip
            meters = {BROKER: Meter(r.broker), STORE: Meter(r.client)}
            yield Contender(name, meters, BROKER, (QUEUE, RELEASED_QUEUE),
                            partial(enqueue, r), worker, sink)  # fmt: skip
            return
        # The contenders app reads its broker once per process: publish on this run's.
        producer = stack.enter_context(contenders_app.connection_for_write(url)).Producer()
        target = sink.url(PATH)

        def publish(n: int) -> None:
            for _ in range(n):
                plain_send.apply_async(
                    (target, message_event(r.conversation_id)), producer=producer
                )

        env = {"BENCH_BROKER_URL": url, "BENCH_CA_BUNDLE": str(ca.pem_path)}
        worker = WorkerProcess(env, concurrency=concurrency, name="capacity-plain", cwd=ROOT,
                               extra_args=prefork, queues=PLAIN_QUEUE,
                               app="bench.contenders")  # fmt: skip
        yield Contender(name, {ONLY: Meter(r.client)}, ONLY, (PLAIN_QUEUE,), publish, worker, sink)


def run(ca: TestCA, tmp: Path, name: str, events: int, concurrency: int) -> Run:
    with contender(ca, tmp, name, concurrency) as c:
        for meter in c.meters.values():
            meter.calibrate()
            meter.start()
        c.publish(events)
        try:
            c.worker.start()
            ready = time.time()
            deadline = time.monotonic() + 60 + events / 10
            while c.sink.count() < events and time.monotonic() < deadline:
                time.sleep(POLL_S)  # the sink, not Redis: costs Redis nothing
            broker = c.meters[c.broker]
            empty = 0
            while empty < 2 and time.monotonic() < deadline:  # acks after the last POST
                empty = empty + 1 if broker.queued(c.queues) == 0 else 0
                time.sleep(POLL_S)
        finally:
            c.worker.stop()  # its last metrics flush lands inside the window
        arrivals = c.sink.arrivals()
        costs = {role: meter.stop() for role, meter in c.meters.items()}
    delivered = len({i for i, _ in arrivals})
    finished = max((t for _, t in arrivals), default=math.nan)
    return Run(name, delivered, finished - ready, costs)


def per_delivery(runs: list[Run], role: str) -> tuple[float, float, float, Counter[str]]:
    """(commands, commandstats µs, CPU µs, commands by name) per delivery over ``runs``."""
    n = sum(r.delivered for r in runs) or 1
    calls = sum((r.costs[role].calls for r in runs), Counter[str]())
    usec = sum(r.costs[role].usec.total() for r in runs)
    cpu_us = sum(r.costs[role].cpu_s for r in runs) * 1e6
    return calls.total() / n, usec / n, cpu_us / n, Counter({k: v / n for k, v in calls.items()})


def cost_section(pipeline: list[Run], plain: list[Run]) -> list[str]:
    rows = {
        f"pipeline {BROKER}": per_delivery(pipeline, BROKER),
        f"pipeline {STORE}": per_delivery(pipeline, STORE),
        f"plain {ONLY}": per_delivery(plain, ONLY),
    }
    broker, store, baseline = rows.values()
    total = tuple(b + s for b, s in zip(broker[:3], store[:3], strict=True))
    lines = [
        "| Redis | commands | commandstats µs | Redis CPU µs (user + sys) |",
        "|---|---|---|---|",
        *(f"| {name} | {c:.1f} | {u:.1f} | {cpu:.1f} |" for name, (c, u, cpu, _) in rows.items()),
        f"| **pipeline, both** | **{total[0]:.1f}** | **{total[1]:.1f}** | **{total[2]:.1f}** |",
        "",
        *(
            f"- pipeline / plain, {what} = {ours:.1f} / {theirs:.1f} = **{ours / theirs:.2f}x** "
            f"(target <= {TARGET_RATIO:g}x): {'PASS' if ours / theirs <= TARGET_RATIO else 'MISS'}"
            for what, ours, theirs in zip(
                ("commands", "commandstats µs", "Redis CPU µs"), total, baseline[:3], strict=True
            )
            if theirs
        ),
        f"- pipeline broker alone / plain, Redis CPU = **{broker[2] / baseline[2]:.2f}x**"
        if baseline[2]
        else "",
        "\nCommands per delivery by name (those at 0.05 or more):\n",
        "| command | pipeline broker | pipeline store | plain |",
        "|---|---|---|---|",
    ]
    names = set(broker[3]) | set(store[3]) | set(baseline[3])
    shown = sorted(
        (k for k in names if max(broker[3][k], store[3][k], baseline[3][k]) >= 0.05),
        key=lambda k: -(broker[3][k] + store[3][k] + baseline[3][k]),
    )
    lines += [
        f"| {k} | {broker[3][k]:.2f} | {store[3][k]:.2f} | {baseline[3][k]:.2f} |" for k in shown
    ]
    return lines


def capacity_section(pipeline: list[Run], plain: list[Run], target: float) -> list[str]:
    """Deliveries/s per Redis core and the groups each rate needs, from CPU per delivery."""
    roles = (
        ("broker: Redis or Sentinel groups", per_delivery(pipeline, BROKER)[2]),
        ("store: Redis Cluster shards (masters)", per_delivery(pipeline, STORE)[2]),
        ("plain sender's one Redis (for scale)", per_delivery(plain, ONLY)[2]),
    )
    head = " | ".join(f"at {rate // 1000}k/s" for rate in RATES)
    lines = [
        f"| Redis role | CPU µs per delivery | deliveries/s per core at 100 % | "
        f"at {target:.0%} | {head} |",
        "|---|---|---|---|" + "---|" * len(RATES),
    ]
    for role, cpu_us in roles:
        if not cpu_us:
            continue
        full = 1e6 / cpu_us
        sustained = full * target
        needed = " | ".join(str(math.ceil(rate / sustained)) for rate in RATES)
        lines.append(f"| {role} | {cpu_us:.0f} | {full:,.0f} | {sustained:,.0f} | {needed} |")
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=3000, help="per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per contender, alternating")
    parser.add_argument("--concurrency", type=int, default=8, help="the Procfile's default")
    parser.add_argument(
        "--target-utilisation", type=float, default=0.5, help="of one Redis core, 0-1"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what was started
    began = time.monotonic()
    runs: dict[str, list[Run]] = {PIPELINE: [], PLAIN: []}
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        ca = TestCA(Path(tmp))
        with rig(ca, {}) as r:
            facts = machine(str(r.client.info("server")["redis_version"]))
        for i in range(args.rounds):
            for name in (PIPELINE, PLAIN) if i % 2 == 0 else (PLAIN, PIPELINE):
                done = run(ca, Path(tmp), name, args.events, args.concurrency)
                runs[name].append(done)
                cpu = ", ".join(
                    f"{role} {c.cpu_s * 1e6 / max(done.delivered, 1):.0f} µs CPU, "
                    f"{c.calls.total() / max(done.delivered, 1):.1f} commands"
                    for role, c in done.costs.items()
                )
                print(f"round {i + 1} {name}: {done.delivered}/{args.events} delivered in "
                      f"{done.seconds:.1f} s; per delivery: {cpu}", flush=True)  # fmt: skip
    report = [
        "# Capacity: Redis cost per delivery, broker and store apart",
        "",
        *facts,
        f"- load average (1, 5, 15 min) at the end: {load_average()}",
        f"- {args.rounds} rounds x {args.events:,} events per contender, alternating; one "
        f"worker `--pool prefork --concurrency {args.concurrency}` started after the events "
        f"were queued; wall time {time.monotonic() - began:.0f} s",
        f"- delivered: pipeline {sum(r.delivered for r in runs[PIPELINE]):,}, plain "
        f"{sum(r.delivered for r in runs[PLAIN]):,} of {args.rounds * args.events:,} each",
        "\n## Cost per delivery\n",
        "From CONFIG RESETSTAT before enqueueing to the worker stopped, summed over the rounds, "
        "/ deliveries. The bench's polls and INFO reads are removed (their CPU by a calibrated "
        "LLEN round trip). Idle worker traffic during the window (BRPOP wake-ups, heartbeats, "
        "the pump, metrics flushes) is included.\n",
        *cost_section(runs[PIPELINE], runs[PLAIN]),
        f"\n## Capacity at {args.target_utilisation:.0%} of one Redis core\n",
        "deliveries/s = target utilisation / CPU per delivery; groups = ceil(rate / that). "
        "One attempt per delivery, no retries; the assumptions are in docs/capacity.md.\n",
        *capacity_section(runs[PIPELINE], runs[PLAIN], args.target_utilisation),
    ]
    write_report(report, RESULTS / "capacity.md")


if __name__ == "__main__":
    main()
