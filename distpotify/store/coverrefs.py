"""Which cover pictures the rows name: the songs' covers and the albums' own, for serving
(only a named cover is served), the start-up clean-up and the repair of missing files.
"""
# test-case-name: tests.unit.test_covers

from __future__ import annotations

from typing import Any

from distpotify.catalog import song_album_id
from distpotify.store.schema import Tables
from distpotify.store.songorder import VISIBLE_SONG

_LIVE_COVERS = (
    f"SELECT cover_sha256 FROM songs WHERE cover_sha256 IS NOT NULL AND {VISIBLE_SONG}"
    " UNION SELECT cover_sha256 FROM album_covers WHERE cover_sha256 IS NOT NULL"
    " AND deleted = 0"
)


class CoverQueries(Tables):
    def live_cover_names(self) -> set[str]:
        return {row[0] for row in self._conn.execute(_LIVE_COVERS)}

    def cover_named(self, sha256: str) -> bool:
        """Whether a live song or album names cover ``sha256``."""
        return self._conn.execute(
            f"SELECT 1 FROM songs WHERE cover_sha256 = ? AND {VISIBLE_SONG}"
            " UNION ALL SELECT 1 FROM album_covers WHERE cover_sha256 = ? AND deleted = 0"
            " LIMIT 1", (sha256, sha256)).fetchone() is not None

    def album_cover_set(self, album_id: str) -> str | None:
        """The cover a user set on the album, if any."""
        row = self._conn.execute(
            "SELECT cover_sha256 FROM album_covers WHERE id = ? AND deleted = 0", (album_id,)
        ).fetchone()
        return None if row is None else row[0]

    def song_cover(self, song_id: str) -> str | None:
        row = self._conn.execute(
            f"SELECT cover_sha256 FROM songs WHERE id = ? AND {VISIBLE_SONG}", (song_id,)
        ).fetchone()
        return None if row is None else row[0]

    def album_exists(self, album_id: str) -> bool:
        """Whether a live song belongs to album ``album_id`` (a scan of the songs' album
        fields: albums are derived, they have no table of their own)."""
        for row in self._conn.execute(
                f"SELECT artist, album_artist, album, year FROM songs WHERE {VISIBLE_SONG}"):
            if song_album_id(dict(row)) == album_id:
                return True
        return False

    def first_song_covers(self) -> dict[str, str]:
        """Each album's cover from its songs: that of its first song (by disc, track, upload
        time) with a cover."""
        best: dict[str, tuple[Any, ...]] = {}
        for row in self._conn.execute(
                "SELECT artist, album_artist, album, year, disc, track, created_at,"
                f" cover_sha256 FROM songs WHERE cover_sha256 IS NOT NULL AND {VISIBLE_SONG}"):
            album = song_album_id(dict(row))
            rank = (row["disc"] or 0, row["track"] or 0, row["created_at"] or "",
                    row["cover_sha256"])
            if album not in best or rank < best[album]:
                best[album] = rank
        return {album: rank[-1] for album, rank in best.items()}
