"""Run a real ``celery worker`` process, as the Procfile does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from config.settings import child_environment
from webhooks.queues import QUEUE, RELEASED_QUEUE, SLOW_QUEUE

__all__ = ["ALL_QUEUES", "FAST_QUEUES", "SLOW_QUEUES", "WORKER_ARGS", "WorkerProcess"]

#: The Procfile's worker commands start like this after ``celery``.
WORKER_ARGS = ("-A", "config.celery_app", "worker")
#: What the Procfile's ``worker`` and ``worker_slow`` consume.
FAST_QUEUES = f"{QUEUE},{RELEASED_QUEUE}"
SLOW_QUEUES = SLOW_QUEUE
#: A test worker that must finish whatever it is given consumes all of them.
ALL_QUEUES = f"{FAST_QUEUES},{SLOW_QUEUES}"


class WorkerProcess:
    """A worker in its own process group, so a test can SIGKILL all of it."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        concurrency: int = 2,
        name: str = "worker",
        cwd: Path | None = None,
        extra_args: tuple[str, ...] = (),
        queues: str = ALL_QUEUES,
        app: str = "config.celery_app",
    ) -> None:
        self._env = child_environment(dict(env))
        self._args = [
            sys.executable, "-m", "celery", "-A", app, *WORKER_ARGS[2:], "-Q", queues,
            "--concurrency", str(concurrency),
            "--hostname", f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h",
            "--loglevel", "INFO",
            "--without-mingle", "--without-gossip",
            *extra_args,
        ]  # fmt: skip
        self._cwd = cwd
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        """Start (or restart after :meth:`stop`/:meth:`kill`) and wait until ready."""
        self._ready.clear()
        self.process = subprocess.Popen(
            self._args,
            env=self._env,
            cwd=self._cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout):
            self.kill()
            raise RuntimeError("worker did not become ready:\n" + self.output())
        return self

    def _pump(self) -> None:
        process = self._started()
        if process.stdout is None:
            raise RuntimeError("worker was started without a stdout pipe")
        with process.stdout as stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))
                if " ready." in line:
                    self._ready.set()

    def _started(self) -> subprocess.Popen[str]:
        if self.process is None:
            raise RuntimeError("worker not started")
        return self.process

    def output(self) -> str:
        return "\n".join(self.lines)

    def pool_pids(self) -> list[int]:
        """The prefork pool's child processes (where tasks run)."""
        pid = self._started().pid
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(p) for p in path.read_text().split()]

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown: running tasks finish, nothing is lost."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole worker, pool processes included: a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
