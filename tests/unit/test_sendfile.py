"""The replica's sendfile(2) sender over real sockets: exact bytes for any size and range,
backpressure from a slow reader, a reader that leaves, a chunk that fails its check, and the
keep-alive connection handed back to twisted.web afterwards."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyChannel

from distpotify.api import ranges
from distpotify.api.failures import answer_failure
from distpotify.api.ranges import Representation, Span, evaluate, serve
from distpotify.zerocopy import plain_socket
from tests.helpers.sockets import Client, Loop, buffered, connect, read_head, read_to_end

pytestmark = pytest.mark.timeout(60)

CHUNK = 256 * 1024


def content(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


class ChunkFile(Resource):
    """A file served as chunk-sized spans, each with a ready check, through ranges.serve."""

    isLeaf = True

    def __init__(self, path: Path, size: int, sendfile: bool = True) -> None:
        super().__init__()
        self.path = path
        self.size = size
        self.sendfile = sendfile
        self.failing: set[int] = set()  # chunk indexes whose check fails
        self.checked: list[tuple[int, int]] = []  # (chunk index, bytes sent when checked)
        self.outcomes: list[Any] = []
        self.requests: list[Request] = []
        self.transports: list[Any] = []

    def render(self, request: Request) -> object:
        self.requests.append(request)
        self.transports.append(request.channel.transport)
        spans = [Span(self.path, offset, min(CHUNK, self.size - offset), self._ready(index))
                 for index, offset in enumerate(range(0, self.size, CHUNK))]
        representation = Representation(self.size, "e" * 64, "application/octet-stream")
        try:
            decision = evaluate(request, representation)
            d = serve(request, spans, representation, decision, sendfile=self.sendfile)
        except Exception:
            return answer_failure(request, Failure())
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def done(body: bytes) -> None:
            self.outcomes.append("done")
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            self.outcomes.append(failure.value)

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    def _ready(self, index: int) -> Any:
        async def ready() -> bool:
            self.checked.append((index, self.requests[-1].sentLength))
            return index not in self.failing

        return ready


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def serving(loop: Loop, tmp_path: Path, data: bytes, sendfile: bool = True, tls: bool = False
            ) -> tuple[ChunkFile, int]:
    path = tmp_path / "song"
    path.write_bytes(data)
    resource = ChunkFile(path, len(data), sendfile)
    return resource, (loop.listen_tls if tls else loop.listen)(Site(resource))


SIZES = [1, 1000, 65536, CHUNK, CHUNK + 1, 3 * CHUNK + 12345]


def test_bodies_of_any_size_and_range_are_exact_over_one_keep_alive_connection(
    loop: Loop, tmp_path: Path,
) -> None:
    data = content(max(SIZES))
    resource, port = serving(loop, tmp_path, data)
    wanted: list[tuple[str | None, bytes]] = [(None, data)]
    for first, last in [(0, 0), (1, 999), (CHUNK - 1, CHUNK), (CHUNK, 2 * CHUNK - 1),
                        (12345, len(data) - 1), (len(data) - 1, len(data) - 1)]:
        wanted.append((f"bytes={first}-{last}", data[first:last + 1]))
    wanted.append(("bytes=-70000", data[-70000:]))
    client = Client(port)

    def fetch() -> list[tuple[int, dict[str, str], bytes]]:
        return [client.get("/", {"Range": header} if header else {}) for header, _ in wanted]

    answers = loop.run(fetch)
    client.close()

    for (header, expected), (status, headers, body) in zip(wanted, answers, strict=True):
        assert status == (206 if header else 200), header
        assert headers["content-length"] == str(len(expected))
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest(), header
    assert [r.sentLength for r in resource.requests] == [len(b) for _, b in wanted]
    assert resource.outcomes == ["done"] * len(wanted)


@pytest.mark.parametrize("size", SIZES)
def test_whole_files_of_many_sizes(loop: Loop, tmp_path: Path, size: int) -> None:
    data = content(size, seed=size)
    _, port = serving(loop, tmp_path, data)
    client = Client(port)

    status, _, body = loop.run(lambda: client.get("/"))
    client.close()

    assert status == 200 and body == data


def test_the_body_goes_out_with_sendfile_on_a_tcp_socket(
    loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = ranges.send_spans

    def spy(request: Request, spans: Any, sock: Any) -> Deferred[bytes]:
        calls.append(len(spans))
        return real(request, spans, sock)

    monkeypatch.setattr(ranges, "send_spans", spy)
    data = content(2 * CHUNK)
    _, port = serving(loop, tmp_path, data)
    client = Client(port)

    status, _, body = loop.run(lambda: client.get("/"))
    client.close()

    assert status == 200 and body == data and calls == [2]


def test_without_sendfile_or_a_socket_the_span_producer_serves() -> None:
    assert plain_socket(StringTransport()) is None


def test_over_tls_the_span_producer_serves_the_same_bytes(
    loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(ranges, "send_spans", lambda *args: calls.append(1))
    data = content(3 * CHUNK + 99)
    resource, port = serving(loop, tmp_path, data, tls=True)
    client = loop.run(lambda: Client(port, tls=True))  # the handshake needs the reactor

    answers = loop.run(lambda: [client.get("/"), client.get("/", {"Range": "bytes=1000-"})])
    client.close()

    assert [(status, body) for status, _, body in answers] == [(200, data), (206, data[1000:])]
    assert calls == [] and plain_socket(resource.transports[0]) is None
    assert len({id(t) for t in resource.transports}) == 1  # one kept-alive TLS connection
    assert resource.outcomes == ["done", "done"]


def test_a_slow_reader_is_the_backpressure_and_nothing_is_buffered(
    loop: Loop, tmp_path: Path,
) -> None:
    data = content(8 * 1024 * 1024)
    resource, port = serving(loop, tmp_path, data)
    peak = [0]

    def watch() -> None:
        for transport in resource.transports:
            peak[0] = max(peak[0], buffered(transport))

    def slow() -> bytes:
        sock = connect(port, rcvbuf=16 * 1024)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, body = read_head(sock)
        while len(body) < len(data):
            body += sock.recv(16 * 1024)
            if len(body) < 256 * 1024:
                time.sleep(0.002)  # the reader's pace, not a wait for a condition
        sock.close()
        return body

    body = loop.run(slow, each=watch)

    assert body == data
    assert peak[0] < 4096  # only the headers ever sit in Twisted's buffer
    assert resource.outcomes == ["done"]


def test_a_reader_that_leaves_mid_body_stops_the_sender(loop: Loop, tmp_path: Path) -> None:
    data = content(16 * 1024 * 1024)
    resource, port = serving(loop, tmp_path, data)

    def leave() -> int:
        sock = connect(port, rcvbuf=16 * 1024)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, body = read_head(sock)
        got, _ = read_to_end(sock, 200_000 - len(body))
        sock.close()
        return len(body) + len(got)

    loop.run(leave)
    loop.until(lambda: resource.outcomes, what="the sender to stop")

    assert isinstance(resource.outcomes[0], CancelledError)
    assert resource.requests[0].sentLength < len(data)
    assert resource.requests[0].producer is None  # finishing it later raises nothing
    client = Client(port)
    assert loop.run(lambda: client.get("/", {"Range": "bytes=0-9"}))[2] == data[:10]
    client.close()


def test_a_chunk_is_checked_before_its_bytes_and_a_failed_check_tears_the_connection(
    loop: Loop, tmp_path: Path,
) -> None:
    data = content(3 * CHUNK)
    resource, port = serving(loop, tmp_path, data)
    resource.failing = {2}

    def fetch() -> tuple[bytes, bytes, str]:
        sock = connect(port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_head(sock)
        rest, end = read_to_end(sock)
        sock.close()
        return head, body + rest, end

    head, body, end = loop.run(fetch)

    assert b"Content-Length: %d" % len(data) in head
    # A reset may drop what the client had not read yet: what it got is a prefix, never more.
    assert data[:2 * CHUNK].startswith(body) and end in ("eof", "reset")
    assert resource.checked == [(0, 0), (1, CHUNK), (2, 2 * CHUNK)]


def test_a_file_shorter_than_its_registry_tears_the_connection(
    loop: Loop, tmp_path: Path,
) -> None:
    data = content(CHUNK)
    resource, port = serving(loop, tmp_path, data)
    resource.size = CHUNK + 1000  # the registry promises more than the file holds

    def fetch() -> tuple[bytes, str]:
        sock = connect(port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, body = read_head(sock)
        rest, end = read_to_end(sock)
        sock.close()
        return body + rest, end

    body, end = loop.run(fetch)

    assert data.startswith(body) and end in ("eof", "reset")


def test_head_304_and_416_send_no_body_and_keep_the_connection(
    loop: Loop, tmp_path: Path,
) -> None:
    data = content(CHUNK + 5)
    _, port = serving(loop, tmp_path, data)
    client = Client(port)

    def fetch() -> list[tuple[int, dict[str, str], bytes]]:
        return [
            client.get("/", method="HEAD"),
            client.get("/", {"If-None-Match": '"' + "e" * 64 + '"'}),
            client.get("/", {"Range": f"bytes={len(data)}-"}),
            client.get("/"),
        ]

    head, not_modified, unsatisfiable, whole = loop.run(fetch)
    client.close()

    assert head[0] == 200 and head[2] == b"" and head[1]["content-length"] == str(len(data))
    assert not_modified[0] == 304 and not_modified[2] == b""
    assert unsatisfiable[0] == 416
    assert unsatisfiable[1]["content-range"] == f"bytes */{len(data)}"
    assert whole[0] == 200 and whole[2] == data


def test_the_userspace_path_serves_the_same_bytes(loop: Loop, tmp_path: Path) -> None:
    data = content(CHUNK + 777)
    _, port = serving(loop, tmp_path, data, sendfile=False)
    client = Client(port)

    status, _, body = loop.run(lambda: client.get("/", {"Range": "bytes=100-"}))
    client.close()

    assert status == 206 and body == data[100:]


def test_a_cancelled_stream_is_answered_with_nothing_and_logged_as_a_client_gone() -> None:
    request = Request(DummyChannel(), False)
    request.method, request.uri = b"GET", b"/songs/x/stream"

    with capturedLogs() as events:
        body = answer_failure(request, Failure(CancelledError("the connection is gone")))

    assert body == b"" and request.code == 200  # no status or body written for nobody
    assert [e["log_level"] for e in events] == [LogLevel.info]
    assert "the client went away" in formatEvent(events[0])
