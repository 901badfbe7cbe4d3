"""The library's reads for the API: songs (by id, by checksum, searched and paged in the
player's sort orders), playlists and their items; never a tombstone, nor a row its creating op
has not reached.
"""
# test-case-name: tests.unit.test_metadata,tests.unit.test_api

from __future__ import annotations

import sqlite3
from typing import Any

import attrs

from distpotify.catalog import song_album_id
from distpotify.model import Version
from distpotify.store.bookmarks import Bookmarks
from distpotify.store.schema import Tables
from distpotify.store.songindex import SEARCHED, SONGS, average_tokens, songs_version, tally
from distpotify.store.songorder import SONG_ORDERS, VISIBLE_SONG, Order, fold

__all__ = ["SONG_ORDERS", "LibraryQueries", "SongPage", "SongSearch"]

SONG_COLUMNS = (
    "id", "title", "artist", "album", "track", "year", "genre", "duration", "mime", "size",
    "sha256", "chunk_size", "chunk_count", "created_at", "uploaded_by",
    "album_artist", "disc", "cover_sha256",
)
Q_COLUMNS = ("title", "artist", "album")  # what q searches; artist=, album=, genre= one each
TRIGRAM = 3  # a filter shorter than this (folded) cannot use the trigram index: it scans
# Column weights of the relevance rank, in SEARCHED's order: a match in the title counts most.
WEIGHTS = {"title": 4.0, "artist": 2.0, "album": 1.0, "genre": 1.0}
RANK = f"bm25(song_search, {', '.join(str(WEIGHTS[c]) for c in SEARCHED)})"
K1, B = 1.2, 0.75  # the constants of FTS5's bm25


@attrs.frozen
class SongSearch:
    """GET /songs: substring filters (case and accents ignored), an order, and where the page
    starts: ``offset`` songs in, counted from the start or from past the ``after`` cursor (its
    sort keys, as Order.parse_cursor read them)."""

    q: str | None = None
    artist: str | None = None
    album: str | None = None
    genre: str | None = None
    sort: str = "newest"
    limit: int = 50
    offset: int = 0
    after: list[Any] | None = None


@attrs.frozen
class SongPage:
    songs: list[dict[str, Any]]
    total: int  # every song matching, not only this page's
    next: str | None  # the cursor of the page after this one; None on the last page


@attrs.frozen
class _Filter:
    columns: tuple[str, ...]
    text: str  # folded
    ranks: bool = False  # q's filter: relevance is how well it matches (the others narrow)

    def phrase(self) -> str:
        """FTS5 query syntax: the folded text as one phrase (trigrams in a row) in the
        columns; in a string only a double quote is special."""
        quoted = self.text.replace('"', '""')
        return f"{{{' '.join(self.columns)}}} : \"{quoted}\""

    def scan(self) -> tuple[str, list[str]]:
        """SQL over song_search for a filter too short for the index."""
        found = " OR ".join(f"instr(song_search.{c}, ?) > 0" for c in self.columns)
        return f"({found})", [self.text] * len(self.columns)


