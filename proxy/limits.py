"""How many connections the proxy holds: at most ``--max-connections-per-client`` from one
client address, and in all a cap below the open-files limit, so descriptors remain for the
replicas. A connection over either cap is closed at once, before a byte is read.

``LimitedChannel`` is the proxy's HTTP channel: a TimedChannel (httpchannel.py) that asks the
site's ConnectionLimits before serving. Trusted proxies (Caddy, Traefik in front) are no
single client, so only the total cap counts them; an IPv6 client is its /64, which one
host usually holds whole.
"""
# test-case-name: tests.unit.test_proxy_limits, tests.integration.test_http_timeouts

from __future__ import annotations

import functools
import ipaddress
import resource
from typing import Any, Protocol

import attrs
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.httpchannel import TimedChannel, TimeoutSite
from proxy.forwarded import TrustedProxies, ip_of

log = Logger()

# Descriptors kept back for everything but connections: listening sockets, the reactor's,
# logs, status polls.
RESERVED = 64


def open_files_limit() -> int | None:
    """This process's soft RLIMIT_NOFILE, or None when it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def total_cap(open_files: int | None) -> int | None:
    """The most client connections the proxy holds with ``open_files`` descriptors: half of
    what RESERVED leaves, since each one being served also needs a connection to a replica."""
    if open_files is None:
        return None
    return max(1, (open_files - RESERVED) // 2)


@functools.lru_cache(maxsize=4096)  # parsing an address costs more than all else on accept
def client_key(host: str, trusted: TrustedProxies) -> str | None:
    ip = ip_of(host)
    if ip is None or ip in trusted:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@attrs.define
class ConnectionLimits:
    """The caps and the counts behind them. ``per_client`` 0 and ``total`` None: no cap."""

    per_client: int
    total: int | None
    trusted: TrustedProxies = attrs.field(factory=TrustedProxies)
    open: int = 0
    refused_per_client: int = 0
    refused_total: int = 0
    _by_client: dict[str, int] = attrs.field(factory=dict)
    _capped: set[str] = attrs.field(factory=set)  # clients at their cap: logged once
    _full: bool = False  # the total cap was reached: logged once until it is not

    def admit(self, peer: Any) -> tuple[bool, str | None]:
        """Whether a new connection from ``peer`` (an IAddress) is served, and the client it
        counts against (None: only the total), which ``release`` takes back."""
        client = self.client_of(peer)
        if self.total is not None and self.open >= self.total:
            self.refused_total += 1
            if not self._full:
                self._full = True
                log.warn("{open} connections open, the most this proxy's open-files limit"
                         " allows: new connections are refused", open=self.open)
            return False, None
        held = self._by_client.get(client, 0) if client is not None else 0
        if client is not None and self.per_client and held >= self.per_client:
            self.refused_per_client += 1
            if client not in self._capped:
                self._capped.add(client)
                log.warn("client {client} holds {cap} connections: more are refused",
                         client=client, cap=self.per_client)
            return False, None
        self.open += 1
        if client is not None:
            self._by_client[client] = held + 1
        return True, client

    def release(self, client: str | None) -> None:
        self.open -= 1
        if self._full and self.total is not None and self.open < self.total:
            self._full = False
            log.info("connections below the cap again: {open} open", open=self.open)
        if client is not None:
            self._capped.discard(client)
            held = self._by_client[client] - 1
            if held:
                self._by_client[client] = held
            else:
                del self._by_client[client]

    def client_of(self, peer: Any) -> str | None:
        """The key ``peer`` counts under: its IPv4 address, its IPv6 /64, or None for a
        trusted proxy or a connection that is not IP (a Unix socket)."""
        host = getattr(peer, "host", None)
        return client_key(host, self.trusted) if isinstance(host, str) else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "open": self.open, "clients": len(self._by_client), "max_total": self.total,
            "max_per_client": self.per_client, "refused_per_client": self.refused_per_client,
            "refused_total": self.refused_total,
        }


class LimitedSite(TimeoutSite, Protocol):
    limits: ConnectionLimits


class LimitedChannel(TimedChannel):
    """The proxy's channel: refused at once over a cap, else timed like a replica's."""

    site: LimitedSite
    _admitted = False
    _client: str | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        admitted, self._client = self.site.limits.admit(self.transport.getPeer())
        if not admitted:
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._admitted = True
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._admitted:
            self._admitted = False
            self.site.limits.release(self._client)
        super().connectionLost(reason)
