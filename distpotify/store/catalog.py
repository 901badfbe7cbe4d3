"""The catalog's reads for the Subsonic API: artists and albums summed up from their songs,
genres, album lists by type, an album's songs, random songs, songs by genre, and search.

Albums and artists have no rows of their own: each song carries its ``album_id``,
``artist_id`` and ``catalog_artist`` (songindex.py keeps them as it applies). The summaries
(a few hundred albums for ten thousand songs) are made in one ordered pass over the songs and
kept until a song changes (the ``song_changes`` tally), so a browse call costs a lookup in
memory; songs are read through the indexes songindex.py makes.
"""
# test-case-name: tests.unit.test_store_catalog

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable
from typing import Any

import attrs

from distpotify.catalog import UNKNOWN_ALBUM
from distpotify.store.bookmarks import Bookmarks
from distpotify.store.queries import Q_COLUMNS, RANK, TRIGRAM, _Filter, songs_by_rowid
from distpotify.store.schema import Tables
from distpotify.store.songindex import SONGS, songs_version, tally
from distpotify.store.songorder import VISIBLE_SONG, fold

# What album lists may be ordered by (getAlbumList2 type=...), and the state-free ones.
ALBUM_ORDERS = ("random", "newest", "alphabeticalByName", "alphabeticalByArtist", "byYear",
                "byGenre")
# Articles left out when artists are indexed by letter (getIndexes, getArtists).
IGNORED_ARTICLES = ("The", "El", "La", "Los", "Las", "Le", "Les")
_SONG_ORDER = "disc, track_key, title_key, id"


