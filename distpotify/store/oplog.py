"""The write path: this leader's versions, every op applied to its row, its bucket's digest
and the oplog in one transaction, and the head (the newest version applied).
"""
# test-case-name: tests.unit.test_metadata,tests.unit.test_digest,tests.unit.test_push

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs

from distpotify.model import ENTITIES, TOMBSTONES, Op, Row, Version
from distpotify.store import idempotency
from distpotify.store.chunkcache import ChunkCache
from distpotify.store.digest import bucket_of, row_hash, xor_digest
from distpotify.store.merge import merge, row_ops, won_fields
from distpotify.store.schema import Tables, versions_text
from distpotify.store.tombstones import purge_tombstones


@attrs.frozen
class Change:
    """A write the leader is about to make: fields to set on one row."""

    entity: str
    key: str
    fields: dict[str, Any]


def head_of(conn: sqlite3.Connection) -> Version:
    """The newest version in the oplog (0.0.0 when it is empty)."""
    row = conn.execute("SELECT max(version) AS v FROM oplog").fetchone()
    return Version.decode(row["v"]) if row["v"] else Version(0, 0, 0)


class Oplog(Tables):
    """Writes (this leader's, numbered in its epoch) and ops from elsewhere, applied alike."""

    # Set by MetadataDB.__init__.
    node_id: int
    _now: Callable[[], float]  # wall-clock time stamped on each op, for the purge's ttl
    _epoch: int  # the epoch this node leads in, 0 until begin_leading
    _seq: int  # the last sequence number this node wrote in _epoch
    _head: Version  # head(), kept in memory for readers on other threads
    _chunk_cache: ChunkCache

    def begin_leading(self, epoch: int) -> None:
        """Number this node's writes in ``epoch`` after any it already made in it."""
        prefix = Version(epoch, self.node_id, 0).encode()[:-12]
        row = self._conn.execute(
            "SELECT max(version) AS v FROM oplog WHERE version >= ? AND version < ?",
            (prefix, prefix + "a"),
        ).fetchone()
        self._epoch = epoch
        self._seq = Version.decode(row["v"]).seq if row["v"] else 0

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction around several writes and the reads that decide them: writes
        inside join it, and after an exception nothing of it stays, this leader's numbering
        and head included."""
        seq, head = self._seq, self._head
        try:
            with self._transaction():
                yield
        except BaseException:
            self._seq, self._head = seq, head
            raise

    def written(self) -> Version:
        """The version of this leader's newest write (seq 0 before its first in the epoch)."""
        return Version(self._epoch, self.node_id, self._seq)

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

    def apply_rows(self, rows: Iterable[Row]) -> int:
        """Merge whole rows pulled from a peer: each field with the version that wrote it."""
        return self.apply_ops(op for row in rows for op in row_ops(row))

    def head(self) -> Version:
        return head_of(self._conn)

    def has_op(self, version: Version) -> bool:
        """Whether the op of exactly ``version`` has been applied here (a newer head from
        another leader does not count: it need not include that op)."""
        found = self._conn.execute(
            "SELECT 1 FROM oplog WHERE version = ?", (version.encode(),)).fetchone()
        return found is not None

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

    def _advance_head(self, ops: list[Op]) -> None:
        self._head = max([self._head, *(op.version for op in ops)])

    def _apply(self, op: Op) -> bool:
        entity = ENTITIES[op.entity]
        if op.entity == "chunks":
            song_id, _, idx = op.key.partition("/")
            self._chunk_cache.forget(song_id, int(idx))
        old = self._get_row(entity, op.key)
        row = merge(old, op)
        self._conn.execute(
            "INSERT OR IGNORE INTO oplog (version, entity, key, body, at) VALUES (?, ?, ?, ?, ?)",
            (op.version.encode(), op.entity, op.key, json.dumps(dict(op.fields)), self._now()),
        )
        if row is None or (op.entity == idempotency.ENTITY
                           and op.version <= idempotency.key_watermark(self._conn)):
            return False  # old, repeated, or a key expired everywhere: it must not come back
        values = {**entity.split_key(op.key), **row.fields}
        columns = [*entity.keys, *values.keys() - set(entity.keys),
                   "version", "field_versions", "bucket"]
        bucket = bucket_of(op.entity, op.key)
        versions = versions_text(row)
        params = [values[c] for c in columns[:-3]] + [row.version.encode(), versions, bucket]
        self._conn.execute(
            f"INSERT OR REPLACE INTO {entity.name} ({', '.join(columns)})"
            f" VALUES ({', '.join('?' * len(columns))})",
            params,
        )
        change = row_hash(op.entity, op.key, versions)
        if old is not None:
            change ^= row_hash(op.entity, op.key, versions_text(old))
        xor_digest(self._conn, bucket, change)
        if op.entity == "purges" and "through" in won_fields(old, row):
            through = Version.decode(str(row.fields["through"]))
            if op.key == TOMBSTONES:
                purge_tombstones(self._conn, through)
            else:
                idempotency.purge_keys(self._conn, through)
        return True
