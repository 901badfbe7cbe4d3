"""SQLite metadata of one replica: the replicated tables, the oplog and node_meta.

MetadataDB is the synchronous core: one connection (WAL, fsync on commit) shared by one part
per concern; MetadataStore runs it on one dedicated thread so the reactor never blocks.
"""
# test-case-name: tests.unit.test_metadata,tests.unit.test_chunkcache,tests.unit.test_snapshot

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred

from distpotify.store.chunkcache import ChunkCache
from distpotify.store.digest import BUCKETS, Digests, bucket_of
from distpotify.store.idempotency import IdempotencyKeys
from distpotify.store.merge import row_ops, won_fields
from distpotify.store.oplog import Change, Oplog
from distpotify.store.queries import SONG_ORDERS, LibraryQueries
from distpotify.store.registry import ChunkRegistry
from distpotify.store.schema import connect
from distpotify.store.snapshot import Snapshots
from distpotify.store.tombstones import Tombstones

# Callers import these from here, whichever part of the store they belong to.
__all__ = [
    "BUCKETS", "SONG_ORDERS", "Change", "MetadataDB", "MetadataStore", "Runner", "bucket_of",
    "row_ops", "won_fields",
]

P = ParamSpec("P")
T = TypeVar("T")


class MetadataDB(Oplog, Digests, Tombstones, IdempotencyKeys, Snapshots, LibraryQueries,
                 ChunkRegistry):
    """Synchronous access to the database; every method runs on the store's one thread.

    Its parts share the one connection (schema.py opens it) and this object's state:
    Oplog (oplog.py) the write path and the head; Digests (digest.py) what anti-entropy
    compares; Tombstones (tombstones.py) the purge watermark; IdempotencyKeys (idempotency.py) the
    stored outcomes of keyed writes; Snapshots (snapshot.py) backup and install;
    LibraryQueries (queries.py) the API's reads; ChunkRegistry (registry.py) the chunk
    registry and its in-memory cache (chunkcache.py).
    """

    def __init__(
        self, path: Path, node_id: int, now: Callable[[], float] = time.time
    ) -> None:
        self.node_id = node_id
        self._now = now
        self._conn = connect(path)
        self._epoch = 0
        self._seq = 0
        self._head = self.head()
        self._chunk_cache = ChunkCache()

    def close(self) -> None:
        self._conn.close()

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
