"""Signing secrets sealed at rest (webhooks.secretbox) in a real Redis.

The module has a Redis of its own (``own_client``/``own_redis``): a sealed secret
leaves a canary behind, and a canary in the session's Redis would make every
other test's worker and CLI, which run without a key, refuse to start.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
import redis

from testing.redis_server import RedisServer
from webhooks import keys
from webhooks.cli import EXIT_INVALID, main
from webhooks.conversations import ConversationStore
from webhooks.errors import SecretsLocked
from webhooks.secretbox import PREFIX, SecretBox, new_key, parse_keys
from webhooks.signing import generate_secret

URL = "https://127.0.0.1:8443/webhook"
KEY_A, KEY_B = new_key(), new_key()

Store = Callable[..., ConversationStore]


@pytest.fixture
def store(own_client: redis.Redis) -> Store:
    """A conversation store on this module's Redis, sealing with ``keys`` (none: plain)."""

    def build(*keys_: str) -> ConversationStore:
        return ConversationStore(
            own_client,
            allow_http=False,
            allow_private=True,
            rotation_overlap_s=86_400,
            box=SecretBox(keys_) if keys_ else None,
        )

    return build


def everything_stored(own_client: redis.Redis) -> str:
    """Every string value in the Redis, concatenated: what a dump would show."""
    return "\n".join(
        str(own_client.get(key))
        for key in own_client.scan_iter()
        if own_client.type(key) == "string"
    )


def config() -> dict[str, object]:
    return {"config": {"callback_url": URL}}


# --- the box --------------------------------------------------------------------


def test_a_sealed_secret_is_marked_and_opens_to_itself() -> None:
    box = SecretBox([KEY_A])
    secret = generate_secret()

    sealed = box.seal(secret)

    assert sealed.startswith(PREFIX) and secret not in sealed
    assert box.open(sealed) == secret
    assert box.open(secret) == secret  # a plain value from before encryption


def test_keys_are_checked_without_being_echoed() -> None:
    with pytest.raises(ValueError, match="key 2 is not a Fernet key") as caught:
        parse_keys(f"{KEY_A}, not-a-key-xyz")
    assert "not-a-key-xyz" not in str(caught.value)
    assert parse_keys(f" {KEY_A} ,{KEY_B},") == (KEY_A, KEY_B)


# --- the store ------------------------------------------------------------------


def test_redis_holds_no_plaintext_secret(store: Store, own_client: redis.Redis) -> None:
    # Given a store with a key, a conversation with a secret of its own, rotated once
    sealed = store(KEY_A)
    cid = str(uuid.uuid4())
    mine = generate_secret()
    sealed.set(cid, config(), secret=mine)
    new = sealed.rotate_secret(cid).secret

    # Then no byte in Redis shows either secret (nor its base64 body) ...
    dump = everything_stored(own_client)
    for secret in (mine, new):
        assert secret not in dump and secret.removeprefix("whsec_") not in dump
    assert dump.count(PREFIX) >= 3  # the two secrets and the canary

    # ... and the store reads them back as they were
    found = sealed.get(cid)
    assert found is not None
    assert found.signing_secrets() == [new, mine]
    assert [c.secret for c in sealed.list_all()] == [new]


def test_key_rotation_new_key_first_old_key_still_opens(store: Store) -> None:
    # Given secrets sealed under key A
    cid = str(uuid.uuid4())
    secret = store(KEY_A).set(cid, config()).secret

    # When B is added in front of A, and the migration moves secrets to B
    rotated = store(KEY_B, KEY_A)
    found = rotated.get(cid)
    assert found is not None and found.secret == secret
    rotated.encrypt_secrets()

    # Then B alone opens them, and A alone no longer does
    only_b = store(KEY_B).get(cid)
    assert only_b is not None and only_b.secret == secret
    store(KEY_B).check_key()
    with pytest.raises(SecretsLocked, match="does not hold"):
        store(KEY_A).get(cid)
    with pytest.raises(SecretsLocked):
        store(KEY_A).check_key()


def test_without_a_key_sealed_secrets_are_refused(store: Store) -> None:
    # Given sealed secrets
    cid = str(uuid.uuid4())
    store(KEY_A).set(cid, config())

    # When a store without a key reads them / checks at start
    plain = store()

    # Then it refuses, saying what to set
    with pytest.raises(SecretsLocked, match="WEBHOOKS_SECRETS_KEY is not set"):
        plain.get(cid)
    with pytest.raises(SecretsLocked, match="WEBHOOKS_SECRETS_KEY is not set"):
        plain.check_key()


def test_migration_seals_plain_secrets_once(store: Store, own_client: redis.Redis) -> None:
    # Given conversations stored before encryption (plain secrets), one mid-rotation
    plain = store()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    plain.set(first, config())
    old = plain.get(first)
    assert old is not None
    plain.rotate_secret(first)
    plain.set(second, config())
    before = {c.conversation_id: c.signing_secrets() for c in plain.list_all()}
    assert old.secret in everything_stored(own_client)

    # When the migration runs, twice
    sealed = store(KEY_A)
    assert sealed.encrypt_secrets() == (2, 2)
    dump = everything_stored(own_client)
    assert sealed.encrypt_secrets() == (0, 2)

    # Then nothing plain is left, nothing changed the second time, and every secret reads back
    assert everything_stored(own_client) == dump
    for secrets in before.values():
        for secret in secrets:
            assert secret not in dump
    assert {c.conversation_id: c.signing_secrets() for c in sealed.list_all()} == before


# --- refusing to start ----------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, own_redis: RedisServer) -> pytest.MonkeyPatch:
    monkeypatch.setenv("WEBHOOKS_REDIS_URL", own_redis.url)
    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "true")
    monkeypatch.delenv("WEBHOOKS_SECRETS_KEY", raising=False)
    return monkeypatch


def test_cli_migrates_then_refuses_to_run_without_the_key(
    env: pytest.MonkeyPatch, own_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a conversation registered before encryption
    cid = str(uuid.uuid4())
    assert main(["conversations", "set", cid, "--callback-url", URL]) == 0
    capsys.readouterr()

    # When the operator sets a key and runs the migration
    env.setenv("WEBHOOKS_SECRETS_KEY", KEY_A)
    assert main(["conversations", "encrypt-secrets"]) == 0
    assert "1 of 1 conversation(s) rewritten" in capsys.readouterr().err
    assert str(own_client.get(keys.conversation(cid))).count(PREFIX) == 1

    # Then the CLI works with the key, and refuses every command without it
    assert main(["conversations", "get", cid]) == 0
    capsys.readouterr()
    env.delenv("WEBHOOKS_SECRETS_KEY")
    assert main(["conversations", "list"]) == EXIT_INVALID
    assert main(["stats"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "encrypted and WEBHOOKS_SECRETS_KEY is not set" in err


def test_a_worker_without_the_key_refuses_to_start(
    store: Store, own_redis: RedisServer, env: pytest.MonkeyPatch
) -> None:
    # Given sealed secrets in the worker's Redis
    store(KEY_A).set(str(uuid.uuid4()), config())

    # When a worker starts without WEBHOOKS_SECRETS_KEY
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config.celery_app", "worker", "--pool", "solo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Then it exits at once with a clear error
    assert worker.returncode != 0
    assert "worker not started" in worker.stderr
    assert "WEBHOOKS_SECRETS_KEY is not set" in worker.stderr
