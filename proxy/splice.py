"""A response body moved from a replica's socket to the client's with splice(2), through a
pipe, never entering Python: the exchange's relay for a GET body when both sockets are plain.

Driven by readiness events: while it waits for the replica's socket the relay holds that
socket's read interest itself (the lean client's transport gives it up and takes it back
after); the client's side is waited for through its own transport (distpotify/zerocopy.py), so
the client's pace is the backpressure. Every byte that reaches the client's socket is counted
(``moved``), which is where a resume elsewhere starts. ``done`` fires like resource._Relay's:
None once every byte is in the client's socket, else the exception that ended the body;
bytes already in the pipe when the replica fails still go to the client first.
"""
# test-case-name: tests.unit.test_splice

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from distpotify.leanclient import BodySource
from distpotify.zerocopy import resume_when_drained

log = Logger()

AVAILABLE = hasattr(os, "splice")
# Bytes a pipe holds (F_SETPIPE_SZ): one 256 KiB chunk per fill, in the kernel.
PIPE_SIZE = 256 * 1024
# A body shorter than this after its headers is cheaper to copy than to splice.
MIN_SPLICE = 16 * 1024
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_MAX_IDLE_PIPES = 64
# Bytes moved in one reactor turn at most, so one fast listener does not hold the reactor.
TURN = 1024 * 1024


class UpstreamStalled(Exception):
    """A replica sent no byte of a body for ``stall_timeout`` while the client was reading."""


class Pipes:
    """Empty pipes kept for the next splice: two syscalls fewer per body."""

    def __init__(self) -> None:
        self._idle: list[tuple[int, int]] = []

    def take(self) -> tuple[int, int]:
        if self._idle:
            return self._idle.pop()
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Over the user's pipe allowance the default size stays: it works, with more calls.
        with contextlib.suppress(OSError):
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        return read, write

    def give(self, pipe: tuple[int, int], empty: bool) -> None:
        if empty and len(self._idle) < _MAX_IDLE_PIPES:
            self._idle.append(pipe)
        else:
            for fd in pipe:
                os.close(fd)

    def capacity(self, pipe: tuple[int, int]) -> int:
        return int(fcntl.fcntl(pipe[1], fcntl.F_GETPIPE_SZ))


@implementer(IReadDescriptor)
class _Readable:
    """The replica's socket, registered with the reactor while the relay waits to read it."""

    def __init__(self, fileno: Callable[[], int], wake: Callable[[], None],
                 lost: Callable[[], None]) -> None:
        self.fileno = fileno
        self._wake = wake
        self._lost = lost

    def doRead(self) -> None:
        self._wake()

    def connectionLost(self, reason: Failure) -> None:
        self._lost()  # a hang-up (the reactor dropped us): the next splice says what happened

    def logPrefix(self) -> str:
        return "splice"


