"""What the store derives from the replicated rows and keeps beside them: the songs' search
index (FTS5), their stored sort keys, and tallies (visible songs, tombstones).

Kept in the transaction of every apply (a leader's write, a push, an anti-entropy merge, a
purge), carried by snapshots, and rebuilt whole when a database lacks it or was built by
another version of this index (``ensure``).
"""
# test-case-name: tests.unit.test_songindex

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Mapping
from typing import Any

from distpotify import catalog
from distpotify.model import ENTITIES
from distpotify.store.songorder import SONG_ORDERS, SORT_KEYS, VISIBLE_SONG, fold, sort_keys

# The search index: each song's folded text, one FTS5 column per field. The trigram
# tokenizer indexes every three-character run, so a query of three characters or more finds
# any substring (not only whole words or their prefixes); folding is ours (``fold``), done on
# both sides, hence case_sensitive 1 (the tokenizer must not fold differently).
SEARCHED = ("title", "artist", "album", "genre")
SEARCH_TABLE = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS song_search USING fts5({', '.join(SEARCHED)},"
    " tokenize = 'trigram case_sensitive 1')"
)
# Tallies and the index's format, in one small table that snapshots copy with the rest.
DERIVED_TABLE = "CREATE TABLE IF NOT EXISTS derived (name TEXT PRIMARY KEY, value)"
# A new format (or Unicode tables that fold differently) rebuilds the index at start-up.
FORMAT = f"songindex 2, unicode {unicodedata.unidata_version}"
# Partial indexes of the tombstones: what a purge looks for and the tally counts.
TOMBSTONE_INDEXES = [
    f"CREATE INDEX IF NOT EXISTS {name}_tombstones ON {name} (bucket) WHERE deleted = 1"
    for name, entity in ENTITIES.items() if "deleted" in entity.fields
]
# Columns of the songs table beyond the entity's: the stored sort keys, and the catalog's
# album and artist of each song (catalog.py). Untyped, so a number key stays a number and an
# empty one stays text.
SONG_KEY_COLUMNS = (*SORT_KEYS, *catalog.COLUMNS)
# The Subsonic API's browsing (store/catalog.py): an album's songs in order, an artist's
# songs, a genre's songs.
CATALOG_INDEXES = [
    "CREATE INDEX IF NOT EXISTS songs_by_album_id ON songs"
    f" (album_id, disc, track_key, title_key) WHERE {VISIBLE_SONG}",
    f"CREATE INDEX IF NOT EXISTS songs_by_artist_id ON songs (artist_id) WHERE {VISIBLE_SONG}",
    f"CREATE INDEX IF NOT EXISTS songs_by_genre ON songs (genre) WHERE {VISIBLE_SONG}",
]

SONGS = "songs"  # tally: visible songs
TOMBSTONES = "tombstones"  # tally: tombstoned rows of every entity
# tally: changes to songs, counted so the catalog's summaries know when to be made again
SONG_CHANGES = "song_changes"


def derived_columns(fields: Mapping[str, Any]) -> dict[str, Any]:
    """What the songs table keeps beside a song's fields: its sort keys and catalog ids."""
    return {**sort_keys(fields), **catalog.stored_columns(fields)}


def visible(fields: Mapping[str, Any] | None) -> bool:
    """A song the API shows: not tombstoned, its bytes known (its creating op arrived)."""
    return fields is not None and fields.get("deleted", 0) == 0 and fields.get("sha256") is not None


def dead(fields: Mapping[str, Any] | None) -> bool:
    return fields is not None and fields.get("deleted", 0) == 1


