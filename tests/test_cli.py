"""The ``webhooks`` CLI against the session's real Redis."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tasks import deliver_webhook
from testing.receiver import Receiver, Respond
from testing.redis_server import RedisServer
from testing.worker import WorkerProcess
from tests.support import make_event, registered, unique_path, wait_until
from webhooks import keys
from webhooks.cli import EXIT_INVALID, EXIT_NOT_FOUND, main
from webhooks.cli.terminal import printable
from webhooks.conversations import ConversationStore
from webhooks.endpoints import normalize_endpoint
from webhooks.health import HealthPolicy, HealthStore
from webhooks.ordering import OrderedLines
from webhooks.outcomes import Outcome
from webhooks.progress import Delivery
from webhooks.queues import QUEUE, SLOW_QUEUE
from webhooks.signing import generate_secret


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> None:
    monkeypatch.setenv("WEBHOOKS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "true")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_set_prints_the_stored_configuration_with_its_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cid = str(uuid.uuid4())

    code, out, _ = run(
        capsys, "conversations", "set", cid, "--callback-url", "https://127.0.0.1:9/hook"
    )

    assert code == 0
    stored = json.loads(out)
    assert stored["conversation_id"] == cid
    assert stored["config"]["callback_url"] == "https://127.0.0.1:9/hook"
    assert stored["secret"].startswith("whsec_") and len(stored["secret"]) > 40


def test_set_from_a_config_file_in_the_guides_shape(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cid = str(uuid.uuid4())
    config = tmp_path / "conversation.json"
    config.write_text(
        json.dumps(
            {
                "channel": "API",
                "usecase": "WORKFLOW_EXECUTION",
                "config": {"workflow_id": "123", "callback_url": "https://127.0.0.1:9/webhook"},
            }
        )
    )

    code, out, _ = run(capsys, "conversations", "set", cid, "--config-file", str(config))

    assert code == 0
    stored = json.loads(out)
    assert (stored["channel"], stored["usecase"]) == ("API", "WORKFLOW_EXECUTION")
    assert stored["config"]["workflow_id"] == "123"


def test_get_masks_the_secret_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    cid = str(uuid.uuid4())
    _, out, _ = run(capsys, "conversations", "set", cid, "--callback-url", "https://127.0.0.1/h")
    secret = json.loads(out)["secret"]

    _, masked, _ = run(capsys, "conversations", "get", cid)
    _, shown, _ = run(capsys, "conversations", "get", cid, "--show-secret")

    assert secret not in masked
    assert json.loads(shown)["secret"] == secret


def test_rotate_secret_keeps_the_old_one_signing(capsys: pytest.CaptureFixture[str]) -> None:
    cid = str(uuid.uuid4())
    _, out, _ = run(capsys, "conversations", "set", cid, "--callback-url", "https://127.0.0.1/h")
    old = json.loads(out)["secret"]

    code, out, _ = run(capsys, "conversations", "rotate-secret", cid)

    rotated = json.loads(out)
    assert code == 0
    (previous,) = rotated["previous_secrets"]
    assert previous["secret"] == old and rotated["secret"] != old
    assert previous["expires_at"] > rotated["updated_at"]


def test_secret_from_a_file_or_stdin_never_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Given a secret in a file (with the newline editors add) and another on stdin
    cid = str(uuid.uuid4())
    from_file, from_stdin = generate_secret(), generate_secret()
    (tmp_path / "secret").write_text(from_file + "\n")
    url = ("--callback-url", "https://127.0.0.1/h")

    # When the conversation is set from the file, then from stdin
    code, out, _ = run(
        capsys, "conversations", "set", cid, *url, "--secret-file", str(tmp_path / "secret")
    )
    assert code == 0 and json.loads(out)["secret"] == from_file
    monkeypatch.setattr("sys.stdin", io.StringIO(from_stdin + "\n"))
    code, out, _ = run(capsys, "conversations", "set", cid, *url, "--secret-stdin")

    # Then each is used, and the replaced one overlaps as after a rotation
    shown = json.loads(out)
    assert code == 0 and shown["secret"] == from_stdin
    assert [p["secret"] for p in shown["previous_secrets"]] == [from_file]

    # And --now replaces it with no overlap
    (tmp_path / "secret").write_text(from_file)
    code, out, _ = run(
        capsys,
        "conversations",
        "set",
        cid,
        *url,
        "--secret-file",
        str(tmp_path / "secret"),
        "--now",
    )
    assert code == 0 and json.loads(out)["previous_secrets"] == []


def test_an_unreadable_or_empty_secret_file_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "empty").write_text("\n")
    url = ("--callback-url", "https://127.0.0.1/h")
    cid = str(uuid.uuid4())

    missing = run(capsys, "conversations", "set", cid, *url, "--secret-file", "/nonexistent/s")
    empty = run(capsys, "conversations", "set", cid, *url, "--secret-file", str(tmp_path / "empty"))

    assert missing[0] == EXIT_INVALID and "cannot read /nonexistent/s" in missing[2]
    assert empty[0] == EXIT_INVALID and "empty" in empty[2]


def test_list_and_delete(capsys: pytest.CaptureFixture[str]) -> None:
    cid = str(uuid.uuid4())
    run(capsys, "conversations", "set", cid, "--callback-url", "https://127.0.0.1/h")

    _, listed, _ = run(capsys, "conversations", "list")
    assert cid in [c["conversation_id"] for c in json.loads(listed)]

    assert run(capsys, "conversations", "delete", cid)[0] == 0
    code, _, err = run(capsys, "conversations", "get", cid)
    assert code == EXIT_NOT_FOUND and "not registered" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--callback-url", "http://example.com/h"], "HTTPS only"),
        (["--callback-url", "https://127.0.0.1/h", "--secret", "nope"], "whsec_"),
    ],
)
def test_bad_input_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, "conversations", "set", str(uuid.uuid4()), *args)

    assert code == EXIT_INVALID
    assert out == ""
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_private_callback_refused_under_the_default_policy(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEBHOOKS_ALLOW_PRIVATE_NETWORKS")

    code, _, err = run(
        capsys, "conversations", "set", str(uuid.uuid4()), "--callback-url", "https://10.0.0.5/h"
    )

    assert code == EXIT_INVALID and "not a public address" in err


def test_console_script_is_installed(redis_server: RedisServer) -> None:
    script = Path(sys.executable).parent / "webhooks"

    done = subprocess.run(
        [str(script), "conversations", "list"], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)


# --- webhooks endpoints ------------------------------------------------------------------


def _endpoints(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    code, out, _ = run(capsys, "endpoints", "--json")
    assert code == 0
    return {row["endpoint"]: row for row in json.loads(out)}


def test_endpoints_lists_health_queue_and_counters(
    capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    # Given a fast endpoint with 3 attempts in its window, 2 in flight and 1
    # parked, and an endpoint that timed out
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=5)
    health = HealthStore(client, HealthPolicy())
    fast = f"https://127.0.0.1:9443/fast/{uuid.uuid4().hex[:8]}"
    slow = f"https://127.0.0.1:9443/slow/{uuid.uuid4().hex[:8]}"
    health.observe(fast, duration_s=0.1, outcome="ok")
    health.observe(fast, duration_s=0.2, outcome="error")
    health.observe(slow, duration_s=1.0, outcome="timeout")
    ek = keys.endpoint(fast)
    in_an_hour_ms = int((time.time() + 3600) * 1000)
    # Attempts: three in the last minute, one before it; ~w: the window's length
    now_ms = int(time.time() * 1000)
    client.zadd(ek.window, {"a": now_ms, "b": now_ms, "c": now_ms, "d": 1, "~w": -60_000})
    # Leases: two live, one given back (0), one expired (its worker died), ~wake
    client.zadd(ek.inflight, {"a": in_an_hour_ms, "b": in_an_hour_ms, "c": 0, "d": 1, "~wake": -1})
    client.zadd(ek.parked, {"msg_1": 1})
    client.close()

    # When the endpoints are listed
    rows = _endpoints(capsys)

    # Then each shows its queue, mean, recent outcomes, attempts and counters
    assert rows[fast] == {
        "endpoint": fast,
        "queue": QUEUE,
        "mean_ms": 130.0,  # 0.3 * 200 + 0.7 * 100
        "recent": "oe",
        "attempts": 2,
        "in_window": 3,
        "in_flight": 2,
        "parked": 1,
        "limits": "",
        "hold_until_ms": None,
    }
    assert rows[slow] == {
        "endpoint": slow,
        "queue": SLOW_QUEUE,
        "mean_ms": 1000.0,
        "recent": "t",
        "attempts": 1,
        "in_window": 0,
        "in_flight": 0,
        "parked": 0,
        "limits": "",
        "hold_until_ms": None,
    }

    # And the table form has a line per endpoint with its queue
    code, table, _ = run(capsys, "endpoints")
    assert code == 0
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["endpoint", "queue", "mean"]
    (slow_line,) = [line for line in lines if line.startswith(slow)]
    assert slow_line.split()[1:4] == [SLOW_QUEUE, "1000.0", "t"]


def test_endpoints_lists_an_endpoint_after_a_real_delivery(
    capsys: pytest.CaptureFixture[str],
    worker: WorkerProcess,
    receiver: Receiver,
    conversations: ConversationStore,
    wait_outcome: Callable[..., Outcome],
) -> None:
    # Given a conversation whose receiver answers at once
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)

    # When one event is delivered by the session's worker
    outcome = wait_outcome(deliver_webhook.delay(make_event(cid)).id)
    assert outcome.state == "delivered"

    # Then its endpoint is listed (once the worker flushed its health): on the
    # default queue, one successful attempt, counted in the rate window,
    # nothing in flight or parked
    endpoint = normalize_endpoint(receiver.url(path))
    row = wait_until(lambda: _endpoints(capsys).get(endpoint), 10, f"{endpoint} listed")
    assert (row["queue"], row["recent"], row["attempts"]) == (QUEUE, "o", 1)
    assert (row["in_window"], row["in_flight"], row["parked"]) == (1, 0, 0)
    assert 0 < float(str(row["mean_ms"])) < 5000


# --- human output is safe for a terminal ----------------------------------------

#: What a hostile receiver writes: clear the screen, retitle the window, a C1
#: CSI (one byte in Latin-1, two in UTF-8), a bidi override and a line break.
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202eevil\r\nforged row\x7f"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcödé, 日本", "plain text, ünïcödé, 日本"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("\x9b31m", "\\x9b31m"),
        ("a\x00b\x7fc", "a\\x00b\\x7fc"),
        ("line\r\nbreak\tand tab", "line\\x0d\\x0abreak\\x09and tab"),
        ("\u202eevil\u2028", "\\u202eevil\\u2028"),
    ],
)
def test_printable_shows_control_characters_as_escapes(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_log_and_dead_list_escape_what_a_receiver_wrote_json_stays_exact(
    capsys: pytest.CaptureFixture[str],
    worker: WorkerProcess,
    receiver: Receiver,
    conversations: ConversationStore,
    wait_outcome: Callable[..., Outcome],
) -> None:
    # Given a receiver that answers every attempt with a redirect whose
    # Location and body carry terminal escape sequences
    path = unique_path()
    cid, _ = registered(conversations, receiver, path)
    # (a header is Latin-1 and one line: no bidi override, no CR LF there)
    location = "https://evil.example/\x1b[2J\x1b]0;owned\x07\x9b31m\x7f"
    receiver.always(
        path,
        Respond(307, body=HOSTILE.encode("utf-8"), headers={"Location": location}),
    )
    # When an event uses up its retries
    result = deliver_webhook.delay(make_event(cid))
    assert wait_outcome(result.id).state == "failed"
    message_id = receiver.received(path)[0].headers["webhook-id"]
    event_id = json.loads(receiver.received(path)[0].body)["data"]["id"]
    assert message_id == result.id

    # Then the plain-text log and dead-letter list carry no control character
    # but show the escapes, one line per record
    code, log_out, _ = run(capsys, "log", "--message-id", event_id)
    assert code == 0
    code, dead_out, _ = run(capsys, "dead", "list")
    assert code == 0
    dead_lines = [line for line in dead_out.splitlines() if result.id in line]
    assert len(dead_lines) == 1
    for out in (log_out, dead_lines[0]):
        assert all(c == "\n" or c.isprintable() for c in out), repr(out)
        assert "\\x1b]0;owned\\x07" in out
    assert len(log_out.splitlines()) == 2 + 4  # header, rule, four attempts

    # And the JSON output keeps the receiver's exact text
    code, out, _ = run(capsys, "log", "--message-id", event_id, "--json")
    records = json.loads(out)
    assert {r["response_excerpt"] for r in records} == {HOSTILE}
    assert all(location in r["error"] for r in records)
    code, out, _ = run(capsys, "dead", "list", "--json")
    (letter,) = [d for d in json.loads(out) if d["webhook_id"] == result.id]
    assert location in letter["outcome"]["error"]


def test_lines_shows_blocked_ordered_lines_and_for_how_long(
    capsys: pytest.CaptureFixture[str], redis_client: redis.Redis
) -> None:
    # Given an ordered conversation whose event 1 is in flight and 2 waits
    cid, lines = str(uuid.uuid4()), OrderedLines(redis_client)
    for n in (1, 2):
        lines.enter(cid, Delivery({"conversation_id": cid}, f"msg_{n}", sequence=n))
    try:
        # When the lines are listed, as JSON and as text
        code, out, _ = run(capsys, "conversations", "lines", "--json")
        _, text, _ = run(capsys, "conversations", "lines")

        # Then the line is there: waiting on 1, one event behind it
        assert code == 0
        (line,) = [b for b in json.loads(out) if b["conversation_id"] == cid]
        assert (line["next_sequence"], line["waiting"]) == (1, 1)
        assert line["blocked_s"] >= 0
        assert any(row.split()[:3] == [cid, "1", "1"] for row in text.splitlines())
    finally:
        lines.end(cid, 1)
        lines.end(cid, 2)
