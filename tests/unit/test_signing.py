"""Signed replica-to-replica requests: what /sync/* refuses (unsigned, wrong key, stale,
reused nonce, body or target changed after signing) with 401 and no change, what it takes,
the bounded nonce cache, and the signing client."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from distpotify.api import trusted
from distpotify.cluster.trust import AuthFailures
from distpotify.keys import ClusterKeys
from distpotify.model import Op, Version
from distpotify.replication.client import PeerClient, PeerError
from distpotify.signing import (
    CONTENT_SHA256,
    NONCE,
    SIGNATURE,
    TIME,
    WINDOW,
    NonceCache,
    Refused,
    RequestVerifier,
    body_sha256,
    sign,
)
from tests.helpers.api import Answer, InMemoryReplica, request_target, result_of

PLAYLIST = "22222222-2222-4222-8222-222222222222"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def replica(tmp_path: Path) -> InMemoryReplica:
    return InMemoryReplica(tmp_path)


def batch(name: str = "pushed") -> bytes:
    op = Op(Version(5, 2, 1), "playlists", PLAYLIST, {"name": name, "deleted": 0})
    return json.dumps({"source": None, "ops": [op.to_json()]}).encode()


def signed(keys: ClusterKeys, method: str, path: str, body: bytes = b"", now: float = 0.0,
           target: str | None = None) -> dict[str, str]:
    """The signature headers of ``method path`` (or of ``target``, if given) with ``body``."""
    url = "http://replica" + (target or path)
    headers = sign(keys, method.encode(), request_target(url), body_sha256(body), now)
    return {name.decode(): value.decode() for name, value in headers.items()}


def stranger(replica: InMemoryReplica, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> Answer:
    return replica.call(method, path, body or None, {**JSON, **(headers or {})}, signed=False)


def assert_unauthorized(answer: Answer) -> None:
    assert answer.status == 401, answer.body
    assert answer.json()["error"] == "unauthorized" and answer.json()["message"]
    assert answer.headers["www-authenticate"] == "Distpotify-Cluster"


def assert_unchanged(replica: InMemoryReplica) -> None:
    assert replica.db.get_row("playlists", PLAYLIST) is None
    assert replica.db.head() == Version(0, 0, 0)


# -- /sync/* through the gate


def test_a_signed_push_is_applied(replica: InMemoryReplica) -> None:
    answer = replica.call("POST", "/sync/ops", batch(), JSON)

    assert answer.status == 200, answer.body
    assert replica.db.get_row("playlists", PLAYLIST) is not None


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/sync/ops"), ("GET", "/sync/snapshot"), ("GET", "/sync/digest"),
    ("GET", "/sync/digest/0"), ("GET", f"/sync/rows?key=playlists:{PLAYLIST}"),
    ("POST", "/sync/done"), ("GET", "/sync/nothing-here"),
])
def test_unsigned_requests_to_sync_are_401_and_change_nothing(
    replica: InMemoryReplica, method: str, path: str
) -> None:
    answer = stranger(replica, method, path, batch() if method == "POST" else b"")

    assert_unauthorized(answer)
    assert_unchanged(replica)
    assert replica.service.cluster.trust.snapshot() == {"127.0.0.1": {"http_unsigned": 1}}


def test_public_reads_need_no_signature(replica: InMemoryReplica) -> None:
    assert stranger(replica, "GET", "/songs").status == 200
    assert stranger(replica, "GET", "/status").status == 200


def test_a_push_signed_with_another_key_is_401(replica: InMemoryReplica) -> None:
    body = batch()
    answer = stranger(replica, "POST", "/sync/ops", body,
                      signed(ClusterKeys.generate(), "POST", "/sync/ops", body))

    assert_unauthorized(answer)
    assert "does not verify" in answer.json()["message"]
    assert_unchanged(replica)
    assert replica.service.cluster.trust.count("http_forged") == 1


@pytest.mark.parametrize("age", [WINDOW + 1, -(WINDOW + 1)])
def test_a_request_dated_outside_the_window_is_401(replica: InMemoryReplica,
                                                    age: float) -> None:
    replica.clock.advance(1000)
    body = batch()
    answer = stranger(replica, "POST", "/sync/ops", body,
                      signed(replica.keys, "POST", "/sync/ops", body, now=1000 - age))

    assert_unauthorized(answer)
    assert_unchanged(replica)
    assert replica.service.cluster.trust.count("http_stale") == 1


def test_a_request_within_the_window_is_taken(replica: InMemoryReplica) -> None:
    body = batch()
    headers = signed(replica.keys, "POST", "/sync/ops", body, now=0)
    replica.clock.advance(WINDOW - 1)

    assert stranger(replica, "POST", "/sync/ops", body, headers).status == 200


def test_a_reused_nonce_is_401_and_the_replay_changes_nothing(
    replica: InMemoryReplica
) -> None:
    body = batch()
    headers = signed(replica.keys, "POST", "/sync/ops", body)
    first = stranger(replica, "POST", "/sync/ops", body, headers)
    replica.db.apply_ops([Op(Version(6, 2, 1), "playlists", PLAYLIST, {"name": "later"})])

    replayed = stranger(replica, "POST", "/sync/ops", body, headers)

    assert first.status == 200
    assert_unauthorized(replayed)
    assert replica.db.get_row("playlists", PLAYLIST).fields["name"] == "later"  # type: ignore
    assert replica.service.cluster.trust.count("http_replayed") == 1


def test_a_body_changed_after_signing_is_401(replica: InMemoryReplica) -> None:
    headers = signed(replica.keys, "POST", "/sync/ops", batch("signed"))

    answer = stranger(replica, "POST", "/sync/ops", batch("swapped"), headers)

    assert_unauthorized(answer)
    assert "body" in answer.json()["message"]
    assert_unchanged(replica)
    assert replica.service.cluster.trust.count("http_altered") == 1


def test_a_large_body_changed_after_signing_is_401_too(
    replica: InMemoryReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trusted, "HASH_INLINE", 10)  # every body goes to the worker thread
    good, bad = batch("signed"), batch("swapped")

    taken = stranger(replica, "POST", "/sync/ops", good,
                     signed(replica.keys, "POST", "/sync/ops", good))
    refused = stranger(replica, "POST", "/sync/ops", bad,
                       signed(replica.keys, "POST", "/sync/ops", good))

    assert taken.status == 200
    assert_unauthorized(refused)


@pytest.mark.parametrize(("signed_as", "sent_as"), [
    (("GET", "/sync/digest/1"), ("GET", "/sync/digest/2")),
    (("GET", f"/sync/rows?key=playlists:{PLAYLIST}"), ("GET", "/sync/rows?key=songs:x")),
    (("GET", "/sync/digest"), ("POST", "/sync/digest")),
])
def test_a_request_sent_to_another_target_or_method_than_signed_is_401(
    replica: InMemoryReplica, signed_as: tuple[str, str], sent_as: tuple[str, str]
) -> None:
    headers = signed(replica.keys, signed_as[0], signed_as[1])

    answer = stranger(replica, sent_as[0], sent_as[1], b"", headers)

    assert_unauthorized(answer)
    assert replica.service.cluster.trust.count("http_forged") == 1


@pytest.mark.parametrize("broken", [
    {"X-Distpotify-Time": "soon"}, {"X-Distpotify-Nonce": "n"},
    {"X-Distpotify-Signature": "zz" * 32}, {"X-Distpotify-Content-SHA256": "00"},
])
def test_malformed_signature_headers_are_401(replica: InMemoryReplica,
                                             broken: dict[str, str]) -> None:
    headers = {**signed(replica.keys, "GET", "/sync/digest"), **broken}
    assert_unauthorized(stranger(replica, "GET", "/sync/digest", b"", headers))


def test_a_request_signed_with_the_second_key_of_a_rotation_is_taken(tmp_path: Path) -> None:
    old, new = ClusterKeys.generate(), ClusterKeys.generate()
    rotating = ClusterKeys((new._secrets[0], old._secrets[0]))
    replica = InMemoryReplica(tmp_path, keys=rotating)

    answer = stranger(replica, "GET", "/sync/digest", b"", signed(old, "GET", "/sync/digest"))

    assert answer.status == 200


def test_no_failure_shows_a_key_or_a_signature(replica: InMemoryReplica) -> None:
    headers = signed(ClusterKeys.generate(), "GET", "/sync/digest")
    answer = stranger(replica, "GET", "/sync/digest", b"", headers)
    status = json.dumps(replica.get("/status").json())

    assert headers["X-Distpotify-Signature"] not in answer.body.decode() + status
    assert "trust" in status


# -- the verifier's parts


def test_the_nonce_cache_forgets_nonces_once_they_leave_the_window() -> None:
    cache = NonceCache(capacity=10)
    assert cache.add(b"a", 100, expired_before=40)
    assert not cache.add(b"a", 100, expired_before=40)
    assert cache.add(b"b", 200, expired_before=140)  # "a" (dated 100) is out of the window
    assert len(cache) == 1


def test_a_full_nonce_cache_refuses_what_it_can_no_longer_tell_from_a_replay() -> None:
    cache = NonceCache(capacity=2)
    for n, time in enumerate((10, 11, 12)):
        assert cache.add(bytes([n]), time, expired_before=0)

    assert len(cache) == 2 and cache.floor == 10
    assert not cache.add(b"new", 10, expired_before=0)  # as old as the forgotten one
    assert cache.add(b"newer", 13, expired_before=0)


def test_the_verifier_checks_the_signature_before_it_remembers_a_nonce() -> None:
    keys, clock = ClusterKeys.generate(), Clock()
    verifier = RequestVerifier(keys, clock)
    forged = sign(ClusterKeys.generate(), b"GET", b"/sync/digest", body_sha256(b""), 0)

    with pytest.raises(Refused):
        verifier.check(b"GET", b"/sync/digest", Headers({k: [v] for k, v in forged.items()}))

    assert len(verifier.nonces) == 0


def test_each_signature_header_appears_once() -> None:
    keys = ClusterKeys.generate()
    headers = sign(keys, b"GET", b"/sync/digest", body_sha256(b""), 0)
    doubled = Headers({k: [v, v] if k == NONCE else [v] for k, v in headers.items()})

    with pytest.raises(Refused, match="once"):
        RequestVerifier(keys, Clock()).check(b"GET", b"/sync/digest", doubled)


def test_signed_headers_are_the_four_documented_ones() -> None:
    headers = sign(ClusterKeys.generate(), b"POST", b"/sync/ops", body_sha256(b"{}"), 1234.9)
    assert set(headers) == {TIME, NONCE, CONTENT_SHA256, SIGNATURE}
    assert headers[TIME] == b"1234" and headers[CONTENT_SHA256] == body_sha256(b"{}").encode()


def test_the_signed_target_of_a_test_request_is_the_request_line_treq_sends() -> None:
    assert request_target("http://h:1/sync/rows?key=playlists%3Aab&key=x") == (
        b"/sync/rows?key=playlists%3Aab&key=x")
    assert request_target("http://h:1/songs/x/chunks/0") == b"/songs/x/chunks/0"


# -- the client


class Recorder(Resource):
    """A peer that answers every request with ``status`` and records what it got."""

    isLeaf = True

    def __init__(self, status: int, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.status = status
        self.headers = headers or {}
        self.requests: list[tuple[bytes, bytes, Headers]] = []

    def render(self, request: Request) -> Any:
        self.requests.append((request.method, request.uri, request.requestHeaders))
        request.setResponseCode(self.status)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return b'{"buckets": []}'


def test_the_client_signs_what_it_sends_so_that_a_verifier_accepts_it() -> None:
    keys, clock = ClusterKeys.generate(), Clock()
    peer = Recorder(200)
    stub = RequestTraversalAgent(peer)
    d = Deferred.fromCoroutine(PeerClient(stub, clock, keys).digest("http://peer:8000"))
    stub.flush()

    assert result_of(d) == []
    method, target, headers = peer.requests[0]
    assert RequestVerifier(keys, clock).check(method, target, headers) == body_sha256(b"")


def test_the_client_follows_no_redirect() -> None:
    peer = Recorder(302, {b"Location": b"http://elsewhere:1/sync/digest"})
    stub = RequestTraversalAgent(peer)
    d = Deferred.fromCoroutine(
        PeerClient(stub, Clock(), ClusterKeys.generate()).digest("http://peer:8000"))
    stub.flush()

    with pytest.raises(PeerError, match="HTTP 302"):
        result_of(d)
    assert len(peer.requests) == 1


class Rendered(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.renders = 0

    def render(self, request: Request) -> bytes:
        self.renders += 1
        return b"{}"


def test_a_peer_gone_while_its_large_body_is_hashed_gets_no_render_and_no_error(
    replica: InMemoryReplica,
) -> None:
    """Twisted closes a request's body when its connection is lost, and a request rendered
    after that never hears of its end: the handler would read the closed body (ValueError),
    log it as critical and finish a request whose connection is gone (RuntimeError)."""
    body = batch()
    hashing: Deferred[str] = Deferred()
    inner = Rendered()
    gate = trusted.ClusterOnly(inner, RequestVerifier(replica.keys, Clock()), AuthFailures(),
                               lambda f, *args: hashing)  # type: ignore[arg-type]
    request = Request(DummyChannel())
    request.method, request.uri, request.clientproto = b"POST", b"/sync/ops", b"HTTP/1.1"
    request.content = BytesIO(body * (trusted.HASH_INLINE // len(body) + 1))
    for name, value in signed(replica.keys, "POST", "/sync/ops",
                              request.content.getvalue()).items():
        request.requestHeaders.setRawHeaders(name, [value])

    digest = body_sha256(request.content.getvalue())

    assert gate.render(request) == trusted.NOT_DONE_YET
    request.connectionLost(Failure(ConnectionDone()))
    with capturedLogs() as events:
        hashing.callback(digest)  # the body as signed

    assert inner.renders == 0
    assert not request.finished
    assert [e["log_level"] for e in events] == [LogLevel.info]
