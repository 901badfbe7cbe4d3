"""The per-user state's reads (issue 18): API keys, stars, ratings, plays, now playing, the
saved play queue and bookmarks, each query naming its user (indexed, or by the records' derived
ids), never a tombstone.

Records are written by userstate.py's functions on the database thread; ids of stars and
ratings are derived (``item_record_id``), so a lookup of a page of items is one query by key;
a play queue's id derives from its user (``play_queue_id``), a bookmark's from its user and
song (``bookmark_id``).
"""
# test-case-name: tests.unit.test_userstate

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from distpotify.model import valid_uuid
from distpotify.store.catalog import CatalogQueries
from distpotify.store.songorder import VISIBLE_SONG

# Fixed for good: star and rating ids derive from it, the same on every replica.
NAMESPACE = uuid.UUID("1b1f0d3c-7e0a-4c55-8a43-6a2f5b9e0c71")
KINDS = ("song", "album", "artist")
# Bound variables per IN (...): well under SQLite's limit, whatever page a caller reads.
_BATCH = 500


def item_record_id(entity: str, user_id: str, kind: str, item_id: str) -> str:
    """The id of ``user_id``'s star or rating (``entity``) of one item: the same wherever and
    however often it is made, so two sides of a partition starring one song make one record."""
    return str(uuid.uuid5(NAMESPACE, "\x00".join((entity, user_id, kind, item_id))))


def play_record_id(user_id: str, song_id: str, played_at: str) -> str:
    """One play's id: a client sending the same scrobble again (its offline queue, a retry)
    counts it once; two plays of a song at two moments are two records."""
    return str(uuid.uuid5(NAMESPACE, "\x00".join(("play", user_id, song_id, played_at))))


def keyed_play_id(record_id: str, index: int) -> str:
    """The id of the ``index``-th play of a keyed scrobble that gave no time: the leader's
    clock times it, and two leaders applying the write (the second one the proxy sent it to
    again) read theirs at different moments, so its id comes from the write's key
    (IdempotencyKey.record_id) instead, and the two merge into one play."""
    return str(uuid.uuid5(NAMESPACE, "\x00".join(("play", record_id, str(index)))))


def now_playing_id(user_id: str, client: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "\x00".join(("now", user_id, client))))


def play_queue_id(user_id: str) -> str:
    """The id of ``user_id``'s one play queue: every save, on any leader, writes this record."""
    return str(uuid.uuid5(NAMESPACE, "\x00".join(("queue", user_id))))


def bookmark_id(user_id: str, song_id: str) -> str:
    """The id of ``user_id``'s bookmark in ``song_id``: one per user and song, however often and
    wherever it is made."""
    return str(uuid.uuid5(NAMESPACE, "\x00".join(("bookmark", user_id, song_id))))


def queue_entries(text: Any) -> list[str]:
    """A play queue's ``entries`` as stored (compact JSON text), or [] for anything else: the
    text came from a leader that checked it, so nothing else is expected, but a read must not
    fail on it."""
    try:
        found = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return []
    if not isinstance(found, list) or not all(isinstance(i, str) and valid_uuid(i)
                                              for i in found):
        return []
    return found


def _batches(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _BATCH):
        yield items[start:start + _BATCH]


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


