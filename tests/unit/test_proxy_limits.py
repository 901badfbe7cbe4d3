"""Connection caps at the proxy: per client address and in all (from the open-files limit),
trusted proxies and IPv6 /64s counted as the design says, refusals counted in /metrics; and
the proxy's channel refusing a connection at once, in memory."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from proxy.forwarded import parse_trusted_proxies
from proxy.limits import RESERVED, ConnectionLimits, total_cap
from proxy.metrics import ProxyMetrics
from tests.helpers.proxy import FakeReplica, ProxyHarness

pytestmark = pytest.mark.timeout(10)


def ipv4(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


def admit_many(limits: ConnectionLimits, peer: Any, count: int) -> list[bool]:
    return [limits.admit(peer)[0] for _ in range(count)]


def test_the_65th_connection_of_a_client_is_refused_while_another_client_is_served() -> None:
    limits = ConnectionLimits(per_client=64, total=None)

    assert admit_many(limits, ipv4("192.0.2.7"), 65) == [True] * 64 + [False]
    assert limits.admit(ipv4("192.0.2.8")) == (True, "192.0.2.8")
    assert (limits.open, limits.refused_per_client) == (65, 1)


def test_a_closed_connection_gives_its_client_a_slot_back() -> None:
    limits = ConnectionLimits(per_client=2, total=None)
    admit_many(limits, ipv4("192.0.2.7"), 2)

    limits.release("192.0.2.7")

    assert limits.admit(ipv4("192.0.2.7")) == (True, "192.0.2.7")
    assert limits.admit(ipv4("192.0.2.7"))[0] is False


def test_the_total_cap_refuses_every_client() -> None:
    limits = ConnectionLimits(per_client=64, total=3)
    for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert limits.admit(ipv4(host))[0]

    assert limits.admit(ipv4("192.0.2.4")) == (False, None)
    assert limits.refused_total == 1

    limits.release("192.0.2.1")
    assert limits.admit(ipv4("192.0.2.4"))[0]


def test_a_trusted_proxy_is_no_single_client_but_counts_in_the_total() -> None:
    limits = ConnectionLimits(per_client=2, total=100,
                              trusted=parse_trusted_proxies("10.0.0.5"))

    assert admit_many(limits, ipv4("10.0.0.5"), 50) == [True] * 50
    assert limits.admit(ipv4("10.0.0.5")) == (True, None)
    assert limits.open == 51


def test_an_ipv6_client_is_its_64() -> None:
    limits = ConnectionLimits(per_client=2, total=None)

    assert limits.admit(IPv6Address("TCP", "2001:db8:1:2::1", 1))[1] == "2001:db8:1:2::/64"
    assert limits.admit(IPv6Address("TCP", "2001:db8:1:2::ffff", 1))[0]
    assert not limits.admit(IPv6Address("TCP", "2001:db8:1:2:3::9", 1))[0]
    assert limits.admit(IPv6Address("TCP", "2001:db8:1:3::1", 1))[0]


def test_an_ipv4_mapped_client_is_its_ipv4_address() -> None:
    limits = ConnectionLimits(per_client=1, total=None)
    limits.admit(ipv4("192.0.2.7"))

    assert not limits.admit(IPv6Address("TCP", "::ffff:192.0.2.7", 1))[0]


def test_a_unix_socket_counts_in_the_total_only() -> None:
    limits = ConnectionLimits(per_client=1, total=None)

    assert admit_many(limits, UNIXAddress(b"/run/distpotify.sock"), 3) == [True] * 3


def test_per_client_zero_means_no_cap() -> None:
    assert admit_many(ConnectionLimits(per_client=0, total=None), ipv4("192.0.2.7"), 500
                      ) == [True] * 500


def test_the_total_cap_leaves_half_the_descriptors_for_replicas() -> None:
    assert total_cap(1024) == (1024 - RESERVED) // 2 == 480
    assert total_cap(20_000) == 9968
    assert total_cap(RESERVED) == 1
    assert total_cap(None) is None


class _Request:
    def setHeader(self, name: bytes, value: bytes) -> None:
        pass


def test_refusals_and_timeouts_are_in_metrics() -> None:
    limits = ConnectionLimits(per_client=1, total=4)
    admit_many(limits, ipv4("192.0.2.7"), 2)
    report = {"counters": {}, "leader": None, "backends": [],
              "connections": {**limits.snapshot(),
                              "timed_out": {"header": 3, "body": 1, "idle": 0}}}

    text = ProxyMetrics(lambda: report).render_GET(_Request())  # type: ignore[arg-type]

    assert b"distpotify_proxy_connections_open 1.0" in text
    assert b"distpotify_proxy_connections_max 4.0" in text
    assert b'distpotify_proxy_connections_refused_total{cap="per_client"} 1.0' in text
    assert b'distpotify_proxy_connections_refused_total{cap="total"} 0.0' in text
    assert b'distpotify_proxy_connection_timeouts_total{phase="header"} 3.0' in text


def connect(proxy: ProxyHarness, host: str) -> StringTransport:
    transport = StringTransport(peerAddress=ipv4(host))
    channel = proxy.site.buildProtocol(ipv4(host))
    assert channel is not None
    channel.makeConnection(transport)
    transport.protocol = channel  # type: ignore[attr-defined]
    return transport


def test_the_proxy_closes_a_connection_over_the_cap_at_once_and_serves_others() -> None:
    proxy = ProxyHarness([FakeReplica(1), FakeReplica(2, role="leader")],
                         max_connections_per_client=3)
    held = [connect(proxy, "192.0.2.7") for _ in range(3)]

    refused = connect(proxy, "192.0.2.7")
    served = connect(proxy, "192.0.2.8")
    served.protocol.dataReceived(b"GET /songs HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore
    proxy.settle()

    assert refused.disconnected and refused.value() == b""
    assert not any(transport.disconnecting for transport in held)
    assert served.value().startswith(b"HTTP/1.1 200 OK")
    assert proxy.limits.refused_per_client == 1

    held[0].protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
    assert not connect(proxy, "192.0.2.7").disconnected
