"""Resuming a download on another replica: which bytes to ask for, and which answer to accept.

A response can be resumed only if it names its bytes exactly: a strong ETag and a known
length (200) or a single Content-Range (206). The next replica must answer 206 for exactly
the missing bytes of the same ETag; anything else is never spliced into the client's response.
"""
# test-case-name: tests.unit.test_proxy_resume

from __future__ import annotations

import re

import attrs
from twisted.web.http_headers import Headers

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def header(headers: Headers, name: bytes) -> str | None:
    """The last value of a header as text (latin-1, as HTTP/1.1 carries it), or None."""
    values = headers.getRawHeaders(name)
    return values[-1].decode("latin-1").strip() if values else None


def parse_content_range(text: str | None) -> tuple[int, int, int] | None:
    """``bytes FIRST-LAST/TOTAL`` -> (first, last, total); None for anything else."""
    match = _CONTENT_RANGE.match(text or "")
    if match is None:
        return None
    first, last, total = (int(group) for group in match.groups())
    if not first <= last < total:
        return None
    return first, last, total


@attrs.frozen
class Resume:
    """The bytes one client response carries: ``first..last`` (inclusive) of ``total``."""

    etag: str
    first: int
    last: int
    total: int

    @classmethod
    def of(cls, method: bytes, code: int, headers: Headers, length: int | None) -> Resume | None:
        """How an upstream response could be resumed elsewhere, or None if it cannot be.

        ``length`` is the body's length (the Agent keeps Content-Length out of the headers).
        """
        etag = header(headers, b"ETag")
        if method != b"GET" or not etag or etag.startswith("W/"):
            return None
        if code == 200:
            return None if length is None else cls(etag, 0, length - 1, length)
        if code == 206:
            kind = header(headers, b"Content-Type") or ""
            spans = parse_content_range(header(headers, b"Content-Range"))
            if spans is None or kind.startswith("multipart/"):
                return None
            return cls(etag, *spans)
        return None

    def remaining(self, sent: int) -> int:
        return self.last - self.first + 1 - sent

    def range_header(self, sent: int) -> str:
        """The Range asking for what the client has not received after ``sent`` body bytes."""
        return f"bytes={self.first + sent}-{self.last}"

    def mismatch(self, code: int, headers: Headers, sent: int) -> str | None:
        """Why a resumed response cannot continue this one, or None when it can."""
        if code != 206:
            return f"answered {code}, not 206"
        etag = header(headers, b"ETag")
        if etag != self.etag:
            return f"ETag {etag} differs from {self.etag}"
        expected = f"bytes {self.first + sent}-{self.last}/{self.total}"
        got = header(headers, b"Content-Range")
        if got != expected:
            return f"Content-Range {got!r}, expected {expected!r}"
        return None
