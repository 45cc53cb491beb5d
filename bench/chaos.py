"""``python -m bench.chaos``: is every accepted event delivered or dead-lettered, whatever crashes?

The delivery guarantee under crashes, measured with real parts only: a fresh
``redis-server`` per run (AOF on, ``appendfsync everysec``), the Procfile's two
workers (prefork ``--concurrency 4`` on the fast queues, gevent ``--concurrency
50`` on ``webhooks.slow``) and one local HTTPS receiver with 20 endpoints (a path
and a conversation each) of seven kinds:

* fine: 200 at once (6 endpoints); flaky: 500 with probability 0.3, else 200 (4);
* timeout: says nothing for 10 s; trickle: the status line a byte every 0.3 s;
  drop: closes without an answer. None can succeed: dead-lettered after 4 attempts;
* stall: a 200 whose body stops after 7 bytes; cut: a 200 whose body is cut
  there. Both count as delivered (the status line is the answer).

Workers run with ``WEBHOOKS_TIMEOUT_S=2``, ``WEBHOOKS_CONNECT_TIMEOUT_S=1`` (a 3 s
deadline per attempt), ``WEBHOOKS_RETRY_SCHEDULE=1,2,3`` and limits too high to
bind; the visibility timeout is left at its default. The slow-endpoint threshold
is scaled with the deadline (1.5 s instead of 5 s against the default 40 s), so
a stalled 200 is routed to the gevent worker as it would be in production.

Each run: a warm-up event per endpoint (until the router knows the slow ones),
then ``--events`` events round-robin over the endpoints at ``--rate``/s through
``deliver_webhook.delay()``. Meanwhile every ``--kill-every`` s one worker's
whole process group is SIGKILLed and restarted, prefork and gevent in turn,
and once, at ``--redis-fault-at`` s, Redis goes away for ``--redis-down-s`` s:
run 1 stops it cleanly (SIGTERM, the AOF is flushed), run 2 SIGKILLs it. An
event counts as accepted only if its ``delay()`` returned; one that raised is
counted as refused and not retried. A worker that exits on its own is
restarted, as a supervisor would, and reported.

After the last publish the bench waits up to ``--drain-s`` s for every accepted
event's outcome, then reconciles each webhook id against the receiver's
records, ``webhooks:delivery:<id>`` and ``webhooks:dead:<id>``. Lost = neither
delivered nor dead-lettered; for each lost id it says where Redis still holds
it, if anywhere, and the most likely cause. Also: duplicate 2xx answers, the
delivery time of the fine endpoints (baseline: events published over 5 s before
the first fault, in the same run) against the rest, how long what the workers
held at each fault took to get its next attempt, and the workers' peak memory
(VmHWM). Not a test: it exits 0 whatever it measures, prints the
report and writes ``bench-results/chaos.md``; its last line is ``LOST: N``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import signal
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError

from bench.rig import UNACKED, load_average, machine, message_event, write_report
from config.celery_app import app
from config.settings import Settings
from config.wiring import conversation_store
from tasks import deliver_webhook
from tasks.routing import router
from testing.receiver import (
    Behaviour,
    Drop,
    Hang,
    Raw,
    Receiver,
    Respond,
    TestCA,
    http_head,
)
from testing.redis_server import RedisServer
from testing.worker import ALL_QUEUES, FAST_QUEUES, SLOW_QUEUES, WorkerProcess
from webhooks import keys
from webhooks.endpoints import normalize_endpoint

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent.parent / "bench-results" / "chaos.md"

TIMEOUT_S, CONNECT_TIMEOUT_S, RETRY_SCHEDULE_S = 2.0, 1.0, (1.0, 2.0, 3.0)
SLOW_THRESHOLD_MS, RECOVER_THRESHOLD_MS = 1500, 750
RATE_LIMIT = "100000/minute"  # never binds
FAILURE_RATE = 0.3  # flaky endpoints
HANG_S = 10.0  # timeout endpoints: well past the 3 s deadline
WORKERS = {"prefork": (FAST_QUEUES, 4, ()), "gevent": (SLOW_QUEUES, 50, ("--pool", "gevent"))}

#: kind -> (endpoints, behaviour; None: flaky, i.e. 500 at random, else 200).
KINDS: dict[str, tuple[int, Behaviour | None]] = {
    "fine": (6, Respond()),
    "flaky": (4, None),
    "timeout": (2, Hang(HANG_S)),
    "trickle": (2, Raw(http_head(200, content_length=2) + b"{}", chunk_bytes=1, interval_s=0.3)),
    "stall": (2, Raw(http_head(200, content_length=100_000) + b"partial", then="hang")),
    "cut": (2, Raw(http_head(200, content_length=100_000) + b"partial")),
    "drop": (2, Drop()),
}
EXPECTED = {"fine": "delivered", "flaky": "delivered", "stall": "delivered", "cut": "delivered"}
SLOW_KINDS = ("timeout", "trickle", "stall")  # the router must send these to gevent
LOST_SHOWN, LOGS_SHOWN = 20, 5
#: Redis SIGKILL: events accepted this long before it may not have reached the disk.
FSYNC_WINDOW_S = 2.0
#: The baseline: fine events published this long before the first fault, when
#: nothing they could meet has been hit yet (an attempt lasts at most 3 s).
BASELINE_MARGIN_S = 5.0
SIGKILL_NOTE = (
    ". (Redis write()s the AOF before it replies, so killing the process alone loses only "
    "what the kernel never got, which happens when fsync lags; the whole window is at stake "
    "on a machine crash.)"
)


# --- the receiver ----------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One request the receiver saw, and whether it answered it with a 2xx."""

    webhook_id: str
    message_id: str
    attempt: int
    at: float  # epoch s, on arrival
    ok: bool


