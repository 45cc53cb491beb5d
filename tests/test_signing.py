"""webhooks.signing: Standard Webhooks signatures, checked by the reference package."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhooks.errors import InvalidConfiguration
from webhooks.signing import (
    DEFAULT_TOLERANCE_S,
    SignatureMismatch,
    generate_secret,
    new_webhook_id,
    secret_key,
    signature_headers,
    verify,
)

BODY = '{"conversation_id":"c","data":{"content":"héllo"},"timestamp":"t"}'.encode()
SIGNATURE = re.compile(r"^v1,[A-Za-z0-9+/]{43}=$")


def test_generated_secret_is_whsec_and_base64_of_32_bytes() -> None:
    # Given a freshly generated secret
    secret = generate_secret()

    # Then it is "whsec_" plus standard base64 of 32 random bytes
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    assert len(key) == 32
    assert secret_key(secret) == key


def test_generated_secrets_differ() -> None:
    assert len({generate_secret() for _ in range(20)}) == 20


def test_webhook_ids_are_unique_and_prefixed() -> None:
    ids = {new_webhook_id() for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"msg_[0-9a-f]{32}", i) for i in ids)


def test_headers_are_verified_by_the_standardwebhooks_package() -> None:
    # Given a secret and a body
    secret = generate_secret()

    # When the body is signed now
    headers = signature_headers([secret], "msg_abc", BODY)

    # Then the reference implementation accepts it, and so do we
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg_abc"
    assert SIGNATURE.match(headers["webhook-signature"])
    assert Webhook(secret).verify(BODY, headers) == {
        "conversation_id": "c",
        "data": {"content": "héllo"},
        "timestamp": "t",
    }
    verify(secret, headers, BODY)


def test_timestamp_is_the_given_one_or_now() -> None:
    # Given an explicit timestamp and none
    before = int(time.time())
    explicit = signature_headers([generate_secret()], "msg_1", BODY, timestamp=1_700_000_000)
    implicit = signature_headers([generate_secret()], "msg_1", BODY)
    after = int(time.time())

    # Then the header carries it as integer seconds
    assert explicit["webhook-timestamp"] == "1700000000"
    assert before <= int(implicit["webhook-timestamp"]) <= after


def test_two_secrets_give_two_signatures_each_verifiable_alone() -> None:
    # Given a new secret and the one being rotated out
    new, old = generate_secret(), generate_secret()

    # When the body is signed with both
    headers = signature_headers([new, old], "msg_rot", BODY)

    # Then there are two space-separated v1 signatures
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(SIGNATURE.match(s) for s in signatures)
    assert signatures[0] != signatures[1]
    # ... and a receiver holding either secret alone accepts the request
    for secret in (new, old):
        Webhook(secret).verify(BODY, headers)
        verify(secret, headers, BODY)
    # ... while a receiver with an unrelated secret does not
    stranger = generate_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(BODY, headers)
    with pytest.raises(SignatureMismatch):
        verify(stranger, headers, BODY)


def test_signature_is_what_standardwebhooks_computes() -> None:
    # Given a fixed secret, id, timestamp and body
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    headers = signature_headers([secret], "msg_fixed", BODY, timestamp=1_700_000_000)

    # Then the signature equals the reference package's own
    expected = Webhook(secret).sign(
        "msg_fixed", datetime.fromtimestamp(1_700_000_000, tz=UTC), BODY.decode()
    )
    assert headers["webhook-signature"] == expected


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b.replace(b"h\xc3\xa9llo", b"hello"),
        lambda b: b + b" ",
        lambda b: b[:-1],
    ],
)
def test_tampered_body_fails_both_verifiers(tamper: Callable[[bytes], bytes]) -> None:
    # Given a signed body
    secret = generate_secret()
    headers = signature_headers([secret], "msg_t", BODY)

    # When the body is changed in transit
    changed = tamper(BODY)
    assert changed != BODY

    # Then neither verifier accepts it
    with pytest.raises(SignatureMismatch, match="no matching signature"):
        verify(secret, headers, changed)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(changed, headers, json_parse=False)


def test_tampered_id_or_timestamp_fails() -> None:
    # Given a signed request
    secret = generate_secret()
    headers = signature_headers([secret], "msg_t", BODY)

    # When the id or the timestamp is changed (within tolerance)
    other_id = {**headers, "webhook-id": "msg_other"}
    other_ts = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}

    # Then the signature no longer matches
    for changed in (other_id, other_ts):
        with pytest.raises(SignatureMismatch):
            verify(secret, changed, BODY)
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(BODY, changed)


@pytest.mark.parametrize("age_s", [DEFAULT_TOLERANCE_S + 60, -(DEFAULT_TOLERANCE_S + 60)])
def test_timestamp_outside_tolerance_fails(age_s: int) -> None:
    # Given a correctly signed request from too long ago (or too far ahead)
    secret = generate_secret()
    now = time.time()
    headers = signature_headers([secret], "msg_old", BODY, timestamp=int(now - age_s))

    # When verified now
    # Then both verifiers reject it although the signature itself is right
    with pytest.raises(SignatureMismatch, match="tolerance"):
        verify(secret, headers, BODY, now=now)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, headers)
    # ... and it would pass at the time it was signed
    verify(secret, headers, BODY, now=now - age_s)


def test_tolerance_is_configurable() -> None:
    # Given a request signed 100 s before "now"
    secret = generate_secret()
    headers = signature_headers([secret], "msg_tol", BODY, timestamp=1_000_000)

    # Then a 200 s tolerance accepts it and a 50 s one does not
    verify(secret, headers, BODY, now=1_000_100, tolerance_s=200)
    with pytest.raises(SignatureMismatch):
        verify(secret, headers, BODY, now=1_000_100, tolerance_s=50)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": "m", "webhook-timestamp": "1"},
        {"webhook-id": "m", "webhook-timestamp": "soon", "webhook-signature": "v1,x"},
        {"webhook-timestamp": "1", "webhook-signature": "v1,x"},
    ],
)
def test_missing_or_malformed_headers_fail(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureMismatch, match="headers"):
        verify(generate_secret(), headers, BODY, now=1)


def test_header_names_are_case_insensitive_for_verify() -> None:
    # Given headers as a framework might present them
    secret = generate_secret()
    headers = signature_headers([secret], "msg_case", BODY)
    titled = {k.title(): v for k, v in headers.items()}

    # Then verification still succeeds
    verify(secret, titled, BODY)


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "secret",
        base64.b64encode(bytes(32)).decode(),  # no prefix
        "whsec_",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(bytes(16)).decode(),  # too short
        "whsec_" + base64.b64encode(bytes(65)).decode(),  # too long
    ],
)
def test_malformed_secret_is_invalid_configuration(secret: str) -> None:
    # Given a secret that is not a usable whsec_ key
    # Then signing and verifying both refuse it as configuration
    with pytest.raises(InvalidConfiguration):
        secret_key(secret)
    with pytest.raises(InvalidConfiguration):
        signature_headers([secret], "msg_bad", BODY)
    with pytest.raises(InvalidConfiguration):
        verify(secret, {"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,x"},
               BODY, now=1)  # fmt: skip


def test_one_malformed_secret_among_several_refuses_the_whole_signing() -> None:
    with pytest.raises(InvalidConfiguration):
        signature_headers([generate_secret(), "whsec_bad"], "msg_bad", BODY)


@pytest.mark.parametrize("size", [24, 64])
def test_key_size_bounds_are_accepted(size: int) -> None:
    # Given secrets at the accepted key sizes
    secret = "whsec_" + base64.b64encode(bytes(range(size))).decode()

    # Then they sign, and the reference package verifies
    headers = signature_headers([secret], "msg_size", BODY)
    Webhook(secret).verify(BODY, headers)
