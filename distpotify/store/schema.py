"""The SQLite layout of the metadata (tables, indexes, migration, connection setup) and Tables,
the base of every part of MetadataDB: the one connection, transactions, a row read back.
"""
# test-case-name: tests.unit.test_metadata

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from distpotify.idempotency import key_row_time
from distpotify.model import ENTITIES, KEY_ROWS, Entity, Row, Version
from distpotify.store import songindex

BUCKETS = 256

# Tables whose primary key starts with the row's anti-entropy bucket: (bucket, id) serves a
# row's lookup (the bucket derives from the id) and a bucket's read alike, where the other
# tables keep an index on bucket beside their key. A key row's id is random (a UUIDv5 of a
# client's key) or begins with its key's time (a UUIDv7, as the proxy makes them, whose
# bucket is its second): random, each index costs a keyed write a page of its own to write,
# so this way one, not two; in time order, the index grows at its bucket's end.
BUCKET_FIRST = frozenset({KEY_ROWS})

_TYPES = {
    "track": "INTEGER", "disc": "INTEGER", "year": "INTEGER", "duration": "REAL", "size": "INTEGER",
    "chunk_size": "INTEGER", "chunk_count": "INTEGER", "deleted": "INTEGER NOT NULL DEFAULT 0",
    "idx": "INTEGER", "position": "REAL", "generation": "INTEGER",
    "disabled": "INTEGER NOT NULL DEFAULT 0", "public": "INTEGER NOT NULL DEFAULT 0",
    "rating": "INTEGER", "current": "INTEGER", "position_ms": "INTEGER",
}


def bucket_of(entity: str, key: str) -> int:
    """The anti-entropy bucket of a row (digest.py): a stable hash of its identity, or for
    the row of a UUIDv7 key (the proxy's) the second of the key's time, modulo BUCKETS.
    Such rows spread over the buckets like the others over a day, and the rows of one
    second share a bucket, so their index (bucket first) grows at one end at a time."""
    if entity == KEY_ROWS and (written := key_row_time(key)) is not None:
        return written // 1000 % BUCKETS
    return hashlib.sha256(f"{entity}/{key}".encode()).digest()[0] % BUCKETS


def identity(entity: Entity) -> tuple[str, ...]:
    """The columns of ``entity``'s primary key: its key columns, after the bucket for the
    BUCKET_FIRST tables."""
    return ("bucket", *entity.keys) if entity.name in BUCKET_FIRST else entity.keys


def identity_values(entity: Entity, key: str) -> tuple[Any, ...]:
    """The values of ``identity(entity)`` for the row ``key``."""
    values = tuple(entity.split_key(key).values())
    return (bucket_of(entity.name, key), *values) if entity.name in BUCKET_FIRST else values


def _table_sql(entity: Entity, table: str | None = None) -> str:
    columns = [f"{name} {_TYPES.get(name, 'TEXT')}" for name in entity.keys]
    columns += [f"{name} {_TYPES.get(name, 'TEXT')}" for name in entity.fields]
    columns += ["version TEXT NOT NULL", "field_versions TEXT NOT NULL",
                "bucket INTEGER NOT NULL"]
    key = ", ".join(identity(entity))
    return (f"CREATE TABLE IF NOT EXISTS {table or entity.name} ({', '.join(columns)},"
            f" PRIMARY KEY ({key}))")


