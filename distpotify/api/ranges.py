"""Serving immutable bytes over HTTP: Range, If-Range, ETag, and a push producer over files.

A resource is a list of spans (file, offset, length); a chunk is one span, a whole song is
one span per chunk. Files are read 64 KiB at a time, only as fast as the client takes them.
A span may carry a ``ready`` check (a song's chunk: verified, or repaired, before its bytes
go out); the producer waits for it when it reaches that span, not before the first byte.
A span whose check fails tears the connection: the headers promised its bytes.
"""
# test-case-name: tests.unit.test_ranges

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from distpotify.errors import RangeNotSatisfiable

log = Logger()

BLOCK = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@attrs.frozen
class Span:
    path: Path
    offset: int
    length: int
    # Checked when the producer reaches this span; False (or an error) aborts the response.
    ready: Callable[[], Coroutine[Any, Any, bool]] | None = attrs.field(default=None, eq=False)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range asked for, or None for the whole resource.

    Malformed headers and multiple ranges are ignored (RFC 9110 lets a server send 200);
    a well-formed range that lies outside the resource raises RangeNotSatisfiable.
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size - 1)


def slice_spans(spans: Sequence[Span], start: int, end: int) -> list[Span]:
    """The parts of ``spans`` that cover bytes ``start..end`` (inclusive) of their concatenation."""
    out, position = [], 0
    for span in spans:
        lo, hi = max(start, position), min(end + 1, position + span.length)
        if lo < hi:
            out.append(Span(span.path, span.offset + lo - position, hi - lo, span.ready))
        position += span.length
    return out


def serve(
    request: Request,
    spans: Sequence[Span],
    *,
    etag: str,
    content_type: str,
) -> Deferred[bytes]:
    """Answer ``request`` with the bytes of ``spans``, honouring Range and If-Range.

    Fires (with b"") once the last byte is written; cancelling it stops reading.
    """
    size = sum(span.length for span in spans)
    quoted = f'"{etag}"'
    request.setHeader(b"ETag", quoted.encode())
    request.setHeader(b"Accept-Ranges", b"bytes")
    request.setHeader(b"Cache-Control", b"public, max-age=31536000, immutable")
    request.setHeader(b"Content-Type", content_type.encode())
    if quoted in _header(request, b"If-None-Match").split(", "):
        request.setResponseCode(304)
        return Deferred.fromCoroutine(_nothing())
    chosen = wanted_range(request, size, etag)
    if chosen is None:
        start, end = 0, size - 1
    else:
        start, end = chosen
        request.setResponseCode(206)
        request.setHeader(b"Content-Range", f"bytes {start}-{end}/{size}".encode())
    request.setHeader(b"Content-Length", str(end - start + 1).encode())
    if request.method == b"HEAD" or end < start:
        return Deferred.fromCoroutine(_nothing())
    return SpanProducer(request, slice_spans(spans, start, end)).start()


def wanted_range(request: Request, size: int, etag: str) -> tuple[int, int] | None:
    """The range the request asks for (None: all of it), with If-Range honoured."""
    if_range = _header(request, b"If-Range")
    if if_range and if_range != f'"{etag}"':
        return None
    return parse_range(_header(request, b"Range") or None, size)


async def _nothing() -> bytes:
    return b""


def _header(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else (value or "")


@implementer(IPushProducer)
class SpanProducer:
    """A push producer: writes blocks until the transport pauses it, resumes when it drains."""

    def __init__(self, request: Request, spans: Sequence[Span]) -> None:
        self._request = request
        self._spans = list(reversed(spans))
        self._file: IO[bytes] | None = None
        self._left = 0
        self._paused = False
        self._finished = False
        self._checking: Deferred[bool] | None = None  # the next span's ready check, running
        self._checked: tuple[Span, object] | None = None  # its outcome, once known
        self._reading = False
        self._done: Deferred[bytes] = Deferred(lambda d: self.stopProducing())

    def start(self) -> Deferred[bytes]:
        self._request.registerProducer(self, True)
        self.resumeProducing()
        return self._done

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and not self._finished and self._checking is None:
            self._reading = True
            try:
                block = self._read()
            except OSError as e:
                self._abort(str(e))
                return
            finally:
                self._reading = False
            if block is None:
                return  # a span's check runs; _check_done resumes
            if not block:
                self._finish()
                return
            self._request.write(block)

    def _abort(self, why: str) -> None:
        log.warn("stream aborted: {error}", error=why)
        self.stopProducing()
        # Headers promised a length: a torn connection, never a short clean response.
        self._request.channel.transport.abortConnection()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._finished = True
        self._close()
        self._spans.clear()

    def _finish(self) -> None:
        self.stopProducing()
        self._request.unregisterProducer()
        if not self._done.called:
            self._done.callback(b"")

    def _read(self) -> bytes | None:
        """The next block; b"" at the end; None while the next span's check runs."""
        while self._left == 0:
            self._close()
            if not self._spans:
                return b""
            span = self._spans[-1]
            if span.ready is not None:
                if self._checked is None or self._checked[0] is not span:
                    self._checking = Deferred.fromCoroutine(span.ready())
                    self._checking.addBoth(self._check_done, span)
                    if self._checking is not None:
                        return None
                assert self._checked is not None
                if self._checked[1] is not True:
                    raise OSError(f"{span.path.name} is not available: {self._checked[1]}")
            self._spans.pop()
            self._file = open(span.path, "rb")  # noqa: SIM115 - closed by _close
            self._file.seek(span.offset)
            self._left = span.length
        assert self._file is not None
        block = self._file.read(min(BLOCK, self._left))
        if not block:
            raise OSError(f"{self._file.name} is shorter than its registry says")
        self._left -= len(block)
        return block

    def _check_done(self, outcome: object, span: Span) -> None:
        self._checking = None
        self._checked = (span, outcome)
        if isinstance(outcome, Failure):
            self._checked = (span, outcome.getErrorMessage())
        if not self._reading and not self._finished and not self._paused:
            self.resumeProducing()  # the check finished later: go on from here

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
