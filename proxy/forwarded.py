"""Who a request comes from: the client's address and scheme, taking X-Forwarded-For and
X-Forwarded-Proto only from the reverse proxies ``--trusted-proxies`` names (Caddy, Traefik).

``client_origin(request)`` is the one answer the proxy uses: for the X-Forwarded-* headers it
sends the replicas, for HSTS, and (with accounts) for rate limits and the Secure cookie flag.
A client that is not a trusted proxy is its connection's address, whatever it claims.
"""
# test-case-name: tests.unit.test_proxy_forwarded

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from distpotify.options import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = frozenset({"http", "https"})

# Request headers that claim who the client is: the proxy drops the client's own and sends
# its X-Forwarded-* from client_origin instead.
CLIENT_CLAIMS = frozenset({
    b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
})


def ip_of(text: str) -> IPAddress | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 one as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class TrustedProxies:
    """The networks whose connections may say who the client is (none by default)."""

    networks: tuple[IPNetwork, ...] = ()

    def __contains__(self, address: object) -> bool:
        ip = ip_of(address) if isinstance(address, str) else address
        return any(ip in network for network in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        return ",".join(str(network) for network in self.networks) or "none"


def parse_trusted_proxies(text: str) -> TrustedProxies:
    """``CIDR,CIDR,...`` (or bare addresses) -> TrustedProxies; ConfigError on a bad one."""
    networks: list[IPNetwork] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"--trusted-proxies entry must be an address or CIDR network, got {item!r}"
            ) from None
    return TrustedProxies(tuple(networks))


@attrs.frozen
class ClientOrigin:
    """Where a request comes from, as far as the proxy can vouch for it."""

    address: str | None  # the client's IP (None: not an IP connection, a Unix socket)
    scheme: str  # "http" or "https", as the client connected
    # The X-Forwarded-For chain to send on: the client, then each trusted hop up to the
    # peer of this connection. Claims left of the client are dropped: nobody vouches for them.
    chain: tuple[str, ...]
    host: bytes | None  # the Host the client asked for

    @property
    def https(self) -> bool:
        return self.scheme == "https"


def resolve(peer: str | None, secure: bool, headers: Headers, trusted: TrustedProxies
            ) -> ClientOrigin:
    """The origin of a request that came over a connection from ``peer`` (TLS if
    ``secure``) with ``headers``: X-Forwarded-* count only when ``peer`` is trusted, and in
    X-Forwarded-For the client is the nearest address that is not a trusted proxy."""
    scheme = "https" if secure else "http"
    host = _last(headers, b"host")
    ip = ip_of(peer) if peer else None
    if ip is None or ip not in trusted:
        address = str(ip) if ip else peer
        return ClientOrigin(address, scheme, (address,) if address else (), host)
    hops = [hop.decode("latin-1")
            for value in headers.getRawHeaders(b"x-forwarded-for", [])
            for hop in value.split(b",")]
    chain = [str(ip)]
    for hop in reversed(hops):
        ip = ip_of(hop)
        if ip is None:
            break  # not an address: nothing left of it can be vouched for
        chain.append(str(ip))
        if ip not in trusted:
            break
    claimed = (_last(headers, b"x-forwarded-proto") or b"").decode("latin-1").strip().lower()
    return ClientOrigin(
        chain[-1], claimed if claimed in _SCHEMES else scheme, tuple(reversed(chain)),
        _last(headers, b"x-forwarded-host") or host,
    )


def _last(headers: Headers, name: bytes) -> bytes | None:
    values = headers.getRawHeaders(name)
    return values[-1] if values else None


def client_origin(request: IRequest) -> ClientOrigin:
    """The origin of ``request``, resolved once (the site's ``trusted_proxies`` decide)."""
    origin: ClientOrigin | None = getattr(request, "_distpotify_origin", None)
    if origin is None:
        site: Any = getattr(request.channel, "site", None)  # type: ignore[attr-defined]
        trusted = getattr(site, "trusted_proxies", TrustedProxies())
        peer = getattr(request.getClientAddress(), "host", None)
        origin = resolve(str(peer) if peer else None, request.isSecure(),
                         request.requestHeaders, trusted)
        request._distpotify_origin = origin  # type: ignore[attr-defined]
    return origin
