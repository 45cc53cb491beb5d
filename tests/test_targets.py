"""resolve_target: the URL policy still judges every attempt, though each URL is vetted once."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.support import make_event
from webhooks.conversations import Conversation
from webhooks.endpoints import normalize_endpoint
from webhooks.errors import ErrorKind, PermanentDeliveryError
from webhooks.events import parse_event
from webhooks.ratelimit import Limits, RateLimit
from webhooks.targets import DeliveryPolicy, resolve_target

LAX = DeliveryPolicy(
    allow_http=True,
    allow_private=True,
    default_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    default_limits=Limits(rate=RateLimit(1000, 60), max_concurrency=10),
    retry_schedule=(1.0,),
    retry_after_cap_s=60.0,
    max_rate_limited_wait_s=600.0,
)


class Unregistered:
    """No conversation is registered: the default secret signs."""

    def get(self, conversation_id: str) -> Conversation | None:
        return None


def refusal(url: str, policy: DeliveryPolicy) -> PermanentDeliveryError:
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_target(parse_event(make_event()), url, Unregistered(), policy)
    return caught.value


def test_the_endpoint_is_the_normalized_url() -> None:
    url = "HTTPS://Example.com.:443//h%6Fok/"
    target = resolve_target(parse_event(make_event()), url, Unregistered(), LAX)
    assert (target.url, target.endpoint) == (url, normalize_endpoint(url))


def test_a_url_accepted_under_one_policy_is_judged_again_under_a_stricter_one() -> None:
    # Given private and http:// URLs a lax policy has already accepted
    event = parse_event(make_event())
    for url in ("https://127.0.0.1:8443/hook", "http://example.com/hook"):
        resolve_target(event, url, Unregistered(), LAX)

    # When a process with the production policy resolves them, Then both are refused
    strict = replace(LAX, allow_http=False, allow_private=False)
    private = refusal("https://127.0.0.1:8443/hook", strict)
    plain_http = refusal("http://example.com/hook", strict)
    assert private.kind is plain_http.kind is ErrorKind.REFUSED_BY_POLICY
    assert "HTTPS only" in str(plain_http)


def test_a_refused_url_is_refused_on_every_attempt() -> None:
    strict = replace(LAX, allow_http=False)
    for _ in range(2):
        assert refusal("http://example.com/again", strict).kind is ErrorKind.REFUSED_BY_POLICY
    assert refusal("https://user:pw@example.com/hook", LAX).kind is ErrorKind.NO_CALLBACK
