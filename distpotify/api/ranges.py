"""Serving immutable bytes over HTTP: preconditions, Range, and a push producer over files.

A request is decided once (``decide``), in RFC 9110 section 13.2.2's order: If-Match,
If-Unmodified-Since, If-None-Match, If-Modified-Since, then Range with If-Range; werkzeug
parses every one of those fields. A resource is a list of spans (file, offset, length); a
chunk is one span, a whole song is one span per chunk. On a plain TCP connection the spans go
out with sendfile(2) (sendfile.py); otherwise files are read 64 KiB at a time; either way
only as fast as the client takes them. A span may carry a ``ready`` check (a song's chunk:
verified, or repaired, before its bytes go out); the producer waits for it when it reaches
that span, not before the first byte. A span whose check fails tears the connection: the
headers promised its bytes.
"""
# test-case-name: tests.unit.test_ranges, tests.unit.test_conditional

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from werkzeug.http import (
    http_date,
    parse_date,
    parse_etags,
    parse_if_range_header,
    parse_range_header,
    quote_etag,
)
from zope.interface import implementer

from distpotify.api.sendfile import send_spans
from distpotify.errors import PreconditionFailed, RangeNotSatisfiable
from distpotify.zerocopy import plain_socket

log = Logger()

BLOCK = 64 * 1024
# Songs and chunks never change under their ids: caches may keep them for good.
IMMUTABLE = b"public, max-age=31536000, immutable"
# More than any size a file can have (2**63 bytes), and few enough digits for int().
_BEYOND_ANY_SIZE = "9" * 19
_NUMBER = re.compile(r"[0-9]+")


@attrs.frozen
class Span:
    path: Path
    offset: int
    length: int
    # Checked when the producer reaches this span; False (or an error) aborts the response.
    ready: Callable[[], Coroutine[Any, Any, bool]] | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Representation:
    """What a GET selects: its length, validators and media type."""

    size: int
    etag: str  # the opaque tag, unquoted: the SHA-256 of the bytes, in hex
    content_type: str
    # Last-Modified, whole seconds; None when unknown (date conditions are then ignored).
    modified: datetime.datetime | None = None


@attrs.frozen
class Decision:
    """How a request is answered: 200 (all bytes), 206 (``first..last``) or 304 (none)."""

    status: int
    first: int
    last: int  # inclusive; below ``first`` when no byte is sent
    modified: datetime.datetime | None  # the Last-Modified to send


def modified_at(created_at: str | None) -> datetime.datetime | None:
    """A record's ``created_at`` (ISO 8601, UTC) as a Last-Modified: whole seconds, or None."""
    try:
        moment = datetime.datetime.fromisoformat(created_at or "")
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.replace(microsecond=0)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range asked for, or None for the whole resource.

    werkzeug parses the header; anything it refuses, another unit, and a satisfiable set of
    several ranges are answered with the whole resource (RFC 9110 section 14.2 lets a server
    ignore Range). A set none of whose ranges is satisfiable raises RangeNotSatisfiable.
    """
    parsed = parse_range_header(_normalized(header)) if header else None
    if parsed is None or parsed.units != "bytes":
        return None
    satisfiable = [_bounds(begin, end, size) for begin, end in parsed.ranges]
    if not any(satisfiable):
        raise RangeNotSatisfiable(size)
    return satisfiable[0] if len(satisfiable) == 1 else None


def _normalized(header: str) -> str:
    """``header`` with what werkzeug would wrongly refuse put in the form it takes.

    Empty list elements go (RFC 9110 section 5.6.1.2: a recipient ignores them); a number
    of more than 19 significant digits, past any size, becomes one of 19 nines, so Python's
    4300-digit limit on int() never decides the answer; a suffix of zero bytes, valid but
    unsatisfiable (14.1.1), becomes a first byte past any end, which is the same.
    """
    unit, equals, ranges = header.partition("=")
    if not equals:
        return header
    elements = []
    for element in ranges.split(","):
        element = _NUMBER.sub(_bounded, element.strip(" \t"))
        if element == "-0":
            element = f"{_BEYOND_ANY_SIZE}-"
        if element:
            elements.append(element)
    return f"{unit}={','.join(elements)}"


def _bounded(number: re.Match[str]) -> str:
    digits = number[0].lstrip("0") or "0"
    return digits if len(digits) <= len(_BEYOND_ANY_SIZE) else _BEYOND_ANY_SIZE


def _bounds(begin: int, end: int | None, size: int) -> tuple[int, int] | None:
    """One range as werkzeug gives it (``end`` exclusive, a negative ``begin`` a suffix) as
    inclusive byte positions within ``size``, or None if it is not satisfiable.

    werkzeug's own Range.range_for_length refuses a suffix longer than the resource, which
    RFC 9110 section 14.1.3 answers with all of it.
    """
    if begin < 0:
        return (max(0, size + begin), size - 1) if size > 0 else None
    if begin >= size:
        return None
    return begin, (size if end is None else min(end, size)) - 1


def decide(
    headers: Headers, representation: Representation, now: datetime.datetime | None = None
) -> Decision:
    """The answer to a GET or HEAD carrying ``headers``, by RFC 9110 section 13.2.2.

    Raises PreconditionFailed (412) or RangeNotSatisfiable (416). ``now`` is the response's
    Date: Last-Modified is never later (8.8.2.1), whatever another replica's clock said.
    A HEAD is decided as a GET, Range included, so it answers what the GET would.
    """
    size, etag = representation.size, representation.etag
    modified = representation.modified
    if modified is not None and now is not None:
        modified = min(modified, now)
    if_match = _field(headers, b"If-Match")
    if if_match is not None:
        # Strong comparison (13.1.1); "*" matches the one current representation.
        if not parse_etags(if_match).contains(etag):
            raise PreconditionFailed("If-Match names no current representation of this resource")
    else:
        since = _date_field(headers, b"If-Unmodified-Since")
        if since is not None and modified is not None and modified > since:
            raise PreconditionFailed("the resource was modified after If-Unmodified-Since")
    if_none_match = _field(headers, b"If-None-Match")
    if if_none_match is not None:
        if parse_etags(if_none_match).contains_weak(etag):  # weak comparison (13.1.2)
            return Decision(304, 0, -1, modified)
    else:
        since = _date_field(headers, b"If-Modified-Since")
        if since is not None and modified is not None and modified <= since:
            return Decision(304, 0, -1, modified)
    whole = Decision(200, 0, size - 1, modified)
    wanted = _field(headers, b"Range")
    if wanted is None or not _if_range_holds(_field(headers, b"If-Range"), etag, modified):
        return whole
    chosen = parse_range(wanted, size)
    return whole if chosen is None else Decision(206, *chosen, modified)


def _if_range_holds(value: str | None, etag: str, modified: datetime.datetime | None) -> bool:
    """RFC 9110 section 13.1.5: true only for the exact ETag or the exact Last-Modified.

    werkzeug's IfRange drops the weakness of a tag; a weak one (``W/``) must not match, so
    the tag is compared as sent. A date is a strong validator here: the bytes never change.
    """
    if value is None:
        return True
    try:
        date = parse_if_range_header(value).date if _one_date(value) else None
    except OverflowError:  # werkzeug's parse_date lets it through for an enormous year
        return False
    if date is not None:
        return date == modified
    return value == quote_etag(etag)


def _field(headers: Headers, name: bytes) -> str | None:
    """A field's value, its lines combined as RFC 9110 section 5.3 says; None if absent."""
    lines = headers.getRawHeaders(name)
    if lines is None:
        return None
    return ", ".join(line.decode("latin-1").strip(" \t") for line in lines)


