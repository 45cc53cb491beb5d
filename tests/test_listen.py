"""``webhooks listen`` as a real process: HTTPS, one block per request, signature verdicts.

The last test is the README's "try it": ``send-test`` delivered by a real
worker to ``listen``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from testing.receiver import TestCA
from testing.redis_server import RedisServer, free_port
from testing.worker import WorkerProcess
from tests.support import make_event
from webhooks.cli import main
from webhooks.conversations import ConversationStore
from webhooks.signing import generate_secret, signature_headers

WEBHOOKS = str(Path(sys.executable).with_name("webhooks"))


class Listening:
    """A running ``webhooks listen``: its URL, its CA (if throwaway) and its output."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [WEBHOOKS, "listen", "--port", str(self.port), *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        banner = self.wait_for("listening on")
        self.url = re.search(r"https://\S+/", banner).group(0)  # type: ignore[union-attr]
        self.ca: str | None = None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            try:
                self.output += self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{text!r} not printed; got:\n{self.output}") from None
        return self.output

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def ca_path(self) -> str:
        """The throwaway CA's PEM, as listen printed it."""
        found = re.search(r"throwaway CA: (\S+)", self.wait_for("throwaway CA"))
        assert found, self.output
        return found.group(1)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> None:
    monkeypatch.setenv("WEBHOOKS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "true")


@pytest.fixture
def listen() -> Iterator[Callable[..., Listening]]:
    started: list[Listening] = []
    env = dict(os.environ)

    def start(*argv: str) -> Listening:
        listening = Listening(list(argv), env)
        started.append(listening)
        return listening

    yield start
    for listening in started:
        listening.stop()


def post(listening: Listening, body: bytes, headers: dict[str, str], verify: str) -> int:
    headers = {**headers, "Content-Type": "application/json"}
    return requests.post(
        listening.url + "hook", data=body, headers=headers, verify=verify, timeout=10
    ).status_code


def test_a_good_and_a_bad_signature_get_their_verdicts(
    listen: Callable[..., Listening],
) -> None:
    # Given listen with a secret and its throwaway certificate
    secret = generate_secret()
    listening = listen("--secret", secret)
    ca = listening.ca_path()
    body = json.dumps(make_event()).encode()

    # When one request is signed with the secret and one with another
    good = post(listening, body, signature_headers([secret], "msg_good", body), ca)
    bad = post(listening, body, signature_headers([generate_secret()], "msg_bad", body), ca)

    # Then both are answered 200 and printed as blocks with their verdicts
    assert (good, bad) == (200, 200)
    output = listening.wait_for("INVALID")
    good_block = output[output.index("webhook-id: msg_good") :].split("\n\n")[0]
    bad_block = output[output.index("webhook-id: msg_bad") :].split("\n\n")[0]
    assert "signature: valid" in good_block and '"content": "Test message"' in good_block
    assert "signature: INVALID: no matching signature" in bad_block


def test_it_answers_the_status_given_and_verifies_with_the_conversations_secret(
    listen: Callable[..., Listening], conversations: ConversationStore
) -> None:
    # Given a registered conversation and listen answering 503 for it
    cid = str(uuid.uuid4())
    secret = conversations.set(cid, {"config": {"callback_url": "https://127.0.0.1:9/h"}}).secret
    listening = listen("--conversation", cid, "--status", "503")
    ca = listening.ca_path()
    body = json.dumps(make_event(cid)).encode()

    # When a request signed with the conversation's secret arrives
    status = post(listening, body, signature_headers([secret], "msg_503", body), ca)

    # Then it is answered 503 and verified
    assert status == 503
    assert "→ 503" in listening.wait_for("signature: valid")


def test_send_test_to_listen_as_the_readme_shows(
    listen: Callable[..., Listening],
    conversations: ConversationStore,
    test_ca: TestCA,
    tmp_path: Path,
    worker: WorkerProcess,
) -> None:
    # Given listen with a certificate the worker trusts, and a conversation pointing at it
    pem = tmp_path / "listen.pem"
    test_ca.ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    cid = str(uuid.uuid4())
    conversations.set(cid, {"config": {"callback_url": "https://127.0.0.1:9/h"}})
    listening = listen("--conversation", cid, "--cert", str(pem), "--key", str(pem))
    conversations.set(cid, {"config": {"callback_url": listening.url + "webhook"}})

    # When send-test publishes to it and waits
    code = main(["send-test", cid, "--wait", "--timeout", "30"])

    # Then it was delivered, and listen printed the signed test event
    assert code == 0, listening.output
    output = listening.wait_for("signature: valid")
    assert '"test": true' in output and "POST /webhook" in output