def search_text(fields: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(fold(fields.get(name)) for name in SEARCHED)


def tally(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT value FROM derived WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def songs_version(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """Moves whenever a song is added, changed or removed, and with another connection (a
    snapshot installed): what a cache of the songs' order is good for."""
    return id(conn), tally(conn, SONG_CHANGES), tally(conn, SONGS)


def average_tokens(conn: sqlite3.Connection) -> float:
    """The mean number of tokens of an indexed song, its columns together: what FTS5's bm25
    calls avgdl, read where FTS5 keeps its totals (row 1 of ``song_search_data``, its
    "averages" record: the row count, then each column's token total, as SQLite varints);
    0.0 for an empty index."""
    row = conn.execute("SELECT block FROM song_search_data WHERE id = 1").fetchone()
    if row is None or not row[0]:  # a new index's record is empty
        return 0.0
    count, *totals = _varints(row[0])
    return sum(totals) / count if count else 0.0


def _varints(data: bytes) -> list[int]:
    """SQLite's variable-length integers: big-endian groups of 7 bits, each byte's high bit
    set when another follows; a 9th byte gives all 8 of its bits."""
    found, at = [], 0
    while at < len(data):
        value = 0
        for length in range(9):
            byte = data[at]
            at += 1
            if length == 8:
                value = value << 8 | byte
                break
            value = value << 7 | byte & 0x7F
            if not byte & 0x80:
                break
        found.append(value)
    return found


def add_to_tally(conn: sqlite3.Connection, name: str, delta: int) -> None:
    if delta:
        conn.execute(
            "INSERT INTO derived (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (name, delta))


def row_applied(
    conn: sqlite3.Connection, entity: str, key: str, old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
) -> None:
    """Bring the index up to date with one row's change (old fields -> new), inside the
    apply's transaction. The stored sort keys are written with the row itself (oplog.py)."""
    if "deleted" in ENTITIES[entity].fields:
        add_to_tally(conn, TOMBSTONES, dead(new) - dead(old))
    if entity != "songs":
        return
    add_to_tally(conn, SONG_CHANGES, 1)
    was, now = visible(old), visible(new)
    if was == now and (not now or search_text(old or {}) == search_text(new)):
        return
    add_to_tally(conn, SONGS, now - was)
    rowid = conn.execute("SELECT rowid FROM songs WHERE id = ?", (key,)).fetchone()[0]
    if was:
        conn.execute("DELETE FROM song_search WHERE rowid = ?", (rowid,))
    if now:
        conn.execute(
            f"INSERT INTO song_search (rowid, {', '.join(SEARCHED)})"
            f" VALUES (?{', ?' * len(SEARCHED)})", (rowid, *search_text(new)))


def rows_purged(conn: sqlite3.Connection, count: int) -> None:
    """Tombstones removed by a purge (never visible songs: nothing else changes)."""
    add_to_tally(conn, TOMBSTONES, -count)


def ensure(conn: sqlite3.Connection) -> bool:
    """Create what is missing, and rebuild the index unless it is of this FORMAT (a database
    from before it, or a snapshot from another version); whether it was rebuilt. Runs inside
    the caller's transaction."""
    existing = {row[1] for row in conn.execute("PRAGMA table_info(songs)")}
    for column in SONG_KEY_COLUMNS:
        if column not in existing:
            conn.execute(f"ALTER TABLE songs ADD COLUMN {column}")
    conn.execute(SEARCH_TABLE)
    conn.execute(DERIVED_TABLE)
    found = conn.execute("SELECT value FROM derived WHERE name = 'format'").fetchone()
    rebuilt = found is None or found[0] != FORMAT
    if rebuilt:
        _rebuild(conn)
    # After a rebuild: filling indexed columns row by row costs more than indexing once.
    conn.execute("DROP INDEX IF EXISTS songs_created")  # the newest order before its index
    for order in SONG_ORDERS.values():
        if order.indexed:
            conn.execute(order.index_sql())
    for statement in (*TOMBSTONE_INDEXES, *CATALOG_INDEXES):
        conn.execute(statement)
    return rebuilt


def _rebuild(conn: sqlite3.Connection) -> None:
    assignments = ", ".join(f"{column} = ?" for column in SONG_KEY_COLUMNS)
    songs = [dict(row) for row in conn.execute("SELECT rowid, * FROM songs")]
    conn.executemany(
        f"UPDATE songs SET {assignments} WHERE rowid = ?",
        [(*derived_columns(row).values(), row["rowid"]) for row in songs])
    conn.execute("DELETE FROM song_search")
    live = [row for row in songs if visible(row)]
    conn.executemany(
        f"INSERT INTO song_search (rowid, {', '.join(SEARCHED)})"
        f" VALUES (?{', ?' * len(SEARCHED)})",
        [(row["rowid"], *search_text(row)) for row in live])
    tombstones = sum(
        conn.execute(f"SELECT count(*) FROM {name} WHERE deleted = 1").fetchone()[0]
        for name, entity in ENTITIES.items() if "deleted" in entity.fields)
    conn.execute("DELETE FROM derived")
    conn.executemany("INSERT INTO derived (name, value) VALUES (?, ?)",
                     [("format", FORMAT), (SONGS, len(live)), (TOMBSTONES, tombstones)])
