"""A twisted.web request whose body is spooled off the reactor thread, and refused early when it
is too large (413) or the disk is full (507).

twisted.web reads a whole request body before the resource sees it. This request class
spools it to an anonymous temp file (a small one stays in memory), written by a worker thread
so the reactor never waits on the disk; the client is paused while too much waits to be
written, and the resource sees the request once all of it is on disk. It answers 413 as soon
as the declared, or received, length passes the site's limit, and 507 when the spool cannot
be written, before the rest of the body is read or stored. The replicas and the proxy both
use it: it is HTTP only, with no replica internals, which keeps the proxy independent of the
replica (docs/architecture.md section 8).

The site provides ``max_body`` (bytes), ``spool_dir`` (None: the system's temp dir),
``spool_file`` (a file of its own for a request's body, or None for a temp file), ``clock``
(the reactor: its thread pool writes the spool; a test's Clock has none, and the spool is
written at once), and ``served_by`` (the X-Served-By of a refusal, or None).
"""
# test-case-name: tests.unit.test_bodylimit,tests.integration.test_replica

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import IO, Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from distpotify.diskfull import what_is_full
from distpotify.wire import error_json

log = Logger()

SPOOL_THRESHOLD = 100_000  # bodies declared shorter stay in memory
LINGER = 5.0  # seconds a refused client may keep sending before its connection closes
HIGH_WATER = 4 << 20  # bytes waiting for the spool's thread before the client is paused
LOW_WATER = 1 << 20  # ... and resumed


class Limits(Protocol):
    max_body: int
    spool_dir: Path | None
    clock: Any
    served_by: str | None

    def spool_file(self, request: LimitedRequest) -> IO[bytes] | None:
        """Where this request's body goes instead of a temp file (a replica spools a raw
        upload straight into chunk files: store/chunkspool.py), or None."""


class Spool:
    """A body written to its file in order by worker threads, one write at a time, each
    carrying everything that arrived meanwhile. The sender is paused while more than
    HIGH_WATER bytes wait; ``failed`` is told of the first write that fails; ``drained``
    fires once nothing is being written."""

    def __init__(self, file: IO[bytes], reactor: Any, *, pause: Callable[[], object],
                 resume: Callable[[], object],
                 failed: Callable[[BaseException], object]) -> None:
        self.file = file
        self._reactor = reactor
        self._pause = pause
        self._resume = resume
        self._failed_with = failed
        self._waiting: list[bytes] = []
        self._owed = 0  # bytes received and not yet written
        self._writing = False
        self._paused = False
        self._stopped = False
        self._drained: list[Deferred[None]] = []

    def write(self, data: bytes) -> None:
        if self._stopped:
            return
        self._waiting.append(data)
        self._owed += len(data)
        if self._owed > HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()
        if not self._writing:
            self._next()

    def stop(self) -> None:
        """Write nothing more (the request was refused); what waits is dropped."""
        self._stopped = True
        self._waiting = []
        if self._paused:
            self._paused = False
            self._resume()  # the rest is read and dropped: the answer is the refusal

    def drained(self) -> Deferred[None]:
        if not self._writing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def _next(self) -> None:
        if not self._waiting:
            self._writing = False
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)
            return
        data = b"".join(self._waiting)
        self._waiting = []
        self._writing = True
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), _write_all,
                              self.file, data)
        d.addCallbacks(self._written, self._failed, callbackArgs=(len(data),))

    def _written(self, _: object, size: int) -> None:
        self._owed -= size
        if self._paused and self._owed <= LOW_WATER:
            self._paused = False
            self._resume()
        self._next()

    def _failed(self, failure: Failure) -> None:
        if not self._stopped:
            self.stop()
            self._failed_with(failure.value or RuntimeError(failure.getErrorMessage()))
        self._next()


def _write_all(file: IO[bytes], data: bytes) -> None:
    file.write(data)
    # A buffered file (a temp file) keeps the tail: flushed here, a full disk is met on this
    # thread as a failed write (507), not by the reactor's seek before the resource is called.
    file.flush()