class UserStateQueries(CatalogQueries):
    """Reads of the per-user records (a part of MetadataDB); albums and artists are the
    catalog's (CatalogQueries)."""

    # API keys (accounts.py keeps the live ones' hashes in memory)

    def api_keys(self) -> list[dict[str, Any]]:
        """Every live key: id, user_id, key_hash."""
        rows = self._conn.execute(
            "SELECT id, user_id, key_hash FROM api_keys WHERE deleted = 0"
            " AND key_hash IS NOT NULL AND user_id IS NOT NULL")
        return [dict(row) for row in rows]

    def api_keys_of(self, user_id: str) -> list[dict[str, Any]]:
        """``user_id``'s live keys as the API shows them (never the hash), oldest first."""
        rows = self._conn.execute(
            "SELECT id, name, created_at FROM api_keys WHERE user_id = ? AND deleted = 0"
            " AND key_hash IS NOT NULL ORDER BY created_at, id", (user_id,))
        return [dict(row) for row in rows]

    def api_key(self, key_id: str) -> dict[str, Any] | None:
        """A live key: id, user_id, name, created_at."""
        row = self._conn.execute(
            "SELECT id, user_id, name, created_at FROM api_keys WHERE id = ? AND deleted = 0"
            " AND key_hash IS NOT NULL", (key_id,)).fetchone()
        return None if row is None else dict(row)

    # stars, ratings, plays

    def annotations(self, user_id: str, kind: str, item_ids: Sequence[str]
                    ) -> dict[str, dict[str, Any]]:
        """For each of ``item_ids`` that has any: ``starred`` (when), ``rating`` (1-5),
        ``play_count`` and ``played`` (the last play; songs and albums)."""
        found: dict[str, dict[str, Any]] = {}
        items = list(dict.fromkeys(item_ids))
        for entity, column, name in (("stars", "starred_at", "starred"),
                                     ("ratings", "rating", "rating")):
            by_record = {item_record_id(entity, user_id, kind, i): i for i in items}
            for batch in _batches(list(by_record)):
                rows = self._conn.execute(
                    f"SELECT id, {column} FROM {entity} WHERE id IN ({_marks(batch)})"
                    f" AND deleted = 0 AND user_id = ?", (*batch, user_id))
                for row in rows:
                    found.setdefault(by_record[row["id"]], {})[name] = row[column]
        if kind == "song":
            for batch in _batches(items):
                rows = self._conn.execute(
                    "SELECT song_id, count(*) AS n, max(played_at) AS last FROM plays"
                    f" WHERE user_id = ? AND song_id IN ({_marks(batch)}) GROUP BY song_id",
                    (user_id, *batch))
                for row in rows:
                    found.setdefault(row["song_id"], {}).update(
                        play_count=row["n"], played=row["last"])
        elif kind == "album":
            for batch in _batches(items):
                for album, (count, last) in self._album_plays(user_id, batch).items():
                    found.setdefault(album, {}).update(play_count=count, played=last)
        return found

    def album_plays(self, user_id: str) -> dict[str, tuple[int, str]]:
        """``user_id``'s plays by album (the album of each live song they played):
        (count, last played)."""
        return self._album_plays(user_id, None)

    def _album_plays(self, user_id: str, albums: Sequence[str] | None
                     ) -> dict[str, tuple[int, str]]:
        only = "" if albums is None else f" AND s.album_id IN ({_marks(albums)})"
        rows = self._conn.execute(
            "SELECT s.album_id, count(*) AS n, max(p.played_at) AS last FROM plays AS p"
            " JOIN songs AS s ON s.id = p.song_id WHERE p.user_id = ?"
            f" AND s.deleted = 0 AND s.sha256 IS NOT NULL{only} GROUP BY s.album_id",
            (user_id, *(albums or ())))
        return {row["album_id"]: (int(row["n"]), str(row["last"])) for row in rows}

    def highest_rated(self, user_id: str, kind: str) -> list[tuple[str, int]]:
        """``user_id``'s rated items of ``kind``: (item id, rating), highest first, then the
        most recently rated."""
        rows = self._conn.execute(
            "SELECT item_id, rating FROM ratings WHERE user_id = ? AND kind = ? AND deleted = 0"
            " AND rating > 0 ORDER BY rating DESC, rated_at DESC, item_id", (user_id, kind))
        return [(row["item_id"], int(row["rating"])) for row in rows]

    def starred(self, user_id: str, kind: str) -> list[tuple[str, str]]:
        """``user_id``'s starred items of ``kind``: (item id, starred at), newest first."""
        rows = self._conn.execute(
            "SELECT item_id, starred_at FROM stars WHERE user_id = ? AND kind = ?"
            " AND deleted = 0 ORDER BY starred_at DESC, item_id", (user_id, kind))
        return [(row["item_id"], row["starred_at"]) for row in rows]

    def play_count(self, user_id: str) -> int:
        return int(self._conn.execute(
            "SELECT count(*) FROM plays WHERE user_id = ?", (user_id,)).fetchone()[0])

    def now_playing(self, since: str) -> list[dict[str, Any]]:
        """Every client's song played at or after ``since`` (an ISO time), newest first."""
        rows = self._conn.execute(
            "SELECT user_id, client, song_id, at FROM now_playing WHERE at >= ?"
            " AND song_id IS NOT NULL AND user_id IS NOT NULL ORDER BY at DESC", (since,))
        return [dict(row) for row in rows]

    def play_queue(self, user_id: str) -> dict[str, Any] | None:
        """``user_id``'s saved play queue as it was saved: ``entries`` (song ids in order),
        ``current`` (an index into them, or None), ``position_ms``, ``changed_at`` and
        ``changed_by``; None if they never saved one."""
        row = self._conn.execute(
            "SELECT entries, current, position_ms, changed_at, changed_by FROM play_queues"
            " WHERE id = ? AND user_id = ?", (play_queue_id(user_id), user_id)).fetchone()
        if row is None:
            return None
        entries = queue_entries(row["entries"])
        current = row["current"]
        return {"entries": entries,
                "current": current if isinstance(current, int)
                and 0 <= current < len(entries) else None,
                "position_ms": max(0, int(row["position_ms"] or 0)),
                "changed_at": str(row["changed_at"] or ""),
                "changed_by": str(row["changed_by"] or "")}

    def bookmarks(self, user_id: str) -> list[dict[str, Any]]:
        """``user_id``'s live bookmarks, the latest changed first: song_id, position_ms,
        comment, created_at, changed_at."""
        rows = self._conn.execute(
            "SELECT song_id, position_ms, comment, created_at, changed_at FROM song_bookmarks"
            " WHERE user_id = ? AND deleted = 0 AND song_id IS NOT NULL"
            " ORDER BY changed_at DESC, song_id", (user_id,))
        return [dict(row) for row in rows]

    # playlists as the Subsonic API shows them

    def playlist_summaries(self) -> dict[str, dict[str, Any]]:
        """Every live playlist's Subsonic summary, by id: ``comment``, ``song_count`` and
        ``duration`` of its live songs, and ``changed`` (its last edit, of itself or its items)."""
        rows = self._conn.execute(
            "SELECT p.id, p.comment, p.created_at, p.changed_at, count(s.id) AS song_count,"
            " coalesce(sum(s.duration), 0) AS duration, max(i.created_at) AS last_item"
            " FROM playlists AS p"
            " LEFT JOIN playlist_items AS i ON i.playlist_id = p.id AND i.deleted = 0"
            " LEFT JOIN songs AS s ON s.id = i.song_id AND s.deleted = 0"
            " AND s.sha256 IS NOT NULL"
            " WHERE p.deleted = 0 AND p.name IS NOT NULL GROUP BY p.id")
        return {row["id"]: {"comment": row["comment"], "song_count": int(row["song_count"]),
                            "duration": float(row["duration"] or 0),
                            "changed": max(str(row["created_at"] or ""),
                                           str(row["changed_at"] or ""),
                                           str(row["last_item"] or ""))}
                for row in rows}

    # the catalog's ids, to tell what an id names

    def catalog_ids(self) -> tuple[set[str], set[str]]:
        """Every album id and artist id of the live songs (the catalog's summaries, kept
        until a song changes)."""
        found = self.catalog()
        return set(found.album_by_id), set(found.artist_by_id)

    def live_song_ids(self, song_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for batch in _batches(list(song_ids)):
            rows = self._conn.execute(
                f"SELECT id FROM songs WHERE id IN ({_marks(batch)}) AND {VISIBLE_SONG}",
                tuple(batch))
            found |= {row["id"] for row in rows}
        return found
