"""SQLite metadata of one replica: the replicated tables, the oplog and node_meta.

MetadataDB is the synchronous core: one connection (WAL, fsync on commit) shared by one part
per concern; MetadataStore runs it on one dedicated thread so the reactor never blocks.
"""
# test-case-name: tests.unit.test_metadata,tests.unit.test_chunkcache,tests.unit.test_snapshot

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from distpotify.model import Version
from distpotify.store.catalog import CatalogQueries
from distpotify.store.chunkcache import ChunkCache
from distpotify.store.compaction import Compaction
from distpotify.store.coverrefs import CoverQueries
from distpotify.store.digest import Digests
from distpotify.store.idempotency import IdempotencyKeys
from distpotify.store.merge import row_ops, won_fields
from distpotify.store.oplog import Change, Oplog
from distpotify.store.queries import SONG_ORDERS, LibraryQueries, SongPage, SongSearch
from distpotify.store.registry import ChunkRegistry
from distpotify.store.schema import BUCKETS, bucket_of, connect
from distpotify.store.snapshot import Snapshots
from distpotify.store.tombstones import Tombstones
from distpotify.store.userstate import UserStateQueries

# Callers import these from here, whichever part of the store they belong to.
__all__ = [
    "BUCKETS", "SONG_ORDERS", "Change", "MetadataDB", "MetadataStore", "Runner", "SongPage",
    "SongSearch", "bucket_of", "row_ops", "won_fields",
]

P = ParamSpec("P")
T = TypeVar("T")


class MetadataDB(
    Oplog, Digests, Tombstones, IdempotencyKeys, Compaction, Snapshots, LibraryQueries,
    UserStateQueries, CatalogQueries, ChunkRegistry, CoverQueries,
):
    """Synchronous access to the database; every method runs on the store's one thread.

    Its parts share the one connection (schema.py opens it) and this object's state:
    Oplog (oplog.py) the write path and the head; Digests (digest.py) what anti-entropy
    compares; Tombstones (tombstones.py) the purge watermark; IdempotencyKeys (idempotency.py)
    the stored outcomes of keyed writes; Compaction (compaction.py) the oplog's retention;
    Snapshots (snapshot.py) backup and install; LibraryQueries (queries.py) the API's reads;
    UserStateQueries (userstate.py) the per-user state and API keys; CatalogQueries
    (catalog.py) the Subsonic API's albums, artists and genres; ChunkRegistry (registry.py)
    the chunk registry and its in-memory cache (chunkcache.py); CoverQueries (coverrefs.py)
    the cover pictures the rows name.
    """

    def __init__(
        self, path: Path, node_id: int, now: Callable[[], float] = time.time
    ) -> None:
        self.node_id = node_id
        self.path = path
        self._now = now
        self._conn = connect(path)
        self._epoch = 0
        self._seq = 0
        self._head = self.head()
        self._unpublished = []
        self._chunk_cache = ChunkCache()

    def close(self) -> None:
        self._conn.close()

    def changes(self) -> tuple[object, int]:
        """A token that moves whenever anything is written here: the connection (a snapshot
        install opens another) and the rows it has changed. What was read may be kept until
        it moves. Safe to read from any thread."""
        conn = self._conn
        try:
            return conn, conn.total_changes
        except sqlite3.ProgrammingError:  # closed by a snapshot install, reopened at once
            return conn, -1

    def status_figures(self, cursors: Iterable[Version]) -> dict[str, Any]:
        """What /status shows from the tables, in one call: the head, the tombstones, both
        watermarks, and the ops past each of ``cursors`` (the leader's hints)."""
        return {
            "head": self.head(),
            "tombstones": self.tombstones(),
            "purged_through": self.purge_watermark(),
            "keys_expired_through": self.key_watermark(),
            "ops_after": {cursor: self.count_ops_after(cursor) for cursor in cursors},
        }

    def table_counts(self) -> dict[str, Any]:
        """The oplog's and the key table's sizes for /status: scans of tables that grow with
        the history (replication/figures.py takes them seldom, with ``count_tables``)."""
        return _table_counts(self, self)

    # node_meta: this node's own values (epoch, cursors, join state), never replicated

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

    def delete_meta(self, name: str) -> None:
        with self._transaction():
            self._conn.execute("DELETE FROM node_meta WHERE name = ?", (name,))


