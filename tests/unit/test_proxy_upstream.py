"""Short bodies of the replicas' answers (a /status, a 421's) read with the proxy's Agent over
real sockets: whole, refused past a limit, failed with the reason they were cut, and closed
quietly when the wait for one is cancelled (a poll's timeout, a client gone)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from proxy.backends import BackendView, status_fetcher
from proxy.upstream import BodyTooLarge, read_body, replica_agent
from tests.helpers.sockets import Loop

pytestmark = pytest.mark.timeout(30)

STATUS = json.dumps({"node_id": 1, "role": "leader", "state": "ACTIVE", "epoch": 1,
                     "peers": []}).encode()


class SlowReplica(Resource):
    """Answers /status whole, or, while ``stall`` is set, sends the headers and half the
    body and holds the rest until ``finish_held``; counts the connections it saw closed
    under a held answer."""

    isLeaf = True

    def __init__(self, body: bytes = STATUS) -> None:
        super().__init__()
        self.body = body
        self.stall = False
        self.held: list[Request] = []
        self.lost = 0

    def render(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"application/json")
        if not self.stall:
            return self.body
        request.setHeader(b"Content-Length", str(len(self.body)).encode())
        request.write(self.body[:len(self.body) // 2])
        self.held.append(request)
        request.notifyFinish().addErrback(self._lost)
        return NOT_DONE_YET

    def _lost(self, failure: Failure) -> None:
        self.lost += 1

    def finish_held(self) -> None:
        """The rest of every held body, to whichever client still listens."""
        for request in self.held:
            if not request.finished and not request._disconnected:
                request.write(self.body[len(self.body) // 2:])
                request.finish()
        self.held.clear()


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def serve(loop: Loop, replica: SlowReplica) -> str:
    return f"http://127.0.0.1:{loop.listen(Site(replica))}"


def errors_logged(events: Any) -> list[Any]:
    return [e for e in events if e.get("log_level") in (LogLevel.critical, LogLevel.error)]


def timed_out_poll(loop: Loop, replica: SlowReplica) -> tuple[BackendView, str, Any]:
    """A view of ``replica`` whose poll timed out with half the /status body in: the view,
    the replica's URL and the Agent's pool."""
    url = serve(loop, replica)
    agent, pool = replica_agent(loop.reactor, 2.0)
    view = BackendView([url], status_fetcher(agent), loop.reactor, check_timeout=0.2)
    replica.stall = True
    view.poll_all()
    backend = view.backends[url]
    loop.until(lambda: backend.last_error is not None, what="the poll to time out")
    assert backend.last_error is not None and backend.last_error.startswith("TimeoutError")
    replica.stall = False
    return view, url, pool


def test_a_status_body_that_ends_after_its_poll_timed_out_is_dropped_quietly(
    loop: Loop,
) -> None:
    """With readBody the body's end fired the cancelled Deferred again: AlreadyCalledError,
    logged as critical by twisted.web (the 30-minute random run of 2026-12-03 had one)."""
    replica = SlowReplica()
    with capturedLogs() as events:
        view, url, pool = timed_out_poll(loop, replica)
        replica.finish_held()
        view.poll_all()
        loop.until(lambda: view.backends[url].healthy, what="the next poll's answer")
        pool.closeCachedConnections()
        loop.settle()

    assert errors_logged(events) == []


def test_a_status_poll_that_timed_out_closes_its_connection(loop: Loop) -> None:
    """readBody's cancel left it open: the Agent gives a body's protocol a transport without
    abortConnection."""
    replica = SlowReplica()
    timed_out_poll(loop, replica)

    loop.until(lambda: replica.lost == 1, timeout=5.0, what="the replica to see it closed")


def answer(loop: Loop, url: str) -> Any:
    """The Agent's response to GET <url>/status (its headers: the body may be held)."""
    agent, _ = replica_agent(loop.reactor, 2.0)
    return outcome(loop, agent.request(b"GET", url.encode() + b"/status"))


def outcome(loop: Loop, d: Deferred[Any]) -> Any:
    """What ``d`` fires with: its result, or its Failure."""
    results: list[Any] = []
    d.addBoth(results.append)
    loop.until(lambda: results, what="the Deferred to fire")
    return results[0]


def test_a_body_is_read_whole(loop: Loop) -> None:
    response = answer(loop, serve(loop, SlowReplica()))

    assert outcome(loop, read_body(response)) == STATUS


def test_a_body_longer_than_the_limit_fails(loop: Loop) -> None:
    response = answer(loop, serve(loop, SlowReplica(b"x" * 100_000)))

    failure = outcome(loop, read_body(response, limit=1000))

    assert isinstance(failure, Failure) and failure.check(BodyTooLarge)


def test_a_body_cut_by_the_replica_fails_with_the_reason(loop: Loop) -> None:
    replica = SlowReplica()
    replica.stall = True
    response = answer(loop, serve(loop, replica))
    reading = read_body(response)

    replica.held[0].channel.transport.abortConnection()
    failure = outcome(loop, reading)

    assert isinstance(failure, Failure) and failure.check(ResponseFailed)


def test_a_cancelled_read_fails_with_cancelled_error(loop: Loop) -> None:
    replica = SlowReplica()
    replica.stall = True
    reading = read_body(answer(loop, serve(loop, replica)))

    reading.cancel()
    failure = outcome(loop, reading)

    assert isinstance(failure, Failure) and failure.check(CancelledError)
