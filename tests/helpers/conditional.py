"""Range and conditional requests as a table: each row a request's header lines and what
RFC 9110 says the answer is, checked the same way in memory, through the proxy, and
against nginx.

Header values are templates: ``{etag}`` is the target's ETag as sent, ``{tag}`` the same
unquoted, ``{lm}`` its Last-Modified (``{lm850}``, ``{lmasc}`` in the two obsolete date
formats), ``{before}`` (``{before850}``) and ``{after}`` a second either side of it, ``{n}``
its size, ``{last}`` the last byte's position, ``{over}`` a position past the end, ``{huge}``
a number of 4301 digits (one past Python's int() limit) and ``{zeros}`` as many zeros.
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import json
from collections.abc import Callable, Sequence

import attrs

from tests.helpers.replica import Response

IMMUTABLE = "public, max-age=31536000, immutable"
HUGE = "9" * 4301
ZEROS = "0" * 4301
HUGE_YEAR = "Tue, 01 Jan 99999999999999999999 00:00:00 GMT"  # werkzeug: OverflowError


@attrs.frozen
class Target:
    """One resource as served: its path, bytes and validators as they appear on the wire."""

    path: str
    body: bytes
    etag: str
    modified: str

    @property
    def size(self) -> int:
        return len(self.body)

    def values(self) -> dict[str, str]:
        moment = email.utils.parsedate_to_datetime(self.modified)
        second = datetime.timedelta(seconds=1)
        return {
            "etag": self.etag, "tag": self.etag.strip('"'), "lm": self.modified,
            "lm850": _rfc850(moment), "lmasc": f"{moment:%a %b} {moment.day:2d} {moment:%T %Y}",
            "before": email.utils.format_datetime(moment - second, usegmt=True),
            "before850": _rfc850(moment - second),
            "after": email.utils.format_datetime(moment + second, usegmt=True),
            "n": str(self.size), "last": str(self.size - 1), "over": str(self.size + 100),
            "huge": HUGE, "zeros": ZEROS, "hugeyear": HUGE_YEAR,
        }


def _rfc850(moment: datetime.datetime) -> str:
    return moment.strftime("%A, %d-%b-%y %H:%M:%S GMT")


Span = Callable[[int], tuple[int, int]]


@attrs.frozen
class Case:
    """A request's header lines (a name may repeat) and the status RFC 9110 gives it; for a
    206, ``span(size)`` is the inclusive byte range it carries."""

    name: str
    lines: tuple[tuple[str, str], ...]
    status: int
    span: Span | None = None

    def render(self, target: Target) -> list[tuple[str, str]]:
        values = target.values()
        return [(name, value.format(**values)) for name, value in self.lines]


def _first(a: int, b: int) -> Span:
    return lambda size: (a, b)


def _tail(size: int) -> tuple[int, int]:
    return 0, size - 1


def _last_byte(size: int) -> tuple[int, int]:
    return size - 1, size - 1


def _from_one(size: int) -> tuple[int, int]:
    return 1, size - 1


def case(name: str, status: int, *lines: tuple[str, str], span: Span | None = None) -> Case:
    return Case(name, tuple(lines), status, span)


R, INM, IM, IMS, IUS, IR = (
    "Range", "If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range")

CASES: Sequence[Case] = (
    case("plain GET", 200),
    # Range: unit, spaces, list elements, numbers
    case("first two bytes", 206, (R, "bytes=0-1"), span=_first(0, 1)),
    case("unit in capitals", 206, (R, "BYTES=0-1"), span=_first(0, 1)),
    case("unit in mixed case", 206, (R, "Bytes=0-1"), span=_first(0, 1)),
    case("space after =", 206, (R, "bytes= 0-1"), span=_first(0, 1)),
    case("tab after =", 206, (R, "bytes=\t0-1"), span=_first(0, 1)),
    case("trailing empty element", 206, (R, "bytes=0-1,"), span=_first(0, 1)),
    case("leading empty elements", 206, (R, "bytes=, ,0-1"), span=_first(0, 1)),
    case("leading zeros", 206, (R, "bytes=0002-0003"), span=_first(2, 3)),
    case("4301 leading zeros", 206, (R, "bytes={zeros}1-{zeros}2"), span=_first(1, 2)),
    case("open end", 206, (R, "bytes=1-"), span=_from_one),
    case("last byte by position", 206, (R, "bytes={last}-"), span=_last_byte),
    case("last byte by suffix", 206, (R, "bytes=-1"), span=_last_byte),
    case("end past the size", 206, (R, "bytes=0-{over}"), span=_tail),
    case("suffix past the size", 206, (R, "bytes=-{over}"), span=_tail),
    case("enormous end", 206, (R, "bytes=1-{huge}"), span=_from_one),
    case("enormous suffix", 206, (R, "bytes=-{huge}"), span=_tail),
    case("first byte past the end", 416, (R, "bytes={n}-")),
    case("enormous first byte", 416, (R, "bytes={huge}-")),
    case("enormous first and last", 416, (R, "bytes={huge}-{huge}")),
    case("range past the end", 416, (R, "bytes={over}-{over}")),
    case("zero suffix", 416, (R, "bytes=-0")),
    case("two ranges past the end", 416, (R, "bytes={n}-{n},{over}-")),
    case("two ranges: the whole body", 200, (R, "bytes=0-1,4-5")),
    case("one satisfiable of two", 200, (R, "bytes=0-1,{huge}-")),
    case("last before first", 200, (R, "bytes=5-2")),
    case("no numbers", 200, (R, "bytes=-")),
    case("no ranges", 200, (R, "bytes=")),
    case("not a number", 200, (R, "bytes=abc")),
    case("plus sign", 200, (R, "bytes=+1-2")),
    case("hexadecimal", 200, (R, "bytes=0x1-2")),
    case("other unit", 200, (R, "items=0-1")),
    case("no equals sign", 200, (R, "bytes 0-1")),
    case("Range on two lines", 200, (R, "bytes=0-1"), (R, "bytes=4-5")),
    # If-None-Match: weak comparison, "*", lists
    case("If-None-Match: *", 304, (INM, "*")),
    case("If-None-Match: the ETag", 304, (INM, "{etag}")),
    case("If-None-Match: the weak ETag", 304, (INM, "W/{etag}")),
    case("If-None-Match: list without space", 304, (INM, '"x",{etag}')),
    case("If-None-Match: list with spaces", 304, (INM, '"x" , {etag}')),
    case("If-None-Match: empty list element", 304, (INM, '"x",,{etag}')),
    case("If-None-Match on two lines", 304, (INM, '"x"'), (INM, "{etag}")),
    case("If-None-Match: another ETag", 200, (INM, '"x"')),
    case("If-None-Match: another weak ETag", 200, (INM, 'W/"x"')),
    case("If-None-Match before Range", 304, (INM, "{etag}"), (R, "bytes=0-1")),
    case("If-None-Match before unsatisfiable Range", 304, (INM, "{etag}"), (R, "bytes={n}-")),
    case("If-None-Match: no match, Range applies", 206, (INM, '"x"'), (R, "bytes=0-1"),
         span=_first(0, 1)),
    # If-Match: strong comparison, evaluated first
    case("If-Match: another ETag", 412, (IM, '"nomatch"')),
    case("If-Match: *", 200, (IM, "*")),
    case("If-Match: the ETag", 200, (IM, "{etag}")),
    case("If-Match: list without space", 200, (IM, '"x",{etag}')),
    case("If-Match on two lines", 200, (IM, '"x"'), (IM, "{etag}")),
    case("If-Match: the weak ETag", 412, (IM, "W/{etag}")),
    case("If-Match: the ETag, Range applies", 206, (IM, "{etag}"), (R, "bytes=0-1"),
         span=_first(0, 1)),
    case("If-Match before Range", 412, (IM, '"nomatch"'), (R, "bytes=0-1")),
    case("If-Match before unsatisfiable Range", 412, (IM, '"nomatch"'), (R, "bytes={n}-")),
    case("If-Match before If-None-Match", 412, (IM, '"nomatch"'), (INM, "{etag}")),
    # If-Unmodified-Since
    case("If-Unmodified-Since: before", 412, (IUS, "{before}")),
    case("If-Unmodified-Since: rfc850 before", 412, (IUS, "{before850}")),
    case("If-Unmodified-Since: Last-Modified", 200, (IUS, "{lm}")),
    case("If-Unmodified-Since: after", 200, (IUS, "{after}")),
    case("If-Unmodified-Since: not a date", 200, (IUS, "yesterday")),
    case("If-Unmodified-Since: enormous year", 200, (IUS, "{hugeyear}")),
    case("If-Unmodified-Since: two dates", 200, (IUS, "{before}, {before}")),
    case("If-Unmodified-Since ignored with If-Match", 200, (IM, "{etag}"), (IUS, "{before}")),
    # If-Modified-Since
    case("If-Modified-Since: Last-Modified", 304, (IMS, "{lm}")),
    case("If-Modified-Since: rfc850", 304, (IMS, "{lm850}")),
    case("If-Modified-Since: asctime", 304, (IMS, "{lmasc}")),
    case("If-Modified-Since: after", 304, (IMS, "{after}")),
    case("If-Modified-Since: before", 200, (IMS, "{before}")),
    case("If-Modified-Since: not a date", 200, (IMS, "yesterday")),
    case("If-Modified-Since: enormous year", 200, (IMS, "{hugeyear}")),
    case("If-Modified-Since: two dates", 200, (IMS, "{lm}, {lm}")),
    case("If-Modified-Since ignored with If-None-Match", 200, (INM, '"x"'), (IMS, "{lm}")),
    case("If-Modified-Since before Range", 304, (IMS, "{lm}"), (R, "bytes=0-1")),
    case("If-Modified-Since: before, Range applies", 206, (IMS, "{before}"), (R, "bytes=0-1"),
         span=_first(0, 1)),
    # If-Range: the exact strong ETag or the exact date
    case("If-Range: the ETag", 206, (IR, "{etag}"), (R, "bytes=0-1"), span=_first(0, 1)),
    case("If-Range: another ETag", 200, (IR, '"x"'), (R, "bytes=0-1")),
    case("If-Range: the weak ETag", 200, (IR, "W/{etag}"), (R, "bytes=0-1")),
    case("If-Range: the ETag unquoted", 200, (IR, "{tag}"), (R, "bytes=0-1")),
    case("If-Range: Last-Modified", 206, (IR, "{lm}"), (R, "bytes=0-1"), span=_first(0, 1)),
    case("If-Range: before", 200, (IR, "{before}"), (R, "bytes=0-1")),
    case("If-Range: after", 200, (IR, "{after}"), (R, "bytes=0-1")),
    case("If-Range: enormous year", 200, (IR, "{hugeyear}"), (R, "bytes=0-1")),
    case("If-Range without Range", 200, (IR, "{etag}")),
    case("If-Range: another ETag, unsatisfiable Range", 200, (IR, '"x"'), (R, "bytes={n}-")),
    case("If-Range: the ETag, unsatisfiable Range", 416, (IR, "{etag}"), (R, "bytes={n}-")),
)


def check(answer: Response, case: Case, target: Target, method: str = "GET",
          raw_headers: bool = True) -> None:
    """``answer`` is what RFC 9110 says for ``case``: status, headers and exactly its bytes.

    ``raw_headers``: the answer's headers are the wire's (a client Agent hides
    Content-Length, so in memory it is checked through the body's length instead).
    """
    headers, size = answer.headers, target.size
    assert answer.status == case.status, (case.name, answer.status, answer.body[:200])
    if case.status in (200, 206):
        first, last = case.span(size) if case.span is not None else (0, size - 1)
        assert headers.get("etag") == target.etag, case.name
        assert headers.get("last-modified") == target.modified, case.name
        assert headers.get("cache-control") == IMMUTABLE, case.name
        assert headers.get("accept-ranges") == "bytes", case.name
        expected_range = f"bytes {first}-{last}/{size}" if case.status == 206 else None
        assert headers.get("content-range") == expected_range, case.name
        if raw_headers:
            assert headers.get("content-length") == str(last - first + 1), case.name
        assert answer.body == (target.body[first:last + 1] if method == "GET" else b""), case.name
    elif case.status == 304:
        # RFC 9110 section 15.4.5: the validators and caching of a 200, and nothing else.
        assert headers.get("etag") == target.etag, case.name
        assert headers.get("last-modified") == target.modified, case.name
        assert headers.get("cache-control") == IMMUTABLE, case.name
        assert "content-range" not in headers and "content-type" not in headers, case.name
        if raw_headers:
            assert "content-length" not in headers, case.name
        assert answer.body == b"", case.name
    else:
        # An error is not the resource: no validator, nothing that lets a cache keep it.
        assert "etag" not in headers and "last-modified" not in headers, case.name
        assert "immutable" not in headers.get("cache-control", ""), case.name
        expected_range = f"bytes */{size}" if case.status == 416 else None
        assert headers.get("content-range") == expected_range, case.name
        if method == "GET":
            error = json.loads(answer.body)["error"]
            assert error == {412: "precondition_failed", 416: "range_not_satisfiable"}[
                case.status], case.name


def send(port: int, method: str, path: str, lines: Sequence[tuple[str, str]],
         timeout: float = 30.0) -> Response:
    """One request with exactly these header lines (a name may repeat), over a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path)
        for name, value in lines:
            conn.putheader(name, value)
        conn.endheaders()
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()},
                        answer.read())
    finally:
        conn.close()
