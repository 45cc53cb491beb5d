"""Which callback URLs and addresses we are willing to POST to.

The guide requires HTTPS and public endpoints. The URL is checked when a
conversation is registered and when an event is published, and the address
is checked again at connect time (:mod:`webhooks.transport`) so that a DNS
answer that changes between the two cannot steer a delivery into a private
network.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from webhooks.errors import InvalidConfiguration, PolicyRefusal

__all__ = ["CallbackUrl", "check_address", "check_url", "is_public_address", "resolve_public"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CallbackUrl:
    scheme: str
    host: str
    port: int
    url: str


def check_url(url: str, *, allow_http: bool, allow_private: bool) -> CallbackUrl:
    """Parse and vet a callback URL without touching the network.

    A literal IP address is checked here; a host name is checked when it is
    resolved.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidConfiguration("callback_url is required")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidConfiguration(f"callback_url {url!r} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise PolicyRefusal(
            f"callback_url {url!r} uses http://; webhooks are delivered over HTTPS only "
            "(set WEBHOOKS_ALLOW_HTTP=true for local development)"
        )
    if scheme not in ("https", "http"):
        raise InvalidConfiguration(f"callback_url {url!r} must be an https:// URL")
    if port == 0:
        raise InvalidConfiguration(f"callback_url {url!r} has port 0")
    if not parts.hostname:
        raise InvalidConfiguration(f"callback_url {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidConfiguration(
            "callback_url must not embed credentials (they would end up in logs); "
            "verify requests with the webhook signature instead"
        )
    host = parts.hostname.lower()
    literal = _literal_ip(host)
    if literal is not None:
        check_address(literal, allow_private=allow_private, host=host)
    return CallbackUrl(
        scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), url=url.strip()
    )


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses.

    IPv4-mapped and 6to4/Teredo-wrapped IPv6 forms are judged by the IPv4
    address inside them, so ``::ffff:127.0.0.1`` is loopback.
    """
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address.teredo is not None:
            inner = address.teredo[1]
        if inner is not None:
            return is_public_address(inner)
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def check_address(address: IPAddress, *, allow_private: bool, host: str = "") -> None:
    if allow_private or is_public_address(address):
        return
    shown = f"{host} ({address})" if host and host != str(address) else str(address)
    raise PolicyRefusal(
        f"{shown} is not a public address; webhooks are only delivered to public endpoints "
        "(set WEBHOOKS_ALLOW_PRIVATE_NETWORKS=true for local development)"
    )


def resolve_public(host: str, port: int, *, allow_private: bool) -> list[tuple[IPAddress, int]]:
    """Resolve ``host`` and refuse it if any address it resolves to is not public.

    All addresses must pass: refusing a mixed answer is what keeps a
    round-robin record from smuggling one private address in. A failed
    lookup raises :class:`socket.gaierror` unchanged: at delivery time it is
    a retryable DNS error, at registration a configuration error.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[tuple[IPAddress, int]] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        check_address(address, allow_private=allow_private, host=host)
        if (address, family) not in found:
            found.append((address, family))
    if not found:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} has no IPv4 or IPv6 address")
    return found
