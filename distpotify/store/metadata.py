"""SQLite metadata of one replica: the replicated tables, the oplog and node_meta.

MetadataDB is the synchronous core (one connection, WAL, fsync on commit); MetadataStore runs
it on one dedicated thread so the reactor never blocks and writes are serialized.
"""
# test-case-name: tests.unit.test_metadata

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred

from distpotify.model import ENTITIES, Entity, Op, Row, Version
from distpotify.store.merge import merge

P = ParamSpec("P")
T = TypeVar("T")

_TYPES = {
    "track": "INTEGER", "year": "INTEGER", "duration": "REAL", "size": "INTEGER",
    "chunk_size": "INTEGER", "chunk_count": "INTEGER", "deleted": "INTEGER NOT NULL DEFAULT 0",
    "idx": "INTEGER", "position": "REAL",
}

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


@attrs.frozen
class Change:
    """A write the leader is about to make: fields to set on one row."""

    entity: str
    key: str
    fields: dict[str, Any]


def _table_sql(entity: Entity) -> str:
    columns = [f"{name} {_TYPES.get(name, 'TEXT')}" for name in entity.keys]
    columns += [f"{name} {_TYPES.get(name, 'TEXT')}" for name in entity.fields]
    columns += ["version TEXT NOT NULL", "field_versions TEXT NOT NULL",
                "bucket INTEGER NOT NULL"]
    key = ", ".join(entity.keys)
    return f"CREATE TABLE IF NOT EXISTS {entity.name} ({', '.join(columns)}, PRIMARY KEY ({key}))"


BUCKETS = 256
CHUNK_CACHE_SIZE = 100_000  # registry rows kept in memory, about 20 MB


def bucket_of(entity: str, key: str) -> int:
    """The anti-entropy bucket of a row: a stable hash of its identity."""
    return hashlib.sha256(f"{entity}/{key}".encode()).digest()[0] % BUCKETS


def _versions_text(row: Row) -> str:
    return json.dumps({name: v.encode() for name, v in row.versions.items()}, sort_keys=True)


def _row_hash(entity: str, key: str, versions_text: str) -> int:
    """What a row contributes to its bucket's digest: its identity and every field version."""
    digest = hashlib.sha256(f"{entity}/{key}/{versions_text}".encode()).digest()
    return int.from_bytes(digest[:16], "big")


SCHEMA = [
    *(_table_sql(entity) for entity in ENTITIES.values()),
    *(f"CREATE INDEX IF NOT EXISTS {name}_bucket ON {name} (bucket)" for name in ENTITIES),
    # Per bucket, the XOR of its rows' hashes: updated on every apply, so comparing two
    # replicas costs BUCKETS hashes plus the rows of the buckets that differ.
    "CREATE TABLE IF NOT EXISTS digest (bucket INTEGER PRIMARY KEY, hash TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS songs_sha256 ON songs (sha256)",
    "CREATE INDEX IF NOT EXISTS songs_created ON songs (created_at)",
    "CREATE INDEX IF NOT EXISTS items_playlist ON playlist_items (playlist_id)",
    "CREATE INDEX IF NOT EXISTS items_song ON playlist_items (song_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS users_name ON users (username) WHERE deleted = 0",
    "CREATE TABLE IF NOT EXISTS oplog (version TEXT PRIMARY KEY, entity TEXT NOT NULL,"
    " key TEXT NOT NULL, body TEXT NOT NULL, at REAL)",
    "CREATE INDEX IF NOT EXISTS oplog_at ON oplog (at)",
    "CREATE TABLE IF NOT EXISTS node_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
]


