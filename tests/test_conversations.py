"""webhooks.conversations: registrations and secrets in a real Redis."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
import redis

from config.settings import Settings
from webhooks import keys
from webhooks.conversations import (
    MAX_PREVIOUS_SECRETS,
    CachedConversations,
    Conversation,
    ConversationStore,
)
from webhooks.errors import InvalidConfiguration, PolicyRefusal
from webhooks.signing import generate_secret

URL = "https://127.0.0.1:8443/webhook"

#: The resolver as :mod:`webhooks.urlpolicy` calls it (the process-wide one).
GETADDRINFO = "webhooks.urlpolicy.socket.getaddrinfo"

_real_getaddrinfo = socket.getaddrinfo


def fake_dns(host_name: str, answer: str | None) -> Any:
    """A ``getaddrinfo`` that answers ``host_name`` with ``answer`` (``None``: fails).

    Every other name, such as the Redis server's, goes to the real resolver.
    """

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != host_name:
            return _real_getaddrinfo(host, port, *args, **kwargs)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, int(port)))]

    return getaddrinfo


def guide_config(url: str = URL, **config: Any) -> dict[str, Any]:
    """The guide's "Configure Webhook" shape."""
    return {
        "channel": "API",
        "usecase": "WORKFLOW_EXECUTION",
        "config": {"workflow_id": "123", "callback_url": url, **config},
    }


def new_id() -> str:
    return str(uuid.uuid4())


def test_set_generates_a_secret_and_stores_the_guides_shape(
    conversations: ConversationStore,
) -> None:
    # Given a fresh conversation id and the guide's configuration
    cid = new_id()

    # When it is registered
    stored = conversations.set(cid, guide_config())

    # Then a whsec_ secret was generated and the configuration reads back the same
    assert stored.secret.startswith("whsec_")
    assert stored.signing_secrets() == [stored.secret]
    again = conversations.get(cid)
    assert again == stored
    assert again is not None
    assert (again.channel, again.usecase) == ("API", "WORKFLOW_EXECUTION")
    assert (again.config.workflow_id, again.config.callback_url) == ("123", URL)


def test_update_keeps_the_secret(conversations: ConversationStore) -> None:
    # Given a registered conversation
    cid = new_id()
    first = conversations.set(cid, guide_config())

    # When its callback URL is changed
    other = "https://127.0.0.1:9443/other"
    second = conversations.set(cid, guide_config(other))

    # Then the URL changed and the secret did not
    assert second.config.callback_url == other
    assert second.secret == first.secret
    stored = conversations.get(cid)
    assert stored is not None
    assert (stored.config.callback_url, stored.secret) == (other, first.secret)


def test_explicit_secret_is_used(conversations: ConversationStore) -> None:
    # Given a secret chosen by the operator
    secret = generate_secret()

    # When registering with it
    stored = conversations.set(new_id(), guide_config(), secret=secret)

    # Then it is the one kept
    assert stored.secret == secret


@pytest.mark.parametrize("secret", ["", "hunter2", "whsec_!!!", "whsec_c2hvcnQ="])
def test_malformed_explicit_secret_is_refused_and_nothing_stored(
    conversations: ConversationStore, secret: str
) -> None:
    # Given a secret that is not a usable whsec_ key
    cid = new_id()

    # When registering with it
    with pytest.raises(InvalidConfiguration):
        conversations.set(cid, guide_config(), secret=secret)

    # Then nothing was stored
    assert conversations.get(cid) is None


def test_http_url_is_refused_by_policy(conversations: ConversationStore) -> None:
    cid = new_id()
    with pytest.raises(PolicyRefusal, match="HTTPS only"):
        conversations.set(cid, guide_config("http://127.0.0.1:8080/webhook"))
    assert conversations.get(cid) is None


@pytest.mark.parametrize("bad_id", ["uuid-string", "", "123", "not-a-uuid-at-all"])
def test_non_uuid_conversation_id_is_refused(conversations: ConversationStore, bad_id: str) -> None:
    with pytest.raises(InvalidConfiguration, match="not a UUID"):
        conversations.set(bad_id, guide_config())


def test_id_is_normalized_to_canonical_uuid(conversations: ConversationStore) -> None:
    # Given an id in upper case without hyphens
    cid = uuid.uuid4()

    # When registered under that spelling
    stored = conversations.set(cid.hex.upper(), guide_config())

    # Then it is stored and found under the canonical form
    assert stored.conversation_id == str(cid)
    assert conversations.get(str(cid)) == stored


