"""Whole-database snapshots for a joining replica: a consistent copy of the replicated tables
(SQLite online backup) made by the leader, and installed in place of a joiner's own.
"""
# test-case-name: tests.unit.test_snapshot,tests.unit.test_bootstrap

from __future__ import annotations

import sqlite3
from pathlib import Path

from distpotify.model import Version
from distpotify.store import songindex
from distpotify.store.chunkcache import ChunkCache
from distpotify.store.oplog import head_of
from distpotify.store.schema import Tables


class Snapshots(Tables):
    """node_meta is this node's own (its epoch, cursors, join state): never copied, always
    kept."""

    # What the write path and the chunk registry keep in memory, replaced with the tables.
    _head: Version
    _chunk_cache: ChunkCache

    def backup_to(self, path: Path) -> Version:
        """A consistent copy of the replicated tables at ``path`` (SQLite online backup),
        without this node's own node_meta; the version it contains."""
        head = head_of(self._conn)
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
            # The snapshot carries the search index; one from another version is rebuilt.
            songindex.ensure(self._conn)
        self._head = head_of(self._conn)
        self._chunk_cache.clear()
        return self._head
