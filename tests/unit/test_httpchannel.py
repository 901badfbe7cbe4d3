"""The HTTP channel's deadlines, in memory with a Clock: a request's headers within the header
timeout, its body making progress, an idle keep-alive connection closed, and no deadline at all
while a request is answered, however slowly the client reads; bounded lines and headers."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import server
from twisted.web.resource import Resource

from distpotify.httpchannel import Phase, TimedChannel, Timeouts
from distpotify.options import ConfigError

pytestmark = pytest.mark.timeout(10)

TIMEOUTS = Timeouts(header=30, body=60, idle=75)
GET = b"GET /answer HTTP/1.1\r\nHost: x\r\n\r\n"


class Answer(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return b"ok"

    render_POST = render_GET


class Hold(Resource):
    """Answers only when the test says so: a request being handled, for as long as needed."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[server.Request] = []

    def render(self, request: server.Request) -> Any:
        self.held.append(request)
        return server.NOT_DONE_YET


class TimedSite(server.Site):
    protocol = TimedChannel  # type: ignore[assignment]

    def __init__(self, clock: Clock, timeouts: Timeouts = TIMEOUTS) -> None:
        self.hold = Hold()
        root = Resource()
        root.putChild(b"answer", Answer())
        root.putChild(b"hold", self.hold)
        super().__init__(root, timeout=None, reactor=clock)
        self.clock = clock
        self.timeouts = timeouts
        self.expired: list[str] = []

    def timed_out(self, phase: Phase) -> None:
        self.expired.append(phase.value)


class Client:
    def __init__(self, site: TimedSite) -> None:
        self.site = site
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def wait(self, seconds: float) -> None:
        self.site.clock.advance(seconds)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def received(self) -> bytes:
        return self.transport.value()


@pytest.fixture
def site() -> TimedSite:
    return TimedSite(Clock())


@pytest.fixture
def client(site: TimedSite) -> Client:
    return Client(site)


def test_a_connection_that_sends_nothing_closes_after_the_header_timeout_silently(
    client: Client, site: TimedSite
) -> None:
    client.wait(29.9)
    assert not client.closed

    client.wait(0.2)

    assert client.closed and client.received() == b""
    assert site.expired == ["header"]


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_deadline_with_408(
    client: Client, site: TimedSite
) -> None:
    for byte in b"GET /answer HTTP/1.1\r\nHost: x\r\n"[:29]:
        client.send(bytes([byte]))
        client.wait(1)  # every byte well within any idle timer: the deadline still holds

    client.wait(1.1)

    assert client.closed
    assert client.received().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    body = client.received().partition(b"\r\n\r\n")[2]
    assert body == b'{"error":"request_timeout","message":"the request headers took over 30 s"}'
    assert site.expired == ["header"]


def test_headers_that_complete_in_time_are_answered(client: Client) -> None:
    client.wait(20)
    client.send(GET)

    assert client.received().startswith(b"HTTP/1.1 200 OK")
    assert not client.closed