Runner = Callable[..., Deferred[Any]]


GROUP_MAX = 64  # writes committed together at most: bounds how long one commit takes


class MetadataStore:
    """The database behind one thread: every call returns a Deferred and never blocks.

    Writes commit in groups (``write``): while one group's transaction runs on the database
    thread, the writes that arrive wait, and go together in the next transaction, so
    concurrent writers share fsyncs instead of queueing for one each.
    """

    def __init__(self, db: MetadataDB, runner: Runner) -> None:
        self._db = db
        self._run = runner
        self._queued: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self._committing = False
        self.commits = 0  # group transactions committed
        self.writes = 0  # writes in them

    @classmethod
    def open(cls, path: Path, node_id: int, runner: Runner) -> Deferred[MetadataStore]:
        d: Deferred[MetadataDB] = runner(MetadataDB, path, node_id)
        return d.addCallback(cls, runner)

    def run(
        self, method: Callable[Concatenate[MetadataDB, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Deferred[T]:
        """Call ``MetadataDB.method(db, *args)`` on the database thread."""
        return self._run(method, self._db, *args, **kwargs)

    @property
    def path(self) -> Path:
        """The database file (a snapshot is copied from it through a connection of its own)."""
        return self._db.path

    def write(
        self, method: Callable[Concatenate[MetadataDB, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Deferred[T]:
        """``MetadataDB.method(db, *args)``, a write (it decides and calls ``db.write``), in
        a transaction it may share with other writes; fires once that has committed (the
        write is durable), or with the write's own failure (it alone was undone)."""
        done: Deferred[T] = Deferred()
        self._queued.append((partial(method, self._db, *args, **kwargs), done))
        if not self._committing:
            self._commit_next()
        return done

    def _commit_next(self) -> None:
        group, self._queued = self._queued[:GROUP_MAX], self._queued[GROUP_MAX:]
        self._committing = True
        committed: Deferred[list[Any]] = self._run(
            MetadataDB.write_together, self._db, [call for call, _ in group])

        def answer(outcomes: list[Any] | Failure) -> None:
            self._committing = False
            if self._queued:
                self._commit_next()  # the database thread goes on while we answer
            if isinstance(outcomes, Failure):  # the commit failed: every write did
                outcomes = [outcomes] * len(group)
            else:
                self.commits += 1
                self.writes += len(group)
            for (_, done), outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Failure):
                    done.errback(outcome)
                else:
                    done.callback(outcome)

        committed.addBoth(answer)

    def cached_chunk(self, song_id: str, idx: int) -> dict[str, Any] | None:
        """MetadataDB.cached_chunk, read on the calling thread."""
        return self._db.cached_chunk(song_id, idx)

    def changes(self) -> tuple[object, int]:
        """MetadataDB.changes, read on the calling thread."""
        return self._db.changes()

    def close(self) -> Deferred[None]:
        return self._run(self._db.close)


def _table_counts(oplog: Compaction, keys: IdempotencyKeys) -> dict[str, Any]:
    return {"oplog": oplog.oplog_stats(), "idempotency_keys": keys.idempotency_keys()}


class _Counter(Compaction, IdempotencyKeys):
    """The parts of MetadataDB that count, over a connection of their own."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn


def count_tables(path: Path) -> dict[str, Any]:
    """MetadataDB.table_counts through a read-only connection of its own, for a worker
    thread: WAL lets it read beside the database thread's writes, and counting 600,000 ops
    (a 200,000-song library) takes 25-130 ms, which on the database thread held every query
    waiting behind it (issue 22's p99s)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        counter = _Counter(conn)
        return _table_counts(counter, counter)
    finally:
        conn.close()
