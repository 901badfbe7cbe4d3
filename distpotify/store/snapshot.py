"""Whole-database snapshots for a joining replica: a consistent copy of the replicated tables
(SQLite online backup) made by the leader, and installed in place of a joiner's own database.

The copy reads through a connection of its own, so it runs on any thread and the database
thread keeps serving writes meanwhile (WAL readers do not block the writer). Installing is
one crash-safe step: the joiner's own node_meta goes into the snapshot file, which then
replaces the database file by rename; a crash leaves the old database or the new one, whole.
"""
# test-case-name: tests.unit.test_snapshot,tests.unit.test_bootstrap

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from distpotify.model import Version
from distpotify.store.chunkcache import ChunkCache
from distpotify.store.chunks import fsync_path
from distpotify.store.compaction import SNAPSHOT_META
from distpotify.store.oplog import head_of
from distpotify.store.schema import Tables, connect

_KEPT = f"({', '.join(repr(name) for name in SNAPSHOT_META)})"


class SnapshotBusy(Exception):
    """The database could not be checkpointed for an install (a reader held it): retry."""


def backup_copy(source: Path, dest: Path) -> Version:
    """A consistent copy of the database at ``source`` in ``dest`` (SQLite online backup, in
    one step: one read transaction), without the node_meta of the replica it belongs to but
    with its oplog floor; the version it contains. Any thread: it opens its own connections."""
    src = sqlite3.connect(source)
    try:
        target = sqlite3.connect(dest)
        target.row_factory = sqlite3.Row
        try:
            src.backup(target)
            target.execute(f"DELETE FROM node_meta WHERE name NOT IN {_KEPT}")
            target.commit()
            target.execute("PRAGMA journal_mode = DELETE")
            return head_of(target)
        finally:
            target.close()
    finally:
        src.close()


class Snapshots(Tables):
    """node_meta is this node's own (its epoch, cursors, join state): never copied, always
    kept, except the oplog floor, which belongs to the oplog a snapshot carries."""

    # What the write path and the chunk registry keep in memory, replaced with the tables.
    path: Path
    _head: Version
    _chunk_cache: ChunkCache

    def backup_to(self, path: Path) -> Version:
        """backup_copy of this database (the leader's snapshot, tests)."""
        return backup_copy(self.path, path)

    def install_snapshot(self, path: Path, meta: Mapping[str, str] | None = None) -> Version:
        """Replace this database by the snapshot at ``path`` (which is consumed), keeping our
        node_meta with ``meta`` written over it, in one crash-safe step; the new head."""
        mine = {row["name"]: row["value"] for row in self._conn.execute(
            f"SELECT name, value FROM node_meta WHERE name NOT IN {_KEPT}")}
        mine.update(meta or {})
        incoming = sqlite3.connect(path)
        try:
            with incoming:  # one transaction; journal_mode DELETE commits with an fsync
                incoming.execute(f"DELETE FROM node_meta WHERE name NOT IN {_KEPT}")
                incoming.executemany("INSERT OR REPLACE INTO node_meta (name, value) VALUES (?, ?)",
                                     list(mine.items()))
        finally:
            incoming.close()
        fsync_path(path)
        # Everything of ours in the main file, the WAL empty: nothing of the old database may
        # be replayed into the new one, and a crash before the rename leaves the old one whole.
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise SnapshotBusy("the database is in use; the snapshot is installed on a retry")
        self._conn.close()
        try:
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            os.replace(path, self.path)
            fsync_path(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            self._conn = connect(self.path)
        self._head = head_of(self._conn)
        self._chunk_cache.clear()
        return self._head
