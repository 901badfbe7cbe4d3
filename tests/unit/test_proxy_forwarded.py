"""Who a request comes from: X-Forwarded-For and -Proto believed only from trusted proxies,
the client being the nearest untrusted address, and what the proxy sends on to replicas."""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers

from distpotify.options import ConfigError
from proxy.forwarded import ClientOrigin, TrustedProxies, parse_trusted_proxies, resolve
from tests.helpers.proxy import CLIENT_IP, FakeReplica, ProxyHarness

pytestmark = pytest.mark.timeout(10)

CADDY = "10.0.0.5"
TRUSTED = parse_trusted_proxies("10.0.0.0/24, fd00::/8")


def origin(peer: str | None, headers: dict[str, str] | None = None, *, secure: bool = False,
           trusted: TrustedProxies = TRUSTED) -> ClientOrigin:
    raw = Headers({b"host": [b"music.example"]})
    for name, value in (headers or {}).items():
        raw.addRawHeader(name, value)
    return resolve(peer, secure, raw, trusted)


def test_a_direct_client_is_its_connections_address_whatever_it_claims() -> None:
    found = origin("198.51.100.9", {"X-Forwarded-For": "1.2.3.4",
                                    "X-Forwarded-Proto": "https",
                                    "X-Forwarded-Host": "evil.example"})

    assert found == ClientOrigin("198.51.100.9", "http", ("198.51.100.9",), b"music.example")


def test_a_direct_client_over_tls_is_https() -> None:
    assert origin("198.51.100.9", secure=True).https


def test_a_trusted_proxy_names_the_client_and_its_scheme() -> None:
    found = origin(CADDY, {"X-Forwarded-For": "203.0.113.20", "X-Forwarded-Proto": "https",
                           "X-Forwarded-Host": "music.example.org"})

    assert found == ClientOrigin("203.0.113.20", "https", ("203.0.113.20", CADDY),
                                 b"music.example.org")


def test_claims_left_of_the_first_untrusted_address_are_dropped() -> None:
    # The client sent "X-Forwarded-For: 1.1.1.1" to Caddy, which appended what it saw.
    found = origin(CADDY, {"X-Forwarded-For": "1.1.1.1, 203.0.113.20"})

    assert found.address == "203.0.113.20"
    assert found.chain == ("203.0.113.20", CADDY)


def test_a_chain_of_trusted_proxies_is_walked_back_to_the_client() -> None:
    found = origin(CADDY, {"X-Forwarded-For": "203.0.113.20, 10.0.0.7"})

    assert found.address == "203.0.113.20"
    assert found.chain == ("203.0.113.20", "10.0.0.7", CADDY)


def test_several_header_lines_count_as_one_list() -> None:
    headers = Headers({b"x-forwarded-for": [b"1.1.1.1", b"203.0.113.21, 10.0.0.7"]})

    assert resolve(CADDY, False, headers, TRUSTED).chain == ("203.0.113.21", "10.0.0.7", CADDY)


def test_a_malformed_entry_stops_the_walk_at_the_last_vouched_address() -> None:
    found = origin(CADDY, {"X-Forwarded-For": "203.0.113.20, not-an-ip, 10.0.0.7"})

    assert found.address == "10.0.0.7"
    assert found.chain == ("10.0.0.7", CADDY)


def test_a_trusted_proxy_that_names_nobody_is_the_client() -> None:
    assert origin(CADDY).address == CADDY


def test_an_unknown_scheme_claim_is_ignored() -> None:
    assert origin(CADDY, {"X-Forwarded-Proto": "gopher"}, secure=True).scheme == "https"
    assert origin(CADDY, {"X-Forwarded-Proto": "HTTPS"}).scheme == "https"


def test_ipv4_mapped_and_ipv6_addresses_are_normalized() -> None:
    assert origin("::ffff:198.51.100.9").address == "198.51.100.9"
    assert origin("fd00::1", {"X-Forwarded-For": "[2001:db8::7]"}).address == "2001:db8::7"


def test_no_trusted_proxies_by_default() -> None:
    found = origin(CADDY, {"X-Forwarded-For": "203.0.113.20"}, trusted=TrustedProxies())

    assert found.address == CADDY


def test_a_unix_socket_client_has_no_address() -> None:
    assert origin(None) == ClientOrigin(None, "http", (), b"music.example")


@pytest.mark.parametrize("text", ["10.0.0.0/33", "caddy", "10.0.0.0/8,,nope"])
def test_a_bad_trusted_proxy_entry_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--trusted-proxies entry"):
        parse_trusted_proxies(text)


def test_bare_addresses_and_host_bits_are_accepted() -> None:
    trusted = parse_trusted_proxies("10.0.0.5, 192.168.1.7/24")

    assert "10.0.0.5" in trusted and "192.168.1.200" in trusted
    assert "10.0.0.6" not in trusted
    assert str(trusted) == "10.0.0.5/32,192.168.1.0/24"


def test_the_proxy_sends_replicas_what_a_trusted_proxy_vouches_for() -> None:
    nodes = [FakeReplica(1), FakeReplica(2), FakeReplica(3, role="leader")]
    proxy = ProxyHarness(nodes, trusted_proxies=parse_trusted_proxies(f"{CLIENT_IP}/32"))

    proxy.get("/songs", {"X-Forwarded-For": "1.1.1.1, 203.0.113.20",
                         "X-Forwarded-Proto": "https", "X-Real-IP": "1.1.1.1"}).answer()
    sent = next(s for node in nodes for s in node.received)

    assert sent.header("X-Forwarded-For") == f"203.0.113.20, {CLIENT_IP}"
    assert sent.header("X-Forwarded-Proto") == "https"
    assert sent.header("X-Real-IP") is None