class MetadataDB:
    """Synchronous access to the database; every method runs on the store's one thread."""

    def __init__(
        self, path: Path, node_id: int, now: Callable[[], float] = time.time
    ) -> None:
        self.node_id = node_id
        self._now = now
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.create_function("fold", 1, _fold, deterministic=True)
        self._conn.create_function("sort_key", 1, _sort_key, deterministic=True)
        self._conn.execute("PRAGMA journal_mode = WAL")
        # FULL: the WAL is fsynced at every commit, so a write is durable before it is acked.
        self._conn.execute("PRAGMA synchronous = FULL")
        with self._transaction():
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(oplog)")}
            if columns and "at" not in columns:  # a database from before ops had a time
                self._conn.execute("ALTER TABLE oplog ADD COLUMN at REAL")
            for statement in SCHEMA:
                self._conn.execute(statement)
        self._epoch = 0
        self._seq = 0
        self._head = self.head()
        # Chunk registry rows never change once live; served chunks are looked up here,
        # from the reactor thread, without a trip to the database thread. Written only by
        # this thread (filled on lookups, emptied of tombstoned chunks as they are applied).
        self._chunk_cache: dict[tuple[str, int], dict[str, Any]] = {}

    def close(self) -> None:
        self._conn.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    # node_meta

    def get_meta(self, name: str) -> str | None:
        row = self._conn.execute("SELECT value FROM node_meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, name: str, value: str) -> None:
        with self._transaction():
            self._conn.execute(
                "INSERT INTO node_meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # the write path

    def begin_leading(self, epoch: int) -> None:
        """Number this node's writes in ``epoch`` after any it already made in it."""
        prefix = Version(epoch, self.node_id, 0).encode()[:-12]
        row = self._conn.execute(
            "SELECT max(version) AS v FROM oplog WHERE version >= ? AND version < ?",
            (prefix, prefix + "a"),
        ).fetchone()
        self._epoch = epoch
        self._seq = Version.decode(row["v"]).seq if row["v"] else 0

    def write(self, changes: Sequence[Change]) -> list[Op]:
        """Apply ``changes`` as this leader's next ops in one durable transaction."""
        if self._epoch == 0:
            raise RuntimeError("write before begin_leading")
        first = self._seq + 1
        ops = [
            Op(Version(self._epoch, self.node_id, seq), change.entity, change.key, change.fields)
            for seq, change in enumerate(changes, start=first)
        ]
        with self._transaction():
            for op in ops:
                self._apply(op)
        self._seq += len(ops)
        self._advance_head(ops)
        return ops

    def apply_ops(self, ops: Iterable[Op]) -> int:
        """Apply ops written elsewhere (replication); returns how many changed a row."""
        ops = list(ops)
        with self._transaction():
            changed = sum(self._apply(op) for op in ops)
        self._advance_head(ops)
        return changed

    def _advance_head(self, ops: list[Op]) -> None:
        self._head = max([self._head, *(op.version for op in ops)])

    def _apply(self, op: Op) -> bool:
        entity = ENTITIES[op.entity]
        if op.entity == "chunks":
            song_id, _, idx = op.key.partition("/")
            self._chunk_cache.pop((song_id, int(idx)), None)
        old = self._get_row(entity, op.key)
        row = merge(old, op)
        self._conn.execute(
            "INSERT OR IGNORE INTO oplog (version, entity, key, body, at) VALUES (?, ?, ?, ?, ?)",
            (op.version.encode(), op.entity, op.key, json.dumps(dict(op.fields)), self._now()),
        )
        if row is None:
            return False
        values = {**entity.split_key(op.key), **row.fields}
        columns = [*entity.keys, *values.keys() - set(entity.keys),
                   "version", "field_versions", "bucket"]
        bucket = bucket_of(op.entity, op.key)
        versions = _versions_text(row)
        params = [values[c] for c in columns[:-3]] + [row.version.encode(), versions, bucket]
        self._conn.execute(
            f"INSERT OR REPLACE INTO {entity.name} ({', '.join(columns)})"
            f" VALUES ({', '.join('?' * len(columns))})",
            params,
        )
        change = _row_hash(op.entity, op.key, versions)
        if old is not None:
            change ^= _row_hash(op.entity, op.key, _versions_text(old))
        self._xor_digest(bucket, change)
        if op.entity == "purges" and "through" in won_fields(old, row):
            self._purge_tombstones(Version.decode(str(row.fields["through"])))
        return True

    def _xor_digest(self, bucket: int, change: int) -> None:
        current = self._conn.execute("SELECT hash FROM digest WHERE bucket = ?", (bucket,))
        found = current.fetchone()
        combined = (int(found["hash"], 16) if found else 0) ^ change
        self._conn.execute(
            "INSERT OR REPLACE INTO digest (bucket, hash) VALUES (?, ?)",
            (bucket, f"{combined:032x}"),
        )

    def _purge_tombstones(self, through: Version) -> int:
        """Remove tombstoned rows deleted at or before ``through`` (every replica has them:
        the leader's watermark), taking them out of the digests too."""
        purged = 0
        for entity in ENTITIES.values():
            if "deleted" not in entity.fields:
                continue
            rows = self._conn.execute(
                f"SELECT {', '.join(entity.keys)}, field_versions, bucket FROM {entity.name}"
                " WHERE deleted = 1 AND json_extract(field_versions, '$.deleted') <= ?",
                (through.encode(),),
            ).fetchall()
            for found in rows:
                key = entity.key_of(found)
                self._xor_digest(found["bucket"],
                                 _row_hash(entity.name, key, found["field_versions"]))
                where = " AND ".join(f"{k} = ?" for k in entity.keys)
                self._conn.execute(f"DELETE FROM {entity.name} WHERE {where}",
                                   tuple(entity.split_key(key).values()))
            purged += len(rows)
        return purged

    def purge_watermark(self) -> Version:
        row = self.get_row("purges", "tombstones")
        return Version.decode(str(row.fields["through"])) if row is not None else Version(0, 0, 0)

    def newest_version_before(self, at: float) -> Version | None:
        """The newest op applied here before wall-clock time ``at``."""
        row = self._conn.execute(
            "SELECT max(version) AS v FROM oplog WHERE at < ?", (at,)).fetchone()
        return Version.decode(row["v"]) if row["v"] else None

    def tombstones(self) -> int:
        return sum(
            self._conn.execute(f"SELECT count(*) FROM {e.name} WHERE deleted = 1").fetchone()[0]
            for e in ENTITIES.values() if "deleted" in e.fields
        )

    # anti-entropy

    def digest(self) -> list[str]:
        """One hash per bucket (hex); equal lists mean equal replicated tables."""
        hashes = ["0" * 32] * BUCKETS
        for row in self._conn.execute("SELECT bucket, hash FROM digest"):
            hashes[row["bucket"]] = row["hash"]
        return hashes

    def bucket_rows(self, bucket: int) -> list[tuple[str, str, str]]:
        """(entity, key, field versions) of every row in ``bucket``."""
        found = []
        for entity in ENTITIES.values():
            rows = self._conn.execute(
                f"SELECT {', '.join(entity.keys)}, field_versions FROM {entity.name}"
                " WHERE bucket = ?",
                (bucket,),
            )
            found += [(entity.name, entity.key_of(r), r["field_versions"]) for r in rows]
        return found

    def rows(self, keys: Iterable[tuple[str, str]]) -> list[Row]:
        return [row for entity, key in keys if (row := self.get_row(entity, key)) is not None]

    def apply_rows(self, rows: Iterable[Row]) -> int:
        """Merge whole rows pulled from a peer: each field with the version that wrote it."""
        return self.apply_ops(op for row in rows for op in row_ops(row))

    def head(self) -> Version:
        row = self._conn.execute("SELECT max(version) AS v FROM oplog").fetchone()
        return Version.decode(row["v"]) if row["v"] else Version(0, 0, 0)

    def backup_to(self, path: Path) -> Version:
        """A consistent copy of the replicated tables at ``path`` (SQLite online backup),
        without this node's own node_meta; the version it contains."""
        head = self.head()
        target = sqlite3.connect(path)
        try:
            self._conn.backup(target)
            target.execute("DELETE FROM node_meta")
            target.commit()
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()
        return head

    def install_snapshot(self, path: Path) -> Version:
        """Replace every replicated table by the snapshot at ``path``, keeping our node_meta."""
        mine = self._conn.execute("SELECT name, value FROM node_meta").fetchall()
        source = sqlite3.connect(path)
        try:
            source.backup(self._conn)
        finally:
            source.close()
        with self._transaction():
            self._conn.execute("DELETE FROM node_meta")
            self._conn.executemany("INSERT INTO node_meta (name, value) VALUES (?, ?)",
                                   [tuple(row) for row in mine])
        self._head = self.head()
        self._chunk_cache.clear()
        return self._head

    def cached_head(self) -> Version:
        """The newest version applied, without a query: safe to read from any thread."""
        return self._head

    def ops_after(self, version: Version, limit: int = 1000) -> list[Op]:
        rows = self._conn.execute(
            "SELECT * FROM oplog WHERE version > ? ORDER BY version LIMIT ?",
            (version.encode(), limit),
        )
        return [
            Op(Version.decode(r["version"]), r["entity"], r["key"], json.loads(r["body"]))
            for r in rows
        ]

    def count_ops_after(self, version: Version) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM oplog WHERE version > ?", (version.encode(),)
        ).fetchone()
        return int(row[0])

    def registry_after(
        self, song_id: str, idx: int, limit: int
    ) -> list[tuple[str, int, int, str]]:
        """Live chunk registry rows after (song_id, idx), in order: for scrubbing in pages."""
        rows = self._conn.execute(
            "SELECT song_id, idx, size, sha256 FROM chunks WHERE deleted = 0"
            " AND sha256 IS NOT NULL AND (song_id, idx) > (?, ?) ORDER BY song_id, idx LIMIT ?",
            (song_id, idx, limit),
        )
        return [(r["song_id"], r["idx"], r["size"], r["sha256"]) for r in rows]

    def chunk_rows(self, names: Iterable[str]) -> list[tuple[str, int, int, str]]:
        """Registry rows of the live chunks named ``<song_id>_<idx>``."""
        found = []
        for name in names:
            song_id, _, idx = name.rpartition("_")
            chunk = self.chunk(song_id, int(idx))
            if chunk is not None:
                found.append((song_id, chunk["idx"], chunk["size"], chunk["sha256"]))
        return found

    def get_row(self, entity_name: str, key: str) -> Row | None:
        return self._get_row(ENTITIES[entity_name], key)

    def _get_row(self, entity: Entity, key: str) -> Row | None:
        where = " AND ".join(f"{k} = ?" for k in entity.keys)
        found = self._conn.execute(
            f"SELECT * FROM {entity.name} WHERE {where}", tuple(entity.split_key(key).values())
        ).fetchone()
        if found is None:
            return None
        versions = {
            name: Version.decode(text) for name, text in json.loads(found["field_versions"]).items()
        }
        return Row(entity.name, key, {name: found[name] for name in versions}, versions)

    # reads for the API

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
            params += [_fold(q)] * 3
        for column, value in (("artist", artist), ("album", album)):
            if value:
                where.append(f"instr(fold({column}), ?)")
                params.append(_fold(value))
        clause = " AND ".join(where)
        total = self._conn.execute(f"SELECT count(*) FROM songs WHERE {clause}", params)
        rows = self._conn.execute(
            f"SELECT * FROM songs WHERE {clause} ORDER BY {SONG_ORDERS[sort]} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_song(row) for row in rows], int(total.fetchone()[0])

    def chunks_of(self, song_id: str) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT idx, size, sha256 FROM chunks WHERE song_id = ? AND deleted = 0"
            " AND sha256 IS NOT NULL ORDER BY idx",
            (song_id,),
        )
        return [dict(row) for row in rows]

    def chunk(self, song_id: str, idx: int) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT idx, size, sha256 FROM chunks WHERE song_id = ? AND idx = ? AND deleted = 0"
            " AND sha256 IS NOT NULL",
            (song_id, idx),
        ).fetchone()
        if row is None:
            return None
        found = dict(row)
        if len(self._chunk_cache) >= CHUNK_CACHE_SIZE:
            self._chunk_cache.pop(next(iter(self._chunk_cache)))
        self._chunk_cache[(song_id, idx)] = found
        return found

    def cached_chunk(self, song_id: str, idx: int) -> dict[str, Any] | None:
        """A live chunk's registry row if it was looked up before; safe from any thread."""
        return self._chunk_cache.get((song_id, idx))

    def live_chunk_names(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT song_id, idx FROM chunks WHERE deleted = 0 AND sha256 IS NOT NULL"
        )
        return {f"{row['song_id']}_{row['idx']}" for row in rows}

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


