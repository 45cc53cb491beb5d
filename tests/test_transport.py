"""webhooks.transport: connections go only to the addresses the policy vetted.

Everything here talks to a real HTTPS receiver on 127.0.0.1. Made-up host
names are answered by a patched ``getaddrinfo``, and every outgoing connect
is checked so that nothing but 127.0.0.1 is ever dialled.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from urllib3.util import connection as urllib3_connection

from testing.receiver import Receiver, TestCA
from webhooks.errors import ErrorKind, PermanentDeliveryError, RetryableDeliveryError
from webhooks.sender import Sender
from webhooks.urlpolicy import check_url, resolve_public

FAKE_HOST = "rebind.example"
PUBLIC_DECOY = "93.184.216.34"
LOOPBACK = "127.0.0.1"

#: The resolver as :mod:`webhooks.urlpolicy` calls it (the process-wide one).
GETADDRINFO = "webhooks.urlpolicy.socket.getaddrinfo"
#: How :mod:`webhooks.transport` opens its TCP connections.
CREATE_CONNECTION = "webhooks.transport.connection.create_connection"

_real_getaddrinfo = socket.getaddrinfo


@dataclass
class FakeNet:
    """Scripted DNS for made-up names plus a record of every connect attempt."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    connects: list[tuple[str, int]] = field(default_factory=list)

    def answer(self, host: str, *rounds: list[str]) -> None:
        """Answer lookups of ``host`` with each round in turn, the last one repeating."""
        self.answers[host] = list(rounds)

    def getaddrinfo(self, host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        self.lookups.append(host)
        if host not in self.answers:
            return _real_getaddrinfo(host, port, *args, **kwargs)
        rounds = self.answers[host]
        addresses = rounds.pop(0) if len(rounds) > 1 else rounds[0]
        found: list[Any] = []
        for text in addresses:
            if ipaddress.ip_address(text).version == 4:
                found.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (text, int(port))))
            else:
                found.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (text, int(port), 0, 0)))
        return found

    def lookups_of(self, host: str) -> int:
        return self.lookups.count(host)


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNet]:
    fake = FakeNet()
    monkeypatch.setattr(GETADDRINFO, fake.getaddrinfo)
    real_create_connection = urllib3_connection.create_connection

    def guarded_create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        fake.connects.append(address)
        if address[0] != LOOPBACK:
            raise AssertionError(f"test tried to connect to {address}, not to {LOOPBACK}")
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(CREATE_CONNECTION, guarded_create_connection)
    yield fake
    # A connect to anything but loopback would have failed the test above; this
    # also catches one swallowed on the way up.
    assert all(host == LOOPBACK for host, _ in fake.connects)


@pytest.fixture(scope="module")
def receiver(test_ca: TestCA) -> Iterator[Receiver]:
    """One receiver for the module (each test uses its own path); its certificate
    names localhost and 127.0.0.1 only."""
    with Receiver(test_ca.server_context("localhost", LOOPBACK)) as server:
        yield server


@pytest.fixture(scope="module")
def named_receiver(test_ca: TestCA) -> Iterator[Receiver]:
    """A receiver whose certificate also names the made-up host."""
    with Receiver(test_ca.server_context(FAKE_HOST, "localhost", LOOPBACK)) as server:
        yield server


def test_host_name_resolving_to_loopback_is_refused_before_connecting(
    net: FakeNet, receiver: Receiver, make_sender: Callable[..., Sender]
) -> None:
    # Given a sender with the default policy and a URL whose name is loopback
    sender = make_sender(allow_private=False)
    url = f"https://localhost:{receiver.port}/refused"

    # When it posts
    with pytest.raises(PermanentDeliveryError) as excinfo:
        sender.post(url, b"{}", {})

    # Then it is refused by policy, permanently, without any connection
    assert excinfo.value.kind is ErrorKind.REFUSED_BY_POLICY
    assert excinfo.value.status is None
    assert "localhost" in str(excinfo.value)
    assert net.connects == []
    assert receiver.received("/refused") == []


def test_plain_http_goes_through_the_same_guard(
    net: FakeNet, receiver: Receiver, make_sender: Callable[..., Sender]
) -> None:
    # Given an http:// URL to a loopback name (the sender itself does not police schemes)
    sender = make_sender(allow_private=False)

    # When it posts
    with pytest.raises(PermanentDeliveryError) as excinfo:
        sender.post(f"http://localhost:{receiver.port}/plain", b"{}", {})

    # Then the address policy still refuses before connecting
    assert excinfo.value.kind is ErrorKind.REFUSED_BY_POLICY
    assert net.connects == []