class SpliceRelay:
    """Moves ``source``'s remaining bytes to the client's socket.

    ``deliver(data)`` writes bytes through the request (the headers, and what came with
    them) and ``spliced(n)`` counts bytes that went around it; the client's sink calls
    ``pause`` and ``resume`` as the client's transport fills and drains.
    """

    def __init__(self, source: BodySource, client_transport: Any, client_socket: Any,
                 pipes: Pipes, clock: IReactorTime, stall_timeout: float,
                 deliver: Callable[[bytes], None], spliced: Callable[[int], None]) -> None:
        self._source = source
        self._client = client_transport
        self._client_socket = client_socket
        self._pipes = pipes
        self._clock = clock
        self._stall_timeout = stall_timeout
        self._deliver = deliver
        self._spliced = spliced
        self._reactor = source.transport.reactor
        self._readable = _Readable(source.socket.fileno, self._upstream_ready,
                                   self._upstream_lost)
        self._reading = False
        self._waiting = ""  # "client", "replica", "end" (the exchange cancels), or ""
        self._wake: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._in_pipe = 0
        self._turn = 0  # bytes moved since the reactor last ran
        self.moved = 0

    def start(self) -> Deferred[BaseException | None]:
        """Deliver what came with the headers, then splice the rest; the outcome, as ``done``
        of resource._Relay (never an errback but a cancellation)."""
        return Deferred.fromCoroutine(self._run())

    async def _run(self) -> BaseException | None:
        pipe = self._pipes.take()
        outcome: BaseException | None = None
        try:
            self._deliver(self._source.leftover)
            await self._move(pipe)
        except CancelledError:
            self._end(pipe, clean=False)
            raise
        except Exception as e:
            outcome = e
        self._end(pipe, clean=outcome is None)
        return outcome

    def _end(self, pipe: tuple[int, int], clean: bool) -> None:
        self._stop_reading()
        self._waiting = ""
        if clean:
            self._source.release()  # exactly the body was read: the connection is reusable
        else:
            self._source.abort()
        self._pipes.give(pipe, empty=self._in_pipe == 0)

    async def _move(self, pipe: tuple[int, int]) -> None:
        """Splice until every byte is in the client's socket; raise at the first failure,
        once what the pipe holds has gone to the client."""
        read_end, write_end = pipe
        capacity = self._pipes.capacity(pipe)
        upstream, client = self._source.socket, self._client_socket
        remaining = self._source.remaining
        failure: Exception | None = None
        await self._client_writable()  # the headers and the leftover go first
        while (remaining and failure is None) or self._in_pipe:
            if self._turn >= TURN:
                await self._client_writable()
            if remaining and failure is None and self._in_pipe < capacity:
                try:
                    n = os.splice(upstream.fileno(), write_end,
                                  min(remaining, capacity - self._in_pipe), flags=_FLAGS)
                except BlockingIOError:
                    if not self._in_pipe:
                        await self._upstream_readable()
                        continue
                except OSError as e:
                    failure = ConnectionLost(f"reading the replica's socket: {e}")
                else:
                    if n == 0:
                        failure = ConnectionDone(f"the replica closed {remaining} bytes short")
                    self._in_pipe += n
                    remaining -= n
            if self._in_pipe:
                try:
                    n = os.splice(read_end, client.fileno(), self._in_pipe, flags=_FLAGS)
                except BlockingIOError:
                    await self._client_writable()
                    continue
                except OSError:
                    # The client went away: its transport notices, and the exchange cancels us.
                    self._client.abortConnection()
                    await self._until_cancelled()
                self._in_pipe -= n
                self._turn += n
                self.moved += n
                self._spliced(n)
        if failure is not None:
            raise failure

    # waiting

    def _client_writable(self) -> Deferred[None]:
        # Without read interest meanwhile: a readable replica would wake the reactor for
        # nothing while the pipe is full.
        self._turn = 0
        self._stop_reading()
        if self._client.disconnected:
            raise CancelledError("the client's connection is gone")
        self._waiting = "client"
        self._wake = Deferred()
        resume_when_drained(self._client)
        return self._wake

    def _upstream_readable(self) -> Deferred[None]:
        self._turn = 0
        if not self._reading:
            self._reading = True
            self._reactor.addReader(self._readable)
        self._waiting = "replica"
        self._wake = Deferred()
        self._arm()
        return self._wake

    def _until_cancelled(self) -> Deferred[None]:
        self._waiting = "end"
        self._wake = Deferred()
        return self._wake

    def _upstream_lost(self) -> None:
        self._reading = False  # the reactor removed the reader itself
        self._upstream_ready()

    def _upstream_ready(self) -> None:
        if self._waiting == "replica":
            self._disarm()
            self._fire()

    def _fire(self) -> None:
        self._waiting = ""
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)

    def _stop_reading(self) -> None:
        self._disarm()
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self._readable)

    # the client's sink

    def pause(self) -> None:
        """The client's transport is full: nothing to do, the relay waits for its drain."""

    def resume(self) -> None:
        if self._waiting == "client":
            self._fire()

    # the stall timer: runs only while the relay waits for the replica

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._stall_timeout)
        else:
            self._timer = self._clock.callLater(self._stall_timeout, self._stall)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stall(self) -> None:
        self._timer = None
        self._waiting = ""
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.errback(UpstreamStalled(f"no data for {self._stall_timeout:g} s"))
