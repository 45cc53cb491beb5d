"""``python -m bench.compare``: our pipeline against the obvious alternative, in one run.

Four contenders, each on its own fresh ``redis-server``, delivering to the
same kind of receiver, :mod:`bench.sink` (asyncio + TLS in its own process, so
it shares no GIL with the bench; its CPU per event is reported, to show it is
not the bottleneck):

* **pipeline**: ``deliver_webhook.delay(event)``, everything on as by default
  (signing, rate limits, attempt log, outcomes, metrics, health), limits set
  high enough never to bind; the worker consumes the Procfile's fast queues.
* **plain-pooled**: :func:`bench.contenders.plain_send`, ``requests`` with
  one pooled ``Session`` per worker process (kept-alive connections) and
  Celery's autoretry, on Celery's defaults: the honest contender.
* **plain-new-connection**: :func:`bench.contenders.plain_send_new_connection`,
  the same with a new ``Session`` per call (a TCP + TLS handshake per event).
* **empty**: :func:`bench.contenders.empty`, a task that does nothing: the
  ceiling of one Celery task per event.

Every contender gets one worker with the same layout (``--pool``,
``--concurrency``). Measured:

1. Drain throughput: N events queued first, then the worker starts; rate = N /
   (last event finished - worker ready). "Finished": the sink's arrival time of
   the last POST (the bench polls the sink's ``/_count``, not Redis); for
   ``empty``, the queue and kombu's unacked hash seen empty. Rounds alternate
   the order; medians count. The sink must see N distinct ids.
   ``--only drain --contenders pipeline,plain-pooled`` runs just this (and
   the costs below) for the named contenders, to iterate quickly.
2. Cost, from the same runs: Redis commands per event from ``INFO
   commandstats`` (reset before enqueueing, so the producer's commands count;
   commands run inside Lua count under their own names, besides the EVALSHA;
   the bench's own polling is subtracted exactly), the worker's peak memory
   (main process + pool children, sampled every 0.2 s), and CPU per event of
   the worker, Redis and the sink while draining.
3. Latency at a steady publish rate, publish (time read just before
   ``delay()``) to the sink's arrival time: pipeline and plain-pooled.
4. Isolation: :mod:`bench.isolation`'s fast-endpoint p99 while a slow
   endpoint floods, split queues vs one queue vs alone.

Not a test: it exits 0 whatever it measures. Writes
``bench-results/compare.md`` and ``compare.png``, and prints the report.
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from bench import isolation
from bench.contenders import app as contenders_app
from bench.contenders import empty, plain_send, plain_send_new_connection
from bench.rig import (
    NEVER_BINDS,
    PATH,
    UNACKED,
    Rig,
    commandstats,
    cpu_s,
    enqueue,
    load_average,
    machine,
    message_event,
    redis_cpu_s,
    rig,
    vmrss_kb,
    write_report,
)
from bench.sink import Sink
from config.celery_app import app
from config.wiring import conversation_store
from tasks import deliver_webhook
from testing.receiver import TestCA
from testing.worker import FAST_QUEUES, WorkerProcess
from webhooks.queues import QUEUE, RELEASED_QUEUE

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
PIPELINE, PLAIN, PLAIN_NEW, EMPTY = "pipeline", "plain-pooled", "plain-new-connection", "empty"
NAMES = (PIPELINE, PLAIN, PLAIN_NEW, EMPTY)
SENDERS = {PLAIN: plain_send, PLAIN_NEW: plain_send_new_connection}
COLORS = {PIPELINE: "tab:blue", PLAIN: "tab:orange", PLAIN_NEW: "tab:red", EMPTY: "tab:gray"}
BASELINE_QUEUE = "celery"  # Celery's default queue, which the contenders app uses
POLL_S, RSS_EVERY_S = 0.01, 0.2
WARM_UP = 20
TARGET_VS_PLAIN, TARGET_VS_EMPTY, TARGET_COMMANDS = 1.0, 0.75, 2.0
TARGET_P50_S, TARGET_P99_S = 0.010, 0.050
ISOLATION_RATE, ISOLATION_SLOW_SLOTS = 50.0, 20  # python -m bench.isolation's defaults


@dataclass(frozen=True)
class Layout:
    pool: str
    concurrency: int


@dataclass
class Stage:
    """One contender's fresh Redis, sink, producer and worker recipe."""

    name: str
    r: Rig
    sink: Sink
    send: Callable[[dict[str, Any]], str]  # publish one event; the id the sink will record
    worker_env: dict[str, str]
    app: str
    queues: str
    polled: tuple[str, ...]  # the Redis lists that hold this contender's queued tasks
    polls: Counter[str] = field(default_factory=Counter)  # commands the bench sent since reset

    def worker(self, layout: Layout) -> WorkerProcess:
        return WorkerProcess(
            self.worker_env, concurrency=layout.concurrency, name=f"bench-{self.name}",
            cwd=ROOT, extra_args=("--pool", layout.pool), queues=self.queues, app=self.app,
        )  # fmt: skip

    def queued(self) -> int:
        """Tasks not yet acknowledged: queue lengths + kombu's unacked hash, each call counted."""
        total = sum(int(self.r.client.llen(q)) for q in self.polled)
        total += int(self.r.client.hlen(UNACKED))
        self.polls["llen"] += len(self.polled)
        self.polls["hlen"] += 1
        return total


