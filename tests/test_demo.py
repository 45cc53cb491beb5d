"""``python -m demo`` as a new user runs it: no Redis configured, nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.settings import child_environment

# Run the module with SIGINT handled even if this test process ignores it
# (a background CI shell does), so Ctrl-C can be simulated.
DEMO = [
    sys.executable,
    "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('demo', run_name='__main__')",
]
TIMEOUT_S = 90
#: ``demo`` and ``testing`` sit beside the package, not in it: the checkout goes
#: on the path, as ``make demo`` (run from the checkout) has it.
ROOT = Path(__file__).resolve().parents[1]


def fresh_machine_env() -> dict[str, str]:
    """This environment without any ``WEBHOOKS_*`` variable, so the demo embeds Redis."""
    env = {k: v for k, v in child_environment({}).items() if not k.startswith("WEBHOOKS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_demo(tmp_path: Path, output: Path) -> subprocess.Popen[bytes]:
    with output.open("wb") as sink:
        return subprocess.Popen(
            DEMO,
            cwd=tmp_path,
            env=fresh_machine_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal's job
        )


def finish(process: subprocess.Popen[bytes], timeout: float = TIMEOUT_S) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # the demo cleans up on SIGTERM too
        process.wait(30)
        pytest.fail(f"the demo did not finish within {timeout} s")


def processes() -> list[tuple[int, int, str]]:
    """``(pid, process group, command line)`` of every process we can see."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # exited meanwhile
        pgid = int(stat.rsplit(")", 1)[1].split()[2])
        found.append((int(proc.name), pgid, cmdline))
    return found


def assert_nothing_left(demo_pid: int, output: str) -> None:
    redis_port = re.search(r"redis-server on 127\.0\.0\.1:(\d+)", output)
    redis_dir = re.search(r"\(data in (\S+)\)", output)
    ca_bundle = re.search(r"WEBHOOKS_CA_BUNDLE=(\S+)", output)
    assert redis_port and redis_dir and ca_bundle, output
    assert not Path(redis_dir[1]).exists(), "the embedded Redis's directory is left"
    assert not Path(ca_bundle[1]).parent.exists(), "the demo's temporary directory is left"
    worker = re.search(r"worker ready \(pid (\d+)\)", output)
    worker_group = int(worker[1]) if worker else -1
    port = re.compile(rf"\b127\.0\.0\.1:{redis_port[1]}\b")
    deadline = time.monotonic() + 5  # a pool child may take a moment to exit
    while True:
        left = [
            cmd
            for pid, pgid, cmd in processes()
            if pgid == worker_group
            or f"--hostname demo-{demo_pid}-" in cmd
            or ("redis-server" in cmd and port.search(cmd))
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == [], f"still running after the demo exited: {left}"


def table_rows(output: str) -> list[list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("message  "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_demo_delivers_every_sample_signed_then_stops_everything(tmp_path: Path) -> None:
    # Given a machine with no WEBHOOKS_* configuration
    output_file = tmp_path / "demo.out"

    # When a new user runs the demo
    started = time.monotonic()
    process = start_demo(tmp_path, output_file)
    status = finish(process)
    elapsed = time.monotonic() - started
    output = output_file.read_text()

    # Then it succeeds by itself, well under a minute
    assert status == 0, output
    assert elapsed < 60, output
    assert "starting an embedded redis-server" in output
    assert "All 4 deliveries ended as expected." in output
    # and the invalid event was refused before anything was queued
    assert "refused at publish (InvalidEvent)" in output
    assert "conversation_id: Input should be a valid UUID" in output

    # and every delivery is reported delivered, with its signature verified
    rows = table_rows(output)
    assert len(rows) == 4, output
    for _message, _event, endpoint, attempts, result, _latency, signature, gaps in rows:
        assert result == "delivered (200)"
        assert signature == "verified"
        if endpoint == "/webhook":
            assert (attempts, gaps) == ("1", "-")
    # and the flaky endpoint got 3 attempts, 4 s and then 8 s apart
    (flaky,) = (row for row in rows if row[2] == "/flaky-webhook")
    assert flaky[3] == "3"
    first, second = (float(g.removesuffix(" s")) for g in flaky[7].split(", "))
    assert 3.5 <= first <= 7.0
    assert 7.5 <= second <= 11.0

    # and nothing it started is still running
    assert_nothing_left(process.pid, output)


def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path) -> None:
    # Given the demo waiting for the flaky endpoint's retries
    output_file = tmp_path / "demo.out"
    process = start_demo(tmp_path, output_file)
    deadline = time.monotonic() + TIMEOUT_S
    while "Receiver log" not in output_file.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.terminate()
            process.wait(30)
            pytest.fail("the demo never started delivering:\n" + output_file.read_text())
        time.sleep(0.1)

    # When the user presses Ctrl-C (SIGINT to the terminal's process group)
    os.killpg(process.pid, signal.SIGINT)
    status = finish(process, timeout=45)
    output = output_file.read_text()

    # Then it says so, exits 130, and leaves nothing running
    assert status == 130, output
    assert "Interrupted; everything the demo started has been stopped." in output
    assert_nothing_left(process.pid, output)
