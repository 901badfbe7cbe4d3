"""Oplog compaction: a replica drops the ops its ``--oplog-retention`` no longer covers and
remembers the newest op dropped, the floor, so that no follower is caught up across a gap.

Every op this replica applied with a version above the floor is still in its oplog; a
follower whose cursor is below the floor may have missed ops nobody can push any more, so it
takes a new snapshot (docs/architecture.md section 2.5). The newest op always stays: it is
the head.
"""
# test-case-name: tests.unit.test_compaction

from __future__ import annotations

from typing import Any

from distpotify.config import OplogRetention
from distpotify.model import ZERO, Version
from distpotify.store.schema import Tables

FLOOR, FLOOR_AT = "oplog_floor", "oplog_floor_at"
# node_meta entries that travel with a snapshot: the oplog it carries starts above them.
SNAPSHOT_META = (FLOOR, FLOOR_AT)
BATCH = 10_000  # ops deleted per transaction, so the database thread is never held long
# The newest version among the ops applied before a time. ``+version`` keeps SQLite from
# answering max() by walking the primary key down from the head until an old enough op turns
# up: with none that old (a young oplog) that walks all of it, 175 ms at 600,000 ops, every
# compaction round. Through the index on ``at`` it costs the ops that old: none, or the few a
# round then drops.
OLDEST_OPS_NEWEST_VERSION = "SELECT max(+version) AS v FROM oplog WHERE at < ?"


class Compaction(Tables):
    def oplog_floor(self) -> Version:
        """The newest version compacted away here (0.0.0 if none was)."""
        row = self._conn.execute("SELECT value FROM node_meta WHERE name = ?",
                                 (FLOOR,)).fetchone()
        return Version.decode(row["value"]) if row is not None else ZERO

    def oplog_floor_at(self) -> float | None:
        """When the newest of the compacted ops was applied (None if none was)."""
        row = self._conn.execute("SELECT value FROM node_meta WHERE name = ?",
                                 (FLOOR_AT,)).fetchone()
        return float(row["value"]) if row is not None else None

    def compaction_cut(self, retention: OplogRetention, now: float) -> Version | None:
        """The newest version ``retention`` lets go, never the head; None if nothing goes."""
        conn = self._conn
        if retention.kind == "ops":
            row = conn.execute("SELECT version AS v FROM oplog ORDER BY version DESC"
                               " LIMIT 1 OFFSET ?", (int(retention.amount),)).fetchone()
        elif retention.kind == "age":
            row = conn.execute(OLDEST_OPS_NEWEST_VERSION, (now - retention.amount,)).fetchone()
        else:
            row = conn.execute(
                "SELECT version AS v FROM (SELECT version, sum(length(body) + length(key))"
                " OVER (ORDER BY version DESC) AS total FROM oplog) WHERE total > ?"
                " ORDER BY version DESC LIMIT 1", (int(retention.amount),)).fetchone()
        if row is None or row["v"] is None:
            return None
        below_head = conn.execute(
            "SELECT max(version) AS v FROM oplog WHERE version < (SELECT max(version) FROM oplog)"
        ).fetchone()["v"]
        if below_head is None:
            return None
        return Version.decode(min(row["v"], below_head))

    def compact_oplog(self, through: Version, limit: int = BATCH) -> int:
        """Drop up to ``limit`` of the oldest ops at or below ``through`` and raise the floor
        to the newest of them, in one transaction; how many were dropped."""
        with self._transaction():
            found = self._conn.execute(
                "SELECT max(version) AS v, max(at) AS at, count(*) AS n FROM (SELECT version, at"
                " FROM oplog WHERE version <= ? ORDER BY version LIMIT ?)",
                (through.encode(), limit)).fetchone()
            if not found["n"]:
                return 0
            self._conn.execute("DELETE FROM oplog WHERE version <= ?", (found["v"],))
            floor = max(self.oplog_floor(), Version.decode(found["v"]))
            floor_at = max(filter(None, (self.oplog_floor_at(), found["at"])), default=None)
            self._conn.executemany(
                "INSERT INTO node_meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [(FLOOR, floor.encode()),
                 *([(FLOOR_AT, repr(float(floor_at)))] if floor_at is not None else [])])
            return int(found["n"])

    def oplog_stats(self) -> dict[str, Any]:
        """What /status shows under ``replication.oplog``."""
        row = self._conn.execute(
            "SELECT count(*) AS n, min(version) AS oldest FROM oplog").fetchone()
        return {"ops": int(row["n"]),
                "oldest": Version.decode(row["oldest"]).as_list() if row["oldest"] else None,
                "floor": self.oplog_floor().as_list()}