@dataclass(frozen=True)
class Drain:
    rate: float  # events/s, ready -> last finished
    seconds: float
    finished: int  # distinct expected ids at the sink (empty: N once drained)
    calls: Counter[str]  # Redis commands, enqueue to drained, bench's own removed
    peak_rss_kb: int  # peak of the per-sample sums, worker main + pool children
    cpu_ms: dict[str, float]  # per event, ready -> drained: worker, Redis, sink
    lost: int | None  # None: no HTTP to check (empty)
    duplicates: int | None


@dataclass(frozen=True)
class Latency:
    latencies_s: list[float]  # sorted, publish -> first arrival
    sent: int
    publish_rate: float


@contextmanager
def stage(ca: TestCA, tmp: Path, name: str) -> Iterator[Stage]:
    """A fresh Redis (bench.rig) and sink, the producer for ``name`` pointed at them."""
    with rig(ca, NEVER_BINDS) as r, Sink(ca, tmp) as sink, ExitStack() as stack:
        url = r.env["WEBHOOKS_BROKER_URL"]
        if name == PIPELINE:
            callback = {"config": {"callback_url": sink.url(PATH)}}
            conversation_store(r.client, app.settings).set(r.conversation_id, callback)
            yield Stage(name, r, sink, send_pipeline, r.env, "config.celery_app", FAST_QUEUES,
                        (QUEUE, RELEASED_QUEUE))  # fmt: skip
            return
        # The contenders app is configured once per process from BENCH_BROKER_URL; each
        # run's Redis is new, so publish with a producer on this run's connection.
        producer = stack.enter_context(contenders_app.connection_for_write(url)).Producer()
        if name in SENDERS:
            target, task = sink.url(PATH), SENDERS[name]

            def send(event: dict[str, Any]) -> str:
                task.apply_async((target, event), producer=producer)
                return str(event["data"]["id"])
        else:

            def send(event: dict[str, Any]) -> str:
                return str(empty.apply_async((event,), producer=producer).id)

        env = {"BENCH_BROKER_URL": url, "BENCH_CA_BUNDLE": str(ca.pem_path)}
        yield Stage(name, r, sink, send, env, "bench.contenders", BASELINE_QUEUE,
                    (BASELINE_QUEUE,))  # fmt: skip


def send_pipeline(event: dict[str, Any]) -> str:
    return str(deliver_webhook.delay(event).id)


def started(stack: ExitStack, worker: WorkerProcess) -> WorkerProcess:
    """Start ``worker`` with its stop already on ``stack``: a SIGTERM while it starts stops it."""
    stack.callback(worker.stop)
    return worker.start()


def worker_rss_kb(worker: WorkerProcess) -> int:
    """VmRSS of the worker and its pool children (none for gevent, threads, solo)."""
    main_pid = worker.process.pid if worker.process else 0
    try:
        children = worker.pool_pids()
    except FileNotFoundError:
        children = []
    return vmrss_kb(main_pid) + sum(vmrss_kb(pid) for pid in children)


