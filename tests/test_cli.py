"""The ``webhooks`` CLI against the session's real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from webhooks.cli import EXIT_INVALID, EXIT_NOT_FOUND, main
from webhooks.testing.redis_server import RedisServer


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
    assert rotated["previous_secret"] == old and rotated["secret"] != old
    assert rotated["previous_secret_expires_at"] > rotated["updated_at"]


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