SCHEMA = [
    *(_table_sql(entity) for entity in ENTITIES.values()),
    *(f"CREATE INDEX IF NOT EXISTS {name}_bucket ON {name} (bucket)" for name in ENTITIES
      if name not in BUCKET_FIRST),
    # Per bucket, the XOR of its rows' hashes: updated on every apply, so comparing two
    # replicas costs BUCKETS hashes plus the rows of the buckets that differ (digest.py).
    "CREATE TABLE IF NOT EXISTS digest (bucket INTEGER PRIMARY KEY, hash TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS songs_sha256 ON songs (sha256)",
    # Serving a cover asks whether a live song names it (store/coverrefs.py).
    "CREATE INDEX IF NOT EXISTS songs_cover ON songs (cover_sha256)",
    "CREATE INDEX IF NOT EXISTS items_playlist ON playlist_items (playlist_id)",
    "CREATE INDEX IF NOT EXISTS items_song ON playlist_items (song_id)",
    # Not unique: two sides of a partition may each give a name away; auth/users.py resolves it.
    "CREATE INDEX IF NOT EXISTS users_name_key ON users (name_key)",
    # Per-user state (store/userstate.py): every read names its user.
    "CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys (user_id)",
    "CREATE INDEX IF NOT EXISTS stars_user ON stars (user_id, kind, starred_at)",
    "CREATE INDEX IF NOT EXISTS ratings_user ON ratings (user_id, kind)",
    "CREATE INDEX IF NOT EXISTS plays_user_song ON plays (user_id, song_id)",
    "CREATE INDEX IF NOT EXISTS now_playing_at ON now_playing (at)",
    "CREATE INDEX IF NOT EXISTS song_bookmarks_user ON song_bookmarks (user_id, changed_at)",
    # The key watermark drops idempotency rows by version (store/idempotency.py).
    "CREATE INDEX IF NOT EXISTS idempotency_version ON idempotency (version)",
    # The key row a keyed write's last op carries (model.Op.outcome) is not in its entry: it
    # is the idempotency row of the op's version (Oplog.ops_after joins it). Databases from
    # before that keep a column "outcome" nothing reads.
    "CREATE TABLE IF NOT EXISTS oplog (version TEXT PRIMARY KEY, entity TEXT NOT NULL,"
    " key TEXT NOT NULL, body TEXT NOT NULL, at REAL)",
    "CREATE INDEX IF NOT EXISTS oplog_at ON oplog (at)",
    "CREATE TABLE IF NOT EXISTS node_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
]


class StoreConnection(sqlite3.Connection):
    """A store's connection (``connect``). Inside a Transaction it also holds the digest
    changes written so far, folded per bucket (``xor_digest``); the Transaction writes them
    as it commits, one statement for every bucket touched. A group commit or a replicated
    batch then updates each digest row once, where it updated one for every row written:
    a keyed write's key row (the key rows of one second share a bucket) cost a second
    statement a write, and the first touch of the digest page in each savepoint."""

    pending_digests: dict[int, int] | None = None


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating or migrating) the database at ``path``: WAL, fsync on every commit."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           factory=StoreConnection)
    conn.row_factory = sqlite3.Row
    conn.create_function("xor_hex", 2, xor_hex, deterministic=True)
    conn.create_function("occurrences", 2, occurrences, deterministic=True)
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: the WAL is fsynced at every commit, so a write is durable before it is acked.
    conn.execute("PRAGMA synchronous = FULL")
    with Transaction(conn):
        columns = {r[1] for r in conn.execute("PRAGMA table_info(oplog)")}
        if columns and "at" not in columns:  # a database from before ops had a time
            conn.execute("ALTER TABLE oplog ADD COLUMN at REAL")
        _add_new_fields(conn)
        # Names were unique per raw text before accounts: a clash arriving by merge would
        # have stopped replication.
        conn.execute("DROP INDEX IF EXISTS users_name")
        _bucket_first(conn)
        for statement in SCHEMA:
            conn.execute(statement)
        _time_buckets(conn)
        songindex.ensure(conn)  # the search index, sort keys and tallies (a migration)
    return conn


def _add_new_fields(conn: sqlite3.Connection) -> None:
    """Add the columns of fields an entity gained (songs.uploaded_by, playlists.public, the
    users' account fields) to a database made before them; their rows read NULL (or 0)."""
    for entity in ENTITIES.values():
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({entity.name})")}
        if not columns:
            continue  # a new table: SCHEMA creates it whole
        for name in entity.fields:
            if name not in columns:
                conn.execute(f"ALTER TABLE {entity.name} ADD COLUMN {name}"
                             f" {_TYPES.get(name, 'TEXT')}")


def _bucket_first(conn: sqlite3.Connection) -> None:
    """Rebuild a BUCKET_FIRST table made before its key began with the bucket (keyed by id,
    with an index on bucket beside it): same rows, same buckets, so its digests stand. SCHEMA
    then makes its other indexes again."""
    for name in BUCKET_FIRST:
        in_key = {r["name"]: r["pk"] for r in conn.execute(f"PRAGMA table_info({name})")}
        if not in_key or in_key.get("bucket"):
            continue  # a new database (SCHEMA makes the table), or one made this way
        columns = ", ".join(in_key)
        conn.execute(f"DROP TABLE IF EXISTS {name}_rebuilt")
        conn.execute(_table_sql(ENTITIES[name], f"{name}_rebuilt"))
        # In the new key's order: each insert then lands beside the last one.
        conn.execute(f"INSERT INTO {name}_rebuilt ({columns}) SELECT {columns} FROM {name}"
                     f" ORDER BY {', '.join(identity(ENTITIES[name]))}")
        conn.execute(f"DROP TABLE {name}")  # and its indexes
        conn.execute(f"ALTER TABLE {name}_rebuilt RENAME TO {name}")


