"""Range header parsing and span slicing, the arithmetic behind every partial response."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distpotify.api.ranges import Span, parse_range, slice_spans
from distpotify.errors import RangeNotSatisfiable


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=90-1000", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=5-2", 100, None),  # invalid: ignored, whole resource
        ("bytes=0-1,5-6", 100, None),  # multiple ranges: served whole
        ("items=0-1", 100, None),
        ("bytes=-", 100, None),
        ("bytes=abc", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=100-200", 100),
                                              ("bytes=-0", 100), ("bytes=0-", 0)])
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
