"""Accounts at the proxy (proxy/auth.py): who reads /proxy/status and /metrics with --auth on,
the failed-login limit per address and per username, the Secure session cookie over https,
and the signed /status polls."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from zope.interface import directlyProvides

from distpotify.auth.tokens import TokenSigner
from distpotify.keys import ClusterKeys
from distpotify.signing import RequestVerifier
from proxy.backends import status_fetcher
from proxy.config import ConfigError, ProxyConfig
from proxy.forwarded import parse_trusted_proxies
from tests.helpers.proxy import CLIENT_IP, FakeReplica, ProxyHarness, three_replicas

pytestmark = pytest.mark.timeout(30)

KEYS = ClusterKeys.generate()
METRICS_TOKEN = "prometheus-bearer-0123456789"
ME = "/auth/me"
LOGIN = "/auth/login"
A_LOGIN = b'{"username": "ana", "password": "a password"}'


def me(role: str, disabled: bool = False) -> tuple[int, dict[str, str], Any]:
    return 200, {}, {"user": {"id": "u1", "username": "someone", "role": role,
                              "disabled": disabled}}


def cluster(**paths: tuple[int, dict[str, str], Any]) -> list[FakeReplica]:
    nodes = three_replicas()
    for node in nodes:
        node.paths = {path.replace("_", "/"): answer for path, answer in paths.items()}
    return nodes


def harness(nodes: list[FakeReplica], **options: Any) -> ProxyHarness:
    return ProxyHarness(nodes, auth=True, cluster_keys=KEYS, metrics_token=METRICS_TOKEN,
                        **options)


def token(clock: Clock, keys: ClusterKeys = KEYS) -> str:
    return TokenSigner(keys, clock).issue("u1", 0)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def login(proxy: ProxyHarness, username: str = "alice", password: str = "wrong password",
          headers: dict[str, str] | None = None) -> int:
    body = json.dumps({"username": username, "password": password}).encode()
    return proxy.post(LOGIN, body, headers=headers).read_all().status


# --auth on: the proxy's own views

def test_auth_on_needs_the_cluster_key() -> None:
    with pytest.raises(ConfigError, match="--cluster-key-file"):
        ProxyConfig(backends=("http://127.0.0.1:1",), auth=True)


@pytest.mark.parametrize("path", ["/proxy/status", "/metrics"])
def test_an_anonymous_request_for_the_proxy_views_is_401(path: str) -> None:
    proxy = harness(cluster())

    answer = proxy.get(path).read_all()

    assert answer.status == 401
    assert answer.json()["error"] == "unauthorized"
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_health_answers_anyone_without_asking_a_replica() -> None:
    nodes = cluster()
    proxy = harness(nodes)
    asked = [len(node.received) for node in nodes]

    answer = proxy.get("/health").read_all()

    assert (answer.status, answer.json()) == (200, {"status": "up"})
    assert [len(node.received) for node in nodes] == asked


def test_a_listener_is_refused_the_proxy_status_with_403() -> None:
    proxy = harness(cluster(**{"_auth_me": me("listener")}))

    answer = proxy.get("/proxy/status", bearer(token(proxy.clock))).read_all()

    assert answer.status == 403


@pytest.mark.parametrize("path", ["/proxy/status", "/metrics"])
def test_an_admin_reads_the_proxy_views(path: str) -> None:
    proxy = harness(cluster(**{"_auth_me": me("admin")}))

    answer = proxy.get(path, bearer(token(proxy.clock))).read_all()

    assert answer.status == 200


def test_an_admin_session_cookie_is_accepted_too() -> None:
    proxy = harness(cluster(**{"_auth_me": me("admin")}))

    answer = proxy.get("/proxy/status",
                       {"Cookie": f"distpotify_session={token(proxy.clock)}"}).read_all()

    assert answer.status == 200


def test_the_metrics_token_reads_metrics_without_asking_a_replica() -> None:
    nodes = cluster()
    proxy = harness(nodes)

    answer = proxy.get("/metrics", bearer(METRICS_TOKEN)).read_all()

    assert answer.status == 200 and b"distpotify_proxy_login_failures" in answer.body
    assert not any(sent.path == ME.encode() for node in nodes for sent in node.received)


def test_a_token_of_another_cluster_is_401_without_asking_a_replica() -> None:
    nodes = cluster(**{"_auth_me": me("admin")})
    proxy = harness(nodes)

    answer = proxy.get("/proxy/status",
                       bearer(token(proxy.clock, ClusterKeys.generate()))).read_all()

    assert answer.status == 401
    assert not any(sent.path == ME.encode() for node in nodes for sent in node.received)


@pytest.mark.parametrize("path", ["/proxy/status", "/metrics"])
def test_an_authorization_header_that_is_not_utf8_is_401_not_a_500(path: str) -> None:
    nodes = cluster(**{"_auth_me": me("admin")})
    proxy = harness(nodes)
    client = proxy.connect()

    client.channel.dataReceived(f"GET {path} HTTP/1.1\r\nHost: proxy.example\r\n".encode()
                                + b"Authorization: Bearer \xff\xfe\r\n\r\n")
    proxy.settle()
    answer = client.read_all()

    assert answer.status == 401, answer.body
    assert not any(sent.path == ME.encode() for node in nodes for sent in node.received)


def test_a_session_the_replica_refuses_is_401() -> None:
    proxy = harness(cluster(**{"_auth_me": (401, {}, {"error": "unauthorized"})}))

    assert proxy.get("/proxy/status", bearer(token(proxy.clock))).read_all().status == 401


def test_a_disabled_admin_is_401() -> None:
    proxy = harness(cluster(**{"_auth_me": me("admin", disabled=True)}))

    assert proxy.get("/proxy/status", bearer(token(proxy.clock))).read_all().status == 401


def test_the_role_is_asked_once_per_token_for_a_few_seconds() -> None:
    nodes = cluster(**{"_auth_me": me("admin")})
    proxy = harness(nodes)
    session = bearer(token(proxy.clock))

    def asked() -> int:
        return sum(sent.path == ME.encode() for node in nodes for sent in node.received)

    proxy.get("/proxy/status", session).read_all()
    proxy.get("/proxy/status", session).read_all()
    first = asked()
    proxy.clock.advance(6)
    proxy.poll()
    proxy.get("/proxy/status", session).read_all()

    assert (first, asked()) == (1, 2)


def test_a_replica_that_stalls_its_auth_me_body_gets_503_in_time() -> None:
    # Its status line and headers came, then nothing (stopped, or its disk stalled): the
    # check's timeout covers the body too, else the admin's request would wait forever.
    nodes = cluster(**{"_auth_me": me("admin")})
    for node in nodes:
        node.stall_after = 0
    proxy = harness(nodes)
    conn = proxy.get("/proxy/status", bearer(token(proxy.clock)))

    proxy.clock.advance(proxy.config.check_timeout * 4)
    proxy.settle()
    answer = conn.read_all()

    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    assert all(response.closed for node in nodes for response in node.responses)


def test_another_method_on_the_proxy_status_is_405() -> None:
    proxy = harness(cluster())

    assert proxy.post("/proxy/status", b"{}").read_all().status == 405


def test_auth_off_leaves_the_proxy_views_open() -> None:
    proxy = ProxyHarness(cluster())

    assert proxy.get("/proxy/status").read_all().status == 200


def test_other_requests_are_forwarded_for_the_replicas_to_decide() -> None:
    nodes = cluster(**{"_songs": (401, {}, {"error": "unauthorized"})})
    proxy = harness(nodes)

    answer = proxy.get("/songs").read_all()

    assert answer.status == 401
    assert any(sent.path == b"/songs" for node in nodes for sent in node.received)


# the failed-login limit

def test_a_few_failures_then_429_with_retry_after_per_address() -> None:
    proxy = ProxyHarness(cluster(**{"_auth_login": (401, {}, {"error": "unauthorized"})}))

    statuses = [login(proxy, f"user{i}") for i in range(6)]  # the sixth makes it wait
    answer = proxy.post(LOGIN, json.dumps({"username": "user6", "password": "x" * 8}).encode()
                        ).read_all()

    assert statuses == [401] * 6
    assert answer.status == 429 and int(answer.headers["retry-after"]) >= 1
    assert answer.json()["error"] == "too_many_requests"
    assert login(proxy, "user7") == 429
    assert proxy.counters.login_failures == 6 and proxy.counters.login_refused == 2


def test_a_username_is_limited_whatever_address_tries_it() -> None:
    nodes = cluster(**{"_auth_login": (401, {}, {"error": "unauthorized"})})
    proxy = ProxyHarness(nodes, trusted_proxies=parse_trusted_proxies(CLIENT_IP))
    for i in range(6):
        login(proxy, "Alice", headers={"X-Forwarded-For": f"198.51.100.{i}"})

    other_address = {"X-Forwarded-For": "198.51.100.99"}

    assert login(proxy, "ALICE", headers=other_address) == 429  # folded: one name
    assert login(proxy, "bob", headers=other_address) == 401


def test_the_limit_is_lifted_after_the_window() -> None:
    proxy = ProxyHarness(cluster(**{"_auth_login": (401, {}, {"error": "unauthorized"})}))
    for _ in range(6):
        login(proxy)
    assert login(proxy) == 429

    proxy.clock.advance(12 + 60 + 1)  # the first wait, then a minute without failures
    proxy.poll()

    assert login(proxy) == 401


def test_a_success_clears_the_name_but_not_the_address() -> None:
    nodes = cluster(**{"_auth_login": (401, {}, {"error": "unauthorized"})})
    proxy = ProxyHarness(nodes)
    for _ in range(4):
        login(proxy, "alice")
    for node in nodes:
        node.paths["/auth/login"] = (200, {}, {"token": "t", "user": {}})
    login(proxy, "alice")  # the right password: alice's failures are forgotten
    for node in nodes:
        node.paths["/auth/login"] = (401, {}, {"error": "unauthorized"})

    login(proxy, "bob")  # the address's sixth failure (5 from before count there)
    login(proxy, "carol")

    assert proxy.logins.wait("name:alice") == 0
    assert proxy.logins.wait(f"address:{CLIENT_IP}") > 0


def test_the_name_is_counted_in_its_folded_form() -> None:
    proxy = ProxyHarness(cluster(**{"_auth_login": (401, {}, {"error": "unauthorized"})}),
                         trusted_proxies=parse_trusted_proxies(CLIENT_IP))
    for i in range(6):  # fullwidth "Alice", as another keyboard may type it
        login(proxy, "\uff21lice", headers={"X-Forwarded-For": f"198.51.100.{i}"})

    assert login(proxy, "alice", headers={"X-Forwarded-For": "198.51.100.99"}) == 429


# cookies over https

SESSION_COOKIE = "distpotify_session=abc; Path=/; HttpOnly; SameSite=Lax; Max-Age=60"


def test_the_session_cookie_gets_secure_when_the_client_came_over_https() -> None:
    nodes = cluster(**{"_auth_login": (200, {"Set-Cookie": SESSION_COOKIE}, {"token": "abc"})})
    proxy = ProxyHarness(nodes, trusted_proxies=parse_trusted_proxies(CLIENT_IP))

    answer = proxy.post(LOGIN, A_LOGIN, headers={"X-Forwarded-Proto": "https"}).read_all()

    assert answer.headers["set-cookie"] == SESSION_COOKIE + "; Secure"


def test_the_session_cookie_gets_secure_on_a_tls_listener() -> None:
    nodes = cluster(**{"_auth_login": (200, {"Set-Cookie": SESSION_COOKIE}, {"token": "abc"})})
    proxy = ProxyHarness(nodes)
    connection = proxy.connect()
    directlyProvides(connection.transport, ISSLTransport)  # as an ssl: endpoint's would

    answer = connection.send("POST", LOGIN, {"Content-Type": "application/json"}, A_LOGIN
                             ).read_all()

    assert answer.headers["set-cookie"] == SESSION_COOKIE + "; Secure"


def test_a_cookie_already_secure_is_left_alone() -> None:
    cookie = SESSION_COOKIE + "; Secure"
    nodes = cluster(**{"_auth_login": (200, {"Set-Cookie": cookie}, {"token": "abc"})})
    proxy = ProxyHarness(nodes, trusted_proxies=parse_trusted_proxies(CLIENT_IP))

    answer = proxy.post(LOGIN, A_LOGIN, headers={"X-Forwarded-Proto": "https"}).read_all()

    assert answer.headers["set-cookie"] == cookie


def test_the_session_cookie_stays_as_it_was_over_plain_http() -> None:
    nodes = cluster(**{"_auth_login": (200, {"Set-Cookie": SESSION_COOKIE}, {"token": "abc"})})
    proxy = ProxyHarness(nodes)

    # an untrusted client's claim of https is not believed
    answer = proxy.post(LOGIN, A_LOGIN, headers={"X-Forwarded-Proto": "https"}).read_all()

    assert answer.headers["set-cookie"] == SESSION_COOKIE


# signed polls

def test_status_polls_are_signed_with_the_cluster_key() -> None:
    clock = Clock()
    clock.advance(1_000_000)
    sent: list[Headers] = []

    class Agent:
        def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                    body: object = None) -> Any:
            assert headers is not None
            sent.append(headers)
            return succeed(_Status())

    status_fetcher(Agent(), KEYS, clock)("http://127.0.0.1:8001")  # type: ignore[arg-type]

    verifier = RequestVerifier(KEYS, clock)
    verifier.check(b"GET", b"/status", sent[0])  # raises Refused if not


class _Status:
    code = 200
    phrase = b"OK"

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(b'{"node_id": 1}')
        protocol.connectionLost(Failure(ResponseDone()))



@pytest.mark.parametrize("body", [
    b"{}", b"[1]", b"not json", b'{"username": "ana", "pad": "' + b"x" * 9000 + b'"}',
    b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}",
], ids=["no name", "not an object", "not json", "padded past the limit", "deeply nested"])
def test_a_login_whose_name_cannot_be_read_is_refused_here(body: bytes) -> None:
    nodes = cluster(**{"_auth_login": (401, {}, {"error": "unauthorized"})})
    proxy = ProxyHarness(nodes)

    answer = proxy.post(LOGIN, body).read_all()

    assert answer.status == 400 and json.loads(answer.body)["error"] == "bad_request"



def test_a_login_whose_client_went_away_unanswered_clears_nothing() -> None:
    # Nothing answered it: the client left before the replica's answer. That is no success
    # (twisted.web's default code 200 is not the replica's): alice's failures stay counted,
    # else one login dropped at once would reset the name's limit.
    nodes = cluster(**{"_auth_login": (401, {}, {"error": "unauthorized"})})
    proxy = ProxyHarness(nodes, trusted_proxies=parse_trusted_proxies(CLIENT_IP))
    for i in range(5):
        login(proxy, "alice", headers={"X-Forwarded-For": f"198.51.100.{i}"})
    nodes[2].hang = True
    body = json.dumps({"username": "alice", "password": "a guess"}).encode()
    proxy.post(LOGIN, body, headers={"X-Forwarded-For": "198.51.100.50"}).go_away()
    nodes[2].hang = False
    login(proxy, "alice", headers={"X-Forwarded-For": "198.51.100.60"})  # the sixth failure

    assert proxy.logins.wait("name:alice") > 0
    assert login(proxy, "alice", headers={"X-Forwarded-For": "198.51.100.99"}) == 429