def _discard(content: IO[bytes]) -> None:
    """Close a refused body's file. A buffered one flushes its tail first, which fails again
    on a full disk: the file is closed all the same, and the body is not wanted."""
    with contextlib.suppress(OSError):
        content.close()


class LimitedRequest(server.Request):
    _refused = False
    _received = 0
    _spool: Spool | None = None

    @property
    def _limits(self) -> Limits:
        site: Limits = self.channel.site  # type: ignore[attr-defined]
        return site

    def _transport(self) -> Any:
        assert self.channel.transport is not None
        return self.channel.transport

    def gotLength(self, length: int | None) -> None:
        limits = self._limits
        if length is not None and length > limits.max_body:
            self._refuse_too_large(limits, length)
        elif length is not None and length < SPOOL_THRESHOLD:
            self.content = BytesIO()
        else:
            self.content = (limits.spool_file(self)
                            or tempfile.TemporaryFile(dir=limits.spool_dir))  # noqa: SIM115
            if hasattr(limits.clock, "getThreadPool"):
                transport = self._transport()
                self._spool = Spool(
                    self.content, limits.clock, pause=transport.pauseProducing,
                    resume=transport.resumeProducing,
                    failed=self._spool_failed)

    def request_line(self) -> tuple[bytes, bytes]:
        """The method and target of a request whose body is arriving: twisted.web sets
        ``method`` and ``uri`` only once the body is whole, its channel knows them before."""
        channel = self.channel
        return getattr(channel, "_command", b""), getattr(channel, "_path", b"")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        limits = self._limits
        if self._received > limits.max_body:
            self._refuse_too_large(limits, self._received)
            return
        if self._spool is not None:
            self._spool.write(data)
            return
        assert self.content is not None
        try:
            self.content.write(data)
        except OSError as e:
            self._refuse_unwritable(limits, e)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._spool is not None and not self._refused:
            # The resource sees the body once all of it is in the file.
            spool = self._spool
            spool.drained().addCallback(lambda _: self._received_all(command, path, version))
            return
        self._received_all(command, path, version)

    def _received_all(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            self._transport().loseConnection()
            return
        if self._disconnected:
            return  # the client went away while the spool was written
        super().requestReceived(command, path, version)

    def _spool_failed(self, error: BaseException) -> None:
        if self._disconnected:
            # The client went away, and twisted.web closed the body under the write: nobody
            # is there to refuse (and the channel is gone).
            return
        self._refuse_unwritable(self._limits, error)

    def _refuse_too_large(self, limits: Limits, length: int) -> None:
        self._refuse(limits, 413, "Content Too Large", "too_large",
                     f"request body of {length} bytes exceeds the limit of {limits.max_body}")
        log.info("refused a body of {length} bytes (limit {limit})",
                 length=length, limit=limits.max_body)

    def _refuse_unwritable(self, limits: Limits, error: BaseException) -> None:
        if what_is_full(error) is not None:
            self._refuse(limits, 507, "Insufficient Storage", "insufficient_storage",
                         "the disk is full: the request body could not be stored; nothing"
                         " was changed (retry once space is freed)")
        else:
            self._refuse(limits, 500, "Internal Server Error", "internal",
                         "the request body could not be stored")
        log.error("a request body could not be spooled: {error}", error=error)

    def _refuse(self, limits: Limits, status: int, reason: str, code: str, message: str) -> None:
        """Answer now, discard the rest of the body, and close the connection."""
        self._refused = True
        content, self.content = self.content, BytesIO()
        if self._spool is not None:
            self._spool.stop()
            if content is not None:
                self._spool.drained().addCallback(lambda _: _discard(content))
        elif content is not None:
            _discard(content)
        # No "100 Continue" after a final answer: the client need not send the body at all.
        self.requestHeaders.removeHeader(b"Expect")
        body = error_json(code, message)
        served_by = f"X-Served-By: {limits.served_by}\r\n" if limits.served_by else ""
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{served_by}"
            "Connection: close\r\n\r\n"
        )
        transport = self._transport()
        transport.write(head.encode() + body)
        # Keep reading (and dropping) for a moment so the client sees the answer, not a reset.
        limits.clock.callLater(LINGER, transport.loseConnection)
