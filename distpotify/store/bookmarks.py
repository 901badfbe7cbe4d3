"""Bookmarks: where a deep page by offset starts, without walking every song before it.

SQLite answers ``LIMIT n OFFSET k`` by stepping over k index entries, so a page at 90 % of a
200,000-song library costs fifty times a first page. A page by offset is still what the web
player's jumps and Subsonic clients ask for, so each order keeps bookmarks: the sort keys of
the song just before every EVERY-th position. A page at ``offset`` starts past the bookmark
at or before it, as a keyset page does, and steps over fewer than EVERY entries.

The bookmarks of an order hold while the library does not change: they are kept with the
tally of song changes they were made at, and made again, lazily and only as deep as a page
asks, once it has moved.
"""
# test-case-name: tests.unit.test_bookmarks

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import attrs

EVERY = 1024  # positions between two bookmarks: a deep page steps over fewer than this

# The sort keys of the song at OFFSET ``skip`` among those past ``keys`` (None: among all),
# or None when there are not that many.
NextMark = Callable[[list[Any] | None, int], list[Any] | None]


@attrs.define
class _Marks:
    version: Hashable
    keys: list[list[Any]] = attrs.Factory(list)  # keys[i]: the song at (i + 1) * EVERY - 1
    complete: bool = False  # the end of the order was reached: there are no more


class Bookmarks:
    """Bookmarks of each order, by name; one instance per database connection."""

    def __init__(self, every: int = EVERY) -> None:
        self.every = every
        self._orders: dict[str, _Marks] = {}

    def start(self, order: str, version: Hashable, offset: int, next_mark: NextMark
              ) -> tuple[list[Any] | None, int]:
        """Where the page ``offset`` songs into ``order`` starts: past these sort keys (None:
        from the first song), this many songs further. ``version`` names the library's state;
        ``next_mark`` finds a bookmark past another."""
        wanted = offset // self.every
        if wanted == 0:
            return None, offset
        marks = self._orders.get(order)
        if marks is None or marks.version != version:
            marks = self._orders[order] = _Marks(version)
        while len(marks.keys) < wanted and not marks.complete:
            found = next_mark(marks.keys[-1] if marks.keys else None, self.every - 1)
            if found is None:
                marks.complete = True
            else:
                marks.keys.append(found)
        used = min(wanted, len(marks.keys))
        if used == 0:
            return None, offset
        return marks.keys[used - 1], offset - used * self.every
