"""Which bytes a resumed download asks for, and which answers may continue it."""

from __future__ import annotations

import pytest
from twisted.web.http_headers import Headers

from proxy.resume import Resume, parse_content_range

pytestmark = pytest.mark.timeout(10)


def headers(**values: str) -> Headers:
    return Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in values.items()})


def test_a_whole_200_resumes_from_the_bytes_sent() -> None:
    resume = Resume.of(b"GET", 200, headers(ETag='"abc"'), 1000)

    assert resume == Resume('"abc"', 0, 999, 1000)
    assert resume.range_header(250) == "bytes=250-999"
    assert resume.remaining(250) == 750


def test_a_206_resumes_inside_the_clients_range() -> None:
    resume = Resume.of(b"GET", 206, headers(ETag='"abc"', Content_Range="bytes 100-199/1000"), 100)

    assert resume == Resume('"abc"', 100, 199, 1000)
    assert resume.range_header(40) == "bytes=140-199"


@pytest.mark.parametrize(
    ("method", "code", "fields", "length"),
    [
        (b"GET", 200, {}, 1000),  # no ETag: nothing to check the next replica against
        (b"GET", 200, {"ETag": 'W/"abc"'}, 1000),  # weak: If-Range needs a strong one
        (b"GET", 200, {"ETag": '"abc"'}, None),  # chunked: length unknown
        (b"POST", 200, {"ETag": '"abc"'}, 1000),
        (b"GET", 404, {"ETag": '"abc"'}, 10),
        (b"GET", 206, {"ETag": '"abc"', "Content_Range": "bytes */1000"}, 0),
        (b"GET", 206, {"ETag": '"abc"', "Content_Range": "bytes 1-2/3",
                       "Content_Type": "multipart/byteranges; boundary=x"}, 10),
    ],
)
def test_responses_that_cannot_be_resumed(
    method: bytes, code: int, fields: dict[str, str], length: int | None
) -> None:
    assert Resume.of(method, code, headers(**fields), length) is None


def test_the_next_replica_must_continue_at_the_exact_byte() -> None:
    resume = Resume('"abc"', 100, 199, 1000)
    good = headers(ETag='"abc"', Content_Range="bytes 140-199/1000")

    assert resume.mismatch(206, good, 40) is None
    assert "not 206" in (resume.mismatch(200, good, 40) or "")
    assert "ETag" in (resume.mismatch(206, headers(ETag='"xyz"',
                                                   Content_Range="bytes 140-199/1000"), 40) or "")
    assert "Content-Range" in (resume.mismatch(
        206, headers(ETag='"abc"', Content_Range="bytes 141-199/1000"), 40) or "")
    assert "Content-Range" in (resume.mismatch(
        206, headers(ETag='"abc"', Content_Range="bytes 140-199/1001"), 40) or "")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("bytes 0-9/10", (0, 9, 10)),
        ("bytes 5-5/6", (5, 5, 6)),
        ("bytes 9-0/10", None),
        ("bytes 0-10/10", None),
        ("bytes */10", None),
        ("items 0-1/2", None),
        (None, None),
    ],
)
def test_content_range_parsing(text: str | None, parsed: tuple[int, int, int] | None) -> None:
    assert parse_content_range(text) == parsed
