"""webhooks.endpoints: which callback URLs are one receiver, and their Redis hash tag."""

from __future__ import annotations

import re

import pytest

from webhooks.endpoints import endpoint_tag, normalize_endpoint


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "HTTPS://Example.COM/hook", "https://example.com:443/hook", id="scheme-and-host-case"
        ),
        pytest.param(
            "https://example.com:443/hook", "https://example.com:443/hook", id="explicit-443"
        ),
        pytest.param("https://example.com/hook", "https://example.com:443/hook", id="https-443"),
        pytest.param("http://example.com/hook", "http://example.com:80/hook", id="http-80"),
        pytest.param(
            "https://example.com:8443/hook", "https://example.com:8443/hook", id="explicit-port"
        ),
        pytest.param(
            "https://example.com/Hooks/A/", "https://example.com:443/Hooks/A", id="path-kept"
        ),
        pytest.param("https://example.com", "https://example.com:443/", id="empty-path-is-root"),
        pytest.param(
            "https://example.com/hook?tenant=1&x=2#frag",
            "https://example.com:443/hook",
            id="query-and-fragment-dropped",
        ),
        pytest.param("https://[::1]:8443/hook", "https://[::1]:8443/hook", id="ipv6-with-port"),
        pytest.param(
            "https://[2001:DB8::1]/hook", "https://[2001:db8::1]:443/hook", id="ipv6-default-port"
        ),
        pytest.param(
            "  https://example.com/hook\n", "https://example.com:443/hook", id="whitespace"
        ),
        pytest.param(
            "https://user:pw@example.com/hook", "https://example.com:443/hook", id="userinfo"
        ),
    ],
)
def test_normalize_endpoint(url: str, expected: str) -> None:
    # Given a callback URL as a conversation may register it
    # When it is normalized
    # Then it is scheme://host:port/path, lowercased, with an explicit port
    assert normalize_endpoint(url) == expected


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param("https://example.com./hooks/a", id="trailing-dot-in-host"),
        pytest.param("https://example.com/hooks/a/", id="trailing-slash"),
        pytest.param("https://example.com//hooks//a", id="double-slashes"),
        pytest.param("https://example.com/%68ooks/%61", id="escaped-letters"),
        pytest.param("https://example.com/hooks/%2d/../a", id="escaped-dash-and-dot-segments"),
        pytest.param("https://example.com/hooks/./a", id="dot-segment"),
        pytest.param("https://EXAMPLE.com:443/hooks/a", id="host-case-and-default-port"),
        pytest.param("https://%65xample.com/hooks/a", id="escaped-host"),
    ],
)
def test_other_spellings_of_one_url_are_one_endpoint(spelling: str) -> None:
    """Each spelling used to be an endpoint of its own, with its own rate-limit budget."""
    assert normalize_endpoint(spelling) == normalize_endpoint("https://example.com/hooks/a")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "https://example.com/a%2fb", "https://example.com:443/a%2Fb", id="reserved-kept-escaped"
        ),
        pytest.param(
            "https://example.com/h\u00e9", "https://example.com:443/h%C3%A9", id="non-ascii-escaped"
        ),
        pytest.param(
            "https://B\u00fccher.example/", "https://xn--bcher-kva.example:443/", id="idna-host"
        ),
        pytest.param(
            "https://[2001:0DB8:0::1]/", "https://[2001:db8::1]:443/", id="ipv6-compressed"
        ),
    ],
)
def test_paths_and_hosts_take_one_canonical_form(url: str, expected: str) -> None:
    assert normalize_endpoint(url) == expected


def test_spellings_of_one_receiver_are_one_endpoint() -> None:
    # Given the same receiver spelt four ways
    spellings = [
        "HTTPS://Example.com/hook",
        "https://example.com:443/hook",
        "https://EXAMPLE.com/hook?conversation=1",
        "https://example.com/hook#section",
    ]

    # When each is normalized
    # Then they share one endpoint, hence one budget
    assert len({normalize_endpoint(url) for url in spellings}) == 1


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param("https://example.com/a", "https://example.com/b", id="path"),
        pytest.param("https://example.com/hook", "https://example.com/Hook", id="path-case"),
        pytest.param("https://example.com/hook", "https://example.com:8443/hook", id="port"),
        pytest.param("https://example.com/hook", "http://example.com/hook", id="scheme"),
        pytest.param("https://example.com/hook", "https://example.org/hook", id="host"),
    ],
)
def test_different_receivers_are_different_endpoints(one: str, other: str) -> None:
    # Given two URLs that differ where a receiver is chosen
    # When both are normalized and tagged
    # Then they are different endpoints with different tags
    assert normalize_endpoint(one) != normalize_endpoint(other)
    assert endpoint_tag(normalize_endpoint(one)) != endpoint_tag(normalize_endpoint(other))


def test_tag_is_short_hex_and_stable() -> None:
    # Given a normalized endpoint
    endpoint = normalize_endpoint("https://example.com/hook")

    # When it is tagged twice
    tag = endpoint_tag(endpoint)

    # Then the tag is 16 lowercase hex digits, the same each time, and pinned:
    # a tag that changed between releases would orphan every endpoint's
    # counters and parked deliveries in Redis
    assert re.fullmatch(r"[0-9a-f]{16}", tag)
    assert endpoint_tag(endpoint) == tag
    assert tag == "74e94232cbbc1b98"


def test_tags_of_many_endpoints_do_not_collide() -> None:
    # Given a thousand distinct endpoints
    endpoints = [normalize_endpoint(f"https://example.com/hook/{i}") for i in range(1000)]

    # Then each has its own tag
    assert len({endpoint_tag(e) for e in endpoints}) == 1000
