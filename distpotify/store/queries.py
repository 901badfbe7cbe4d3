"""The library's reads for the API: songs (by id, by checksum, searched in the player's sort
orders), playlists and their items; never a tombstone, nor a row its creating op has not reached.
"""
# test-case-name: tests.unit.test_metadata,tests.unit.test_api

from __future__ import annotations

import sqlite3
from typing import Any

from distpotify.model import Version
from distpotify.store.schema import Tables, fold

SONG_COLUMNS = (
    "id", "title", "artist", "album", "track", "year", "genre", "duration", "mime", "size",
    "sha256", "chunk_size", "chunk_count", "created_at",
)
_VISIBLE_SONG = "deleted = 0 AND sha256 IS NOT NULL"


def _by_text(column: str) -> str:
    """Ignoring case and accents (Águila next to Aguila), empty last."""
    return f"(coalesce({column}, '') = ''), sort_key({column})"


def _by_number(column: str) -> str:
    return f"({column} IS NULL), {column}"


_NEWEST = "created_at DESC, version DESC"
# GET /songs?sort=: the player's orders; every one ends in a total order, so pages never
# overlap or skip a song.
SONG_ORDERS = {
    "newest": f"{_NEWEST}, id",
    "title": f"{_by_text('title')}, {_by_text('artist')}, {_NEWEST}, id",
    "artist": f"{_by_text('artist')}, {_by_text('album')}, {_by_number('track')},"
              f" {_by_text('title')}, {_NEWEST}, id",
    "album": f"{_by_text('album')}, {_by_number('track')}, {_by_text('title')}, {_NEWEST}, id",
    "duration": f"{_by_number('duration')}, {_by_text('title')}, {_NEWEST}, id",
}


class LibraryQueries(Tables):
    """Songs come back as the API shows them (``_song``); playlists and items as dicts."""

    def song(self, song_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            f"SELECT * FROM songs WHERE id = ? AND {_VISIBLE_SONG}", (song_id,)
        ).fetchone()
        return None if row is None else _song(row)

    def song_by_sha256(self, sha256: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            f"SELECT * FROM songs WHERE sha256 = ? AND {_VISIBLE_SONG}"
            " ORDER BY created_at LIMIT 1",
            (sha256,),
        ).fetchone()
        return None if row is None else _song(row)

    def search_songs(
        self, q: str | None, artist: str | None, album: str | None, limit: int, offset: int,
        sort: str = "newest",
    ) -> tuple[list[dict[str, Any]], int]:
        where, params = [_VISIBLE_SONG], []
        if q:
            where.append(
                "(instr(fold(title), ?) OR instr(fold(artist), ?) OR instr(fold(album), ?))"
            )
            params += [fold(q)] * 3
        for column, value in (("artist", artist), ("album", album)):
            if value:
                where.append(f"instr(fold({column}), ?)")
                params.append(fold(value))
        clause = " AND ".join(where)
        total = self._conn.execute(f"SELECT count(*) FROM songs WHERE {clause}", params)
        rows = self._conn.execute(
            f"SELECT * FROM songs WHERE {clause} ORDER BY {SONG_ORDERS[sort]} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_song(row) for row in rows], int(total.fetchone()[0])

    def playlists(self) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT id, name, owner, created_at, version FROM playlists"
            " WHERE deleted = 0 AND name IS NOT NULL ORDER BY created_at DESC, version DESC"
        )
        return [dict(row) for row in rows]

    def playlist(self, playlist_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT id, name, owner, created_at, version FROM playlists"
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
        return {**dict(row), "items": [dict(item) for item in items]}

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

    def last_position(self, playlist_id: str) -> float:
        row = self._conn.execute(
            "SELECT max(position) FROM playlist_items WHERE playlist_id = ? AND deleted = 0",
            (playlist_id,),
        ).fetchone()
        return float(row[0] or 0.0)


def _song(row: sqlite3.Row) -> dict[str, Any]:
    song = {name: row[name] for name in SONG_COLUMNS}
    song["version"] = Version.decode(row["version"]).as_list()
    return song