def test_dns_rebinding_is_refused_at_connect(
    net: FakeNet, named_receiver: Receiver, make_sender: Callable[..., Sender]
) -> None:
    # Given a name that answers a public address first and loopback afterwards
    net.answer(FAKE_HOST, [PUBLIC_DECOY], [LOOPBACK])
    url = f"https://{FAKE_HOST}:{named_receiver.port}/rebind"

    # ... which passes the registration-time checks
    parsed = check_url(url, allow_http=False, allow_private=False)
    first = resolve_public(parsed.host, parsed.port, allow_private=False)
    assert [str(address) for address, _ in first] == [PUBLIC_DECOY]

    # When the sender delivers to it
    sender = make_sender(allow_private=False)
    with pytest.raises(PermanentDeliveryError) as excinfo:
        sender.post(url, b"{}", {})

    # Then it resolved again itself, refused the new answer, and connected nowhere
    assert excinfo.value.kind is ErrorKind.REFUSED_BY_POLICY
    assert LOOPBACK in str(excinfo.value)
    assert net.lookups_of(FAKE_HOST) == 2
    assert net.connects == []
    assert named_receiver.received("/rebind") == []


def test_connects_to_exactly_the_vetted_address_and_verifies_tls_by_name(
    net: FakeNet, named_receiver: Receiver, make_sender: Callable[..., Sender]
) -> None:
    # Given a made-up name mapped to the receiver and private networks allowed
    net.answer(FAKE_HOST, [LOOPBACK])
    sender = make_sender(allow_private=True)
    url = f"https://{FAKE_HOST}:{named_receiver.port}/vetted"

    # When the sender delivers
    response = sender.post(url, b'{"a":1}', {"Content-Type": "application/json"})

    # Then it looked the name up once and dialled that very address
    assert response.status == 200
    assert net.lookups_of(FAKE_HOST) == 1
    assert net.connects == [(LOOPBACK, named_receiver.port)]
    # ... while HTTP and TLS still speak to the host name
    (request,) = named_receiver.received("/vetted")
    assert request.headers["host"] == f"{FAKE_HOST}:{named_receiver.port}"
    assert request.body == b'{"a":1}'


def test_certificate_is_checked_against_the_host_name_not_the_address(
    net: FakeNet, receiver: Receiver, make_sender: Callable[..., Sender]
) -> None:
    # Given a name mapped to a receiver whose certificate names only localhost/127.0.0.1
    net.answer(FAKE_HOST, [LOOPBACK])
    sender = make_sender(allow_private=True)

    # When the sender delivers to the name
    with pytest.raises(RetryableDeliveryError) as excinfo:
        sender.post(f"https://{FAKE_HOST}:{receiver.port}/mismatch", b"{}", {})

    # Then TLS fails on the name mismatch even though the address is the vetted one
    assert excinfo.value.kind is ErrorKind.TLS
    assert net.connects == [(LOOPBACK, receiver.port)]
    assert receiver.received("/mismatch") == []


def test_mixed_answer_is_refused_even_if_the_first_address_is_public(
    net: FakeNet, named_receiver: Receiver, make_sender: Callable[..., Sender]
) -> None:
    # Given a name that answers a public and a loopback address together
    net.answer(FAKE_HOST, [PUBLIC_DECOY, LOOPBACK])
    sender = make_sender(allow_private=False)

    # When the sender delivers
    with pytest.raises(PermanentDeliveryError) as excinfo:
        sender.post(f"https://{FAKE_HOST}:{named_receiver.port}/mixed", b"{}", {})

    # Then nothing is dialled, not even the public address
    assert excinfo.value.kind is ErrorKind.REFUSED_BY_POLICY
    assert net.connects == []


def test_each_new_connection_is_vetted_again(
    net: FakeNet, named_receiver: Receiver, make_sender: Callable[..., Sender]
) -> None:
    # Given a name allowed to be private, delivered to once
    net.answer(FAKE_HOST, [LOOPBACK])
    sender = make_sender(allow_private=True)
    url = f"https://{FAKE_HOST}:{named_receiver.port}/again"
    sender.post(url, b"{}", {})

    # When the pool is dropped and the sender delivers again
    sender.close()
    sender.post(url, b"{}", {})

    # Then the second connection resolved the name afresh
    assert net.lookups_of(FAKE_HOST) == 2
    assert len(named_receiver.received("/again")) == 2