def row_hash(entity: str, key: str, versions_text: str) -> int:
    """What a row contributes to its bucket's digest: its identity and every field version."""
    digest = hashlib.sha256(f"{entity}/{key}/{versions_text}".encode()).digest()
    return int.from_bytes(digest[:16], "big")


def xor_digest(conn: sqlite3.Connection, bucket: int, change: int) -> None:
    """Fold ``change`` into ``bucket``'s digest: a row's hash in when it is written, out when
    it is replaced or removed (XOR is its own inverse, so order never matters). Inside a
    Transaction of a store's connection the change waits for the commit, folded with the
    others of its bucket (StoreConnection): the digest table is read between transactions
    (the store thread runs one call at a time), never inside one."""
    if isinstance(conn, StoreConnection) and conn.pending_digests is not None:
        pending = conn.pending_digests
        pending[bucket] = pending.get(bucket, 0) ^ change
    else:
        _write_digests(conn, {bucket: change})


def _write_digests(conn: sqlite3.Connection, changes: dict[int, int]) -> None:
    """XOR each bucket's change into its digest row: one statement, the XOR the SQL function
    xor_hex (connect). A change of 0 (a row written, then put back) changes nothing."""
    conn.executemany(
        "INSERT INTO digest (bucket, hash) VALUES (?, ?)"
        " ON CONFLICT (bucket) DO UPDATE SET hash = xor_hex(hash, excluded.hash)",
        [(bucket, f"{change:032x}") for bucket, change in changes.items() if change],
    )


def _time_buckets(conn: sqlite3.Connection) -> None:
    """Move the rows of UUIDv7 keys that older code stored (it hashed their bucket, and
    stores so what it gets from a newer leader during a rolling upgrade) to the bucket of
    their key's second (bucket_of), their hash with them from one digest to the other. A
    row already there (the same key row) is kept and the moved one dropped. A scan of the
    key table's ids at every open: none of them is moved once a replica runs this code."""
    stale = [(row["bucket"], row["id"], row["field_versions"], right)
             for row in conn.execute(f"SELECT bucket, id, field_versions FROM {KEY_ROWS}"
                                     " WHERE substr(id, 15, 1) = '8'")
             if (right := bucket_of(KEY_ROWS, row["id"])) != row["bucket"]]
    for bucket, key, versions, right in stale:
        change = row_hash(KEY_ROWS, key, versions)
        xor_digest(conn, bucket, change)
        there = conn.execute(f"SELECT 1 FROM {KEY_ROWS} WHERE bucket = ? AND id = ?",
                             (right, key)).fetchone()
        if there is None:
            conn.execute(f"UPDATE {KEY_ROWS} SET bucket = ? WHERE bucket = ? AND id = ?",
                         (right, bucket, key))
            xor_digest(conn, right, change)
        else:
            conn.execute(f"DELETE FROM {KEY_ROWS} WHERE bucket = ? AND id = ?", (bucket, key))


def xor_hex(a: str, b: str) -> str:
    """The XOR of two 128-bit digests in hex (digest.xor_digest's SQL function)."""
    return f"{int(a, 16) ^ int(b, 16):032x}"


def occurrences(text: str | None, part: str) -> int:
    """How many places ``part`` starts in ``text``, overlapping ones counted (the search's
    rank, store/queries.py)."""
    whole = text or ""
    found, at = 0, whole.find(part)
    while at >= 0:
        found += 1
        at = whole.find(part, at + 1)
    return found


@contextlib.contextmanager
def savepoints_in_memory(conn: sqlite3.Connection) -> Iterator[None]:
    """Around a transaction of many savepoints (Oplog.write_together). SQLite copies each
    page a savepoint changes into a statement journal, which spills to a temporary file past
    64 KiB: a group of keyed writes did, one commit in four (a file created, written and
    deleted inside the commit). A transaction begun with temp_store MEMORY keeps that journal
    in memory (SQLite fixes where when the transaction begins); the setting is put back
    after, so the reads' large sorts still spill to disk."""
    assert not conn.in_transaction, "the journal's place is fixed when a transaction begins"
    was = conn.execute("PRAGMA temp_store").fetchone()[0]
    conn.execute("PRAGMA temp_store = MEMORY")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA temp_store = {int(was)}")


