"""``python -m demo``: the whole pipeline on one machine in about 15 seconds.

Starts a Redis (or uses ``WEBHOOKS_REDIS_URL``), a throwaway CA, a local HTTPS
receiver and a real worker; registers two conversations, publishes sample
message events and prints how each delivery ended. Everything it started is
stopped on exit; the exit status is non-zero if a delivery went wrong.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url

from config.celery_app import app
from config.settings import DEFAULT_RETRY_SCHEDULE_S, Settings
from config.wiring import conversation_store
from tasks import deliver_webhook
from testing.receiver import ReceivedRequest, Receiver, Respond, TestCA
from testing.redis_server import RedisServer
from testing.worker import WorkerProcess
from webhooks.conversations import ConversationStore
from webhooks.errors import InvalidEvent
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.store import Store, connect

__all__ = ["main"]

PATH, FLAKY_PATH = "/webhook", "/flaky-webhook"
#: What each endpoint answers before it settles on 200 OK.
SCRIPTS: dict[str, tuple[int, ...]] = {PATH: (), FLAKY_PATH: (503, 500)}
WAIT_S = 45.0
#: A retry may fire a little late (worker timer, load), never early.
GAP_EARLY_S, GAP_LATE_S = 0.5, 3.0
HEADER = ["message", "event", "endpoint", "attempts",
          "result", "latency", "signature", "retry gaps"]  # fmt: skip


@dataclass
class Delivery:
    path: str
    event: dict[str, Any]
    expected_attempts: int = 1
    webhook_id: str = ""
    published_at: float = 0.0
    outcome: Outcome | None = None

    @property
    def label(self) -> str:
        data = self.event["data"]
        return f"{data['content_type']} {data['type']} {data['status']}"


def _event(conversation_id: str, content: str, **data: Any) -> dict[str, Any]:
    """A message event in the guide's "Webhook Payload" shape."""
    now = datetime.now(UTC).isoformat()
    defaults = {"content_type": "TEXT", "type": "USER_INPUT", "channel": "API"}
    fields = {"status": "RECEIVED", "created_by": "user123", "updated_by": "user123"}
    times = {"created_at": now, "updated_at": now}
    message = {"id": str(uuid.uuid4()), "content": content, **defaults, **fields, **times}
    return {"conversation_id": conversation_id, "data": {**message, **data}, "timestamp": now}


def _redis(stack: ExitStack, env_settings: Settings) -> str:
    if "redis_url" in env_settings.model_fields_set:
        print(f"Using WEBHOOKS_REDIS_URL: {maybe_sanitize_url(env_settings.redis_url)}")
        return env_settings.redis_url
    print("WEBHOOKS_REDIS_URL is not set: starting an embedded redis-server ...")
    server = stack.enter_context(RedisServer())
    print(f"  redis-server on 127.0.0.1:{server.port} (data in {server.directory})")
    return server.url


def _start_worker(stack: ExitStack, redis_url: str, ca: TestCA) -> WorkerProcess:
    schedule = ",".join(f"{s:g}" for s in DEFAULT_RETRY_SCHEDULE_S)
    print("Starting a celery worker (a real subprocess) with:")
    print(f"  WEBHOOKS_CA_BUNDLE={ca.pem_path}  (trust the throwaway CA)")
    print("  WEBHOOKS_ALLOW_PRIVATE_NETWORKS=true  (development escape hatch, needed only")
    print("    because the demo receiver is on localhost; leave it off in production)")
    print(f"  WEBHOOKS_RETRY_SCHEDULE={schedule}  (the default: the guide's 4 s, 8 s, 10 s)")
    env = {
        "WEBHOOKS_REDIS_URL": redis_url,
        "WEBHOOKS_BROKER_URL": redis_url,
        "WEBHOOKS_CA_BUNDLE": str(ca.pem_path),
        "WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
        "WEBHOOKS_RETRY_SCHEDULE": schedule,
    }
    worker = WorkerProcess(env, concurrency=2, name="demo")
    stack.callback(worker.stop)
    worker.start()
    print(f"  worker ready (pid {worker.process.pid if worker.process else '?'})")
    return worker


def _register(stack: ExitStack, client: Store, settings: Settings, receiver: Receiver) -> list[str]:
    store = conversation_store(client, settings)
    ids = []
    for workflow_id, path in (("123", PATH), ("456", FLAKY_PATH)):
        cid = str(uuid.uuid4())
        config = {"workflow_id": workflow_id, "callback_url": receiver.url(path)}
        shape = {"channel": "API", "usecase": "WORKFLOW_EXECUTION", "config": config}
        conversation = store.set(cid, shape)
        stack.callback(_forget, store, cid)
        receiver.verify_with(path, conversation.secret)
        receiver.script(path, [Respond(status) for status in SCRIPTS[path]])
        answers = ", then ".join(str(s) for s in (*SCRIPTS[path], 200))
        print(f"  conversation {cid[:8]} -> {config['callback_url']}  (answers {answers})")
        ids.append(cid)
    return ids


def _forget(store: ConversationStore, conversation_id: str) -> None:
    with suppress(redis.RedisError):  # best effort; on Ctrl-C Redis may be gone already
        store.delete(conversation_id)


def _show_refusal(conversation_id: str) -> None:
    bad = {**_event(conversation_id, "hi", content_type="STICKER"), "conversation_id": "conv-42"}
    try:
        deliver_webhook.delay(bad)
    except InvalidEvent as exc:
        print("An invalid event is refused at publish (InvalidEvent), nothing is queued:")
        for field, problem in exc.problems:
            print(f"  {field}: {problem}")
    else:
        raise RuntimeError("an invalid event was published")


