"""The orders GET /songs pages through (newest, title, artist, album, duration, relevance):
their stored sort keys, the index that serves each, and the ``after`` cursor of keyset paging.
"""
# test-case-name: tests.unit.test_songindex

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import sqlite3
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

VISIBLE_SONG = "deleted = 0 AND sha256 IS NOT NULL"
MAX_CURSOR = 4096  # characters; a cursor holds one song's sort keys

TEXT = (str,)
NUMBER_OR_EMPTY = (int, float, str)  # a number, or "" (none: after every number)


def fold(text: str | None) -> str:
    """``text`` without case or accents (NFKD, combining marks dropped), for matching and
    ordering alike: "Águila" -> "aguila", "ß" -> "ss"."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def text_key(text: str | None) -> str:
    """A text field's stored sort key: folded, and an empty value after every other."""
    return "1" if not text else "0" + fold(text)


def number_key(number: object) -> int | float | str:
    """A number field's stored sort key: the number, or "" when there is none, which SQLite
    orders after every number (NULL < numbers < text < blobs)."""
    if isinstance(number, int | float) and not isinstance(number, bool):
        return number
    return ""


# The stored sort keys of a song, from its fields; the apply path keeps them (songindex.py).
SORT_KEYS = {
    "title_key": ("title", text_key),
    "artist_key": ("artist", text_key),
    "album_key": ("album", text_key),
    "track_key": ("track", number_key),
    "duration_key": ("duration", number_key),
}


def sort_keys(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {column: key(fields.get(field)) for column, (field, key) in SORT_KEYS.items()}


@attrs.frozen
class Key:
    """One column of an order: ascending unless ``desc``; what a cursor may hold for it."""

    column: str
    desc: bool = False
    kinds: tuple[type, ...] = TEXT


NEWEST = (Key("created_at", desc=True), Key("version", desc=True), Key("id"))
TRACK = Key("track_key", kinds=NUMBER_OR_EMPTY)


@attrs.frozen
class Order:
    """A total order of songs (it ends in the id), and the partial index that walks it."""

    name: str
    keys: tuple[Key, ...]
    indexed: bool = True

    @property
    def index(self) -> str:
        return f"songs_by_{self.name}"

    def order_by(self) -> str:
        return ", ".join(f"{k.column} DESC" if k.desc else k.column for k in self.keys)

    def index_sql(self) -> str:
        return (f"CREATE INDEX IF NOT EXISTS {self.index} ON songs ({self.order_by()})"
                f" WHERE {VISIBLE_SONG}")

    def cursor(self, row: Mapping[str, Any] | sqlite3.Row) -> str:
        """The ``after`` cursor of ``row``: its sort keys, so the next page starts past it."""
        values = [self.name, *(row[k.column] for k in self.keys)]
        text = json.dumps(values, separators=(",", ":"), ensure_ascii=False)
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def parse_cursor(self, cursor: str) -> list[Any]:
        """The sort keys in ``cursor``; ValueError unless it is a cursor of this order."""
        if len(cursor) > MAX_CURSOR:
            raise ValueError("the cursor is too long")
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            values = json.loads(text.decode(), parse_constant=_no_constant)
        except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
            raise ValueError("the cursor is not one this API returned") from None
        if not isinstance(values, list) or not values or values[0] != self.name:
            raise ValueError(f"the cursor is not one of sort={self.name}")
        keys = values[1:]
        if len(keys) != len(self.keys) or not all(
                _fits(value, key.kinds) for value, key in zip(keys, self.keys, strict=True)):
            raise ValueError(f"the cursor is not one of sort={self.name}")
        return keys

    def after(self, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """SQL (and its parameters) true of the songs past ``values`` in this order.

        ``k1 > v1 OR (k1 = v1 AND (k2 > v2 OR ...))``, with ``<`` for descending keys, and
        before it a row-value bound over the leading keys of one direction, which SQLite
        turns into the start of an index range: a deep page costs what a first page does.
        """
        clause, params = "", list[Any]()
        for key, value in reversed(list(zip(self.keys, values, strict=True))):
            past = f"{key.column} {'<' if key.desc else '>'} ?"
            if clause:
                clause = f"({past} OR ({key.column} = ? AND {clause}))"
                params = [value, value, *params]
            else:
                clause, params = past, [value]
        run = list(itertools.takewhile(lambda k: k.desc == self.keys[0].desc, self.keys))
        columns = ", ".join(k.column for k in run)
        bound = f"({columns}) {'<=' if self.keys[0].desc else '>='} ({', '.join('?' * len(run))})"
        return f"{bound} AND {clause}", [*values[:len(run)], *params]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _fits(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) or not isinstance(value, kinds):
        return False
    if isinstance(value, int):  # SQLite binds 64 bits at most: a larger one is no key of ours
        return -(2**63) <= value < 2**63
    if isinstance(value, str):  # nor text that is not UTF-8 (a lone surrogate JSON escaped)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    return not isinstance(value, float) or math.isfinite(value)


# GET /songs?sort=: every order ends in a total order, so pages never overlap or skip a song.
SONG_ORDERS = {
    order.name: order
    for order in (
        Order("newest", NEWEST),
        Order("title", (Key("title_key"), Key("artist_key"), *NEWEST)),
        Order("artist", (Key("artist_key"), Key("album_key"), TRACK, Key("title_key"), *NEWEST)),
        Order("album", (Key("album_key"), TRACK, Key("title_key"), *NEWEST)),
        Order("duration", (Key("duration_key", kinds=NUMBER_OR_EMPTY), Key("title_key"),
                           *NEWEST)),
        # Best matches of q first (songindex.py ranks them), then newest; no index can hold
        # a rank that depends on the query.
        Order("relevance", (Key("relevance", kinds=(int, float)), *NEWEST), indexed=False),
    )
}