def won_fields(old: Row | None, new: Row) -> set[str]:
    """The fields whose version changed from ``old`` to ``new``."""
    before = old.versions if old is not None else {}
    return {name for name, version in new.versions.items() if before.get(name) != version}


def row_ops(row: Row) -> list[Op]:
    """A row as the ops that would rebuild its fields, one per distinct version."""
    by_version: dict[Version, dict[str, Any]] = {}
    for name, version in row.versions.items():
        by_version.setdefault(version, {})[name] = row.fields[name]
    return [
        Op(version, row.entity, row.key, fields) for version, fields in sorted(by_version.items())
    ]


def _fold(text: str | None) -> str:
    return "" if text is None else text.casefold()


def _sort_key(text: str | None) -> str:
    """``text`` without case or accents, for ordering: "Águila" -> "aguila"."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _song(row: sqlite3.Row) -> dict[str, Any]:
    song = {name: row[name] for name in SONG_COLUMNS}
    song["version"] = Version.decode(row["version"]).as_list()
    return song


class _Transaction:
    """``with`` block around BEGIN IMMEDIATE / COMMIT (ROLLBACK on any exception)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self._conn.execute("COMMIT" if kind is None else "ROLLBACK")


Runner = Callable[..., Deferred[Any]]


class MetadataStore:
    """The database behind one thread: every call returns a Deferred and never blocks."""

    def __init__(self, db: MetadataDB, runner: Runner) -> None:
        self._db = db
        self._run = runner

    @classmethod
    def open(cls, path: Path, node_id: int, runner: Runner) -> Deferred[MetadataStore]:
        d: Deferred[MetadataDB] = runner(MetadataDB, path, node_id)
        return d.addCallback(cls, runner)

    def run(
        self, method: Callable[Concatenate[MetadataDB, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Deferred[T]:
        """Call ``MetadataDB.method(db, *args)`` on the database thread."""
        return self._run(method, self._db, *args, **kwargs)

    def cached_chunk(self, song_id: str, idx: int) -> dict[str, Any] | None:
        """MetadataDB.cached_chunk, read on the calling thread."""
        return self._db.cached_chunk(song_id, idx)

    def close(self) -> Deferred[None]:
        return self._run(self._db.close)
