"""Procfile and docker-compose.yml: they parse, agree, and the commands really run.

There is no Docker engine on CI machines, so compose is checked by parsing it;
the Procfile's commands are started for real against the session's Redis.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from testing.redis_server import RedisServer, free_port
from testing.worker import FAST_QUEUES, SLOW_QUEUES, WORKER_ARGS

ROOT = Path(__file__).resolve().parent.parent


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict[str, object]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_procfile_workers_split_fast_and_slow_queues() -> None:
    worker, slow = procfile()["worker"], procfile()["worker_slow"]

    assert worker.startswith("celery " + " ".join(WORKER_ARGS) + f" -Q {FAST_QUEUES} ")
    assert slow.startswith("celery " + " ".join(WORKER_ARGS) + f" -Q {SLOW_QUEUES} ")
    # the slow queue's workers are sized for waiting, not for CPU
    assert "--pool gevent" in slow and "--pool" not in worker


def test_compose_commands_match_the_procfile() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)

    for name in ("worker", "worker_slow", "flower", "metrics", "console"):
        assert services[name]["command"] == procfile()[name], name


def test_compose_redis_is_durable_and_never_evicts() -> None:
    redis = compose()["services"]["redis"]  # type: ignore[index]
    command = " ".join(redis["command"])

    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command


def test_compose_worker_can_scale() -> None:
    worker = compose()["services"]["worker"]  # type: ignore[index]

    # --scale needs no fixed name and no published port
    assert "container_name" not in worker and "ports" not in worker
    assert worker["environment"]["WEBHOOKS_REDIS_URL"].endswith("@redis:6379/0")


def test_compose_redis_requires_a_password_that_every_service_uses() -> None:
    services = compose()["services"]  # type: ignore[index]

    # Redis refuses to start without REDIS_PASSWORD, and asks every client for it
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
    assert services["redis"]["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD")

    # And every service that talks to it carries the password in its URL
    for name, service in services.items():
        if name != "redis":
            url = service["environment"]["WEBHOOKS_REDIS_URL"]
            assert url == "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis:6379/0", name


def _published(service: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """(host address, host port) of each published port, as compose would
    interpolate ``${VAR:-default}`` with ``env`` as the host's environment."""
    ports = compose()["services"][service]["ports"]  # type: ignore[index]

    def interpolate(text: str) -> str:
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), text)

    found = []
    for entry in ports:
        parts = interpolate(str(entry)).split(":")
        # "HOST_PORT:CONTAINER_PORT" publishes on every interface
        found.append((parts[0], parts[1]) if len(parts) == 3 else ("0.0.0.0", parts[0]))  # noqa: S104
    return found


def test_compose_publishes_flower_on_loopback_unless_told_otherwise() -> None:
    # Given compose with no FLOWER_BIND / When its published ports are read
    default = _published("flower", {})
    # Then Flower (plain HTTP, basic auth) is reachable from this host only
    assert default == [("127.0.0.1", "5555")]
    # And FLOWER_BIND / FLOWER_PORT move it when an operator asks
    assert _published("flower", {"FLOWER_BIND": "10.0.0.5", "FLOWER_PORT": "6000"}) == [
        ("10.0.0.5", "6000")
    ]


def test_compose_publishes_metrics_on_loopback_and_passes_auth_through() -> None:
    metrics = compose()["services"]["metrics"]  # type: ignore[index]

    assert _published("metrics", {}) == [("127.0.0.1", "9808")]
    # the server listens on all of its container's interfaces, or nothing is published
    assert metrics["environment"]["WEBHOOKS_METRICS_BIND"] == "0.0.0.0"  # noqa: S104
    assert metrics["environment"]["WEBHOOKS_METRICS_AUTH"] == "${WEBHOOKS_METRICS_AUTH:-}"


def test_compose_publishes_the_console_on_loopback_and_requires_credentials() -> None:
    console = compose()["services"]["console"]  # type: ignore[index]

    assert _published("console", {}) == [("127.0.0.1", "8088")]
    assert console["environment"]["WEBHOOKS_CONSOLE_BIND"] == "0.0.0.0"  # noqa: S104
    assert console["environment"]["WEBHOOKS_CONSOLE_AUTH"].startswith("${WEBHOOKS_CONSOLE_AUTH:?")


def test_readme_shows_tls_in_front_of_flower() -> None:
    readme = (ROOT / "README.md").read_text()

    assert "Flower behind TLS" in readme
    assert "reverse_proxy 127.0.0.1:5555" in readme


