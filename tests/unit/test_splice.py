"""The proxy's kernel data path over real sockets: the lean client fetches a replica's answer
and the splice relay moves its body to the client. Exact bytes for many sizes and ranges, a
slow client, a client that leaves, a replica that dies mid-body (resumed at the exact byte),
keep-alive reuse on both sides, HEAD, 304 and 416, and the same answers through Python with
splicing off, to a TLS client, and from a chunked answer."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from distpotify.api.failures import answer_failure
from distpotify.api.ranges import Representation, Span, evaluate, serve
from distpotify.leanclient import HEAD_READ, LeanPool, ReadAgent
from proxy.backends import BackendView, status_fetcher
from proxy.config import ProxyConfig
from proxy.resource import Counters, ProxyResource
from proxy.site import ProxyRoot, ProxySite
from proxy.splice import MIN_SPLICE
from proxy.upstream import ReplicaEndpoints, read_agent, replica_agent
from tests.helpers.sockets import Client, Loop, buffered, connect, read_head, read_to_end

pytestmark = pytest.mark.timeout(90)

SPAN = 64 * 1024
ETAG = "ab" * 32
SONG = "/songs/0b0c8a4e-0000-4000-8000-000000000001/stream"


def content(size: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(size)


class SocketReplica(Resource):
    """A replica's /status and one song served by ranges.serve (sendfile on) from a file in
    64 KiB spans; a span listed in ``failing`` fails its check, which tears the connection."""

    isLeaf = True

    def __init__(self, node_id: int, path: Path, size: int, role: str = "follower") -> None:
        super().__init__()
        self.node_id = node_id
        self.path = path
        self.size = size
        self.role = role
        self.url = ""
        self.leader_http = ""
        self.failing: set[int] = set()
        self.channels: list[object] = []
        self.served = 0

    def render(self, request: Request) -> object:
        request.setHeader(b"X-Served-By", str(self.node_id).encode())
        if request.path == b"/status":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps({
                "node_id": self.node_id, "role": self.role, "state": "ACTIVE", "epoch": 1,
                "leader_id": 3, "leader_http": self.leader_http, "peers": [], "http": self.url,
            }).encode()
        self.channels.append(request.channel)
        self.served += 1
        if b"chunked" in request.args:  # no Content-Length: HTTP/1.1 chunked coding
            for offset in range(0, self.size, SPAN):
                request.write(self.path.read_bytes()[offset:offset + SPAN])
            request.finish()
            return NOT_DONE_YET
        spans = [Span(self.path, offset, min(SPAN, self.size - offset), self._ready(offset))
                 for offset in range(0, self.size, SPAN)]
        representation = Representation(self.size, ETAG, "audio/mpeg")
        try:
            d = serve(request, spans, representation, evaluate(request, representation),
                      sendfile=True)
        except Exception:
            return answer_failure(request, Failure())
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def done(body: bytes) -> None:
            request.write(body)
            request.finish()

        d.addCallbacks(done, lambda _: None)
        return NOT_DONE_YET

    def _ready(self, offset: int) -> Any:
        async def ready() -> bool:
            return offset // SPAN not in self.failing

        return ready


class Harness:
    """Three SocketReplicas (followers 1 and 2, leader 3) and the proxy in front of them."""

    def __init__(self, loop: Loop, tmp_path: Path, data: bytes, splice: bool = True,
                 tls: bool = False) -> None:
        self.loop = loop
        self.sndbuf: int | None = None  # the send buffer of the proxy's client sockets
        path = tmp_path / "song"
        path.write_bytes(data)
        self.replicas = [SocketReplica(n, path, len(data), "leader" if n == 3 else "follower")
                         for n in (1, 2, 3)]
        for replica in self.replicas:
            replica.url = f"http://127.0.0.1:{loop.listen(Site(replica))}"
        for replica in self.replicas:
            replica.leader_http = self.replicas[2].url
        reactor = loop.reactor
        agent, self.pool = replica_agent(reactor, 2.0)
        urls = tuple(r.url for r in self.replicas)
        self.view = BackendView(urls, status_fetcher(agent), reactor, poll_interval=0.25,
                                health_max_age=30.0, check_timeout=2.0)
        # Generous timers: on a loaded machine the process may not run for seconds, and then
        # runs its timers before its sockets; these tests are about bytes, not timing.
        config = ProxyConfig(backends=urls, splice=splice, stall_timeout=10.0,
                             response_timeout=10.0, auth=False)
        self.counters = Counters()
        self.reads = read_agent(reactor, 2.0, agent)
        self.resource = ProxyResource(self.view, self.reads if splice else agent, reactor,
                                      config, self.counters)
        site = ProxySite(ProxyRoot(self.resource, lambda: {}, config.web_dir),
                         max_body=config.max_upload, clock=reactor)
        self.transports: list[Any] = []
        build = site.buildProtocol

        def watched(address: Any) -> Any:
            protocol = build(address)
            real = protocol.makeConnection

            def made(transport: Any) -> None:
                self.transports.append(transport)
                if self.sndbuf is not None:
                    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                     self.sndbuf)
                real(transport)

            protocol.makeConnection = made
            return protocol

        site.buildProtocol = watched  # type: ignore[method-assign]
        self.port = (loop.listen_tls if tls else loop.listen)(site)
        self.view.start()
        loop.until(lambda: len(self.view.readers()) == 2 and self.view.leader() is not None,
                   what="the proxy's view")

    def close(self) -> None:
        self.view.stop()
        self.reads.pool.close()
        self.pool.closeCachedConnections()


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def harness(loop: Loop, tmp_path: Path, data: bytes, splice: bool = True, tls: bool = False
            ) -> Iterator[Harness]:
    h = Harness(loop, tmp_path, data, splice, tls)
    yield h
    h.close()


@pytest.fixture
def data() -> bytes:
    return content(3 * 1024 * 1024 + 4321)


@pytest.fixture
def proxy(loop: Loop, tmp_path: Path, data: bytes) -> Iterator[Harness]:
    yield from harness(loop, tmp_path, data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_whole_songs_and_ranges_arrive_exact_and_spliced(
    proxy: Harness, loop: Loop, data: bytes,
) -> None:
    size = len(data)
    ranges = [None, "bytes=0-", "bytes=1-", f"bytes={SPAN - 1}-", "bytes=100000-2000000",
              f"bytes={size - 20000}-", "bytes=-50000", "bytes=12345-12345"]
    client = Client(proxy.port)

    def fetch() -> list[tuple[int, dict[str, str], bytes]]:
        return [client.get(SONG, {"Range": r} if r else {}) for r in ranges]

    answers = loop.run(fetch)
    client.close()

    for header, (status, headers, body) in zip(ranges, answers, strict=True):
        first, last = 0, size - 1
        if header == "bytes=-50000":
            first = size - 50000
        elif header:
            start, _, end = header.removeprefix("bytes=").partition("-")
            first, last = int(start), int(end) if end else size - 1
        assert status == (206 if header else 200), header
        assert headers["content-length"] == str(last - first + 1), header
        assert sha(body) == sha(data[first:last + 1]), header
    assert proxy.counters.spliced_bytes > 4 * size
    assert proxy.counters.aborted == 0 and proxy.counters.retries == 0


@pytest.mark.parametrize("size", [1, 16 * 1024, SPAN + 1, 1024 * 1024 + 7])
def test_bodies_of_many_sizes(loop: Loop, tmp_path: Path, size: int) -> None:
    data = content(size, seed=size)
    for h in harness(loop, tmp_path, data):
        client = Client(h.port)
        status, _, body = loop.run(lambda: client.get(SONG))  # noqa: B023
        client.close()
        assert status == 200 and body == data
        # What is left after the headers' read is spliced only when it is worth a pipe.
        spliced = size - HEAD_READ >= MIN_SPLICE
        assert h.counters.spliced_bytes + h.counters.relayed_bytes == size
        assert (h.counters.spliced_bytes > 0) == spliced, h.counters


def test_a_write_sent_as_a_get_has_its_answer_held_whole_never_spliced(
    proxy: Harness, loop: Loop, data: bytes,
) -> None:
    """A Subsonic write is a GET (createPlaylist of hundreds of songs answers them all): its
    answer is held whole before the client gets any of it, so it goes through Python; a
    spliced body would reach the client ahead of the status line it is held behind."""
    client = Client(proxy.port)

    status, headers, body = loop.run(
        lambda: client.get("/rest/createPlaylist.view?name=x&u=a&p=b&v=1.16.1&c=t"))
    spliced, relayed = proxy.counters.spliced_bytes, proxy.counters.relayed_bytes
    again = loop.run(lambda: client.get(SONG))  # the connection is still in step
    client.close()

    assert status == 200 and headers["content-length"] == str(len(data))
    assert sha(body) == sha(data)
    assert (spliced, relayed) == (0, len(data))
    assert proxy.replicas[2].served == 1  # the write went to the leader
    assert again[0] == 200 and sha(again[2]) == sha(data)


def test_keep_alive_connections_are_reused_on_both_sides_after_spliced_bodies(
    proxy: Harness, loop: Loop, data: bytes,
) -> None:
    client = Client(proxy.port)

    answers = loop.run(lambda: [client.get(SONG) for _ in range(6)])
    client.close()

    assert all(status == 200 and body == data for status, _, body in answers)
    assert len(proxy.transports) == 1  # one client connection carried all six
    for replica in proxy.replicas[:2]:
        assert replica.served == 3
        assert len(set(map(id, replica.channels))) == 1  # one upstream connection each
    assert proxy.counters.spliced_bytes >= 5 * len(data)


def test_a_slow_client_paces_the_replica_and_the_proxy_buffers_nothing(
    proxy: Harness, loop: Loop,
) -> None:
    data = content(8 * 1024 * 1024, seed=9)
    proxy.replicas[0].path.write_bytes(data)
    for replica in proxy.replicas:
        replica.size = len(data)
    proxy.sndbuf = 32 * 1024
    peak = [0]

    def watch() -> None:
        for transport in proxy.transports:
            peak[0] = max(peak[0], buffered(transport))

    def slow() -> bytes:
        sock = connect(proxy.port, rcvbuf=16 * 1024)
        sock.sendall(f"GET {SONG} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        _, body = read_head(sock)
        while len(body) < len(data):
            body += sock.recv(16 * 1024)
            if len(body) < 512 * 1024:
                time.sleep(0.002)  # the reader's pace, not a wait for a condition
        sock.close()
        return body

    body = loop.run(slow, each=watch)

    assert sha(body) == sha(data)
    assert peak[0] < 128 * 1024  # headers and what came with them, never the body
    assert proxy.counters.relayed_bytes < 128 * 1024
    assert proxy.counters.spliced_bytes >= len(data) - 128 * 1024


def test_a_client_that_leaves_mid_body_cancels_the_exchange_and_frees_the_replica(
    proxy: Harness, loop: Loop, data: bytes,
) -> None:
    proxy.sndbuf = 32 * 1024  # so most of the body is still to send when the client leaves

    def leave() -> None:
        sock = connect(proxy.port, rcvbuf=16 * 1024)
        sock.sendall(f"GET {SONG} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        _, body = read_head(sock)
        read_to_end(sock, 300_000 - len(body))
        sock.close()

    loop.run(leave)
    loop.until(lambda: proxy.counters.client_gone == 1, what="the proxy to see the client go")
    client = Client(proxy.port)
    status, _, body = loop.run(lambda: client.get(SONG))
    client.close()

    assert status == 200 and body == data
    assert proxy.counters.aborted == 0


@pytest.mark.parametrize("cut", [1, 7, 30])
def test_a_replica_that_dies_mid_body_is_resumed_elsewhere_at_the_exact_byte(
    proxy: Harness, loop: Loop, data: bytes, cut: int,
) -> None:
    proxy.replicas[0].failing = {cut}
    proxy.replicas[1].failing = {cut + 5}
    client = Client(proxy.port)

    status, headers, body = loop.run(lambda: client.get(SONG))
    client.close()

    assert status == 200 and headers["content-length"] == str(len(data))
    assert len(body) == len(data) and sha(body) == sha(data)
    assert proxy.counters.resumes >= 1 and proxy.counters.aborted == 0
    # The resumed bodies were spliced too: only what came with each answer's headers was
    # read through Python, and every byte was counted once, by one path.
    answers = 1 + proxy.counters.resumes
    assert proxy.counters.relayed_bytes < answers * HEAD_READ
    assert proxy.counters.spliced_bytes + proxy.counters.relayed_bytes == len(data)


def test_head_304_and_416_carry_no_body_and_keep_the_connection(
    proxy: Harness, loop: Loop, data: bytes,
) -> None:
    client = Client(proxy.port)

    def fetch() -> list[tuple[int, dict[str, str], bytes]]:
        return [
            client.get(SONG, method="HEAD"),
            client.get(SONG, {"If-None-Match": f'"{ETAG}"'}),
            client.get(SONG, {"Range": f"bytes={len(data)}-"}),
            client.get(SONG, {"Range": "bytes=10-19"}),
        ]

    head, not_modified, unsatisfiable, ranged = loop.run(fetch)
    client.close()

    assert head[0] == 200 and head[2] == b""
    assert head[1]["content-length"] == str(len(data))
    assert not_modified[0] == 304 and not_modified[2] == b""
    assert unsatisfiable[0] == 416 and unsatisfiable[1]["content-range"] == f"bytes */{len(data)}"
    assert ranged[0] == 206 and ranged[2] == data[10:20]
    assert len(proxy.transports) == 1


def test_with_splicing_off_the_agent_relays_the_same_bytes(
    loop: Loop, tmp_path: Path, data: bytes,
) -> None:
    for h in harness(loop, tmp_path, data, splice=False):
        h.replicas[0].failing = {9}
        client = Client(h.port)
        answers = loop.run(lambda: [client.get(SONG), client.get(SONG, {"Range": "bytes=5-"})])  # noqa: B023
        client.close()
        assert [a[0] for a in answers] == [200, 206]
        assert answers[0][2] == data and answers[1][2] == data[5:]
        assert h.counters.spliced_bytes == 0 and h.counters.relayed_bytes >= 2 * len(data) - 5


def test_a_tls_client_connection_takes_the_relay_through_python(
    loop: Loop, tmp_path: Path, data: bytes,
) -> None:
    for h in harness(loop, tmp_path, data, tls=True):
        h.replicas[0].failing = {9}
        client = loop.run(lambda: Client(h.port, tls=True))  # noqa: B023 - handshake
        answers = loop.run(lambda: [client.get(SONG), client.get(SONG, {"Range": "bytes=5-"})])  # noqa: B023
        client.close()
        assert [(a[0], a[2]) for a in answers] == [(200, data), (206, data[5:])]
        assert h.counters.resumes >= 1 and h.counters.aborted == 0
        assert h.counters.spliced_bytes == 0
        assert h.counters.relayed_bytes == 2 * len(data) - 5
        assert len(h.transports) == 1  # the TLS connection was kept alive


def test_a_chunked_answer_takes_the_relay_through_python(
    proxy: Harness, loop: Loop, data: bytes,
) -> None:
    client = Client(proxy.port)

    answers = loop.run(lambda: [client.get(SONG + "?chunked=1"), client.get(SONG)])
    client.close()

    assert [(a[0], a[2]) for a in answers] == [(200, data), (200, data)]
    assert proxy.counters.relayed_bytes >= len(data)  # the chunked body, decoded in Python
    assert proxy.counters.spliced_bytes >= len(data) - HEAD_READ  # the next one, spliced
    assert proxy.counters.relayed_bytes + proxy.counters.spliced_bytes == 2 * len(data)


def test_the_lean_client_drops_a_pooled_connection_the_replica_closed(
    proxy: Harness, loop: Loop, data: bytes,
) -> None:
    client = Client(proxy.port)
    assert loop.run(lambda: client.get(SONG, {"Range": "bytes=0-9"}))[2] == data[:10]
    for replica in proxy.replicas:
        for channel in replica.channels:
            channel.transport.loseConnection()  # type: ignore[attr-defined]
    loop.settle()

    answers = loop.run(lambda: [client.get(SONG, {"Range": "bytes=0-9"}) for _ in range(4)])
    client.close()

    assert [a[2] for a in answers] == [data[:10]] * 4
    assert proxy.counters.retries == 0


class _Fallback:
    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes]] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Deferred[None]:
        self.requests.append((method, uri))
        return Deferred()


@pytest.mark.parametrize(("method", "uri", "body", "lean"), [
    (b"GET", b"http://127.0.0.1:1/songs", False, True),
    (b"HEAD", b"http://127.0.0.1:1/songs", False, True),
    (b"GET", b"http://127.0.0.1:1/songs", True, False),
    (b"POST", b"http://127.0.0.1:1/songs", True, False),
    (b"DELETE", b"http://127.0.0.1:1/songs/x", False, False),
    (b"GET", b"https://127.0.0.1:1/songs", False, False),
])
def test_only_bodiless_reads_take_the_lean_client(
    loop: Loop, method: bytes, uri: bytes, body: bool, lean: bool,
) -> None:
    fallback = _Fallback()
    agent = ReadAgent(LeanPool(loop.reactor, ReplicaEndpoints(loop.reactor, 1.0), 4, 1.0),
                      fallback)  # type: ignore[arg-type]

    d = agent.request(method, uri, Headers(), FileBodyProducer(BytesIO(b"x")) if body else None)
    d.addErrback(lambda _: None)  # the lean attempt connects to a closed port

    assert fallback.requests == ([] if lean else [(method, uri)])
