"""The leader's pushes over the lean client, on real sockets: each a POST signed with the
cluster key whose body is the batch, on one kept-alive connection per follower; a follower's
error, a garbled answer, a dead follower and one that never answers are errors, and a
follower that closed the kept connection is reached on a new one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from distpotify.leanclient import host_header
from distpotify.model import Op, Version
from distpotify.replication.client import PeerClient, PeerError, batch_body, make_push_pool
from distpotify.signing import RequestVerifier, body_sha256
from tests.helpers.api import CLUSTER_KEYS
from tests.helpers.sockets import Loop

pytestmark = pytest.mark.timeout(60)

SOURCE = "http://leader:8000"


def ops(*seqs: int) -> list[Op]:
    return [Op(Version(2, 1, n), "playlists", f"{n:08x}-0000-4000-8000-000000000000",
               {"name": f"é {n}"}) for n in seqs]


class Follower(Resource):
    """POST /sync/ops as a follower takes it: the signature checked, the batch recorded, the
    newest version answered (or ``answer`` as it is, with ``code``)."""

    isLeaf = True

    def __init__(self, loop: Loop) -> None:
        super().__init__()
        self.verifier = RequestVerifier(CLUSTER_KEYS, loop.reactor)
        self.batches: list[dict[str, Any]] = []
        self.client_ports: set[int] = set()  # one per connection the pushes came on
        self.channels: list[Any] = []
        self.code = 200
        self.answer: bytes | None = None
        self.silent = False  # take the batch and never answer (a paused follower)

    def render_POST(self, request: Request) -> bytes:
        assert request.uri == b"/sync/ops"
        body = request.content.read()  # type: ignore[union-attr]
        claimed = self.verifier.check(b"POST", request.uri, request.requestHeaders)
        self.verifier.check_body(claimed, body_sha256(body))
        self.client_ports.add(request.getClientAddress().port)  # type: ignore[attr-defined]
        self.channels.append(request.channel)
        self.batches.append(json.loads(body))
        if self.silent:
            return NOT_DONE_YET  # type: ignore[no-any-return]
        request.setResponseCode(self.code)
        if self.answer is not None:
            return self.answer
        return json.dumps({"cursor": self.batches[-1]["ops"][-1]["version"]}).encode()

    def close_connections(self, loop: Loop) -> None:
        """Close every connection a push came on, from this side."""
        for channel in self.channels:
            channel.transport.loseConnection()
        loop.until(lambda: all(not c.transport.connected for c in self.channels),
                   what="the follower's side closed")


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture
def follower(loop: Loop) -> Follower:
    return Follower(loop)


def setup(loop: Loop, follower: Follower, timeout: float = 5.0) -> tuple[PeerClient, str]:
    port = loop.listen(Site(follower))
    client = PeerClient(_no_agent, loop.reactor, CLUSTER_KEYS, timeout=timeout,
                        pushes=make_push_pool(loop.reactor))
    return client, f"http://127.0.0.1:{port}"


class _NoAgent:
    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        raise AssertionError("a push went through the Agent")


_no_agent: Any = _NoAgent()


def push(loop: Loop, client: PeerClient, base: str, batch: list[Op]) -> Version:
    """``client.push_ops`` of ``batch``, the reactor turned until it has its outcome."""
    outcome: list[Any] = []
    Deferred.fromCoroutine(client.push_ops(base, SOURCE, batch)).addBoth(outcome.append)
    loop.until(lambda: outcome, what="the push's outcome")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    version: Version = outcome[0]
    return version


def test_pushes_are_signed_posts_of_the_batch_on_one_kept_connection(
        loop: Loop, follower: Follower) -> None:
    client, base = setup(loop, follower)

    cursors = [push(loop, client, base, ops(n, n + 1)) for n in (1, 3, 5)]

    assert cursors == [Version(2, 1, 2), Version(2, 1, 4), Version(2, 1, 6)]
    assert follower.batches == [json.loads(batch_body(SOURCE, ops(n, n + 1))) for n in (1, 3, 5)]
    assert len(follower.client_ports) == 1  # every push on the same connection


def test_a_follower_error_is_a_peer_error_with_its_answer(loop: Loop, follower: Follower) -> None:
    client, base = setup(loop, follower)
    follower.code, follower.answer = 503, b'{"error": "unavailable", "message": "joining"}'

    with pytest.raises(PeerError) as raised:
        push(loop, client, base, ops(1))

    assert raised.value.answer["error"] == "unavailable"


def test_an_answer_without_a_cursor_is_a_peer_error(loop: Loop, follower: Follower) -> None:
    client, base = setup(loop, follower)
    follower.answer = b"not json"

    with pytest.raises(PeerError, match="not JSON"):
        push(loop, client, base, ops(1))


def test_a_follower_that_closed_the_kept_connection_gets_the_next_push_on_a_new_one(
        loop: Loop, follower: Follower) -> None:
    client, base = setup(loop, follower)
    push(loop, client, base, ops(1))
    follower.close_connections(loop)
    loop.settle()

    assert push(loop, client, base, ops(2)) == Version(2, 1, 2)
    assert len(follower.client_ports) == 2


def test_a_dead_follower_is_an_error_not_a_wait(loop: Loop, follower: Follower) -> None:
    client, base = setup(loop, follower)
    push(loop, client, base, ops(1))
    stopped: list[object] = []
    loop.ports.pop().stopListening().addBoth(stopped.append)  # type: ignore[union-attr]
    loop.until(lambda: stopped, what="the follower stopped listening")
    follower.close_connections(loop)

    with pytest.raises(error.ConnectionRefusedError):
        push(loop, client, base, ops(2))


def test_a_follower_that_never_answers_is_given_up_after_the_timeout(
        loop: Loop, follower: Follower) -> None:
    client, base = setup(loop, follower, timeout=0.3)
    push(loop, client, base, ops(1))
    follower.silent = True

    with pytest.raises(defer.TimeoutError):
        push(loop, client, base, ops(2))
    follower.silent = False

    assert push(loop, client, base, ops(3)) == Version(2, 1, 3)  # on a new connection
    assert len(follower.client_ports) == 2


@pytest.mark.parametrize(("url", "host"), [
    (b"http://10.0.0.2:8001/sync/ops", b"10.0.0.2:8001"),
    (b"http://[::1]:8001/sync/ops", b"[::1]:8001"),
    (b"http://replica-2/sync/ops", b"replica-2"),
])
def test_the_host_header_names_the_peer_as_the_agent_does(url: bytes, host: bytes) -> None:
    assert host_header(URI.fromBytes(url)) == host