def test_a_body_that_keeps_making_progress_is_never_cut(client: Client, site: TimedSite
                                                        ) -> None:
    client.send(b"PUT /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    for byte in b"0123456789":
        client.wait(59)  # ten minutes in all: progress is what counts, not the total
        client.send(bytes([byte]))

    assert [request.content.read() for request in site.hold.held] == [b"0123456789"]
    assert not client.closed and site.expired == []


def test_a_body_that_stalls_is_cut_with_408(client: Client, site: TimedSite) -> None:
    client.send(b"PUT /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01")
    client.wait(59)
    client.send(b"2")
    client.wait(59.9)
    assert not client.closed

    client.wait(0.2)

    assert client.closed and client.received().startswith(b"HTTP/1.1 408")
    assert site.hold.held == [] and site.expired == ["body"]


def test_an_idle_keep_alive_connection_closes_after_the_idle_timeout_silently(
    client: Client, site: TimedSite
) -> None:
    client.send(GET)
    answered = client.received()
    client.wait(74.9)
    assert not client.closed

    client.wait(0.2)

    assert client.closed and client.received() == answered
    assert site.expired == ["idle"]


def test_the_next_request_on_a_kept_connection_gets_the_header_deadline(
    client: Client, site: TimedSite
) -> None:
    client.send(GET)
    client.wait(70)
    client.send(b"GET /answer HTTP/1.1\r\n")  # starts a request: no longer idle
    client.wait(29.9)
    assert not client.closed

    client.wait(0.2)

    assert client.closed and site.expired == ["header"]


def test_a_request_being_answered_is_never_timed_out(client: Client, site: TimedSite) -> None:
    client.send(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    client.wait(3600)
    assert not client.closed

    request = site.hold.held[0]
    request.write(b"late, but whole")
    request.finish()

    assert b"late, but whole" in client.received() and site.expired == []


def test_a_listener_that_reads_slowly_is_not_cut_while_the_answer_leaves(
    client: Client, site: TimedSite
) -> None:
    client.send(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    client.channel.pauseProducing()  # the socket's buffer is full: the client reads slowly
    request = site.hold.held[0]
    request.write(b"x" * 1000)
    request.finish()

    client.wait(3 * 75)
    assert not client.closed

    client.channel.resumeProducing()  # the client has taken it all
    client.wait(75.1)
    assert client.closed and site.expired == ["idle"]


def test_a_pipelined_request_behind_a_busy_one_is_timed_only_once_it_starts(
    client: Client, site: TimedSite
) -> None:
    client.send(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\nGET /answer HTTP/1.1\r\n")
    client.wait(600)  # the first is still being answered: the second waits its turn
    assert not client.closed

    site.hold.held[0].finish()
    client.wait(29.9)
    assert not client.closed
    client.wait(0.2)

    assert client.closed and site.expired == ["header"]


class CountingClock(Clock):
    """A Clock that counts the timers scheduled on it."""

    scheduled = 0

    def callLater(self, delay: float, *args: Any, **kw: Any) -> Any:
        self.scheduled += 1
        return super().callLater(delay, *args, **kw)


def test_a_stream_of_requests_schedules_one_timer_not_several_a_request() -> None:
    clock = CountingClock()
    site = TimedSite(clock)
    client = Client(site)
    for _ in range(100):
        client.send(b"POST /answer HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        client.wait(0.001)
        client.send(b"body")
        client.wait(0.001)

    assert client.received().count(b"200 OK") == 100
    assert clock.scheduled == 1 and len(clock.getDelayedCalls()) == 1
    # The deadlines are still each phase's own: idle 75 s after the last answer.
    client.wait(74.9)
    assert not client.closed
    client.wait(0.2)
    assert client.closed and site.expired == ["idle"]


def test_a_request_line_over_16_kib_is_414(client: Client) -> None:
    client.send(b"GET /" + b"a" * 16_400 + b" HTTP/1.1\r\n")

    assert client.closed and client.received().startswith(b"HTTP/1.1 414 URI Too Long")


def test_a_header_line_over_16_kib_is_431(client: Client) -> None:
    client.send(b"GET /answer HTTP/1.1\r\nCookie: " + b"a" * 16_400 + b"\r\n")

    assert client.closed
    assert client.received().startswith(b"HTTP/1.1 431 Request Header Fields Too Large")


def test_headers_over_16_kib_in_all_are_400(client: Client) -> None:
    lines = b"".join(b"X-%d: %s\r\n" % (n, b"a" * 1000) for n in range(17))

    client.send(b"GET /answer HTTP/1.1\r\n" + lines + b"\r\n")

    assert client.closed and client.received().startswith(b"HTTP/1.1 400 Bad Request")


def test_more_than_500_headers_are_400(client: Client) -> None:
    lines = b"".join(b"X-%d: a\r\n" % n for n in range(501))

    client.send(b"GET /answer HTTP/1.1\r\n" + lines + b"\r\n")

    assert client.closed and client.received().startswith(b"HTTP/1.1 400 Bad Request")


def test_headers_of_12_kib_are_served(client: Client) -> None:
    client.send(b"GET /answer HTTP/1.1\r\nCookie: " + b"a" * 12_000 + b"\r\n\r\n")

    assert client.received().startswith(b"HTTP/1.1 200 OK")


def test_a_client_that_will_not_take_the_408_is_aborted(client: Client) -> None:
    client.send(b"GET /ans")
    client.wait(30.1)
    assert client.closed and not client.transport.disconnected  # closing, waiting to flush

    client.wait(TimedChannel.abortTimeout)

    assert client.transport.disconnected


@pytest.mark.parametrize("field", ["header", "body", "idle"])
def test_timeouts_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigError, match=f"--{field}-timeout must be positive"):
        Timeouts(**{field: 0})
