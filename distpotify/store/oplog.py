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
from twisted.python.failure import Failure

from distpotify.errors import NotLeader
from distpotify.model import ENTITIES, TOMBSTONES, Op, Row, Version
from distpotify.store import idempotency
from distpotify.store.chunkcache import ChunkCache
from distpotify.store.merge import merge, row_ops, won_fields
from distpotify.store.schema import (
    Tables,
    bucket_of,
    identity,
    row_hash,
    savepoints_in_memory,
    versions_text,
    xor_digest,
)
from distpotify.store.songindex import derived_columns, row_applied
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
    _unpublished: list[Version]  # written, not committed yet (write_together): not in _head
    # The key watermark as one apply_ops read it; None outside an apply, and once a purge
    # row is merged (it may have moved).
    _key_mark: Version | None = None
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
        inside join it (savepoints), and after an exception nothing of it stays, this
        leader's numbering included; the head moves once the outermost transaction commits."""
        mark = self._seq, len(self._unpublished)
        try:
            with self._transaction():
                yield
        except BaseException:
            self._seq = mark[0]
            del self._unpublished[mark[1]:]
            raise
        if not self._conn.in_transaction:
            self._publish_head()

    def written(self) -> Version:
        """The version of this leader's newest write (seq 0 before its first in the epoch)."""
        return Version(self._epoch, self.node_id, self._seq)

    def write(self, changes: Sequence[Change]) -> list[Op]:
        """Apply ``changes`` as this leader's next ops in one durable transaction."""
        if self._epoch == 0:
            raise RuntimeError("write before begin_leading")
        first = self._seq + 1
        if Version(self._epoch, self.node_id, first) <= self._head:
            # Writes of a later claim were applied here since this leadership began: ours,
            # numbered below them, would lose the merge to the records they change. The
            # election claims a new epoch (BullyElection.data_seen); until it has, no write.
            raise NotLeader(f"replica {self.node_id} holds writes newer than its epoch"
                            f" {self._epoch} and is claiming a new one; retry shortly",
                            leader_id=None, leader_http=None)
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

    def write_together(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run ``calls`` (each a whole write: its checks, then ``write``) in one transaction,
        each in a savepoint of its own, and commit once: one fsync for all of them.

        Each call's outcome is its result, or the Failure it raised; a call that raises is
        undone alone (its rows, ops and versions), the others stand. If the commit itself
        fails, nothing was written and this raises.
        """
        outcomes: list[Any] = []
        seq = self._seq
        try:
            with savepoints_in_memory(self._conn), self._transaction():
                for call in calls:
                    mark = self._seq, len(self._unpublished)
                    try:
                        with self._transaction():  # a savepoint inside the outer one
                            outcomes.append(call())
                    except Exception:
                        if not self._conn.in_transaction:
                            # SQLite rolled the whole group back (a full disk, an I/O error):
                            # the writes before this one are gone too, so every write of the
                            # group fails (below), as when its commit fails. Going on, the
                            # next write would have begun and committed a transaction of its
                            # own, and those before been answered as written.
                            raise
                        self._seq = mark[0]
                        del self._unpublished[mark[1]:]
                        outcomes.append(Failure())
        except BaseException:
            self._seq = seq
            self._unpublished.clear()
            raise
        self._publish_head()
        return outcomes

    def apply_ops(self, ops: Iterable[Op]) -> int:
        """Apply ops written elsewhere (replication); returns how many changed a row."""
        ops = list(ops)
        try:
            with self._transaction():
                changed = sum(self._apply(op) for op in ops)
        finally:
            self._key_mark = None
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

    def newest(self) -> Version:
        """The newest version applied here, or written by this transaction (a group commit's
        earlier writes, not yet in the cached head): what a write that changed nothing has
        seen. On the database thread."""
        return max([self._head, *self._unpublished])

    def ops_after(self, version: Version, limit: int = 1000) -> list[Op]:
        """The ops logged after ``version``, each with the key row it wrote (its outcome):
        the idempotency row whose version is the op's own, joined on the key table's version
        index. An old op whose key row was written again since (by another leader) or has
        expired carries none."""
        rows = self._conn.execute(
            "SELECT o.version, o.entity, o.key, o.body, k.id AS k_id, k.request, k.status,"
            " k.body AS k_body, k.written FROM oplog o"
            f" LEFT JOIN {idempotency.ENTITY} k ON k.version = o.version"
            f" AND o.entity != '{idempotency.ENTITY}'"
            " WHERE o.version > ? ORDER BY o.version LIMIT ?",
            (version.encode(), limit),
        )
        return [
            Op(Version.decode(r["version"]), r["entity"], r["key"], json.loads(r["body"]),
               None if r["k_id"] is None else (r["k_id"], {
                   "request": r["request"], "status": r["status"], "body": r["k_body"],
                   "written": r["written"]}))
            for r in rows
        ]

    def count_ops_after(self, version: Version) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM oplog WHERE version > ?", (version.encode(),)
        ).fetchone()
        return int(row[0])

    def _advance_head(self, ops: list[Op]) -> None:
        """The head moves once the ops are committed: inside write_together, at its commit."""
        self._unpublished += [op.version for op in ops]
        if not self._conn.in_transaction:
            self._publish_head()

    def _publish_head(self) -> None:
        self._head = max([self._head, *self._unpublished])
        self._unpublished.clear()

    def write_outcome(self, key: str, fields: dict[str, Any]) -> None:
        """Store a keyed write's outcome, the idempotency row ``key``, under the version of
        the write's last op (this leader's newest): the op carries it wherever it goes
        (ops_after joins the row by version), so every replica that applies the op stores
        the key with it. Only once the key was looked up in the same transaction and had no
        row (Library's _keyed), with a version newer than any watermark."""
        idempotency.add_key_row(self._conn, self.written(), key, fields, absent=True)

    def _apply(self, op: Op) -> bool:
        self._log(op)
        changed = self._merge(op)
        carried = op.outcome_op()
        if carried is not None:
            changed = self._merge_key_row(carried) or changed
        return changed

    def _merge_key_row(self, op: Op) -> bool:
        """The key row an op carries: stored as it is when this replica has no row for the
        key (nearly always: a key is written once), else merged like any row."""
        if self._key_mark is None:  # read once per apply, again after a purge's merge
            self._key_mark = idempotency.key_watermark(self._conn)
        if (op.fields.keys() == idempotency.FIELDS and op.version > self._key_mark
                and idempotency.add_key_row(self._conn, op.version, op.key, op.fields)):
            return True
        return self._merge(op)

    def _log(self, op: Op) -> None:
        """Append ``op`` to the oplog, unless its version is there already.

        A version is logged once, and usually comes back as the same op (pushed again, or
        its row pulled). But a keyed write's op carries its key row: pulled by anti-entropy,
        that row arrives alone, as an idempotency op of that version, maybe before the op
        that carries it. The entry then becomes that op, which carries the key row again
        (ops_after), so this replica's oplog gives followers and a takeover both rows."""
        version = op.version.encode()
        body = json.dumps(dict(op.fields))
        added = self._conn.execute(
            "INSERT OR IGNORE INTO oplog (version, entity, key, body, at) VALUES (?, ?, ?, ?, ?)",
            (version, op.entity, op.key, body, self._now()),
        )
        if not added.rowcount and op.entity != idempotency.ENTITY:
            self._conn.execute(
                "UPDATE oplog SET entity = ?, key = ?, body = ? WHERE version = ? AND entity = ?",
                (op.entity, op.key, body, version, idempotency.ENTITY))

    def _merge(self, op: Op, absent: bool = False) -> bool:
        """Merge ``op`` into its row, the row's bucket digest and what derives from it;
        whether it changed the row. ``absent``: the row is known not to exist, and the op's
        version to be above every watermark."""
        entity = ENTITIES[op.entity]
        if op.entity == "chunks":
            song_id, _, idx = op.key.partition("/")
            self._chunk_cache.forget(song_id, int(idx))
        old = None if absent else self._get_row(entity, op.key)
        row = merge(old, op)
        if row is None or (op.entity == idempotency.ENTITY and not absent
                           and op.version <= idempotency.key_watermark(self._conn)):
            return False  # old, repeated, or a key expired everywhere: it must not come back
        bucket = bucket_of(op.entity, op.key)
        versions = versions_text(row)
        values = {**entity.split_key(op.key), **row.fields,
                  **(derived_columns(row.fields) if op.entity == "songs" else {}),
                  "version": row.version.encode(), "field_versions": versions, "bucket": bucket}
        # An upsert, not INSERT OR REPLACE: the row keeps its rowid, which the search index
        # refers to (songindex.py).
        target = identity(entity)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c not in target)
        self._conn.execute(
            f"INSERT INTO {entity.name} ({', '.join(values)})"
            f" VALUES ({', '.join('?' * len(values))})"
            f" ON CONFLICT ({', '.join(target)}) DO UPDATE SET {updates}",
            list(values.values()),
        )
        row_applied(self._conn, op.entity, op.key, old.fields if old else None, row.fields)
        change = row_hash(op.entity, op.key, versions)
        if old is not None:
            change ^= row_hash(op.entity, op.key, versions_text(old))
        xor_digest(self._conn, bucket, change)
        if op.entity == "purges" and "through" in won_fields(old, row):
            self._key_mark = None
            through = Version.decode(str(row.fields["through"]))
            if op.key == TOMBSTONES:
                purge_tombstones(self._conn, through)
            else:
                idempotency.purge_keys(self._conn, through)
        return True

