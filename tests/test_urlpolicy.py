"""webhooks.urlpolicy: HTTPS only, public addresses only, no network needed."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import pytest

from webhooks.errors import InvalidConfiguration, PolicyRefusal
from webhooks.urlpolicy import check_url, is_public_address, resolve_public

AddrInfo = tuple[Any, ...]

#: The resolver as :mod:`webhooks.urlpolicy` calls it (the process-wide one).
GETADDRINFO = "webhooks.urlpolicy.socket.getaddrinfo"


def answers(*addresses: str) -> Callable[..., list[AddrInfo]]:
    """A fake ``getaddrinfo`` that answers every lookup with ``addresses``."""

    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> list[AddrInfo]:
        found: list[AddrInfo] = []
        for text in addresses:
            address = ipaddress.ip_address(text)
            if address.version == 4:
                found.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (text, port)))
            else:
                found.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (text, port, 0, 0)))
        return found

    return fake


# --- check_url ------------------------------------------------------------------


def test_https_url_with_a_host_name_passes_and_is_parsed() -> None:
    # Given an ordinary public HTTPS callback
    # When it is checked
    parsed = check_url(
        " https://Your-Domain.com/webhook?x=1 ", allow_http=False, allow_private=False
    )

    # Then scheme, lower-cased host, default port and stripped URL come back
    assert (parsed.scheme, parsed.host, parsed.port) == ("https", "your-domain.com", 443)
    assert parsed.url == "https://Your-Domain.com/webhook?x=1"


def test_explicit_port_is_kept() -> None:
    parsed = check_url("https://example.com:8443/h", allow_http=False, allow_private=False)
    assert parsed.port == 8443


def test_http_is_refused_by_policy_unless_allowed() -> None:
    # Given a plain-HTTP callback
    url = "http://example.com/webhook"

    # When checked with the default policy
    with pytest.raises(PolicyRefusal, match="HTTPS only"):
        check_url(url, allow_http=False, allow_private=False)

    # Then with allow_http it passes, on port 80
    parsed = check_url(url, allow_http=True, allow_private=False)
    assert (parsed.scheme, parsed.port) == ("http", 80)


def test_upper_case_http_scheme_is_still_http() -> None:
    with pytest.raises(PolicyRefusal):
        check_url("HTTP://example.com/", allow_http=False, allow_private=False)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/webhook", "file:///etc/passwd", "gopher://example.com/", "example.com/x"],
)
def test_other_schemes_are_invalid_even_with_http_allowed(url: str) -> None:
    # Given a URL that is neither https nor http
    # When checked with the most permissive policy
    with pytest.raises(InvalidConfiguration, match="https://") as excinfo:
        check_url(url, allow_http=True, allow_private=True)

    # Then it is a configuration error, not a policy refusal
    assert not isinstance(excinfo.value, PolicyRefusal)


@pytest.mark.parametrize("url", ["https:///webhook", "https://", "https://:443/x"])
def test_url_without_a_host_is_invalid(url: str) -> None:
    with pytest.raises(InvalidConfiguration, match="no host"):
        check_url(url, allow_http=False, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass@example.com/webhook",
        "https://token@example.com/",
        "https://:pw@example.com/",
    ],
)
def test_embedded_credentials_are_refused(url: str) -> None:
    # Given credentials inside the URL
    # When checked
    with pytest.raises(InvalidConfiguration, match="credentials") as excinfo:
        check_url(url, allow_http=False, allow_private=False)

    # Then the message does not repeat them
    assert "pass" not in str(excinfo.value)
    assert "token" not in str(excinfo.value)


@pytest.mark.parametrize("url", ["", "   ", None])
def test_missing_url_is_invalid(url: str | None) -> None:
    with pytest.raises(InvalidConfiguration, match="required"):
        check_url(url, allow_http=False, allow_private=False)  # type: ignore[arg-type]


def test_bad_port_is_invalid() -> None:
    with pytest.raises(InvalidConfiguration, match="not a valid URL"):
        check_url("https://example.com:99999/", allow_http=False, allow_private=False)


def test_port_zero_is_invalid() -> None:
    with pytest.raises(InvalidConfiguration, match="port 0"):
        check_url("https://example.com:0/", allow_http=False, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/webhook",
        "https://10.0.0.5:8443/webhook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/webhook",
        "https://[::ffff:127.0.0.1]/webhook",
    ],
)
def test_literal_private_ips_are_refused_unless_allowed(url: str) -> None:
    # Given a callback at a literal non-public address
    # When checked with the default policy
    with pytest.raises(PolicyRefusal, match="not a public address"):
        check_url(url, allow_http=False, allow_private=False)

    # Then allow_private lets it through
    assert check_url(url, allow_http=False, allow_private=True).url == url


def test_literal_public_ip_passes_without_any_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given DNS that must not be used
    def no_dns(*args: object, **kwargs: object) -> list[AddrInfo]:
        raise AssertionError("check_url must not touch the network")

    monkeypatch.setattr(GETADDRINFO, no_dns)

    # When checking URLs with a public literal and with a host name
    literal = check_url("https://[2606:4700:4700::1111]/h", allow_http=False, allow_private=False)
    named = check_url("https://localhost/h", allow_http=False, allow_private=False)

    # Then both pass the offline check (the name is checked when resolved)
    assert literal.host == "2606:4700:4700::1111"
    assert named.host == "localhost"


@pytest.mark.parametrize(
    "url",
    [
        "https://①②⑦.0.0.1/hook",  # enclosed digits: 127.0.0.1 after IDNA
        "https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/hook",  # fullwidth digits
        "https://%31%32%37.0.0.1/hook",  # percent-encoded
        "https://127.0.0.1./hook",  # trailing dot
        "https://2130706433/hook",  # one number, as inet_aton reads it
        "https://0x7f.1/hook",
        "https://[64:ff9b::7f00:1]/hook",  # NAT64 of loopback
    ],
)
def test_other_spellings_of_a_private_address_are_refused_at_the_check(url: str) -> None:
    """Before, these passed check_url and failed later, at each attempt."""
    with pytest.raises(PolicyRefusal, match="not a public address"):
        check_url(url, allow_http=False, allow_private=False)


def test_an_international_host_name_is_checked_in_its_ascii_form() -> None:
    checked = check_url("https://Bücher.example/hook", allow_http=False, allow_private=False)
    assert checked.host == "xn--bcher-kva.example"


@pytest.mark.parametrize("url", ["https://⑧.⑧.⑧.⑧/hook", "https://a\u200db.example/hook"])
def test_a_host_the_sender_could_not_parse_is_invalid_at_once(url: str) -> None:
    # Given a host name that IDNA maps but the sender's URL parser refuses
    # Then it is refused at the check, not retried at every attempt
    with pytest.raises(InvalidConfiguration, match="callback_url"):
        check_url(url, allow_http=False, allow_private=False)


# --- is_public_address ----------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # loopback
        "127.255.255.254",
        "::1",
        "10.0.0.1",  # RFC 1918
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.0.1",
        "192.168.255.254",
        "169.254.169.254",  # cloud metadata, link-local
        "fe80::1",
        "224.0.0.1",  # multicast
        "ff02::1",
        "0.0.0.0",  # unspecified  # noqa: S104
        "::",
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "100.64.0.1",  # CGNAT shared space
        "fc00::1",  # unique local
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "2001:db8::1",  # documentation
        "192.0.2.1",
        # Python 3.11.7's ipaddress calls these three global:
        "192.0.0.192",  # IETF protocol assignments
        "fec0::1",  # site-local
        "3fff::1",  # documentation (RFC 9637)
        "192.0.0.9",
        "198.18.0.1",  # benchmarking
        "198.51.100.7",
        "203.0.113.9",
        "192.88.99.1",  # 6to4 relay anycast
        "5f00::1",  # SRv6
        "100::1",  # discard-only
        "4000::1",  # outside 2000::/3: unassigned
        "::7f00:1",  # IPv4-compatible (deprecated)
        "64:ff9b::127.0.0.1",  # NAT64 of loopback
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::169.254.169.254",  # NAT64 of cloud metadata
        "64:ff9b:1::808:808",  # local-use NAT64 prefix
    ],
)
def test_non_public_addresses_are_not_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8: how an IPv6-only host reaches it
        "64:ff9b::1.1.1.1",
        "2002:808:808::1",  # 6to4 of 8.8.8.8
    ],
)
def test_public_addresses_are_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is True


def test_boundaries_of_private_ranges() -> None:
    # Given the addresses just outside 172.16/12 and 100.64/10
    # Then they are public while the ranges themselves are not
    assert is_public_address(ipaddress.ip_address("172.15.255.255")) is True
    assert is_public_address(ipaddress.ip_address("172.32.0.1")) is True
    assert is_public_address(ipaddress.ip_address("100.63.255.255")) is True
    assert is_public_address(ipaddress.ip_address("100.128.0.1")) is True


# --- resolve_public -------------------------------------------------------------


def test_all_public_answers_are_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a name with public IPv4 and IPv6 answers, one repeated
    monkeypatch.setattr(
        GETADDRINFO,
        answers("93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"),
    )

    # When resolved
    found = resolve_public("example.com", 443, allow_private=False)

    # Then each address comes back once, with its family, in answer order
    assert found == [
        (ipaddress.ip_address("93.184.216.34"), socket.AF_INET),
        (ipaddress.ip_address("2606:2800:220:1::1"), socket.AF_INET6),
    ]


@pytest.mark.parametrize("private", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1"])
def test_mixed_public_and_private_answers_are_refused(
    monkeypatch: pytest.MonkeyPatch, private: str
) -> None:
    # Given a round-robin record that smuggles one private address in
    monkeypatch.setattr(GETADDRINFO, answers("93.184.216.34", private))

    # When resolved
    # Then the whole name is refused, naming host and address
    with pytest.raises(PolicyRefusal, match="not a public address") as excinfo:
        resolve_public("mixed.example", 443, allow_private=False)
    assert "mixed.example" in str(excinfo.value)
    assert private in str(excinfo.value)


def test_allow_private_passes_private_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a name that resolves to loopback and a private address
    monkeypatch.setattr(GETADDRINFO, answers("127.0.0.1", "10.0.0.1"))

    # When resolved with private networks allowed
    found = resolve_public("dev.internal", 8443, allow_private=True)

    # Then both come back
    assert [str(address) for address, _ in found] == ["127.0.0.1", "10.0.0.1"]


def test_scoped_ipv6_answer_is_judged_without_its_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a link-local answer carrying a zone id, as getaddrinfo may give
    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> list[AddrInfo]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", port, 0, 2))]

    monkeypatch.setattr(GETADDRINFO, fake)

    # When resolved
    # Then it is refused as link-local
    with pytest.raises(PolicyRefusal):
        resolve_public("scoped.example", 443, allow_private=False)


def test_lookup_failure_propagates_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a resolver that fails
    failure = socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def fail(*args: object, **kwargs: object) -> list[AddrInfo]:
        raise failure

    monkeypatch.setattr(GETADDRINFO, fail)

    # When resolved
    # Then the very same gaierror comes out, not wrapped
    with pytest.raises(socket.gaierror) as excinfo:
        resolve_public("nowhere.invalid", 443, allow_private=False)
    assert excinfo.value is failure


def test_no_ip_answers_is_a_lookup_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a resolver that answers nothing usable
    monkeypatch.setattr(GETADDRINFO, answers())

    # When resolved
    # Then it is reported as a failed lookup
    with pytest.raises(socket.gaierror, match="no IPv4 or IPv6 address"):
        resolve_public("empty.example", 443, allow_private=False)


def test_real_localhost_is_refused_by_default() -> None:
    # Given the real resolver and "localhost" (answered from /etc/hosts)
    # When resolved with the default policy
    # Then loopback is refused
    with pytest.raises(PolicyRefusal):
        resolve_public("localhost", 443, allow_private=False)
