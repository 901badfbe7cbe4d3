"""Bookmarks over a list standing for an order: made lazily, only as deep as asked, once per
version of the library."""

from __future__ import annotations

from typing import Any

from distpotify.store.bookmarks import Bookmarks


class Order:
    """Songs 0..n-1 in order; next_mark as the store answers it, with its calls counted."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls: list[tuple[list[Any] | None, int]] = []

    def next_mark(self, after: list[Any] | None, skip: int) -> list[Any] | None:
        self.calls.append((after, skip))
        position = (after[0] + 1 if after is not None else 0) + skip
        return [position] if position < self.n else None

    def page(self, marks: Bookmarks, offset: int, version: object = 1) -> int:
        """The first song of the page ``offset`` songs in, as the store finds it."""
        after, rest = marks.start("title", version, offset, self.next_mark)
        return (after[0] + 1 if after is not None else 0) + rest


def test_a_page_starts_past_the_bookmark_at_or_before_it() -> None:
    order, marks = Order(100), Bookmarks(every=10)

    assert [order.page(marks, offset) for offset in (0, 9, 10, 55, 99)] == [0, 9, 10, 55, 99]
    assert marks.start("title", 1, 55, order.next_mark) == ([49], 5)


def test_shallow_pages_make_no_bookmark_and_deep_ones_only_as_deep_as_they_go() -> None:
    order, marks = Order(100), Bookmarks(every=10)
    order.page(marks, 9)
    assert order.calls == []

    order.page(marks, 35)
    assert order.calls == [(None, 9), ([9], 9), ([19], 9)]
    order.page(marks, 12)  # already made
    assert len(order.calls) == 3


def test_past_the_end_the_last_bookmark_serves_and_no_more_are_looked_for() -> None:
    order, marks = Order(25), Bookmarks(every=10)

    assert order.page(marks, 70) == 70  # an empty page: past the 25 songs
    calls = len(order.calls)
    assert order.page(marks, 40) == 40
    assert len(order.calls) == calls


def test_another_version_of_the_library_makes_them_again() -> None:
    order, marks = Order(100), Bookmarks(every=10)
    order.page(marks, 25, version=1)
    order.n = 50  # the library changed
    assert order.page(marks, 25, version=2) == 25

    assert order.calls[2:] == [(None, 9), ([9], 9)]