class LibraryQueries(Tables):
    """Songs come back as the API shows them (``_song``); playlists and items as dicts."""

    _song_bookmarks: Bookmarks | None = None

    def song(self, song_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            f"SELECT * FROM songs WHERE id = ? AND {VISIBLE_SONG}", (song_id,)
        ).fetchone()
        return None if row is None else _song(row)

    def song_by_sha256(self, sha256: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            f"SELECT * FROM songs WHERE sha256 = ? AND {VISIBLE_SONG}"
            " ORDER BY created_at LIMIT 1",
            (sha256,),
        ).fetchone()
        return None if row is None else _song(row)

    def songs_by_sha256(self, hashes: list[str]) -> list[dict[str, Any]]:
        """The songs holding these checksums (lower-case hex), one per checksum (the first
        stored: the same bytes uploaded on both sides of a partition make two), by age."""
        marks = ", ".join("?" * len(hashes))
        rows = self._conn.execute(
            f"SELECT * FROM songs WHERE sha256 IN ({marks}) AND {VISIBLE_SONG}"
            " ORDER BY created_at, id", hashes).fetchall()
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            found.setdefault(row["sha256"], _song(row))
        return list(found.values())

    def search_songs(self, search: SongSearch) -> SongPage:
        """One page of songs: a walk down the order's index when nothing filters them (its
        cost does not grow with the library), else the search index's matches, ordered by
        whichever costs less for their number (docs/architecture.md section 2.7)."""
        order, after = SONG_ORDERS[search.sort], search.after
        filters = [f for f in _filters(search) if f.text]  # "" is in every text
        indexed = [f for f in filters if len(f.text) >= TRIGRAM]
        ranked = next((f for f in indexed if f.ranks), None) if not order.indexed else None
        walked = order
        if not order.indexed and ranked is None:
            # Relevance with nothing to rank by: every song ranks 0.0, so newest first.
            walked, after = SONG_ORDERS["newest"], after[1:] if after is not None else None
        limit = search.limit + 1  # one more: is there a next page?
        if not filters:
            total, offset = tally(self._conn, SONGS), search.offset
            if after is None:  # a deep page starts at its bookmark (bookmarks.py)
                after, offset = self._bookmarks().start(
                    walked.name, songs_version(self._conn), offset,
                    lambda keys, skip: self._song_keys_at(walked, keys, skip))
            where, past = self._past(walked, after)
            rows = self._conn.execute(
                f"SELECT *, 0.0 AS relevance FROM songs INDEXED BY {walked.index}"
                f" WHERE {VISIBLE_SONG}{where} ORDER BY {walked.order_by()} LIMIT ? OFFSET ?",
                [*past, limit, offset]).fetchall()
            return _page(order, rows, search.limit, total)
        where, past = self._past(walked, after)
        clauses, params = [], []
        if indexed:
            clauses.append("song_search MATCH ?")
            params.append(" AND ".join(f.phrase() for f in indexed))
        for f in filters:
            if len(f.text) < TRIGRAM:
                sql, values = f.scan()
                clauses.append(sql)
                params += values
        matching = " AND ".join(clauses)
        total = self._conn.execute(
            f"SELECT count(*) FROM song_search WHERE {matching}", params).fetchone()[0]
        if not total:
            return SongPage([], 0, None)
        if walked.indexed and _walk_costs_less(total, tally(self._conn, SONGS),
                                               search.offset + limit):
            rows = self._conn.execute(
                f"SELECT *, 0.0 AS relevance FROM songs INDEXED BY {walked.index}"
                f" WHERE {VISIBLE_SONG} AND rowid IN (SELECT rowid FROM song_search"
                f" WHERE {matching}){where} ORDER BY {walked.order_by()} LIMIT ? OFFSET ?",
                [*params, *past, limit, search.offset]).fetchall()
        else:
            # CROSS JOIN: the matches drive, each song found by its rowid. Only the order's
            # keys go through the sort (every match); the page's songs are read after.
            rank, ranking = self._rank(ranked, only=filters == [ranked])
            top = self._conn.execute(
                f"SELECT songs.rowid, {rank} AS relevance"
                f" FROM song_search CROSS JOIN songs ON songs.rowid = song_search.rowid"
                f" WHERE {matching}{where} ORDER BY {walked.order_by()} LIMIT ? OFFSET ?",
                [*ranking, *params, *past, limit, search.offset]).fetchall()
            found = songs_by_rowid(self._conn, [rowid for rowid, _ in top])
            rows = [{**dict(song), "relevance": relevance}
                    for song, (_, relevance) in zip(found, top, strict=True)]
        return _page(order, rows, search.limit, total)

    def _rank(self, q: _Filter | None, only: bool) -> tuple[str, list[Any]]:
        """The relevance column: 0.0 when nothing ranks (another order, or no q the index
        can match); FTS5's bm25 when q is the only filter; else the same score in SQL.

        Relevance is bm25 over q's one phrase. bm25 multiplies by the phrase's IDF, which
        FTS5 works out by counting every song holding it (a word in every title is a walk of
        the whole index); for one phrase the IDF is the same for every song, so the order
        does not need it. With other filters the matches are usually few, and bm25's own
        term (the phrase's weighted count in each column, against the song's length in
        tokens and the library's mean) ranks them alike at a cost that follows their number,
        not the library's (docs/architecture.md section 2.7)."""
        if q is None:
            return "0.0", []
        if only:
            return RANK, []
        counted, params = [], []
        for column in q.columns:  # q's columns hold its instances; the length is every column
            sql, values = _occurrences(f"song_search.{column}", q.text)
            counted.append(f"{sql} * {WEIGHTS[column]}")
            params += values
        found = f"({' + '.join(counted)})"
        tokens = " + ".join(f"max(length(song_search.{c}) - 2, 0)" for c in SEARCHED)
        # FTS5's expression, term for term: f(k1 + 1) / (f + k1 (1 - b + b D / avgdl)).
        score = (f"({found} * ({K1} + 1.0)) / ({found} + {K1} * (1 - {B} + {B} * ({tokens})"
                 f" / ?))")
        return f"-{score}", [*params, *params, average_tokens(self._conn) or 1.0]

    def _bookmarks(self) -> Bookmarks:
        if self._song_bookmarks is None:
            self._song_bookmarks = Bookmarks()
        return self._song_bookmarks

    def _song_keys_at(self, order: Order, after: list[Any] | None, skip: int
                      ) -> list[Any] | None:
        """Bookmarks.start's NextMark for ``order``: one step of an index-only walk."""
        where, past = self._past(order, after)
        row = self._conn.execute(
            f"SELECT {', '.join(k.column for k in order.keys)} FROM songs"
            f" INDEXED BY {order.index} WHERE {VISIBLE_SONG}{where}"
            f" ORDER BY {order.order_by()} LIMIT 1 OFFSET ?", [*past, skip]).fetchone()
        return None if row is None else list(row)

    @staticmethod
    def _past(order: Order, after: list[Any] | None) -> tuple[str, list[Any]]:
        if after is None:
            return "", []
        sql, params = order.after(after)
        return f" AND {sql}", params

    def playlists(self) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT id, name, owner, public, created_at, version FROM playlists"
            " WHERE deleted = 0 AND name IS NOT NULL ORDER BY created_at DESC, version DESC"
        )
        return [_playlist(row) for row in rows]

    def playlist(self, playlist_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT id, name, owner, public, created_at, version FROM playlists"
            " WHERE id = ? AND deleted = 0 AND name IS NOT NULL",
            (playlist_id,),
        ).fetchone()
        if row is None:
            return None
        items = self._conn.execute(
            "SELECT id, song_id, position FROM playlist_items WHERE playlist_id = ?"
            " AND deleted = 0 AND song_id IS NOT NULL ORDER BY position, id",
            (playlist_id,),
        )
        return {**_playlist(row), "items": [dict(item) for item in items]}

    def item_ids_of_song(self, song_id: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT id FROM playlist_items WHERE song_id = ? AND deleted = 0", (song_id,)
        )
        return [row["id"] for row in rows]

    def item(self, item_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT id, playlist_id, song_id, position FROM playlist_items"
            " WHERE id = ? AND deleted = 0",
            (item_id,),
        ).fetchone()
        return None if row is None else dict(row)

    # accounts (auth/users.py); users are few, read whole

    def users(self) -> list[dict[str, Any]]:
        """Every live account's record, password hash included: for the in-memory directory."""
        rows = self._conn.execute(
            "SELECT id, username, password_hash, role, generation, created_at, disabled, version,"
            " subsonic_box FROM users WHERE deleted = 0 AND username IS NOT NULL")
        return [dict(row) for row in rows]

    def deleted_user_ids(self) -> list[str]:
        """The ids of the accounts deleted here (their tombstones are never purged)."""
        return [str(row["id"]) for row in self._conn.execute(
            "SELECT id FROM users WHERE deleted = 1")]

    def user_named(self, name_key: str) -> str | None:
        """The id of a live account holding the folded name ``name_key``, if any."""
        row = self._conn.execute(
            "SELECT id FROM users WHERE name_key = ? AND deleted = 0 LIMIT 1", (name_key,)
        ).fetchone()
        return None if row is None else str(row["id"])

    def user_count(self) -> int:
        return int(self._conn.execute(
            "SELECT count(*) FROM users WHERE deleted = 0 AND username IS NOT NULL"
        ).fetchone()[0])

    def last_position(self, playlist_id: str) -> float:
        row = self._conn.execute(
            "SELECT max(position) FROM playlist_items WHERE playlist_id = ? AND deleted = 0",
            (playlist_id,),
        ).fetchone()
        return float(row[0] or 0.0)