def is_2xx(behaviour: Behaviour) -> bool:
    """Whether the receiver gives a whole 2xx status line, body or not."""
    if isinstance(behaviour, Respond):
        return 200 <= behaviour.status < 300
    if isinstance(behaviour, Raw):
        return behaviour.chunk_bytes == 0 and (behaviour.head + behaviour.data)[:10] in (
            b"HTTP/1.1 2",
            b"HTTP/1.0 2",
        )
    return False


def body_message_id(body: bytes) -> str:
    try:
        return str(json.loads(body)["data"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""


class ChaosReceiver(Receiver):
    """A :class:`Receiver` whose flaky paths answer 500 at random, logging every answer."""

    def __init__(self, context: ssl.SSLContext, *, failure_rate: float, seed: int) -> None:
        super().__init__(context)
        self._failure_rate = failure_rate
        self._rng = random.Random(seed)  # noqa: S311 - a benchmark's dice
        self._flaky: set[str] = set()
        self._answers: list[Answer] = []
        self._answers_lock = threading.Lock()

    def flaky(self, path: str) -> None:
        self._flaky.add(path)

    def answers(self) -> list[Answer]:
        with self._answers_lock:
            return list(self._answers)

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> Behaviour:
        behaviour = super()._record(path, headers, body)
        if path in self._flaky and self._rng.random() < self._failure_rate:
            behaviour = Respond(500)
        answer = Answer(
            headers.get("webhook-id", ""),
            body_message_id(body),
            int(headers.get("x-webhook-attempt") or 0),
            time.time(),
            is_2xx(behaviour),
        )
        with self._answers_lock:
            self._answers.append(answer)
        return behaviour


# --- what a run is made of -------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    events: int
    rate: float
    kill_every_s: float
    redis_fault_at_s: float
    redis_down_s: float
    drain_s: float
    seed: int

    @property
    def publish_s(self) -> float:
        return self.events / self.rate

    def plan(self, redis_fault: str) -> list[tuple[float, str]]:
        """(seconds after the first publish, fault), in order."""
        kills = math.ceil(self.publish_s / self.kill_every_s) - 1
        names = list(WORKERS)
        plan = [((k + 1) * self.kill_every_s, names[k % 2]) for k in range(kills)]
        return sorted([*plan, (self.redis_fault_at_s, f"redis {redis_fault}")])


@dataclass(frozen=True)
class Endpoint:
    kind: str
    path: str
    conversation_id: str


@dataclass(frozen=True)
class Sent:
    endpoint: Endpoint
    message_id: str
    published_at: float  # epoch s, read just before delay()
    accepted_at: float  # when delay() returned
    warm_up: bool = False


@dataclass(frozen=True)
class Refused:
    endpoint: Endpoint
    message_id: str
    at: float
    error: str


@dataclass(frozen=True)
class Fault:
    what: str
    at: float
    back_at: float  # the worker ready again, Redis answering again
    held: frozenset[str] = frozenset()  # webhook ids the workers hit held unacknowledged
    note: str = ""
    #: Redis faults: where the broker had each held id the moment Redis was back.
    after: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    name: str
    scenario: Scenario
    started_at: float = 0.0  # epoch s of the first measured publish
    published_s: float = 0.0
    drained_s: float = 0.0
    sent: dict[str, Sent] = field(default_factory=dict)
    refused: list[Refused] = field(default_factory=list)
    longest_delay_call_s: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    where: dict[str, str] = field(default_factory=dict)  # lost id -> where Redis holds it
    peak_kb: dict[str, int] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # the machine, at the start

    def t(self, epoch_s: float) -> float:
        return epoch_s - self.started_at


# --- setting a run up -----------------------------------------------------------


#: What the workers are told besides where Redis and the CA are.
SERVICE_ENV = {
    "WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
    "WEBHOOKS_TIMEOUT_S": f"{TIMEOUT_S:g}",
    "WEBHOOKS_CONNECT_TIMEOUT_S": f"{CONNECT_TIMEOUT_S:g}",
    "WEBHOOKS_RETRY_SCHEDULE": ",".join(f"{s:g}" for s in RETRY_SCHEDULE_S),
    "WEBHOOKS_RATE_LIMIT": RATE_LIMIT,
    "WEBHOOKS_SLOW_THRESHOLD_MS": str(SLOW_THRESHOLD_MS),
    "WEBHOOKS_RECOVER_THRESHOLD_MS": str(RECOVER_THRESHOLD_MS),
}


def worker_env(server: RedisServer, ca: TestCA) -> dict[str, str]:
    return {
        "WEBHOOKS_REDIS_URL": server.url,
        "WEBHOOKS_BROKER_URL": server.url,
        "WEBHOOKS_CA_BUNDLE": str(ca.pem_path),
        **SERVICE_ENV,
    }


def producer_settings(server: RedisServer) -> Settings:
    return Settings(
        redis_url=server.url,
        broker_url=server.url,
        allow_private_networks=True,
        timeout_s=TIMEOUT_S,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        retry_schedule=RETRY_SCHEDULE_S,
        rate_limit=RATE_LIMIT,
        slow_threshold_ms=SLOW_THRESHOLD_MS,
        recover_threshold_ms=RECOVER_THRESHOLD_MS,
    )


def register(client: redis.Redis, settings: Settings, receiver: ChaosReceiver) -> list[Endpoint]:
    """One conversation per endpoint, its path scripted by kind."""
    store = conversation_store(client, settings)
    endpoints = []
    for kind, (count, behaviour) in KINDS.items():
        for n in range(count):
            path = f"/{kind}/{n}"
            cid = str(uuid.uuid4())
            store.set(cid, {"config": {"callback_url": receiver.url(path)}})
            if behaviour is None:
                receiver.flaky(path)
            else:
                receiver.always(path, behaviour)
            endpoints.append(Endpoint(kind, path, cid))
    return endpoints


def held_unacked(client: redis.Redis, queues: str) -> frozenset[str]:
    """Webhook ids the broker handed out from ``queues`` and has not seen acknowledged."""
    wanted = set(queues.split(","))
    held = set()
    for raw in client.hvals(UNACKED):
        message, _exchange, routing_key = json.loads(raw)
        if routing_key in wanted:
            held.add(str(message["headers"]["id"]))
    return frozenset(held)


# --- what runs beside the publisher ----------------------------------------------


class Chaos(threading.Thread):
    """Runs the fault plan and, like a process supervisor, restarts a worker
    that exited on its own."""

    def __init__(
        self,
        plan: list[tuple[float, str]],
        *,
        started_at: float,
        workers: dict[str, WorkerProcess],
        server: RedisServer,
        client: redis.Redis,
        down_s: float,
    ) -> None:
        super().__init__(daemon=True)
        self._plan = [(started_at + at, what) for at, what in plan]
        self._workers, self._server, self._client = workers, server, client
        self._down_s = down_s
        self._stopping = threading.Event()
        self.faults: list[Fault] = []

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def run(self) -> None:
        while not self._stopping.wait(0.2):
            while self._plan and self._plan[0][0] <= time.time():
                _, what = self._plan.pop(0)
                fault = self._redis_fault(what) if what.startswith("redis") else self._kill(what)
                self.faults.append(fault)
                print(f"  {fault.what}; back after {fault.back_at - fault.at:.1f} s", flush=True)
            self._supervise()

    def _kill(self, name: str) -> Fault:
        worker = self._workers[name]
        held = self._held(WORKERS[name][0])
        at = time.time()
        worker.kill()
        note = self._restart(worker)
        return Fault(
            f"SIGKILL {name} worker", at, time.time(), held, "" if note == "restarted" else note
        )

    def _redis_fault(self, what: str) -> Fault:
        held = self._held(ALL_QUEUES)
        at = time.time()
        if what == "redis kill":
            self._server.kill()
        else:
            self._server.stop()
        time.sleep(self._down_s)
        self._server.start()
        back_at = time.time()
        try:
            places = broker_places(self._client)
        except redis.RedisError:
            places = {}
        after = {w: places.get(w, "gone") for w in held}
        name = f"Redis {'SIGKILL' if what == 'redis kill' else 'stop'}"
        return Fault(name, at, back_at, held, after=after)

    def _held(self, queues: str) -> frozenset[str]:
        try:
            return held_unacked(self._client, queues)
        except redis.RedisError:
            return frozenset()

    def _supervise(self) -> None:
        for name, worker in self._workers.items():
            if worker.process is None or worker.process.poll() is None:
                continue
            at, code, tail = time.time(), worker.process.returncode, " | ".join(worker.lines[-3:])
            note = self._restart(worker)
            what = f"{name} worker exited by itself (code {code})"
            self.faults.append(Fault(what, at, time.time(), note=f"{note}; last lines: {tail}"))

    @staticmethod
    def _restart(worker: WorkerProcess) -> str:
        try:
            worker.start()
        except RuntimeError as exc:
            return f"did not restart: {str(exc).splitlines()[0]}"
        return "restarted"


class MemorySampler(threading.Thread):
    """Peak VmHWM of each worker's main process and of its pool processes."""

    def __init__(self, workers: dict[str, WorkerProcess]) -> None:
        super().__init__(daemon=True)
        self._workers = workers
        self._stopping = threading.Event()
        self.peak_kb: Counter[str] = Counter()

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def run(self) -> None:
        while not self._stopping.wait(1.0):
            for name, worker in self._workers.items():
                process = worker.process
                if process is None:
                    continue
                self._keep(f"{name} main", vmhwm_kb(process.pid))
                for child in children(process.pid):
                    self._keep(f"{name} pool process", vmhwm_kb(child))

    def _keep(self, what: str, kb: int) -> None:
        self.peak_kb[what] = max(self.peak_kb[what], kb)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def vmhwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- publishing and waiting ------------------------------------------------------


def publish_one(endpoint: Endpoint, run: Run, *, warm_up: bool = False) -> None:
    """One delay(): accepted if it returned, refused if it raised."""
    event = message_event(endpoint.conversation_id)
    message_id = str(event["data"]["id"])
    published_at = time.time()
    try:
        webhook_id = str(deliver_webhook.delay(event).id)
    except (OperationalError, redis.RedisError, OSError) as exc:
        run.refused.append(Refused(endpoint, message_id, published_at, type(exc).__name__))
        return
    accepted_at = time.time()
    run.longest_delay_call_s = max(run.longest_delay_call_s, accepted_at - published_at)
    run.sent[webhook_id] = Sent(endpoint, message_id, published_at, accepted_at, warm_up)


def warm_up(run: Run, endpoints: list[Endpoint], receiver: ChaosReceiver) -> None:
    """An event per endpoint; wait until the router sends the slow kinds to gevent."""
    for endpoint in endpoints:
        publish_one(endpoint, run, warm_up=True)
    slow = [normalize_endpoint(receiver.url(e.path)) for e in endpoints if e.kind in SLOW_KINDS]
    deadline = time.monotonic() + 60
    while not all(router.is_slow(e) for e in slow):
        if time.monotonic() > deadline:
            print("  warm-up: not every slow endpoint is known slow after 60 s", flush=True)
            return
        time.sleep(0.2)


def publish(run: Run, endpoints: list[Endpoint]) -> None:
    """``events`` delay() calls round-robin over the endpoints, at a steady rate."""
    scenario = run.scenario
    for i in range(scenario.events):
        if (pause := run.started_at + i / scenario.rate - time.time()) > 0:
            time.sleep(pause)
        publish_one(endpoints[i % len(endpoints)], run)
    run.published_s = time.time() - run.started_at


def outcomes(client: redis.Redis, webhook_ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(webhook_ids), 500):
        chunk = webhook_ids[start : start + 500]
        for webhook_id, raw in zip(
            chunk, client.mget([keys.delivery(w) for w in chunk]), strict=True
        ):
            if raw is not None:
                found[webhook_id] = json.loads(raw)
    return found


def drain(run: Run, client: redis.Redis) -> None:
    """Wait until every accepted event has an outcome, or ``drain_s`` has passed."""
    pending = list(run.sent)
    deadline = time.monotonic() + run.scenario.drain_s
    next_report = time.monotonic() + 15
    while pending and time.monotonic() < deadline:
        time.sleep(1.0)
        try:
            found = outcomes(client, pending)
        except redis.RedisError:
            continue
        pending = [w for w in pending if w not in found]
        if time.monotonic() > next_report:
            print(f"  drain: {len(pending)} without an outcome", flush=True)
            next_report += 15
    run.drained_s = time.time() - run.started_at - run.published_s


def collect(run: Run, client: redis.Redis, receiver: ChaosReceiver) -> None:
    """Outcomes, dead letters and the receiver's answers; where Redis holds the lost."""
    ids = list(run.sent)
    run.outcomes = outcomes(client, ids)
    pipe = client.pipeline(transaction=False)
    for webhook_id in ids:
        pipe.exists(keys.dead_letter(webhook_id))
    run.dead = {w for w, n in zip(ids, pipe.execute(), strict=True) if n}
    run.answers = receiver.answers()
    lost = [w for w in ids if status(run, w) == "lost"]
    run.where = locate(client, lost, receiver)


def broker_places(client: redis.Redis) -> dict[str, str]:
    """Where kombu holds each message: its unacked hash, or any list (a queue,
    its dead-letter queue ``ae.undeliver``, a priority queue)."""
    places: dict[str, str] = {}
    for raw in client.hvals(UNACKED):
        message, _exchange, routing_key = json.loads(raw)
        eta = " (ETA retry)" if message["headers"].get("eta") else ""
        places[str(message["headers"]["id"])] = f"held unacknowledged from {routing_key}{eta}"
    for key in client.scan_iter(count=1000):
        if str(key).startswith(f"{keys.PREFIX}:") or client.type(key) != "list":
            continue
        for raw in client.lrange(key, 0, -1):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                places.setdefault(str(json.loads(raw)["headers"]["id"]), f"queued in {key}")
    return places


def locate(client: redis.Redis, lost: list[str], receiver: ChaosReceiver) -> dict[str, str]:
    """Where Redis still holds each lost delivery: unacknowledged, queued, parked, or nowhere."""
    places = broker_places(client)
    for kind, (count, _) in KINDS.items():
        for n in range(count):
            parked = keys.endpoint(normalize_endpoint(receiver.url(f"/{kind}/{n}"))).parked
            for webhook_id in client.zrange(parked, 0, -1):
                places.setdefault(str(webhook_id), "parked for its endpoint")
    return {w: places.get(w, "nowhere in Redis") for w in lost}


def run_once(ca: TestCA, scenario: Scenario, name: str, redis_fault: str) -> Run:
    run = Run(name, scenario)
    with ExitStack() as stack:
        server = RedisServer().start()
        stack.callback(server.close)
        receiver = ChaosReceiver(ca.server_context(), failure_rate=FAILURE_RATE, seed=scenario.seed)
        stack.enter_context(receiver)
        settings = producer_settings(server)
        app.configure(settings)
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=30)
        stack.callback(client.close)
        run.facts = machine(str(client.info("server")["redis_version"]))
        endpoints = register(client, settings, receiver)
        env = worker_env(server, ca)
        workers = {
            name: WorkerProcess(env, concurrency=n, name=name, queues=queues, extra_args=extra)
            for name, (queues, n, extra) in WORKERS.items()
        }
        for worker in workers.values():
            stack.callback(worker.kill)  # the run is over: no need to wait for anything
            worker.start()
        sampler = MemorySampler(workers)
        sampler.start()
        warm_up(run, endpoints, receiver)
        run.started_at = time.time() + 0.5
        chaos = Chaos(
            scenario.plan(redis_fault),
            started_at=run.started_at,
            workers=workers,
            server=server,
            client=client,
            down_s=scenario.redis_down_s,
        )
        chaos.start()
        publish(run, endpoints)
        print(f"  published {len(run.sent)} accepted, {len(run.refused)} refused", flush=True)
        drain(run, client)
        chaos.stop()
        sampler.stop()
        run.faults, run.peak_kb = chaos.faults, dict(sampler.peak_kb)
        collect(run, client, receiver)
        run.logs = [f"{name}: {line}" for name, w in workers.items() for line in w.lines]
    return run


# --- what the records say ------------------------------------------------------


def status(run: Run, webhook_id: str) -> str:
    outcome = run.outcomes.get(webhook_id)
    if outcome is None:
        return "lost"
    if outcome["state"] == "delivered":
        return "delivered"
    return "dead-lettered" if webhook_id in run.dead else "failed, no dead letter"


def by_webhook(answers: Iterable[Answer]) -> dict[str, list[Answer]]:
    found: dict[str, list[Answer]] = defaultdict(list)
    for answer in sorted(answers, key=lambda a: a.at):
        found[answer.webhook_id].append(answer)
    return found


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else math.nan


def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:.0f}"