def _date_field(headers: Headers, name: bytes) -> datetime.datetime | None:
    """A date condition's date, or None when it must be ignored: absent, not a date, or a
    list of dates (RFC 9110 sections 13.1.3 and 13.1.4)."""
    value = _field(headers, name)
    if value is None or len(headers.getRawHeaders(name, [])) > 1 or not _one_date(value):
        return None
    return _date(value)


def _one_date(value: str) -> bool:
    """No more commas than one HTTP-date has (IMF-fixdate and rfc850-date have one)."""
    return value.count(",") <= 1


# The response's Date changes once a second and a song's Last-Modified never: parsed and
# formatted once each, not for every chunk served (email.utils is slow on the hot path).
@functools.lru_cache(maxsize=256)
def _date(value: str | None) -> datetime.datetime | None:
    try:
        return parse_date(value)
    except OverflowError:  # werkzeug's parse_date lets it through for an enormous year
        return None


def evaluate(request: Request, representation: Representation) -> Decision:
    """``decide`` for ``request``, its Last-Modified bounded by the Date it is answered with."""
    date = request.responseHeaders.getRawHeaders(b"Date")
    now = _date(date[-1].decode("latin-1")) if date else None
    return decide(request.requestHeaders, representation, now)


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
    representation: Representation,
    decision: Decision | None = None,
    *,
    sendfile: bool = False,
) -> Deferred[bytes]:
    """Answer ``request`` with the bytes of ``spans`` as ``decision`` (by default
    ``evaluate``) says. Raises PreconditionFailed or RangeNotSatisfiable before any header
    is set, so an error never carries the validators or caching of the resource.

    With ``sendfile``, a body going out on a plain TCP socket is sent with sendfile(2)
    (sendfile.py); over TLS, or without it, SpanProducer reads and writes it.

    Fires (with b"") once the last byte is written; cancelling it stops reading.
    """
    if decision is None:
        decision = evaluate(request, representation)
    request.setResponseCode(decision.status)
    # RFC 9110 section 15.4.5: a 304 carries the ETag, Cache-Control and Last-Modified a
    # 200 would, and no Content-Length (it would have to be the whole body's).
    request.setHeader(b"ETag", quote_etag(representation.etag).encode())
    if decision.modified is not None:
        request.setHeader(b"Last-Modified", _http_date(decision.modified))
    request.setHeader(b"Cache-Control", IMMUTABLE)
    if decision.status == 304:
        return Deferred.fromCoroutine(_nothing())
    request.setHeader(b"Accept-Ranges", b"bytes")
    request.setHeader(b"Content-Type", representation.content_type.encode())
    start, end = decision.first, decision.last
    if decision.status == 206:
        request.setHeader(b"Content-Range",
                          f"bytes {start}-{end}/{representation.size}".encode())
    request.setHeader(b"Content-Length", str(end - start + 1).encode())
    if request.method == b"HEAD" or end < start:
        return Deferred.fromCoroutine(_nothing())
    sliced = slice_spans(spans, start, end)
    sock = plain_socket(request.channel.transport) if sendfile else None
    if sock is not None:
        return send_spans(request, sliced, sock)
    return SpanProducer(request, sliced).start()


@functools.lru_cache(maxsize=4096)
def _http_date(moment: datetime.datetime) -> bytes:
    return http_date(moment).encode()


async def _nothing() -> bytes:
    return b""


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