def songs_by_rowid(conn: sqlite3.Connection, rowids: list[int]) -> list[sqlite3.Row]:
    """The songs at ``rowids``, in that order (a page, read once its order is known)."""
    found = {row["rowid"]: row for row in conn.execute(
        f"SELECT rowid, * FROM songs WHERE rowid IN ({', '.join('?' * len(rowids))})", rowids)}
    return [found[rowid] for rowid in rowids]


def _filters(search: SongSearch) -> list[_Filter]:
    found = [_Filter(Q_COLUMNS, fold(search.q), ranks=True)] if search.q else []
    found += [_Filter((name,), fold(value))
              for name, value in (("artist", search.artist), ("album", search.album),
                                  ("genre", search.genre)) if value]
    return found


def _occurrences(column: str, text: str) -> tuple[str, list[Any]]:
    """SQL counting the places ``text`` starts in ``column``, as FTS5 counts a phrase's
    instances (trigram tokens: every substring match, overlapping ones too). By replace()
    unless the text overlaps itself ("aaa" twice in "aaaa"), where replace() would count
    one: then by the connection's ``occurrences`` function (schema.connect)."""
    if any(text[:n] == text[-n:] for n in range(1, len(text))):
        return f"occurrences({column}, ?)", [text]
    return f"((length({column}) - length(replace({column}, ?, ''))) / {len(text)})", [text]


def _walk_costs_less(matches: int, songs: int, wanted: int) -> bool:
    """Walking the order's index, testing each song, finds ``wanted`` matches after about
    wanted * songs / matches steps (plus the list of matches to test against); ordering the
    matches costs a lookup of each, about three steps."""
    return matches + wanted * songs / matches < 3 * matches


def _page(order: Order, rows: list[sqlite3.Row] | list[dict[str, Any]], limit: int, total: int
          ) -> SongPage:
    more = len(rows) > limit
    rows = rows[:limit]
    return SongPage([_song(row) for row in rows], int(total),
                    order.cursor(rows[-1]) if more else None)


def _playlist(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "public": bool(row["public"])}


def _song(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    song = {name: row[name] for name in SONG_COLUMNS}
    song["version"] = Version.decode(row["version"]).as_list()
    # Its album's derived id (catalog.py): where its album's cover is, /albums/{id}/cover.
    song["album_id"] = song_album_id(song)
    return song