def wait_drained(
    s: Stage, worker: WorkerProcess, events: int, timeout_s: float
) -> tuple[float, int]:
    """Poll every 10 ms until all ``events`` finished; (finish epoch s, peak worker RSS kB).

    HTTP contenders are polled at the sink, so the drain itself costs Redis
    nothing; then Redis is polled (counted) until every task is acknowledged,
    so the commands of the last deliveries' bookkeeping are in the stats.
    ``empty`` is polled in Redis throughout, and "drained" needs two empty
    reads in a row: between BRPOP and kombu's HSET into ``unacked`` a message
    is in neither.
    """
    deadline = time.monotonic() + timeout_s
    peak, next_sample, finished, zeros = 0, 0.0, math.nan, 0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_sample:
            peak, next_sample = max(peak, worker_rss_kb(worker)), time.monotonic() + RSS_EVERY_S
        if s.name != EMPTY:
            if s.sink.count() >= events:
                break
        elif s.queued() == 0:
            finished = finished if zeros else time.time()
            zeros += 1
            if zeros == 2:
                break
        else:
            zeros = 0
        time.sleep(POLL_S)
    zeros = 0
    while zeros < 2 and time.monotonic() < deadline:
        zeros = zeros + 1 if s.queued() == 0 else 0
        time.sleep(POLL_S)
    return finished, max(peak, worker_rss_kb(worker))


