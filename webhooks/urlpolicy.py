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
from urllib.parse import unquote, urlsplit

import idna
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from webhooks.errors import InvalidConfiguration, PolicyRefusal

__all__ = [
    "NON_PUBLIC_NETWORKS",
    "CallbackUrl",
    "check_address",
    "check_url",
    "is_public_address",
    "resolve_public",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Every range we refuse, written out here rather than read from the
#: interpreter's ``ipaddress`` tables, which differ between Python releases
#: (3.11.7 calls 192.0.0.192, fec0::/10 and 3fff::/20 global). From the IANA
#: special-purpose registries, refusing a whole block where only a few of its
#: anycast service addresses are reachable (nobody hosts a webhook there).
NON_PUBLIC_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT shared space
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
        "::/128",  # unspecified
        "::1/128",  # loopback
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "100:0:0:1::/64",  # dummy prefix
        "2001::/23",  # IETF protocol assignments (Teredo is unwrapped first)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)

#: IPv6 unicast is assigned from 2000::/3 only; the rest is reserved.
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


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
    host = _ascii_host(parts.hostname, url)
    literal = _literal_ip(host)
    if literal is not None:
        check_address(literal, allow_private=allow_private, host=parts.hostname)
    try:
        # The parser the sender will use: a host it cannot parse would fail
        # each attempt as a retried error instead of here.
        parse_url(url.strip())
    except LocationParseError as exc:
        raise InvalidConfiguration(f"callback_url {url!r} is not a valid URL: {exc}") from exc
    return CallbackUrl(
        scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), url=url.strip()
    )


def _ascii_host(host: str, url: str) -> str:
    """The host as it will be resolved: percent-decoded, IDNA (UTS #46), lower case.

    ``①②⑦.0.0.1`` and ``%31%32%37.0.0.1`` are 127.0.0.1 once normalised, and
    must be judged as such here, not first at connect time.
    """
    decoded = unquote(host)
    if not decoded.isascii():
        try:
            decoded = idna.encode(decoded, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidConfiguration(
                f"callback_url {url!r} has a host that is not a valid international "
                f"domain name: {exc}"
            ) from exc
    return decoded.lower()


def _literal_ip(host: str) -> IPAddress | None:
    """The address ``host`` denotes literally, in any form the resolver accepts.

    Besides dotted quads and IPv6, ``getaddrinfo`` reads ``2130706433``,
    ``0x7f.1`` and ``127.1`` as IPv4 (inet_aton), and ignores a trailing dot.
    """
    bare = host.strip("[]")
    if bare.endswith("."):
        bare = bare[:-1]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    last_label = bare.rsplit(".", 1)[-1]
    if last_label[:1].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses, by :data:`NON_PUBLIC_NETWORKS`.

    IPv4-mapped, NAT64 (``64:ff9b::/96``) and 6to4/Teredo-wrapped IPv6 forms
    are judged by the IPv4 address inside them, so ``::ffff:127.0.0.1`` is
    loopback and ``64:ff9b::808:808`` (8.8.8.8 via NAT64) is public.
    """
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address.teredo is not None:
            inner = address.teredo[1]
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
        if inner is not None:
            return is_public_address(inner)
        if address not in _IPV6_GLOBAL_UNICAST:
            return False
    return not any(address in network for network in NON_PUBLIC_NETWORKS)


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