@pytest.mark.parametrize(
    "config",
    [
        {"channel": "API"},  # no config
        {"config": {}},  # no callback_url
        {"config": {"callback_url": URL, "callbackUrl": URL}},  # unknown field
        {"channel": "PIGEON", "config": {"callback_url": URL}},
    ],
)
def test_malformed_configuration_is_refused_with_the_field_named(
    conversations: ConversationStore, config: dict[str, Any]
) -> None:
    with pytest.raises(InvalidConfiguration, match="invalid conversation configuration"):
        conversations.set(new_id(), config)


def test_unresolvable_host_is_a_clear_configuration_error(
    conversations: ConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a host name DNS does not know
    monkeypatch.setattr(GETADDRINFO, fake_dns("hooks.nowhere.invalid", None))
    cid = new_id()

    # When registering it
    with pytest.raises(InvalidConfiguration) as excinfo:
        conversations.set(cid, guide_config("https://hooks.nowhere.invalid/webhook"))

    # Then the error says which host does not resolve, and it is not a policy refusal
    assert "'hooks.nowhere.invalid' does not resolve" in str(excinfo.value)
    assert "Name or service not known" in str(excinfo.value)
    assert not isinstance(excinfo.value, PolicyRefusal)
    assert isinstance(excinfo.value.__cause__, socket.gaierror)
    assert conversations.get(cid) is None


def test_rotation_signs_with_both_secrets_during_the_overlap_only(
    conversations: ConversationStore, producer_settings: Settings
) -> None:
    # Given a registered conversation
    cid = new_id()
    old = conversations.set(cid, guide_config()).secret
    overlap = producer_settings.secret_rotation_overlap_s
    assert overlap > 0
    rotated_at = 1_700_000_000.0

    # When its secret is rotated
    rotated = conversations.rotate_secret(cid, now=rotated_at)

    # Then the new secret signs first, the old one beside it within the overlap ...
    new = rotated.secret
    assert new != old
    assert new.startswith("whsec_")
    stored = conversations.get(cid)
    assert stored is not None
    assert stored.signing_secrets(now=rotated_at) == [new, old]
    assert stored.signing_secrets(now=rotated_at + overlap - 1) == [new, old]
    # ... and only the new one afterwards
    assert stored.signing_secrets(now=rotated_at + overlap) == [new]
    assert stored.signing_secrets(now=rotated_at + overlap + 3600) == [new]


def test_rotating_twice_within_the_overlap_keeps_every_secret_signing(
    conversations: ConversationStore, producer_settings: Settings
) -> None:
    # Given a conversation rotated twice, a second apart
    overlap = producer_settings.secret_rotation_overlap_s
    cid = new_id()
    first = conversations.set(cid, guide_config(), now=999.0).secret
    second = conversations.rotate_secret(cid, now=1_000.0).secret
    third = conversations.rotate_secret(cid, now=1_001.0).secret

    # Then all three sign, newest first, while the first is within its overlap ...
    stored = conversations.get(cid)
    assert stored is not None
    assert stored.signing_secrets(now=1_002.0) == [third, second, first]
    # ... each retired secret leaving when its own overlap ends
    assert stored.signing_secrets(now=1_000.0 + overlap) == [third, second]
    assert stored.signing_secrets(now=1_001.0 + overlap) == [third]


def test_previous_secrets_are_capped(conversations: ConversationStore) -> None:
    # Given a conversation rotated more often than the cap within one overlap
    cid = new_id()
    secrets = [conversations.set(cid, guide_config(), now=999.0).secret]
    for i in range(MAX_PREVIOUS_SECRETS + 2):
        secrets.append(conversations.rotate_secret(cid, now=1_000.0 + i).secret)

    # Then the current one and the newest MAX_PREVIOUS_SECRETS sign
    stored = conversations.get(cid)
    assert stored is not None
    newest_first = secrets[::-1]
    assert stored.signing_secrets(now=2_000.0) == newest_first[: MAX_PREVIOUS_SECRETS + 1]


def test_a_new_secret_given_to_set_overlaps_like_a_rotation(
    conversations: ConversationStore,
) -> None:
    # Given a registered conversation
    cid = new_id()
    old = conversations.set(cid, guide_config(), now=1_000.0).secret

    # When an operator sets a secret of their own
    mine = generate_secret()
    conversations.set(cid, guide_config(), secret=mine, now=1_001.0)

    # Then the old one keeps signing beside it, as after a rotation
    stored = conversations.get(cid)
    assert stored is not None
    assert stored.signing_secrets(now=1_002.0) == [mine, old]


def test_at_once_drops_every_old_secret(conversations: ConversationStore) -> None:
    # Given a conversation in the middle of a rotation
    cid = new_id()
    conversations.set(cid, guide_config(), now=1_000.0)
    conversations.rotate_secret(cid, now=1_001.0)

    # When a leaked secret is replaced at once, by set and by rotate
    mine = generate_secret()
    conversations.set(cid, guide_config(), secret=mine, at_once=True, now=1_002.0)
    after_set = conversations.get(cid)
    rotated = conversations.rotate_secret(cid, at_once=True, now=1_003.0)

    # Then only the new secret signs
    assert after_set is not None and after_set.signing_secrets(now=1_002.0) == [mine]
    stored = conversations.get(cid)
    assert stored is not None and stored.signing_secrets(now=1_004.0) == [rotated.secret]


def test_a_record_from_before_several_previous_secrets_still_reads() -> None:
    old_record = {
        "channel": "API",
        "config": {"callback_url": URL},
        "conversation_id": str(uuid.uuid4()),
        "secret": "whsec_new",
        "previous_secret": "whsec_old",
        "previous_secret_expires_at": 2_000.0,
        "updated_at": 1_000.0,
    }

    conversation = Conversation.model_validate(old_record)

    assert conversation.signing_secrets(now=1_500.0) == ["whsec_new", "whsec_old"]
    assert conversation.signing_secrets(now=2_000.0) == ["whsec_new"]


def test_update_after_rotation_keeps_both_secrets(conversations: ConversationStore) -> None:
    # Given a conversation in the middle of a rotation
    cid = new_id()
    old = conversations.set(cid, guide_config()).secret
    new = conversations.rotate_secret(cid, now=1_000.0).secret

    # When its URL is updated
    conversations.set(cid, guide_config("https://127.0.0.1:9443/moved"))

    # Then the overlap is not cut short
    stored = conversations.get(cid)
    assert stored is not None
    assert stored.signing_secrets(now=1_001.0) == [new, old]


def test_rotating_an_unknown_conversation_is_an_error(conversations: ConversationStore) -> None:
    with pytest.raises(InvalidConfiguration, match="not registered"):
        conversations.rotate_secret(new_id())


def test_list_all_and_delete(conversations: ConversationStore, redis_client: redis.Redis) -> None:
    # Given two registered conversations
    first, second = new_id(), new_id()
    conversations.set(first, guide_config())
    conversations.set(second, guide_config())

    # When listing
    listed = {c.conversation_id: c for c in conversations.list_all()}

    # Then both are there as full conversations
    assert {first, second} <= set(listed)
    assert all(isinstance(c, Conversation) for c in listed.values())

    # When one is deleted
    assert conversations.delete(first) is True

    # Then it is gone from get, the list and Redis, and the other remains
    assert conversations.get(first) is None
    remaining = {c.conversation_id for c in conversations.list_all()}
    assert first not in remaining
    assert second in remaining
    assert redis_client.exists(keys.conversation(first)) == 0
    assert not redis_client.sismember(keys.CONVERSATIONS, first)
    # ... and deleting it again reports that nothing was there
    assert conversations.delete(first) is False


def test_stored_under_the_shared_key_prefix(
    conversations: ConversationStore, redis_client: redis.Redis
) -> None:
    cid = new_id()
    conversations.set(cid, guide_config())
    assert redis_client.get(f"{keys.PREFIX}:conversation:{cid}") is not None
    assert redis_client.sismember(keys.CONVERSATIONS, cid)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://10.0.0.7/webhook",
        "https://[::1]:8443/webhook",
        "https://①②⑦.0.0.1/",  # 127.0.0.1 once IDNA-normalised
        "https://[fec0::1]/webhook",  # site-local; "global" to Python 3.11.7
    ],
)
def test_strict_store_refuses_private_addresses_at_registration(
    redis_client: redis.Redis, url: str
) -> None:
    # Given a store with the production policy
    strict = ConversationStore(
        redis_client, allow_http=False, allow_private=False, rotation_overlap_s=86400
    )
    cid = new_id()

    # When registering a private address
    with pytest.raises(PolicyRefusal, match="not a public address"):
        strict.set(cid, guide_config(url))

    # Then nothing is stored
    assert strict.get(cid) is None