@attrs.frozen
class Catalog:
    """Every album and artist of the visible songs, summed up once per change of the songs.

    An album is ``{"id", "name", "artist", "artist_id", "year", "genre", "song_count",
    "duration", "created", "cover"}`` (``cover``: the one a user set, else the cover of its
    first song, by disc and track, that has one); an artist ``{"id", "name", "album_count",
    "song_count", "cover"}``; a genre ``{"name", "song_count", "album_count"}``.
    """

    key: tuple[Any, ...]
    albums: list[dict[str, Any]]  # by name, then artist, then id
    artists: list[dict[str, Any]]  # by name, then id
    genres: list[dict[str, Any]]  # by name
    album_by_id: dict[str, dict[str, Any]]
    artist_by_id: dict[str, dict[str, Any]]
    albums_of: dict[str, list[dict[str, Any]]]  # an artist's albums, by year then name
    # The albums in the orders asked for so far, sorted once per catalog.
    _sorted: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict, eq=False)

    def _in_order(self, kind: str) -> list[dict[str, Any]]:
        found = self._sorted.get(kind)
        if found is None:
            if kind == "newest":
                found = sorted(self.albums, key=lambda a: (a["created"], a["id"]), reverse=True)
            elif kind == "alphabeticalByArtist":
                found = sorted(self.albums, key=lambda a: (a["artist_key"], a["name_key"],
                                                           a["id"]))
            else:
                found = sorted((a for a in self.albums if a["year"] is not None),
                               key=lambda a: (a["year"], a["name_key"], a["id"]))
            self._sorted[kind] = found
        return found

    def album_list(self, kind: str, size: int, offset: int, *, from_year: int | None = None,
                   to_year: int | None = None, genre: str | None = None,
                   rng: random.Random | None = None) -> list[dict[str, Any]]:
        """One page of albums of a list ``kind`` (ALBUM_ORDERS)."""
        albums = self.albums
        if kind == "random":
            chosen = (rng or random.Random()).sample(albums, min(size, len(albums)))
            return chosen
        if kind in ("newest", "alphabeticalByArtist"):
            albums = self._in_order(kind)
        elif kind == "byYear":
            assert from_year is not None and to_year is not None
            low, high = min(from_year, to_year), max(from_year, to_year)
            albums = [a for a in self._in_order("byYear") if low <= a["year"] <= high]
            if from_year > to_year:
                albums.reverse()
        elif kind == "byGenre":
            wanted = fold(genre)
            albums = [a for a in albums if a["genre_key"] == wanted]
        return albums[offset:offset + size]

    def matching(self, query: str, artist_count: int, artist_offset: int, album_count: int,
                 album_offset: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The artists and albums whose names hold ``query`` (folded; "" is in every name)."""
        wanted = fold(query)
        artists = [a for a in self.artists if wanted in a["name_key"]] if wanted else self.artists
        albums = [a for a in self.albums if wanted in a["name_key"]] if wanted else self.albums
        return (artists[artist_offset:artist_offset + artist_count],
                albums[album_offset:album_offset + album_count])


class CatalogQueries(Tables):
    """Reads of the catalog; every method runs on the store's thread like the others."""

    _catalog: Catalog | None = None
    _sync_bookmarks: Bookmarks | None = None

    def catalog_key(self) -> tuple[object, ...]:
        """Moves when a song, or a cover a user set on an album, changes (the album covers
        are few: their newest version is one step): what the catalog's summaries and the
        covers live rows name (covers.py's sweep) are made from."""
        set_covers = self._conn.execute(
            "SELECT count(*), max(version) FROM album_covers").fetchone()
        return (*songs_version(self._conn), int(set_covers[0]), str(set_covers[1]))

    def catalog(self) -> Catalog:
        """The summaries, made again when ``catalog_key`` has moved since they were made."""
        key = self.catalog_key()
        if self._catalog is None or self._catalog.key != key:
            self._catalog = _summed_up(key, self._conn.execute(
                "SELECT id, album_id, artist_id, catalog_artist, album, year, genre, duration,"
                " created_at, cover_sha256 FROM songs INDEXED BY songs_by_album_id"
                f" WHERE {VISIBLE_SONG} ORDER BY album_id, {_SONG_ORDER}"),
                self._conn.execute("SELECT id, cover_sha256 FROM album_covers"
                                   " WHERE deleted = 0 AND cover_sha256 IS NOT NULL"))
        return self._catalog

    def _rowid_at(self, after: list[Any] | None, skip: int) -> list[Any] | None:
        """Bookmarks.start's NextMark for the songs by rowid (search3's sync order)."""
        row = self._conn.execute(
            f"SELECT rowid FROM songs WHERE {VISIBLE_SONG} AND rowid > ? ORDER BY rowid"
            " LIMIT 1 OFFSET ?", (after[0] if after else 0, skip)).fetchone()
        return None if row is None else [row[0]]

    def catalog_song(self, song_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            f"SELECT * FROM songs WHERE id = ? AND {VISIBLE_SONG}", (song_id,)).fetchone()
        return None if row is None else _row(row)

    def catalog_songs(self, song_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The visible songs among ``song_ids``, by id, in one read (a playlist's entries,
        a user's starred songs): rows for elements.song."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(song_ids), 500):  # SQLite's bound on parameters
            part = song_ids[start:start + 500]
            rows = self._conn.execute(
                f"SELECT * FROM songs WHERE id IN ({', '.join('?' * len(part))})"
                f" AND {VISIBLE_SONG}", part)
            found.update((row["id"], _row(row)) for row in rows)
        return found

    def album_songs(self, album_id: str) -> list[dict[str, Any]]:
        """An album's songs by disc, track and title."""
        rows = self._conn.execute(
            f"SELECT * FROM songs INDEXED BY songs_by_album_id WHERE album_id = ?"
            f" AND {VISIBLE_SONG} ORDER BY {_SONG_ORDER}", (album_id,))
        return [_row(row) for row in rows]

    def songs_by_genre(self, genre: str, count: int, offset: int) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            f"SELECT * FROM songs INDEXED BY songs_by_genre WHERE genre = ? AND {VISIBLE_SONG}"
            " ORDER BY genre, rowid LIMIT ? OFFSET ?", (genre, count, offset))
        return [_row(row) for row in rows]

    def random_songs(self, size: int, genre: str | None = None, from_year: int | None = None,
                     to_year: int | None = None) -> list[dict[str, Any]]:
        """Up to ``size`` songs picked at random among those matching."""
        clauses, params = [VISIBLE_SONG], list[Any]()
        if genre is not None:
            clauses.append("genre = ?")
            params.append(genre)
        if from_year is not None:
            clauses.append("year >= ?")
            params.append(from_year)
        if to_year is not None:
            clauses.append("year <= ?")
            params.append(to_year)
        if len(clauses) == 1:
            picked = self._random_rowids(size)
            if picked is not None:
                return picked
        rows = self._conn.execute(
            f"SELECT * FROM songs WHERE {' AND '.join(clauses)} ORDER BY random() LIMIT ?",
            (*params, size))
        return [_row(row) for row in rows]

    def _random_rowids(self, size: int) -> list[dict[str, Any]] | None:
        """Songs at random rowids: no sort of the whole library. None when the rowids are
        too sparse for it (many deleted): the caller sorts by random() instead."""
        top = self._conn.execute("SELECT max(rowid) FROM songs").fetchone()[0]
        if not top:
            return []
        if top < 4 * size or tally(self._conn, SONGS) * 2 < top:
            return None
        wanted = random.sample(range(1, top + 1), min(top, 3 * size))
        rows = self._conn.execute(
            f"SELECT * FROM songs WHERE rowid IN ({', '.join('?' * len(wanted))})"
            f" AND {VISIBLE_SONG}", wanted).fetchall()
        if len(rows) < size:
            return None
        random.shuffle(rows)
        return [_row(row) for row in rows[:size]]

    def search_catalog_songs(self, query: str, count: int, offset: int
                             ) -> list[dict[str, Any]]:
        """Songs whose title, artist or album hold ``query`` (folded), best matches first
        (the search index, as GET /songs?q= uses it); "" lists every song, oldest first, in
        an order that new songs only extend (clients page through it to sync)."""
        wanted = fold(query)
        if not wanted:  # a deep page starts at its bookmark (bookmarks.py)
            if self._sync_bookmarks is None:
                self._sync_bookmarks = Bookmarks()
            after, offset = self._sync_bookmarks.start(
                "rowid", songs_version(self._conn), offset, self._rowid_at)
            rows = self._conn.execute(
                f"SELECT * FROM songs WHERE {VISIBLE_SONG} AND rowid > ? ORDER BY rowid"
                " LIMIT ? OFFSET ?", (after[0] if after else 0, count, offset))
            return [_row(row) for row in rows]
        found = _Filter(Q_COLUMNS, wanted)
        if len(wanted) >= TRIGRAM:
            matching, params = "song_search MATCH ?", [found.phrase()]
            order = f"{RANK}, rowid"
        else:
            matching, params = found.scan()
            order = "rowid"
        # The index alone orders the matches (every one of them); the page's songs are read
        # after. Every song in the index is visible.
        top = self._conn.execute(f"SELECT rowid FROM song_search WHERE {matching}"
                                 f" ORDER BY {order} LIMIT ? OFFSET ?", (*params, count, offset))
        return [_row(row) for row in songs_by_rowid(self._conn, [rowid for rowid, in top])]


_INTERNAL = ("field_versions", "bucket", "version", "rowid")


def _row(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in row.keys() if k not in _INTERNAL}  # noqa: SIM118


def _summed_up(key: tuple[Any, ...], rows: Iterable[sqlite3.Row],
               set_covers: Iterable[sqlite3.Row]) -> Catalog:
    albums: dict[str, dict[str, Any]] = {}
    genres: dict[str, dict[str, Any]] = {}
    for row in rows:
        album = albums.get(row["album_id"])
        if album is None:
            name = (row["album"] or "").strip() or UNKNOWN_ALBUM
            album = albums[row["album_id"]] = {
                "id": row["album_id"], "name": name, "artist": row["catalog_artist"],
                "artist_id": row["artist_id"], "year": row["year"], "genre": None,
                "song_count": 0, "duration": 0.0, "created": row["created_at"],
                "cover": None, "name_key": fold(name), "genre_key": "",
                "artist_key": fold(row["catalog_artist"])}
        album["song_count"] += 1
        duration = row["duration"]
        if isinstance(duration, int | float) and duration > 0:
            album["duration"] += duration
        if row["created_at"] and row["created_at"] < album["created"]:
            album["created"] = row["created_at"]
        if album["cover"] is None and row["cover_sha256"]:
            album["cover"] = row["cover_sha256"]
        if album["genre"] is None and row["genre"]:
            album["genre"], album["genre_key"] = row["genre"], fold(row["genre"])
        if row["genre"]:
            genre = genres.setdefault(row["genre"], {"name": row["genre"], "song_count": 0,
                                                     "albums": set()})
            genre["song_count"] += 1
            genre["albums"].add(row["album_id"])
    for album_id, cover in set_covers:  # a cover a user set wins over the songs' own
        if album_id in albums:
            albums[album_id]["cover"] = cover
    artists: dict[str, dict[str, Any]] = {}
    albums_of: dict[str, list[dict[str, Any]]] = {}
    for album in albums.values():
        artist = artists.get(album["artist_id"])
        if artist is None:
            artist = artists[album["artist_id"]] = {
                "id": album["artist_id"], "name": album["artist"], "album_count": 0,
                "song_count": 0, "cover": None, "name_key": fold(album["artist"])}
        artist["album_count"] += 1
        artist["song_count"] += album["song_count"]
        artist["cover"] = artist["cover"] or album["cover"]
        albums_of.setdefault(album["artist_id"], []).append(album)
    for listed in albums_of.values():
        listed.sort(key=lambda a: (a["year"] is None, a["year"] or 0, a["name_key"], a["id"]))
    by_name = sorted(albums.values(), key=lambda a: (a["name_key"], a["artist_key"], a["id"]))
    return Catalog(
        key=key, albums=by_name,
        artists=sorted(artists.values(), key=lambda a: (a["name_key"], a["id"])),
        genres=sorted(({"name": g["name"], "song_count": g["song_count"],
                        "album_count": len(g["albums"])} for g in genres.values()),
                      key=lambda g: (fold(g["name"]), g["name"])),
        album_by_id=albums, artist_by_id=artists, albums_of=albums_of)