def _shell(command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    bin_dir = str(Path(sys.executable).parent)
    full_env = {**os.environ, **env, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    return subprocess.Popen(
        ["sh", "-c", "exec " + command],
        env=full_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
    return out


@pytest.mark.parametrize(("name", "pool"), [("worker", "prefork"), ("worker_slow", "gevent")])
def test_procfile_worker_commands_start_workers(
    redis_server: RedisServer, name: str, pool: str
) -> None:
    process = _shell(
        procfile()[name],
        {
            "WEBHOOKS_REDIS_URL": redis_server.url,
            "WEBHOOKS_WORKER_CONCURRENCY": "1",
            "WEBHOOKS_SLOW_CONCURRENCY": "5",
        },
    )
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if " ready." in line:
                break
    finally:
        output = "".join(seen) + _stop(process)

    assert " ready." in output, output
    assert f"({pool})" in output and "deliver_webhook" in output


def test_procfile_flower_refuses_to_start_without_basic_auth(redis_server: RedisServer) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    process = subprocess.run(
        ["sh", "-c", "exec " + procfile()["flower"]],
        env={**env, "WEBHOOKS_REDIS_URL": redis_server.url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert process.returncode != 0
    assert "set FLOWER_BASIC_AUTH=user:password" in process.stderr


def _first_answer(
    process: subprocess.Popen[str], url: str, what: str, timeout: float = 30.0
) -> requests.Response:
    """The server's first answer at ``url``, once it listens; fail if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=2)
        except requests.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"{what} did not start:\n" + _stop(process))
            time.sleep(0.2)


def test_procfile_flower_serves_behind_basic_auth(redis_server: RedisServer) -> None:
    port = free_port()
    process = _shell(
        procfile()["flower"],
        {
            "WEBHOOKS_REDIS_URL": redis_server.url,
            "FLOWER_PORT": str(port),
            "FLOWER_BASIC_AUTH": "ops:s3cret",
        },
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        anonymous = _first_answer(process, url, "flower")
        token = base64.b64encode(b"ops:s3cret").decode()
        authorised = requests.get(url, headers={"Authorization": f"Basic {token}"}, timeout=5)
        # Flower serves Prometheus metrics without auth, by design.
        metrics = requests.get(url + "metrics", timeout=5)
    finally:
        _stop(process)

    assert anonymous.status_code == 401
    assert authorised.status_code == 200
    assert "flower_" in metrics.text


def test_procfile_console_refuses_to_start_without_credentials(redis_server: RedisServer) -> None:
    # Given no WEBHOOKS_CONSOLE_AUTH
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOKS_CONSOLE_AUTH"}
    bin_dir = str(Path(sys.executable).parent)

    # When the Procfile's console command runs
    process = subprocess.run(
        ["sh", "-c", "exec " + procfile()["console"]],
        env={
            **env,
            "WEBHOOKS_REDIS_URL": redis_server.url,
            "PATH": bin_dir + os.pathsep + env["PATH"],
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    # Then it exits with the variable to set, serving nothing
    assert process.returncode == 2, process.stderr
    assert "set WEBHOOKS_CONSOLE_AUTH" in process.stderr


def test_procfile_console_serves_on_loopback_behind_basic_auth(redis_server: RedisServer) -> None:
    # Given the Procfile's console command with a viewer
    port = free_port()
    process = _shell(
        procfile()["console"],
        {
            "WEBHOOKS_REDIS_URL": redis_server.url,
            "WEBHOOKS_CONSOLE_PORT": str(port),
            "WEBHOOKS_CONSOLE_AUTH": "viewer:ann:s3cret",
        },
    )
    try:
        # When it is asked for a page without and with credentials
        url = f"http://127.0.0.1:{port}/endpoints"
        anonymous = _first_answer(process, url, "the console")
        authorised = requests.get(url, auth=("ann", "s3cret"), timeout=5)
    finally:
        output = _stop(process)

    # Then it asks for a login, serves the page after one, and says where it listens
    assert anonymous.status_code == 401
    assert authorised.status_code == 200 and "Endpoints" in authorised.text
    assert f"http://127.0.0.1:{port}/" in output


def test_readme_shows_each_console_page_and_the_receiver_tools() -> None:
    readme = (ROOT / "README.md").read_text()

    for page in ("deliveries", "dead", "endpoints", "overview"):
        image = f"docs/img/console-{page}.png"
        assert f"]({image})" in readme and (ROOT / image).stat().st_size > 10_000, image
    assert "webhooks listen --conversation" in readme
    assert 'webhooks send-test "$CID" --wait' in readme
