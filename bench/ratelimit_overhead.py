"""``python -m bench.ratelimit_overhead``: what the rate-limit feature costs.

Everything runs on real parts: a fresh private ``redis-server`` per run, a real
``celery worker`` (one, ``--concurrency 2`` prefork) and a local HTTPS receiver.

1. Throughput: limits too high ever to bind versus limits off, N events queued
   before the worker starts, timed from the receiver's first request to its
   last, plus the worker's CPU time per delivery; the contenders alternate for
   a few rounds and the medians count.
2. Redis commands per delivery from ``INFO commandstats``, and which of them
   ran inside Lua scripts, from a separate ``MONITOR``'d run.
3. A worker's peak RSS while one slow endpoint has a large backlog, with the
   waiting line, the queue, duplicates and the order deliveries went out in.

Not a test: it exits 0 whatever it measures. The report is printed and written
to ``bench-results/ratelimit-overhead.md``.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.rig import (
    NEVER_BINDS,
    PATH,
    UNACKED,
    busiest_window,
    commandstats,
    cpu_s,
    duplicates,
    enqueue,
    load_average,
    machine,
    redis_cpu_s,
    rig,
    vmrss_kb,
    wait_until,
    write_report,
)
from testing.receiver import TestCA
from testing.worker import WorkerProcess
from webhooks import keys
from webhooks.queues import QUEUE

__all__ = ["main"]

OFF = {"WEBHOOKS_LIMITS_ENABLED": "false"}
SLOW = {"WEBHOOKS_RATE_LIMIT": "10/second", "WEBHOOKS_MAX_CONCURRENCY": "2"}
CONTENDERS = {"off": OFF, "on": NEVER_BINDS}
TARGET_OVERHEAD = 0.10
CONCURRENCY = 2
RESULTS = Path(__file__).resolve().parent.parent / "bench-results" / "ratelimit-overhead.md"


@dataclass(frozen=True)
class Run:
    rate: float  # deliveries/s, receiver's first request to its last
    worker_cpu_ms: float  # per delivery, worker main + pool processes, from ready to drained
    calls: Counter[str]  # INFO commandstats calls, worker start to drained
    redis_cpu_s: float
    duplicates: int


def throughput_run(ca: TestCA, overrides: dict[str, str], events: int) -> Run:
    with rig(ca, overrides) as r:
        enqueue(r, events)
        cpu_before = redis_cpu_s(r.client)
        r.client.config_resetstat()
        with WorkerProcess(r.env, concurrency=CONCURRENCY, name="bench") as worker:
            pids = [worker.process.pid if worker.process else 0, *worker.pool_pids()]
            early, worker_before = len(r.receiver.received()), cpu_s(pids)
            wait_until(lambda: len(r.receiver.received()) >= events, 60 + events / 10)
            wait_until(lambda: r.client.llen(QUEUE) + r.client.hlen(UNACKED) == 0, 60)
            worker_ms = (cpu_s(pids) - worker_before) * 1000 / (events - early)
            calls, redis_s = commandstats(r.client), redis_cpu_s(r.client) - cpu_before
        got = r.receiver.received()
        rate = (len(got) - 1) / (got[-1].received_at - got[0].received_at)
        return Run(rate, worker_ms, calls, redis_s, duplicates(r.receiver))


def lua_calls(ca: TestCA, overrides: dict[str, str], events: int) -> Counter[str]:
    """Per command, calls per delivery made inside Lua scripts: MONITOR tags them."""
    inside: Counter[str] = Counter()
    with rig(ca, overrides) as r:
        enqueue(r, events)
        monitor = r.client.monitor()  # type: ignore[no-untyped-call]
        with monitor, WorkerProcess(r.env, concurrency=CONCURRENCY):
            deadline = float("inf")
            while time.monotonic() < deadline:
                seen = monitor.next_command()
                if seen["client_type"] == "lua":
                    inside[seen["command"].split(" ", 1)[0].lower()] += 1
                if deadline == float("inf") and len(r.receiver.received()) >= events:
                    deadline = time.monotonic() + 1.0  # the last acks and outcomes
    return Counter({k: v / events for k, v in inside.items()})


def idle_commands_per_s(ca: TestCA) -> float:
    with rig(ca, NEVER_BINDS) as r, WorkerProcess(r.env, concurrency=CONCURRENCY):
        time.sleep(1)
        r.client.config_resetstat()
        time.sleep(5)
        return commandstats(r.client).total() / 5


def backlog_run(ca: TestCA, backlog: int, seconds: float) -> list[str]:
    with rig(ca, SLOW) as r:
        started = time.perf_counter()
        position = {wid: i for i, wid in enumerate(enqueue(r, backlog))}
        enqueue_rate = backlog / (time.perf_counter() - started)
        parked_key = keys.endpoint(r.endpoint).parked
        peaks: Counter[str] = Counter()
        rows: list[tuple[float, int, int, int, int, int]] = []
        with WorkerProcess(r.env, concurrency=CONCURRENCY, name="backlog") as worker:
            main_pid = worker.process.pid if worker.process else 0
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                rss = {"main": vmrss_kb(main_pid)}
                rss |= {f"pool child {pid}": vmrss_kb(pid) for pid in worker.pool_pids()}
                peaks |= {name: max(peaks[name], kb) for name, kb in rss.items()}
                queues = r.client.zcard(parked_key), r.client.llen(QUEUE)
                rows.append(
                    (elapsed, *queues, len(r.receiver.received()), rss["main"], sum(rss.values()))
                )
                time.sleep(0.5)
            got, dupes = r.receiver.received(), duplicates(r.receiver)
            in_flight = r.receiver.peak_in_flight(PATH)
            waiting = [position[str(w)] for w in r.client.zrange(parked_key, 0, -1)]
        used = r.client.info("memory")["used_memory_human"]
    times = [req.received_at for req in got]
    delivered = [position[req.headers["webhook-id"]] for req in got]
    oldest = min(waiting, default=backlog)
    return [
        f"\n## 3. Worker memory with a {backlog:,}-event backlog for one endpoint\n",
        f"Limits {SLOW}; one worker, --concurrency {CONCURRENCY}; enqueued with delay() at "
        f"{enqueue_rate:,.0f} events/s; ran {seconds:.0f} s, sampled every 0.5 s.\n",
        "| process | peak VmRSS |",
        "|---|---|",
        *(f"| {name} | {kb / 1024:.1f} MiB |" for name, kb in sorted(peaks.items())),
        f"| **sum (peak of the per-sample sums)** | **{max(row[5] for row in rows) / 1024:.1f} "
        "MiB** |",
        "\n| t (s) | parked (ZCARD) | queue (LLEN) | delivered | main RSS (MiB) | sum RSS (MiB) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {t:.1f} | {p:,} | {q:,} | {d:,} | {m / 1024:.1f} | {total / 1024:.1f} |"
            for t, p, q, d, m, total in rows[:-1:10] + rows[-1:]
        ),
        f"\nDelivered {len(got)} ({len(got) / seconds:.1f}/s); duplicate webhook-ids: "
        f"**{dupes}**; receiver's peak in flight {in_flight}; busiest 1 s window at the receiver "
        f"{busiest_window(times, 1.0)} (the limiter counts attempt starts in Redis time, "
        f"arrivals lag them by a varying few ms); Redis used_memory at the end: {used}.",
        f"\nLine order: the oldest delivery still parked is #{oldest:,} in enqueue order, "
        f"yet {sum(p > oldest for p in delivered):,} of the {len(got):,} delivered were "
        f"enqueued after it (first delivered: {', '.join(f'#{p}' for p in delivered[:12])}, ...).",
    ]


def throughput_section(runs: dict[str, list[Run]], events: int, rounds: int) -> list[str]:
    med = {name: statistics.median(run.rate for run in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(run.worker_cpu_ms for run in rs) for name, rs in runs.items()}
    overhead = 1 - med["on"] / med["off"]
    verdict = "PASS" if overhead < TARGET_OVERHEAD else "MISS"
    lines = [
        f"\n## 1. Throughput, {events:,} events, {rounds} alternating rounds\n",
        f"One worker, --concurrency {CONCURRENCY} prefork; 'on' = {NEVER_BINDS}, "
        f"'off' = {OFF}. Rate = (N-1) / (last request - first request) at the receiver. "
        "Worker CPU = user+sys of the worker and its pool from ready to drained, per delivery.\n",
        "| contender | deliveries/s per round | median | spread | worker CPU ms/delivery "
        "per round | median | duplicates |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        rates = ", ".join(f"{run.rate:.0f}" for run in rs)
        spread = (max(run.rate for run in rs) - min(run.rate for run in rs)) / med[name]
        cpus = ", ".join(f"{run.worker_cpu_ms:.2f}" for run in rs)
        dupes = sum(run.duplicates for run in rs)
        lines.append(
            f"| {name} | {rates} | **{med[name]:.1f}** | {spread:.0%} | {cpus} | "
            f"**{cpu[name]:.2f}** | {dupes} |"
        )
    pairs = zip(runs["on"], runs["off"], strict=True)
    paired = ", ".join(f"{1 - on.rate / off.rate:.1%}" for on, off in pairs)
    lines += [
        f"\nThroughput overhead = 1 - on/off of the medians = **{overhead:.1%}** (target < "
        f"{TARGET_OVERHEAD:.0%}): **{verdict}**. Round by round: {paired}.",
        f"\nWorker CPU per delivery, on/off - 1 = **{cpu['on'] / cpu['off'] - 1:+.1%}** (less "
        "sensitive to other load on the machine than the rate).",
    ]
    return lines


def commands_section(
    runs: dict[str, list[Run]], events: int, lua: dict[str, Counter[str]], idle_per_s: float
) -> list[str]:
    n = {name: events * len(rs) for name, rs in runs.items()}
    per = {name: Counter({k: v / n[name] for k, v in sum((run.calls for run in rs),
                          Counter[str]()).items()}) for name, rs in runs.items()}  # fmt: skip
    cpu_ms = {
        name: sum(run.redis_cpu_s for run in rs) * 1000 / n[name] for name, rs in runs.items()
    }
    off, on = per["off"], per["on"]
    lines = [
        "\n## 2. Redis commands per delivery\n",
        "'all': INFO commandstats over every timed run. 'in Lua': of those, run by a script, "
        "from a separate MONITOR'd run (MONITOR tags them `[0 lua]`).\n",
        "| command | off: all | off: in Lua | on: all | on: in Lua |",
        "|---|---|---|---|---|",
        f"| **total** | **{off.total():.2f}** | **{lua['off'].total():.2f}** | "
        f"**{on.total():.2f}** | **{lua['on'].total():.2f}** |",
    ]
    for cmd in sorted(set(off) | set(on), key=lambda k: -on[k] - off[k]):
        if max(off[cmd], on[cmd]) >= 0.05:
            lines.append(f"| {cmd} | {off[cmd]:.2f} | {lua['off'][cmd]:.2f} | {on[cmd]:.2f} | "
                         f"{lua['on'][cmd]:.2f} |")  # fmt: skip
    sent = {name: per[name].total() - lua[name].total() for name in per}
    lines += [
        "\nRedis counts each command a script runs under its own name (cmdstat_zadd, ...) as "
        "well as the EVALSHA that ran it, whose usec include them; so the totals hold both. "
        f"Sent by clients: off {sent['off']:.2f}, on {sent['on']:.2f} commands per delivery "
        "(a pipeline or MULTI...EXEC block is one round trip for several).",
        f"\nRedis CPU (INFO cpu, user+sys) per delivery: off {cpu_ms['off']:.3f} ms, "
        f"on {cpu_ms['on']:.3f} ms. An idle worker sends {idle_per_s:.1f} commands/s (BRPOP "
        "poll, pump, heartbeats), included above in proportion to the run time.",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=100_000, help="0 skips part 3")
    parser.add_argument("--backlog-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every worker and Redis started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="bench-ca-") as tmp:
        ca = TestCA(Path(tmp))
        with rig(ca, {}) as r:
            facts = machine(str(r.client.info("server")["redis_version"]))
        runs: dict[str, list[Run]] = {name: [] for name in CONTENDERS}
        for i in range(args.rounds):
            order = list(CONTENDERS) if i % 2 == 0 else list(reversed(CONTENDERS))
            for name in order:
                runs[name].append(throughput_run(ca, CONTENDERS[name], args.events))
                print(f"round {i + 1} {name}: {runs[name][-1].rate:.1f} deliveries/s", flush=True)
        lua = {name: lua_calls(ca, env, min(args.events, 500)) for name, env in CONTENDERS.items()}
        idle_per_s = idle_commands_per_s(ca)
        report = ["# Rate-limit overhead", "", *facts]
        report += throughput_section(runs, args.events, args.rounds)
        report += commands_section(runs, args.events, lua, idle_per_s)
        if args.backlog:
            report += backlog_run(ca, args.backlog, args.backlog_seconds)
    report.append(f"\nLoad average at the end: {load_average()}.")
    write_report(report, RESULTS)


if __name__ == "__main__":
    main()