def seconds(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def lost_ids(run: Run) -> list[str]:
    return sorted(
        (w for w in run.sent if status(run, w) == "lost"), key=lambda w: run.sent[w].accepted_at
    )


def kinds_table(run: Run) -> list[str]:
    rows: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    for webhook_id, sent in run.sent.items():
        rows[sent.endpoint.kind][status(run, webhook_id)] += 1
    lines = [
        "| kind | endpoints | accepted | delivered | dead-lettered | lost | failed, no dead "
        "letter | expected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in rows.items():
        expected = EXPECTED.get(kind, "dead-lettered")
        if kind == "flaky":
            expected += f" ({FAILURE_RATE**4:.1%} dead-lettered by chance)"
        lines.append(
            f"| {kind} | {KINDS[kind][0]} | {row.total()} | {row['delivered']} | "
            f"{row['dead-lettered']} | {row['lost']} | {row['failed, no dead letter']} | "
            f"{expected} |"
        )
    return lines


def totals(run: Run) -> list[str]:
    counts = Counter(status(run, w) for w in run.sent)
    warm = sum(1 for s in run.sent.values() if s.warm_up)
    seen = {a.message_id for a in run.answers}
    ghosts = sum(1 for r in run.refused if r.message_id in seen)
    errors = Counter(r.error for r in run.refused)
    return [
        f"- accepted: **{len(run.sent)}** ({warm} warm-up events included); refused by "
        f"delay(): {len(run.refused)} ({', '.join(f'{e} {n}' for e, n in errors.items()) or '-'}"
        f"), of which arrived at the receiver anyway: {ghosts}; longest delay() that "
        f"returned: {run.longest_delay_call_s * 1000:.0f} ms",
        f"- delivered: **{counts['delivered']}**, dead-lettered: **{counts['dead-lettered']}**, "
        f"failed without a dead letter: {counts['failed, no dead letter']}, "
        f"**lost: {counts['lost']}**",
    ]


def lost_details(run: Run) -> list[str]:
    lost = lost_ids(run)
    if not lost:
        return ["- no event lost"]
    answers = by_webhook(run.answers)
    with_2xx = sum(1 for w in lost if any(a.ok for a in answers.get(w, [])))
    where = Counter(run.where.values())
    causes = Counter(cause(run, w) for w in lost)
    lines = [
        f"- lost: {len(lost)}; the receiver had answered {with_2xx} of them with a 2xx (their "
        "outcome record is what is missing)",
        f"- where Redis holds the lost: {', '.join(f'{p}: {n}' for p, n in where.most_common())}",
        f"- why, most likely: {'; '.join(f'{c}: {n}' for c, n in causes.most_common())}",
        "",
        "| webhook id | kind | accepted at | attempts at the receiver (number @ s, 2xx?) "
        "| where in Redis | why, most likely | where the broker had it as Redis came back |",
        "|---|---|---|---|---|---|---|",
    ]
    for webhook_id in lost[:LOST_SHOWN]:
        sent = run.sent[webhook_id]
        seen = ", ".join(
            f"{a.attempt} @ {run.t(a.at):.1f}{' 2xx' if a.ok else ''}"
            for a in answers.get(webhook_id, [])
        )
        lines.append(
            f"| {webhook_id} | {sent.endpoint.kind} | {run.t(sent.accepted_at):.1f} s | "
            f"{seen or 'none'} | {run.where.get(webhook_id, '?')} | {cause(run, webhook_id)} | "
            f"{after_restart(run, webhook_id)} |"
        )
    return lines


def cause(run: Run, webhook_id: str) -> str:
    """The first fault at which a worker held it, else where Redis has it."""
    for fault in run.faults:
        if webhook_id in fault.held:
            return f"held by a worker at the {fault.what} ({run.t(fault.at):.1f} s)"
    return run.where.get(webhook_id, "?")


def after_restart(run: Run, webhook_id: str) -> str:
    found = [f.after[webhook_id] for f in run.faults if webhook_id in f.after]
    return found[0] if found else "-"


def restart_survivors(run: Run) -> list[str]:
    """What the broker still had, the moment Redis was back, of what workers held."""
    lines = []
    for fault in run.faults:
        if fault.what.startswith("Redis") and fault.held:
            found = Counter(v.split(" (")[0] for v in fault.after.values())
            lines.append(
                f"- of the {len(fault.held)} deliveries workers held unacknowledged at the "
                f"{fault.what}, the broker had, the moment Redis answered again: "
                + ", ".join(f"{place}: {n}" for place, n in found.most_common())
            )
    return lines


def log_excerpts(run: Run) -> list[str]:
    """The last worker lines about a few lost events, one per cause first."""
    lost = lost_ids(run)
    shown = {cause(run, w): w for w in reversed(lost)}
    picked = [*shown.values(), *(w for w in lost if w not in shown.values())][:LOGS_SHOWN]
    lines = []
    for webhook_id in picked:
        found = [line[:220] for line in run.logs if webhook_id in line][-5:]
        lines += [f"{webhook_id} ({cause(run, webhook_id)}):", *(f"    {x}" for x in found)]
    return (
        ["", "The last worker log lines of some lost events:", "```", *lines, "```"]
        if lines
        else []
    )


def worker_trouble(run: Run) -> list[str]:
    """Worker log lines at WARNING and above, the same message counted once."""
    found: Counter[str] = Counter()
    for line in run.logs:
        if any(f": {level}/" in line for level in ("WARNING", "ERROR", "CRITICAL")):
            found[re.sub(r"msg_[0-9a-f]+|\d+", "#", line.split("] ", 1)[-1])[:200]] += 1
    if not found:
        return ["- worker lines at WARNING or above: none"]
    shown = [f"    {n:5d} x {line}" for line, n in found.most_common(12)]
    return [f"- worker lines at WARNING or above: {found.total()}; the commonest (digits and "
            "webhook ids as #):", "```", *shown, "```"]  # fmt: skip


def duplicates(run: Run) -> list[str]:
    twice = Counter(a.webhook_id for a in run.answers if a.ok and a.webhook_id in run.sent)
    dupes = {w: n for w, n in twice.items() if n > 1}
    kinds = Counter(run.sent[w].endpoint.kind for w in dupes)
    rate = len(dupes) / len(run.sent) if run.sent else math.nan
    return [
        f"- duplicate deliveries (the receiver answered 2xx more than once): **{len(dupes)}** "
        f"events ({rate:.2%} of accepted), {sum(dupes.values()) - len(dupes)} extra 2xx answers; "
        f"by kind: {', '.join(f'{k} {n}' for k, n in kinds.most_common()) or '-'}"
    ]


def latency(run: Run) -> list[str]:
    """Fine endpoints: first 2xx arrival - publish, the baseline against the rest."""
    first_fault = min((f.at for f in run.faults), default=math.inf)
    answers = by_webhook(run.answers)
    before: list[float] = []
    after: list[float] = []
    for webhook_id, sent in run.sent.items():
        if sent.warm_up or sent.endpoint.kind != "fine":
            continue
        ok = [a.at for a in answers.get(webhook_id, []) if a.ok]
        if ok:
            baseline = sent.published_at < first_fault - BASELINE_MARGIN_S
            (before if baseline else after).append(ok[0] - sent.published_at)
    rows = [
        (f"baseline: published over {BASELINE_MARGIN_S:g} s before the first fault", before),
        ("published later, while faults happen", after),
    ]
    lines = ["| fine endpoints, publish to first 2xx | events | p50 ms | p99 ms | max ms |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, xs in rows:
        lines.append(f"| {name} | {len(xs)} | {ms(pct(xs, 50))} | {ms(pct(xs, 99))} | "
                     f"{ms(max(xs, default=math.nan))} |")  # fmt: skip
    return lines


def redelivery(run: Run) -> list[str]:
    """From each fault to the next attempt of what the workers it hit held, and of
    every event unfinished at that moment."""
    answers = by_webhook(run.answers)
    lines = [
        "| fault | held, unfinished | next attempt seen | p50 s | max s | every unfinished "
        "event: next attempt seen | p50 s | max s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fault in run.faults:
        if not fault.held:
            continue
        held = [w for w in fault.held if unfinished(run, w, fault.at)]
        waits = next_attempts(answers, held, fault.at)
        pending = [w for w in run.sent if unfinished(run, w, fault.at)]
        others = next_attempts(answers, pending, fault.at)
        lines.append(
            f"| {fault.what} at {run.t(fault.at):.1f} s | {len(held)} | {len(waits)} | "
            f"{seconds(pct(waits, 50))} | {seconds(max(waits, default=math.nan))} | "
            f"{len(others)} of {len(pending)} | {seconds(pct(others, 50))} | "
            f"{seconds(max(others, default=math.nan))} |"
        )
    return lines


def unfinished(run: Run, webhook_id: str, at: float) -> bool:
    sent = run.sent.get(webhook_id)
    if sent is None or sent.accepted_at > at:
        return False
    outcome = run.outcomes.get(webhook_id)
    return outcome is None or float(outcome["finished_at"]) > at


def next_attempts(answers: dict[str, list[Answer]], ids: list[str], at: float) -> list[float]:
    waits = []
    for webhook_id in ids:
        later = [a.at for a in answers.get(webhook_id, []) if a.at > at]
        if later:
            waits.append(later[0] - at)
    return waits


def fsync_window(run: Run) -> list[str]:
    fault = next((f for f in run.faults if f.what.startswith("Redis")), None)
    if fault is None:
        return []
    lost = [run.sent[w].accepted_at for w in lost_ids(run)]
    inside = sum(1 for t in lost if fault.at - FSYNC_WINDOW_S <= t <= fault.at)
    earlier = sum(1 for t in lost if t < fault.at - FSYNC_WINDOW_S)
    return [
        f"- lost accepted within {FSYNC_WINDOW_S:g} s before the {fault.what} (appendfsync "
        f"everysec's window): **{inside}**; earlier: {earlier}; after it: "
        f"{len(lost) - inside - earlier}" + (SIGKILL_NOTE if "SIGKILL" in fault.what else "")
    ]


def faults(run: Run) -> list[str]:
    lines = [f"- {run.t(f.at):.1f} s: {f.what}, back at {run.t(f.back_at):.1f} s"
             + (f" ({len(f.held)} held unacknowledged)" if f.held else "")
             + (f"; {f.note}" if f.note else "") for f in run.faults]  # fmt: skip
    return lines or ["- none"]


def memory(run: Run) -> list[str]:
    peaks = ", ".join(f"{what} {kb / 1024:.0f} MiB" for what, kb in sorted(run.peak_kb.items()))
    return [f"- worker peak memory (VmHWM, sampled every second): {peaks or '-'}"]


def section(run: Run) -> list[str]:
    return [
        f"\n## {run.name}\n",
        f"Published {run.scenario.events} events in {run.published_s:.1f} s; drained "
        f"{run.drained_s:.1f} s after the last publish. Times are seconds after the first "
        "publish.\n",
        "Faults:\n",
        *faults(run),
        "",
        *totals(run),
        *fsync_window(run),
        *restart_survivors(run),
        *duplicates(run),
        *memory(run),
        "",
        *kinds_table(run),
        "",
        *latency(run),
        "",
        "Redelivery after a fault: what the workers it hit held unacknowledged just before "
        "(kombu's unacked hash: by queue for a worker kill, all of it for Redis) and had not "
        "finished by then; time from the fault to its next attempt at the receiver.\n",
        *redelivery(run),
        "",
        *lost_details(run),
        *log_excerpts(run),
        "",
        *worker_trouble(run),
    ]


def lost_count(run: Run) -> int:
    return len(lost_ids(run))


# --- the command -----------------------------------------------------------------


def parse(argv: list[str] | None) -> Scenario:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 events in 30 s")
    parser.add_argument("--events", type=int, help="per run (default 2000; quick 300)")
    parser.add_argument("--rate", type=float, help="events/s (default 33.3; quick 10)")
    parser.add_argument("--kill-every", type=float, help="s between worker kills (20; quick 10)")
    parser.add_argument("--redis-fault-at", type=float, help="s after the first publish "
                        "(default: halfway)")  # fmt: skip
    parser.add_argument("--redis-down-s", type=float, default=3.0)
    parser.add_argument("--drain-s", type=float, help="longest wait after the last publish "
                        "(300; quick 120)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    quick = args.quick
    events = args.events or (300 if quick else 2000)
    rate = args.rate or (10.0 if quick else 100 / 3)
    return Scenario(
        events=events,
        rate=rate,
        kill_every_s=args.kill_every or (10.0 if quick else 20.0),
        redis_fault_at_s=args.redis_fault_at or events / rate / 2,
        redis_down_s=args.redis_down_s,
        drain_s=args.drain_s or (120.0 if quick else 300.0),
        seed=args.seed,
    )


def header(scenario: Scenario, facts: list[str]) -> list[str]:
    kinds = ", ".join(f"{kind} {count}" for kind, (count, _) in KINDS.items())
    workers = ", ".join(f"{n} --concurrency {c} -Q {q}" for n, (q, c, _) in WORKERS.items())
    return [
        "# Chaos: every accepted event delivered or dead-lettered?",
        "",
        *facts,
        "",
        f"{scenario.events} events per run at {scenario.rate:.1f}/s round-robin over "
        f"{sum(c for c, _ in KINDS.values())} endpoints ({kinds}); a worker SIGKILLed and "
        f"restarted every {scenario.kill_every_s:g} s (prefork, gevent, ...); Redis away for "
        f"{scenario.redis_down_s:g} s at {scenario.redis_fault_at_s:g} s; up to "
        f"{scenario.drain_s:g} s to drain. Workers: {workers}. Worker settings: "
        + ", ".join(f"{k}={v}" for k, v in SERVICE_ENV.items())
        + "; the visibility timeout and everything else at the defaults.",
    ]


RUNS = (("Run 1", "Redis stopped cleanly", "stop"), ("Run 2", "Redis SIGKILLed", "kill"))


def main(argv: list[str] | None = None) -> None:
    scenario = parse(argv)
    # SIGTERM unwinds like Ctrl-C, so every worker and Redis started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-ca-") as tmp:
        ca = TestCA(Path(tmp))
        for short, what, fault in RUNS:
            print(f"{short}: {what} ...", flush=True)
            runs.append(run_once(ca, scenario, f"{short}: {what}", fault))
            log = RESULTS.with_name(f"chaos-{short.lower().replace(' ', '-')}-workers.log")
            log.parent.mkdir(exist_ok=True)
            log.write_text("\n".join(runs[-1].logs) + "\n")
            print(f"  lost: {lost_count(runs[-1])}; worker logs in {log}", flush=True)
    total = sum(lost_count(r) for r in runs)
    each = ", ".join(
        f"{short}: {lost_count(r)}" for (short, _, _), r in zip(RUNS, runs, strict=True)
    )
    report = [
        *header(scenario, runs[0].facts),
        *(line for run in runs for line in section(run)),
        "",
        f"Wall time {time.monotonic() - started:.0f} s; load average at the end: {load_average()}.",
        "",
        f"**LOST: {total}** ({each})",
    ]
    write_report(report, RESULTS)
    print(f"LOST: {total}")


if __name__ == "__main__":
    main()
