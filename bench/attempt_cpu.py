"""``python -m bench.attempt_cpu``: CPU per delivery attempt, without Celery around it.

The drain benchmark (:mod:`bench.compare`) moves with everything else on a
shared machine; this one isolates the part the project controls. One process
calls :meth:`webhooks.delivery.Deliverer.attempt` N times, as a worker's pool
process would, against a fresh ``redis-server`` and the :mod:`bench.sink`
HTTPS sink (keep-alive), limits set never to bind. Reported: CPU time of this
process per attempt (median of the repeats, after a warm-up), Redis commands
per attempt from ``INFO commandstats``, and with ``--profile`` the functions
that cost most (cProfile, by own time).

It only uses the Deliverer's long-standing interface, so running it with an
older checkout of ``webhooks/`` first on ``PYTHONPATH`` measures what a change
bought. Not a test: it exits 0 whatever it measures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.rig import NEVER_BINDS, PATH, commandstats, message_event, rig
from bench.sink import Sink
from config import wiring
from config.celery_app import app
from config.settings import Settings
from config.wiring import conversation_store
from testing.receiver import TestCA
from webhooks.delivery import Deliverer, Job
from webhooks.events import parse_event
from webhooks.progress import Delivery
from webhooks.queues import QUEUE

__all__ = ["main"]


def attempts(deliverer: Deliverer, events: list[dict[str, Any]]) -> None:
    for event in events:
        deliverer.attempt(
            Job(Delivery(event, f"msg_{uuid.uuid4().hex}"), queue=QUEUE, worker="bench")
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--attempts", type=int, default=1000, help="per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print the top functions")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-attempt-") as tmp:
        ca = TestCA(Path(tmp))
        with rig(ca, NEVER_BINDS) as r, Sink(ca, Path(tmp)) as sink:
            callback = {"config": {"callback_url": sink.url(PATH)}}
            conversation_store(r.client, app.settings).set(r.conversation_id, callback)
            settings = Settings(
                redis_url=r.env["WEBHOOKS_REDIS_URL"],
                allow_private_networks=True,
                ca_bundle=Path(r.env["WEBHOOKS_CA_BUNDLE"]),
                rate_limit=NEVER_BINDS["WEBHOOKS_RATE_LIMIT"],
                max_concurrency=int(NEVER_BINDS["WEBHOOKS_MAX_CONCURRENCY"]),
            )
            deliverer = wiring.deliverer(settings)

            def batch() -> list[dict[str, Any]]:
                return [
                    parse_event(message_event(r.conversation_id)).model_dump(mode="json")
                    for _ in range(args.attempts)
                ]

            attempts(deliverer, batch()[:100])  # connections open, caches warm
            cpu_ms: list[float] = []
            r.client.config_resetstat()
            for _ in range(args.repeats):
                events = batch()
                started = time.process_time()
                attempts(deliverer, events)
                cpu_ms.append((time.process_time() - started) * 1000 / args.attempts)
            calls = commandstats(r.client)
            del calls["info"]
            profile = ""
            if args.profile:
                profiler = cProfile.Profile()
                events = batch()
                profiler.enable()
                attempts(deliverer, events)
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
                profile = out.getvalue()
    per_attempt = calls.total() / (args.attempts * args.repeats)
    print(
        f"CPU per attempt: median {statistics.median(cpu_ms):.3f} ms "
        f"(repeats: {', '.join(f'{ms:.3f}' for ms in cpu_ms)}); "
        f"Redis commands per attempt: {per_attempt:.2f} "
        f"(the worker's flush of metrics and health included, the broker's not)"
    )
    if profile:
        print(profile)


if __name__ == "__main__":
    main()
