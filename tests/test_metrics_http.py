"""``webhooks metrics-server`` as an operations surface: bind, auth, timeouts, threads.

Each test runs the real command as its own process against the session's
Redis and talks to it over real sockets, as Prometheus (or an attacker) would.
"""

from __future__ import annotations

import base64
import http.client
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import child_environment
from testing.redis_server import RedisServer, free_port

ANY = "0.0.0.0"  # noqa: S104 - what the tests check for


@dataclass(frozen=True)
class Server:
    port: int
    pid: int


Start = Callable[..., Server]


@pytest.fixture
def start(redis_server: RedisServer) -> Iterator[Start]:
    """Start ``webhooks metrics-server`` with WEBHOOKS_* ``env``; gives its port and pid."""
    processes: list[subprocess.Popen[str]] = []

    def run(**env: str) -> Server:
        port = free_port()
        base = {k: v for k, v in child_environment({}).items() if "METRICS" not in k}
        command = [str(Path(sys.executable).parent / "webhooks"), "metrics-server"]
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            env={**base, "WEBHOOKS_REDIS_URL": redis_server.url, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        host = "::1" if ":" in env.get("WEBHOOKS_METRICS_BIND", "") else "127.0.0.1"
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("metrics-server did not come up") from None
                time.sleep(0.1)
            else:
                return Server(port, process.pid)

    yield run
    for process in processes:
        process.terminate()
        process.communicate(timeout=10)


def get(port: int, headers: dict[str, str] | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics", headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def listening_addresses(port: int) -> set[str]:
    """Local addresses a socket listens on at ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(address)
    return found


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def test_it_listens_on_loopback_only_by_default(start: Start) -> None:
    # Given no WEBHOOKS_METRICS_BIND and no --host / When the server starts
    port = start().port

    # Then it listens on 127.0.0.1 and nowhere else
    assert listening_addresses(port) == {"127.0.0.1"}
    assert get(port)[0] == 200


def test_bind_setting_opens_it_on_purpose(start: Start) -> None:
    port = start(WEBHOOKS_METRICS_BIND=ANY).port

    assert listening_addresses(port) == {ANY}


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_an_ipv6_bind_address_gets_an_ipv6_socket(start: Start) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    port = start(WEBHOOKS_METRICS_BIND="::1").port

    # ::1 as /proc/net/tcp6 shows it: four host-order 32-bit words
    assert listening_addresses(port) == {"0" * 24 + "01000000"}


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        ("bearer:s3cret-token", "Bearer s3cret-token", "Bearer s3cret-tokem"),
        (
            "basic:prom:pa:ss",
            "Basic " + base64.b64encode(b"prom:pa:ss").decode(),
            "Basic " + base64.b64encode(b"prom:pa:sS").decode(),
        ),
    ],
)
def test_auth_is_required_when_configured(start: Start, spec: str, good: str, bad: str) -> None:
    # Given a server with WEBHOOKS_METRICS_AUTH
    port = start(WEBHOOKS_METRICS_AUTH=spec).port

    # When it is scraped without, with wrong and with right credentials
    anonymous, wrong, right = (
        get(port),
        get(port, {"Authorization": bad}),
        get(port, {"Authorization": good}),
    )

    # Then only the right credentials get the metrics
    assert anonymous[0] == 401 and "webhooks_" not in anonymous[1]
    assert wrong[0] == 401
    assert right[0] == 200 and "# TYPE webhooks_attempts_total counter" in right[1]


def test_a_malformed_auth_setting_stops_the_server(redis_server: RedisServer) -> None:
    process = subprocess.run(
        [str(Path(sys.executable).parent / "webhooks"), "metrics-server"],
        env=child_environment(
            {"WEBHOOKS_REDIS_URL": redis_server.url, "WEBHOOKS_METRICS_AUTH": "token-only"}
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert process.returncode != 0
    assert "bearer:TOKEN" in process.stderr and "token-only" not in process.stderr


def test_an_idle_connection_is_closed_after_the_timeout(start: Start) -> None:
    # Given a server with a 1 s connection timeout
    port = start(WEBHOOKS_METRICS_TIMEOUT_S="1").port

    # When a client connects and sends nothing
    with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
        began = time.monotonic()
        # Then the server closes it after about a second (recv sees the end)
        assert idle.recv(1) == b""
        assert 0.5 < time.monotonic() - began < 4


def test_a_slow_drip_is_closed_at_the_same_deadline(start: Start) -> None:
    port = start(WEBHOOKS_METRICS_TIMEOUT_S="1").port

    with socket.create_connection(("127.0.0.1", port), timeout=5) as drip:
        began = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
            try:
                drip.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        if not closed:
            assert drip.recv(1) == b""
        assert time.monotonic() - began < 4.5


def test_many_idle_connections_hold_no_threads_and_scrapes_still_answer(start: Start) -> None:
    # Given a server with a long timeout, and 100 connections that send nothing
    port, pid = (server := start(WEBHOOKS_METRICS_TIMEOUT_S="30")).port, server.pid
    get(port)
    baseline = thread_count(pid)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
    try:
        time.sleep(0.5)

        # When Prometheus scrapes
        began = time.monotonic()
        status, _ = get(port)

        # Then it is answered at once, and the idle sockets cost no threads
        assert status == 200
        assert time.monotonic() - began < 2
        assert thread_count(pid) <= baseline + 4
    finally:
        for sock in idle:
            sock.close()
