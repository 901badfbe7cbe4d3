"""Request bodies spooled off the reactor thread: written by the pool in order, the client
paused while too much waits, the resource called once all is written, 507 on a full disk."""

from __future__ import annotations

import errno
import gc
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from distpotify.bodylimit import HIGH_WATER, LOW_WATER, LimitedRequest


class HeldPool:
    """A thread pool whose work runs only when the test says so."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[..., None], Callable[..., Any], tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, done: Callable[..., None], f: Callable[..., Any],
                                 *args: Any) -> None:
        self.queued.append((done, f, args))

    def run_one(self) -> None:
        done, f, args = self.queued.pop(0)
        try:
            result = f(*args)
        except Exception as e:
            done(False, Failure(e))
        else:
            done(True, result)


class Reactor(Clock):
    """A Clock with a thread pool: what the spool needs of the reactor."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = HeldPool()

    def getThreadPool(self) -> HeldPool:
        return self.pool

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


class Echo(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request: server.Request) -> bytes:
        assert request.content is not None
        self.bodies.append(request.content.read())
        return b"ok"


class LimitedSite(server.Site):
    requestFactory = LimitedRequest

    def __init__(self, resource: Resource, reactor: Reactor, spool_dir: Path) -> None:
        super().__init__(resource)
        self.max_body = 64 << 20
        self.spool_dir: Path | None = spool_dir
        self.clock = reactor
        self.served_by: str | None = "7"

    def spool_file(self, request: LimitedRequest) -> IO[bytes] | None:
        return None


def connect(site: LimitedSite) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def post_head(length: int) -> bytes:
    return (f"POST /songs HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n").encode()


def test_a_large_body_is_written_by_the_pool_and_seen_once_it_is_all_on_disk(
    tmp_path: Path,
) -> None:
    reactor, echo = Reactor(), Echo()
    channel, transport = connect(LimitedSite(echo, reactor, tmp_path))
    body = bytes(range(256)) * 1000

    channel.dataReceived(post_head(len(body)) + body[:100_000])
    channel.dataReceived(body[100_000:])

    assert echo.bodies == [] and reactor.pool.queued  # nothing written on this thread
    while reactor.pool.queued:
        reactor.pool.run_one()
    assert echo.bodies == [body]
    assert transport.value().startswith(b"HTTP/1.1 200")


def test_the_client_is_paused_while_too_much_waits_to_be_written(tmp_path: Path) -> None:
    reactor = Reactor()
    channel, transport = connect(LimitedSite(Echo(), reactor, tmp_path))
    block = b"x" * (1 << 20)
    channel.dataReceived(post_head(8 * len(block)))

    for _ in range(6):
        channel.dataReceived(block)  # the first write goes out; the rest wait
    assert transport.producerState == "paused"

    while reactor.pool.queued and transport.producerState == "paused":
        reactor.pool.run_one()
    assert transport.producerState == "producing"
    assert HIGH_WATER > LOW_WATER


def test_a_full_disk_is_507_and_the_resource_never_sees_the_request(
    tmp_path: Path,
) -> None:
    reactor, echo = Reactor(), Echo()
    channel, transport = connect(LimitedSite(echo, reactor, tmp_path))
    body = b"y" * 300_000
    channel.dataReceived(post_head(len(body)) + body[:150_000])

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    done, _, args = reactor.pool.queued.pop(0)
    reactor.pool.queued.insert(0, (done, full, args))
    reactor.pool.run_one()
    channel.dataReceived(body[150_000:])
    while reactor.pool.queued:
        reactor.pool.run_one()

    head, _, answer = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 507 Insufficient Storage")
    assert b"X-Served-By: 7" in head
    assert json.loads(answer)["error"] == "insufficient_storage"
    assert echo.bodies == []


def test_a_small_body_stays_in_memory_and_is_seen_at_once(tmp_path: Path) -> None:
    reactor, echo = Reactor(), Echo()
    channel, _ = connect(LimitedSite(echo, reactor, tmp_path))

    channel.dataReceived(post_head(5) + b"hello")

    assert echo.bodies == [b"hello"] and reactor.pool.queued == []


class FullDisk(io.RawIOBase):
    """A file on a full disk: every write that reaches it fails."""

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return 0

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_met_by_a_buffered_write_is_507_not_an_unhandled_error(
    tmp_path: Path,
) -> None:
    """A buffered spool (a temp file) keeps a body's tail in memory until it is flushed: the
    flush, not the write, meets the full disk. It happens on the pool, where a failed write is
    a 507, and not in the reactor's seek before the resource is called."""
    reactor, echo = Reactor(), Echo()
    site = LimitedSite(echo, reactor, tmp_path)
    spool = io.BufferedRandom(FullDisk(), buffer_size=1 << 20)
    site.spool_file = lambda request: spool  # type: ignore[method-assign]
    channel, transport = connect(site)
    body = b"z" * 300_000  # all of it fits in the buffer

    channel.dataReceived(post_head(len(body)) + body)
    while reactor.pool.queued:
        reactor.pool.run_one()

    head, _, answer = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 507 Insufficient Storage")
    assert json.loads(answer)["error"] == "insufficient_storage"
    assert echo.bodies == []


def test_a_client_gone_while_its_body_is_written_leaves_no_unhandled_error(
    tmp_path: Path,
) -> None:
    """twisted.web closes the body when the connection is lost, under the pool's write: that
    write fails, and nobody is left to refuse (the channel is gone)."""
    reactor, echo = Reactor(), Echo()
    channel, transport = connect(LimitedSite(echo, reactor, tmp_path))
    body = b"w" * 300_000
    channel.dataReceived(post_head(len(body)) + body[:150_000])
    channel.connectionLost(Failure(ConnectionDone()))
    with capturedLogs() as events:
        while reactor.pool.queued:
            reactor.pool.run_one()
        del channel
        gc.collect()  # a Deferred that ends in a failure logs it once collected

    assert [event for event in events if "log_failure" in event] == []
    assert transport.value() == b"" and echo.bodies == []