def cpu_now(s: Stage, pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far by the worker (main + pool), Redis and the sink."""
    return {"worker": cpu_s(pids), "Redis": redis_cpu_s(s.r.client), "sink": cpu_s([s.sink.pid])}


def drain(ca: TestCA, tmp: Path, name: str, events: int, layout: Layout) -> Drain:
    with stage(ca, tmp, name) as s, ExitStack() as stack:
        s.r.client.config_resetstat()
        if name == PIPELINE:
            expected = set(enqueue(s.r, events))  # bench.rig: delay() per event
        else:
            expected = {s.send(message_event(s.r.conversation_id)) for _ in range(events)}
        worker = started(stack, s.worker(layout))
        ready = time.time()
        pids = [worker.process.pid if worker.process else 0, *worker.pool_pids()]
        cpu_before = cpu_now(s, pids)
        finished, peak = wait_drained(s, worker, events, 60 + events / 10)
        cpu = {k: v - cpu_before[k] for k, v in cpu_now(s, pids).items()}
        calls = commandstats(s.r.client) - s.polls
        del calls["info"]
        arrivals = s.sink.arrivals()
    lost = dupes = None
    done = 0 if math.isnan(finished) else events
    if name != EMPTY:
        ids = [i for i, _ in arrivals]
        done, lost, dupes = (
            len(set(ids) & expected),
            len(expected - set(ids)),
            len(ids) - len(set(ids)),
        )
        finished = max((t for i, t in arrivals if i in expected), default=math.nan)
    seconds = finished - ready
    cpu_ms = {k: v * 1000 / max(done, 1) for k, v in cpu.items()}
    return Drain(done / seconds, seconds, done, calls, peak, cpu_ms, lost, dupes)


def latency(
    ca: TestCA, tmp: Path, name: str, layout: Layout, *, rate: float, seconds: float
) -> Latency:
    """Publish at ``rate``/s on an absolute schedule; publish -> arrival per event."""
    with stage(ca, tmp, name) as s, ExitStack() as stack:
        started(stack, s.worker(layout))
        for _ in range(WARM_UP):  # connections open, code paths warm: not counted
            s.send(message_event(s.r.conversation_id))
        wait_for_sink(s.sink, WARM_UP, 60)
        sent: dict[str, float] = {}
        begin = time.monotonic()
        for i in range(round(rate * seconds)):
            if (pause := begin + i / rate - time.monotonic()) > 0:
                time.sleep(pause)
            event = message_event(s.r.conversation_id)
            published_at = time.time()
            sent[s.send(event)] = published_at
        publish_rate = len(sent) / (time.monotonic() - begin)
        wait_for_sink(s.sink, WARM_UP + len(sent), 60)
        first: dict[str, float] = {}
        for ident, t in s.sink.arrivals():
            first.setdefault(ident, t)
    latencies = sorted(first[ident] - at for ident, at in sent.items() if ident in first)
    return Latency(latencies, len(sent), publish_rate)


def wait_for_sink(sink: Sink, count: int, timeout_s: float) -> None:
    """Until the sink has ``count`` POSTs, or give up quietly (what is missing is reported)."""
    deadline = time.monotonic() + timeout_s
    while sink.count() < count and time.monotonic() < deadline:
        time.sleep(0.1)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**MISS**"


def git_state() -> str:
    """The commit measured, and whether the working tree differed from it."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607 - git from PATH
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.replace("-dirty", " + uncommitted changes")


def throughput_section(
    runs: dict[str, list[Drain]], events: int, layout: Layout
) -> tuple[list[str], list[str]]:
    med = {name: statistics.median(d.rate for d in ds) for name, ds in runs.items()}
    lines = [
        f"\n## 1. Drain throughput, {events:,} events, {len(runs[PIPELINE])} alternating rounds\n",
        f"One worker per contender, `--pool {layout.pool} --concurrency {layout.concurrency}`, "
        "started after all N events were queued. Rate = N / (last event finished - worker "
        "ready): for HTTP contenders the sink's arrival time of the last POST, for empty the "
        "queue and unacked hash read empty (10 ms polls).\n",
        "| contender | deliveries/s per round | median | lost | duplicates |",
        "|---|---|---|---|---|",
    ]
    for name, ds in runs.items():
        rates = ", ".join(f"{d.rate:.0f}" for d in ds)
        lost = "n/a" if ds[0].lost is None else str(sum(d.lost or 0 for d in ds))
        dupes = "n/a" if ds[0].duplicates is None else str(sum(d.duplicates or 0 for d in ds))
        lines.append(f"| {name} | {rates} | **{med[name]:.1f}** | {lost} | {dupes} |")
    targets = [
        f"- pipeline / {other} throughput = {med[PIPELINE]:.1f} / {med[other]:.1f} = "
        f"**{ratio(med[PIPELINE], med[other]):.2f}x** (target >= {goal}x): "
        f"{verdict(ratio(med[PIPELINE], med[other]) >= goal)}"
        for other, goal in ((PLAIN, TARGET_VS_PLAIN), (EMPTY, TARGET_VS_EMPTY))
        if other in runs
    ]
    paired = "; ".join(
        f"pipeline / {other} "
        + ", ".join(
            f"{ratio(ours.rate, theirs.rate):.2f}x"
            for ours, theirs in zip(runs[PIPELINE], runs[other], strict=True)
        )
        for other in runs
        if other != PIPELINE
    )
    note = (
        f"\nRound by round (contenders of one round ran back to back): {paired}. On a shared "
        "machine the rate moves with whatever else runs; CPU per event (section 2) moves less."
    )
    return [*lines, "", *targets, note], targets


def cpu_lines(runs: dict[str, list[Drain]]) -> list[str]:
    """CPU per event by process, medians over the rounds: where each design spends its time."""
    parts = ("worker", "Redis", "sink")
    med = {
        n: {k: statistics.median(d.cpu_ms[k] for d in ds) for k in parts} for n, ds in runs.items()
    }
    return [
        "\nCPU per event, user + sys from worker ready to drained, median of the rounds. The "
        "sink's includes the bench's own /_count polls (about 100 small GETs/s while HTTP "
        "contenders drain; none for empty). All share the same cores, so the sink's "
        "TLS handshakes for plain-new-connection take CPU the worker could have used.\n",
        "| contender | worker ms | Redis ms | sink ms | sum ms |",
        "|---|---|---|---|---|",
        *(
            f"| {n} | {med[n]['worker']:.2f} | {med[n]['Redis']:.2f} | {med[n]['sink']:.2f} | "
            f"**{sum(med[n].values()):.2f}** |"
            for n in runs
        ),
    ]


def per_event(runs: dict[str, list[Drain]]) -> dict[str, Counter[str]]:
    """Redis commands per finished event, summed over every round of each contender."""
    out: dict[str, Counter[str]] = {}
    for name, ds in runs.items():
        n = sum(d.finished for d in ds) or 1
        total = sum((d.calls for d in ds), Counter[str]())
        out[name] = Counter({cmd: calls / n for cmd, calls in total.items()})
    return out


def cost_section(runs: dict[str, list[Drain]]) -> tuple[list[str], list[str]]:
    per = per_event(runs)
    names = list(runs)
    lines = [
        "\n## 2. Cost per event, from the same runs\n",
        "Redis commands: INFO commandstats from CONFIG RESETSTAT (before enqueueing, so the "
        "producer's commands count) to drained, summed over the rounds, / events. Commands a "
        "Lua script runs count under their own names as well as the EVALSHA that ran them. "
        "Excluded: `info`, `config|resetstat` and the bench's own LLEN/HLEN polls (counted and "
        "subtracted). Idle worker traffic (BRPOP wake-ups, heartbeats, the pipeline's pump) "
        "during the drain is included.\n",
        "| command | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| **total** | " + " | ".join(f"**{per[n].total():.2f}**" for n in names) + " |",
    ]
    everything = set().union(*(per[n] for n in names))
    shown = sorted(
        (c for c in everything if max(per[n][c] for n in names) >= 0.01),
        key=lambda c: (-per[PIPELINE][c], -per[names[-1]][c], c),
    )
    lines += [f"| {c} | " + " | ".join(f"{per[n][c]:.2f}" for n in names) + " |" for c in shown]
    rest = {n: sum(v for c, v in per[n].items() if c not in shown) for n in names}
    if any(rest.values()):
        lines.append(
            "| (others, < 0.01 each) | " + " | ".join(f"{rest[n]:.3f}" for n in names) + " |"
        )
    targets = []
    if PLAIN in per:
        commands = ratio(per[PIPELINE].total(), per[PLAIN].total())
        targets.append(
            f"- Redis commands per event, pipeline / {PLAIN} = {per[PIPELINE].total():.1f} / "
            f"{per[PLAIN].total():.1f} = **{commands:.2f}x** (target <= {TARGET_COMMANDS}x): "
            f"{verdict(commands <= TARGET_COMMANDS)}"
        )
    lines += ["", *targets, "\nWorker memory: VmRSS of the main process + pool children, "
              "sampled every 0.2 s during each drain; the peak of the sums (shared "
              "copy-on-write pages count once per process, so prefork sums overstate).\n",
              "| contender | peak RSS per round (MiB) | max |", "|---|---|---|"]  # fmt: skip
    for name, ds in runs.items():
        each = ", ".join(f"{d.peak_rss_kb / 1024:.0f}" for d in ds)
        lines.append(f"| {name} | {each} | **{max(d.peak_rss_kb for d in ds) / 1024:.0f}** |")
    return lines + cpu_lines(runs), targets


def ms(xs: list[float], q: float) -> float:
    return isolation.pct(xs, q) * 1000


def latency_section(
    lat: dict[str, Latency], rate: float, seconds: float, layout: Layout
) -> tuple[list[str], list[str]]:
    lines = [
        f"\n## 3. Latency at {rate:g} events/s for {seconds:g} s\n",
        f"A worker already running (`--pool {layout.pool} --concurrency {layout.concurrency}`), "
        f"{WARM_UP} warm-up events first (not counted); then events published on an absolute "
        "schedule. Latency = the sink's arrival time - time.time() read just before "
        "`delay()`; nearest-rank percentiles over the events that arrived.\n",
        "| contender | delivered | publish rate /s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in lat.items():
        cells = " | ".join(f"{ms(res.latencies_s, q):.1f}" for q in (50, 95, 99, 100))
        lines.append(f"| {name} | {len(res.latencies_s)}/{res.sent} | {res.publish_rate:.1f} | "
                     f"{cells} |")  # fmt: skip
    ours = lat[PIPELINE]
    complete = len(ours.latencies_s) == ours.sent
    p50, p99 = ms(ours.latencies_s, 50), ms(ours.latencies_s, 99)
    targets = [
        f"- pipeline p50 = **{p50:.1f} ms** (target < {TARGET_P50_S * 1000:.0f} ms, all "
        f"delivered): {verdict(p50 < TARGET_P50_S * 1000 and complete)}",
        f"- pipeline p99 = **{p99:.1f} ms** (target < {TARGET_P99_S * 1000:.0f} ms, all "
        f"delivered): {verdict(p99 < TARGET_P99_S * 1000 and complete)}",
    ]
    return [*lines, "", *targets], targets


def isolation_section(ca: TestCA, events: int) -> tuple[list[str], list[str]]:
    results: dict[str, isolation.Result] = {}
    for c in isolation.CONTENDERS:
        res = isolation.run(ca, c, events, ISOLATION_RATE, ISOLATION_SLOW_SLOTS)
        results[c.name] = res
        print(f"isolation {c.name}: /hook p99 {isolation.pct(res.latencies_s, 99) * 1000:.0f} ms, "
              f"{len(res.latencies_s)}/{res.fast_sent} delivered", flush=True)  # fmt: skip
    targets = isolation.verdicts(results)
    lines = [
        f"\n## 4. Isolation: /hook latency while /slow times out, {events} events each\n",
        f"From bench.isolation (its own receiver, not the sink): prefork --concurrency "
        f"{isolation.PREFORK} + gevent --concurrency {ISOLATION_SLOW_SLOTS}, {ISOLATION_RATE:g} "
        f"events/s interleaved, /slow hangs {isolation.HANG_S:g} s past a "
        f"{isolation.TIMEOUT_S:g} s timeout. See `python -m bench.isolation` for the details.\n",
        *isolation.table(results),
        "",
        *targets,
    ]
    return lines, targets


def chart(runs: dict[str, list[Drain]], lat: dict[str, Latency], path: Path) -> None:
    """Three panels: drain throughput, latency percentiles, Redis commands per event."""
    fig = Figure(figsize=(16, 5), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    names = list(runs)
    med = [statistics.median(d.rate for d in runs[n]) for n in names]
    left.bar(names, med, color=[COLORS[n] for n in names])
    for x, name in enumerate(names):
        left.scatter([x] * len(runs[name]), [d.rate for d in runs[name]], color="black", s=12)
        left.annotate(f"{med[x]:.0f}", (x, med[x]), xytext=(0, 4), textcoords="offset points",
                      ha="center", va="bottom")  # fmt: skip
    left.set(title="Drain throughput (median, dots = rounds)", ylabel="deliveries / s")
    qs, width = (50, 95, 99, 100), 0.38
    for k, name in enumerate(lat):
        xs = [j + (k - 0.5) * width for j in range(len(qs))]
        values = [ms(lat[name].latencies_s, q) for q in qs]
        middle.bar(xs, values, width, label=name)
        for xpos, v in zip(xs, values, strict=True):
            middle.annotate(f"{v:.0f}", (xpos, v), ha="center", va="bottom", fontsize=8)
    middle.set_xticks(range(len(qs)), ["p50", "p95", "p99", "max"])
    middle.set(title="Publish-to-receipt latency", ylabel="ms")
    middle.legend()
    per = per_event(runs)
    top = [c for c, _ in per[PIPELINE].most_common(9)]
    top += [c for c, v in per[names[-1]].most_common() if v >= 0.5 and c not in top]
    bottom = [0.0] * len(names)
    colors = matplotlib.colormaps["tab20"]  # an int picks the i-th of its 20 colours
    for k, cmd in enumerate([*top, "other"]):
        values = [per[n][cmd] if cmd != "other" else per[n].total() - sum(per[n][c] for c in top)
                  for n in names]  # fmt: skip
        right.bar(names, values, bottom=bottom, label=cmd, color=colors(k))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for xpos, total in enumerate(bottom):
        right.annotate(f"{total:.1f}", (xpos, total), ha="center", va="bottom")
    right.set(title="Redis commands per event", ylabel="commands")
    right.legend(fontsize=7, ncols=2)
    fig.savefig(path, dpi=100)


def drain_rounds(
    ca: TestCA, tmp: Path, events: int, rounds: int, layout: Layout, *, names: tuple[str, ...]
) -> dict[str, list[Drain]]:
    runs: dict[str, list[Drain]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            d = drain(ca, tmp, name, events, layout)
            runs[name].append(d)
            print(f"round {i + 1} {name}: {d.rate:.1f} deliveries/s ({d.finished}/{events} in "
                  f"{d.seconds:.1f} s, {d.calls.total() / max(d.finished, 1):.1f} Redis "
                  f"commands/event, worker CPU {d.cpu_ms['worker']:.2f} ms/event, "
                  f"peak RSS {d.peak_rss_kb / 1024:.0f} MiB)",
                  flush=True)  # fmt: skip
    return runs


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--events", type=int, default=5000, help="per drain run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=100.0, help="latency: events/s")
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--concurrency", type=int, default=8, help="the Procfile's default")
    parser.add_argument("--isolation-events", type=int, default=200, help="per endpoint")
    parser.add_argument("--skip-isolation", action="store_true")
    parser.add_argument(
        "--only", choices=("all", "drain"), default="all",
        help="drain: sections 1 and 2 only (no latency, isolation or chart)",
    )  # fmt: skip
    parser.add_argument(
        "--contenders", type=contenders, default=NAMES,
        help=f"comma-separated, pipeline first (default: {','.join(NAMES)})",
    )  # fmt: skip
    return parser.parse_args(argv)


def contenders(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names or names[0] != PIPELINE or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(
            f"want distinct names of {', '.join(NAMES)}, pipeline first; got {text!r}"
        )
    return names


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # SIGTERM unwinds like Ctrl-C, so every worker, Redis and sink started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    layout, began = Layout(args.pool, args.concurrency), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        ca = TestCA(Path(tmp))
        with rig(ca, {}) as r:
            facts = machine(str(r.client.info("server")["redis_version"]))
        runs = drain_rounds(ca, Path(tmp), args.events, args.rounds, layout, names=args.contenders)
        lat: dict[str, Latency] = {}
        sections = [throughput_section(runs, args.events, layout), cost_section(runs)]
        for name in (PIPELINE, PLAIN) if args.only == "all" else ():
            lat[name] = latency(
                ca, Path(tmp), name, layout, rate=args.rate, seconds=args.latency_seconds
            )
            print(f"latency {name}: p50 {ms(lat[name].latencies_s, 50):.1f} ms, p99 "
                  f"{ms(lat[name].latencies_s, 99):.1f} ms", flush=True)  # fmt: skip
        if lat:
            sections.append(latency_section(lat, args.rate, args.latency_seconds, layout))
        if args.only == "all" and args.skip_isolation:
            print("isolation: skipped (--skip-isolation)", flush=True)
            sections.append((["\n## 4. Isolation\n", "Skipped (--skip-isolation)."], []))
        elif args.only == "all":
            sections.append(isolation_section(ca, args.isolation_events))
    RESULTS.mkdir(exist_ok=True)
    if lat:
        chart(runs, lat, RESULTS / "compare.png")
    report = [
        "# Our pipeline against the obvious alternative",
        "",
        *facts,
        f"- load average (1, 5, 15 min) at the end: {load_average()}",
        f"- code: {git_state()}; bench wall time {time.monotonic() - began:.0f} s",
        "\n## Targets\n",
        *(target for _, targets in sections for target in targets),
        "\n## Contenders\n",
        f"- **pipeline**: `deliver_webhook.delay(event)`, defaults except {NEVER_BINDS} (never "
        f"binding); prefetch 1, late acks; worker consumes `{FAST_QUEUES}`.",
        f"- **{PLAIN}**: `plain_send` (bench/contenders.py), published like "
        "`.delay(url, event)` but through a producer on this run's Redis "
        "(`apply_async(..., producer=...)`): one pooled `requests.Session` per worker process, "
        "so connections are kept alive; autoretry on `RequestException`, backoff, 3 retries; "
        "Celery defaults (prefetch 4, early acks); no signing, log, limits or metrics.",
        f"- **{PLAIN_NEW}**: `plain_send_new_connection`, the same with a new "
        "`requests.Session` per call, as `requests.post()` makes: a TCP + TLS handshake per "
        "event.",
        "- **empty**: a task that does nothing, same app and defaults as the plain senders.",
        "- The sink (bench/sink.py) answers `200` with an empty body, in its own process.",
        *(line for lines, _ in sections for line in lines),
    ]
    write_report(report, RESULTS / ("compare.md" if lat else f"compare-{args.only}.md"))
    if lat:
        print(f"chart: {RESULTS / 'compare.png'}")


if __name__ == "__main__":
    main()