def test_strict_store_refuses_a_name_that_resolves_privately(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a host name whose DNS answer is a private address
    monkeypatch.setattr(GETADDRINFO, fake_dns("hooks.internal.example", "10.0.0.7"))
    strict = ConversationStore(
        redis_client, allow_http=False, allow_private=False, rotation_overlap_s=86400
    )

    # When registering it
    # Then it is refused by policy
    cid = new_id()
    with pytest.raises(PolicyRefusal, match=r"hooks\.internal\.example"):
        strict.set(cid, guide_config("https://hooks.internal.example/webhook"))
    assert strict.get(cid) is None


def test_strict_store_accepts_a_name_that_resolves_publicly(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a host name with a public answer (no traffic: nothing is sent at registration)
    monkeypatch.setattr(GETADDRINFO, fake_dns("hooks.public.example", "93.184.216.34"))
    strict = ConversationStore(
        redis_client, allow_http=False, allow_private=False, rotation_overlap_s=86400
    )

    # When registering it
    stored = strict.set(new_id(), guide_config("https://hooks.public.example/webhook"))

    # Then it is stored
    assert strict.get(stored.conversation_id) == stored


#: A second callback, for tests that change it.
OTHER = "https://127.0.0.1:9443/other"


# --- a worker's cached view ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_view_serves_its_copy_until_it_expires(conversations: ConversationStore) -> None:
    # Given a worker's view with a 1 s cache that has read a conversation
    clock = Clock()
    view = CachedConversations(conversations, ttl_s=1.0, clock=clock)
    cid = new_id()
    conversations.set(cid, guide_config())
    assert view.get(cid) is not None

    # When the callback changes
    conversations.set(cid, guide_config(OTHER))

    # Then attempts within the second still see the copy, later ones the change
    clock.now += 0.99
    assert view.get(cid).config.callback_url == URL  # type: ignore[union-attr]
    clock.now += 0.01
    assert view.get(cid).config.callback_url == OTHER  # type: ignore[union-attr]


def test_a_missing_conversation_is_not_cached(conversations: ConversationStore) -> None:
    # Given a view that found no configuration for an id
    clock = Clock()
    view = CachedConversations(conversations, ttl_s=60.0, clock=clock)
    cid = new_id()
    assert view.get(cid) is None

    # When it is registered, Then the very next read finds it
    conversations.set(cid, guide_config())
    assert view.get(cid) is not None

    # And once deleted, it is gone as soon as the copy expires
    conversations.delete(cid)
    clock.now += 60.0
    assert view.get(cid) is None


def test_a_view_that_remembers_missing_ids_reads_each_once_per_ttl(
    conversations: ConversationStore,
) -> None:
    # Given a view that remembers missing conversations (the router's), which
    # found no configuration for an id
    clock = Clock()
    view = CachedConversations(conversations, ttl_s=60.0, remember_missing=True, clock=clock)
    cid = new_id()
    assert view.get(cid) is None

    # When it is registered, Then the view keeps its "none" until the copy expires
    conversations.set(cid, guide_config())
    clock.now += 59.99
    assert view.get(cid) is None
    clock.now += 0.01
    assert view.get(cid) is not None


def test_a_zero_ttl_reads_every_time(conversations: ConversationStore) -> None:
    view = CachedConversations(conversations, ttl_s=0.0, clock=Clock())
    cid = new_id()
    conversations.set(cid, guide_config())
    assert view.get(cid) is not None

    conversations.set(cid, guide_config(OTHER))

    assert view.get(cid).config.callback_url == OTHER  # type: ignore[union-attr]


def test_the_cache_is_bounded(conversations: ConversationStore) -> None:
    # Given a view that holds at most 3 conversations
    clock = Clock()
    view = CachedConversations(conversations, ttl_s=60.0, max_entries=3, clock=clock)
    ids = [new_id() for _ in range(4)]
    for cid in ids:
        conversations.set(cid, guide_config())

    # When it has read 4, Then it holds no more than 3 and still answers for all
    for cid in ids:
        assert view.get(cid) is not None
    assert len(view._seen) <= 3
    assert all(view.get(cid) is not None for cid in ids)