def _publish(deliveries: list[Delivery]) -> None:
    for d in deliveries:
        d.published_at = time.time()
        d.webhook_id = str(deliver_webhook.delay(d.event).id)
        print(f"  message {d.event['data']['id'][:8]}  {d.label:<28}  webhook-id {d.webhook_id}")


def _wait(deliveries: list[Delivery], outcomes: OutcomeStore, receiver: Receiver) -> None:
    """Log each request as the receiver gets it, until every delivery has an outcome."""
    started, seen, per_path = time.time(), 0, Counter[str]()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        arrived = receiver.received()
        for r in arrived[seen:]:
            script = SCRIPTS.get(r.path, ())
            answer = script[per_path[r.path]] if per_path[r.path] < len(script) else 200
            per_path[r.path] += 1
            message = str(json.loads(r.body)["data"]["id"])[:8]
            attempt = r.headers.get("x-webhook-attempt", "?")
            print(
                f"  +{r.received_at - started:4.1f} s  POST {r.path:<14}  message {message}"
                f"  attempt {attempt}  signature {_verified([r])}  -> answered {answer}"
            )
        seen = len(arrived)
        for d in deliveries:
            d.outcome = d.outcome or outcomes.get(d.webhook_id)
        if all(d.outcome for d in deliveries):
            return
        time.sleep(0.05)
    print(f"  gave up waiting after {WAIT_S:.0f} s")


def _row(d: Delivery, receiver: Receiver) -> tuple[list[str], bool]:
    """One table row, and whether the delivery ended as expected."""
    got = [r for r in receiver.received(d.path) if r.headers.get("webhook-id") == d.webhook_id]
    gaps = [b.received_at - a.received_at for a, b in pairwise(got)]
    expected_gaps = DEFAULT_RETRY_SCHEDULE_S[: d.expected_attempts - 1]
    outcome = d.outcome
    delivered = outcome is not None and outcome.state == "delivered"
    counted = outcome is not None and outcome.attempts == d.expected_attempts == len(got)
    on_time = all(
        e - GAP_EARLY_S <= g <= e + GAP_LATE_S
        for g, e in zip(gaps, expected_gaps, strict=False)  # lengths: see `counted`
    )
    ok = delivered and counted and on_time and _verified(got) == "verified"
    return [
        d.event["data"]["id"][:8],
        d.label,
        d.path,
        str(outcome.attempts if outcome else len(got)),
        f"{outcome.state} ({outcome.status or '-'})" if outcome else "no outcome",
        f"{got[-1].received_at - d.published_at:.2f} s" if got else "-",
        _verified(got),
        ", ".join(f"{g:.1f} s" for g in gaps) or "-",
    ], ok


def _verified(requests: list[ReceivedRequest]) -> str:
    return "verified" if requests and all(r.signature_ok for r in requests) else "NOT verified"


def _table(rows: list[list[str]]) -> None:
    lines = [HEADER, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    for line in [lines[0], ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def run(stack: ExitStack) -> bool:
    """Set everything up, deliver the samples, print the table; True if all went as expected."""
    redis_url = _redis(stack, Settings())
    settings = Settings(redis_url=redis_url, broker_url=redis_url, allow_private_networks=True)
    client = connect(redis_url, socket_timeout_s=settings.redis_socket_timeout_s)
    stack.callback(client.close)
    client.ping()  # fail now rather than after a minute of broker retries in the worker
    ca = TestCA(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="webhooks-demo-"))))
    receiver = stack.enter_context(Receiver(ca.server_context()))
    print(f"HTTPS receiver on {receiver.url('')} (certificate from a throwaway CA)")
    worker = _start_worker(stack, redis_url, ca)
    app.configure(settings)  # the producer side: this process publishes to the same Redis
    print("Registering conversations; the receiver checks signatures with standardwebhooks:")
    cid, flaky_cid = _register(stack, client, settings, receiver)
    _show_refusal(cid)

    text = _event(cid, "Hello, I need help with my order")
    document = _event(cid, "Invoice attached", content_type="DOCUMENT", filename="invoice.pdf")
    bot = _event(cid, "It ships tomorrow", type="BOT", status="PROCESSED", metadata={"n": 1})
    flaky = _event(flaky_cid, "Anyone there?")
    deliveries = [Delivery(PATH, text), Delivery(PATH, document), Delivery(PATH, bot)]
    deliveries.append(Delivery(FLAKY_PATH, flaky, expected_attempts=3))
    print("Publishing with deliver_webhook.delay(event):")
    _publish(deliveries)
    print("Receiver log (the flaky endpoint is retried after 4 s, then after 8 s more):")
    _wait(deliveries, OutcomeStore(client, retention_s=settings.outcome_retention_s), receiver)

    rows, oks = zip(*(_row(d, receiver) for d in deliveries), strict=True)
    print()
    _table(list(rows))
    print()
    if all(oks):
        print(f"All {len(deliveries)} deliveries ended as expected.")
        return True
    unexpected = ", ".join(row[0] for row, ok in zip(rows, oks, strict=True) if not ok)
    print(f"Not as expected: message(s) {unexpected}. Last worker log lines:")
    print("\n".join(worker.lines[-20:]))
    return False


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` cleans up like Ctrl-C
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            ok = run(stack)
            print("Stopping the worker, the receiver and Redis ...")
    except KeyboardInterrupt:
        print("\nInterrupted; everything the demo started has been stopped.")
        return 130
    except (RuntimeError, redis.ConnectionError) as exc:
        print(f"Demo failed: {exc}", file=sys.stderr)
        return 2
    print(f"Done in {time.monotonic() - started:.1f} s.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
