"""Range header parsing, the RFC 9110 section 13.2.2 decision, and span slicing: the
arithmetic behind every partial and conditional response."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from distpotify.api.ranges import (
    Decision,
    Representation,
    Span,
    decide,
    modified_at,
    parse_range,
    slice_spans,
)
from distpotify.errors import PreconditionFailed, RangeNotSatisfiable

HUGE = "9" * 4301  # one digit past what int() takes from a string


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("BYTES=0-9", 100, (0, 9)),
        ("bytes= 0-9", 100, (0, 9)),
        ("bytes=0-9,", 100, (0, 9)),  # empty list elements are ignored
        ("bytes=,,0-9", 100, (0, 9)),
        ("bytes=007-009", 100, (7, 9)),
        (f"bytes={'0' * 5000}7-9", 100, (7, 9)),
        (f"bytes=1-{HUGE}", 100, (1, 99)),
        (f"bytes=-{HUGE}", 100, (0, 99)),
        (f"bytes=0-1,{HUGE}-", 100, None),  # one of several satisfiable: the whole
        ("bytes=90-", 100, (90, 99)),
        ("bytes=90-1000", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=5-2", 100, None),  # invalid: ignored, whole resource
        ("bytes=0-1,5-6", 100, None),  # multiple ranges: served whole
        ("items=0-1", 100, None),
        ("bytes=-", 100, None),
        ("bytes=abc", 100, None),
        ("bytes=+1-2", 100, None),
        ("bytes=\u0661-2", 100, None),  # an Arabic-Indic one is no HTTP digit
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=100-200", 100),
                                              ("bytes=-0", 100), ("bytes=0-", 0),
                                              (f"bytes={HUGE}-", 100),
                                              (f"bytes={HUGE}-{HUGE}", 100),
                                              ("bytes=100-100,200-", 100)])
def test_unsatisfiable_range(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


lengths = st.lists(st.integers(1, 50), min_size=1, max_size=8)


@given(lengths, st.data())
def test_slices_cover_exactly_the_requested_bytes(sizes: list[int], data: st.DataObject) -> None:
    spans = [Span(Path(f"f{i}"), 7, n) for i, n in enumerate(sizes)]
    total = sum(sizes)
    start = data.draw(st.integers(0, total - 1))
    end = data.draw(st.integers(start, total - 1))
    flat = [(f"f{i}", 7 + j) for i, n in enumerate(sizes) for j in range(n)]

    sliced = slice_spans(spans, start, end)

    got = [(s.path.name, s.offset + j) for s in sliced for j in range(s.length)]
    assert got == flat[start:end + 1]


@given(st.text(max_size=200), st.integers(0, 2**63))
def test_parse_range_answers_any_header_with_bytes_inside_or_416(header: str, size: int) -> None:
    try:
        chosen = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    assert chosen is None or 0 <= chosen[0] <= chosen[1] < size


# the decision, in RFC 9110 section 13.2.2's order

MODIFIED = datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)
RESOURCE = Representation(100, "abc", "audio/wav", MODIFIED)


def decided(*lines: tuple[str, str], now: datetime.datetime | None = None) -> Decision:
    headers = Headers()
    for name, value in lines:
        headers.addRawHeader(name, value)
    return decide(headers, RESOURCE, now)


def test_if_match_is_evaluated_before_everything_else() -> None:
    with pytest.raises(PreconditionFailed):
        decided(("If-Match", '"x"'), ("If-None-Match", '"abc"'), ("Range", "bytes=500-"))


def test_if_none_match_is_evaluated_before_range() -> None:
    assert decided(("If-None-Match", '"abc"'), ("Range", "bytes=500-")).status == 304


def test_if_modified_since_is_ignored_when_if_none_match_is_present() -> None:
    assert decided(("If-None-Match", '"x"'),
                   ("If-Modified-Since", "Tue, 14 Nov 2023 22:13:20 GMT")).status == 200


def test_if_unmodified_since_is_ignored_when_if_match_is_present() -> None:
    assert decided(("If-Match", '"abc"'),
                   ("If-Unmodified-Since", "Tue, 14 Nov 2023 22:13:19 GMT")).status == 200


def test_a_date_list_on_two_lines_is_no_date() -> None:
    line = ("If-Modified-Since", "Tue, 14 Nov 2023 22:13:20 GMT")
    assert decided(line).status == 304
    assert decided(line, line).status == 200


def test_last_modified_is_bounded_by_the_date_of_the_answer() -> None:
    earlier = MODIFIED - datetime.timedelta(hours=1)

    decision = decided(("If-Range", "Tue, 14 Nov 2023 21:13:20 GMT"), ("Range", "bytes=0-1"),
                       now=earlier)

    assert decision == Decision(206, 0, 1, earlier)


def test_a_304_and_a_whole_answer_name_their_bytes() -> None:
    assert decided(("If-None-Match", "*")) == Decision(304, 0, -1, MODIFIED)
    assert decided() == Decision(200, 0, 99, MODIFIED)


def test_without_last_modified_date_conditions_are_ignored() -> None:
    headers = Headers({"If-Unmodified-Since": ["Tue, 14 Nov 2000 00:00:00 GMT"],
                       "If-Modified-Since": ["Tue, 14 Nov 2100 00:00:00 GMT"],
                       "If-Range": ["Tue, 14 Nov 2023 22:13:20 GMT"], "Range": ["bytes=0-1"]})

    decision = decide(headers, Representation(100, "abc", "audio/wav"))

    assert decision == Decision(200, 0, 99, None)


@pytest.mark.parametrize(("created_at", "expected"), [
    ("2023-11-14T22:13:20.400Z", MODIFIED),
    ("2023-11-14T22:13:20", MODIFIED),
    ("", None),
    (None, None),
    ("yesterday", None),
])
def test_modified_at_drops_the_fraction_of_a_second(created_at: str | None,
                                                    expected: datetime.datetime | None) -> None:
    assert modified_at(created_at) == expected


_FIELDS = ("Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since",
           "If-Unmodified-Since")
_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(['"abc"', 'W/"abc"', "*", "Tue, 14 Nov 2023 22:13:20 GMT", "bytes=0-1",
                     "Tue, 01 Jan 99999999999999999999 00:00:00 GMT", f"bytes={HUGE}-"]),
)


@given(st.lists(st.tuples(st.sampled_from(_FIELDS), _values), max_size=8))
def test_no_header_value_is_anything_but_an_answer_a_412_or_a_416(
    lines: list[tuple[str, str]]
) -> None:
    try:
        decision = decided(*lines)
    except (PreconditionFailed, RangeNotSatisfiable):
        return
    assert decision.status in (200, 206, 304)
    assert decision.status != 206 or 0 <= decision.first <= decision.last < RESOURCE.size