class Transaction:
    """``with`` block around BEGIN IMMEDIATE / COMMIT (ROLLBACK on any exception).

    Inside a transaction already open (writes committed together: MetadataDB.write_together)
    it is a SAVEPOINT instead, so a failure undoes this block and nothing else.

    On a store's connection it keeps the digest changes the transaction makes
    (StoreConnection) and writes them just before COMMIT; a savepoint rolled back puts back
    the changes it found, a transaction rolled back drops them all.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._nested = False
        self._digests_before: dict[int, int] | None = None

    def __enter__(self) -> sqlite3.Connection:
        self._nested = self._conn.in_transaction
        self._conn.execute("SAVEPOINT nested" if self._nested else "BEGIN IMMEDIATE")
        if isinstance(self._conn, StoreConnection):
            if not self._nested:
                self._conn.pending_digests = {}
            elif self._conn.pending_digests is not None:
                self._digests_before = dict(self._conn.pending_digests)
        return self._conn

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        # SQLite may have rolled the whole transaction back already (a full disk, an I/O
        # error): rolling back again would raise "no transaction is active" and hide the
        # error that says why (the 507 of a full disk became a 500).
        if not self._conn.in_transaction:
            self._set_pending(None)
            if kind is None:
                # Nothing raised, yet the transaction is gone: SQLite rolled it back on an
                # error someone caught. What it wrote is not there, so it must not pass for
                # committed (a group's later write would begin and commit one of its own).
                raise sqlite3.OperationalError("the transaction was rolled back before its"
                                               " commit")
            return
        if not self._nested:
            try:
                if kind is not None:
                    self._conn.execute("ROLLBACK")
                    return
                self._commit()
            finally:
                self._set_pending(None)
            return
        if kind is not None:
            self._conn.execute("ROLLBACK TO nested")
            self._set_pending(self._digests_before)
        self._conn.execute("RELEASE nested")

    def _commit(self) -> None:
        try:
            if isinstance(self._conn, StoreConnection) and self._conn.pending_digests:
                _write_digests(self._conn, self._conn.pending_digests)
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # a failed commit leaves it open
                self._conn.execute("ROLLBACK")
            raise

    def _set_pending(self, digests: dict[int, int] | None) -> None:
        if isinstance(self._conn, StoreConnection):
            self._conn.pending_digests = digests


def versions_text(row: Row) -> str:
    """A row's ``field_versions`` column: what it stores, and what its digest hashes."""
    return json.dumps({name: v.encode() for name, v in row.versions.items()}, sort_keys=True)


def written_whole(fields: Iterable[str], version: Version) -> str:
    """``versions_text`` of a row whose every field ``version`` wrote (a key row), without
    the row: the same text, the version encoded once, the names' part made once (every key
    row is written whole, on the leader and on every replica it reaches)."""
    # An encoded version is digits and dashes: its JSON is itself in quotes.
    return _whole_template(frozenset(fields)).format(version=f'"{version.encode()}"')


@functools.cache
def _whole_template(fields: frozenset[str]) -> str:
    """``versions_text`` of a row of ``fields`` for ``str.format``, each version a field."""
    names = (json.dumps(name).replace("{", "{{").replace("}", "}}") for name in sorted(fields))
    return "{{" + ", ".join(f"{name}: {{version}}" for name in names) + "}}"


class Tables:
    """The replicated tables over one connection, which MetadataDB opens with ``connect``;
    every part of MetadataDB derives from it and runs on the store's one thread."""

    _conn: sqlite3.Connection

    def _transaction(self) -> Transaction:
        return Transaction(self._conn)

    def get_row(self, entity_name: str, key: str) -> Row | None:
        return self._get_row(ENTITIES[entity_name], key)

    def _get_row(self, entity: Entity, key: str) -> Row | None:
        where = " AND ".join(f"{k} = ?" for k in identity(entity))
        found = self._conn.execute(
            f"SELECT * FROM {entity.name} WHERE {where}", identity_values(entity, key)
        ).fetchone()
        if found is None:
            return None
        versions = {
            name: Version.decode(text) for name, text in json.loads(found["field_versions"]).items()
        }
        return Row(entity.name, key, {name: found[name] for name in versions}, versions)
