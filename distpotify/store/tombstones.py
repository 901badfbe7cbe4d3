"""Tombstones and their purge: rows deleted at or before the leader's watermark (which every
replica has acknowledged) are removed, and taken out of their bucket's digest; a purged row
offered back by a replica that missed its delete is recognized and refused.
"""
# test-case-name: tests.unit.test_digest,tests.unit.test_purge

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from distpotify.model import ENTITIES, ZERO, Row, Version
from distpotify.store.compaction import OLDEST_OPS_NEWEST_VERSION
from distpotify.store.schema import Tables, row_hash, xor_digest
from distpotify.store.songindex import TOMBSTONES, rows_purged, tally


def purge_tombstones(conn: sqlite3.Connection, through: Version) -> int:
    """Remove tombstoned rows deleted at or before ``through`` (every replica has them:
    the leader's watermark), taking them out of the digests too."""
    purged = 0
    for entity in ENTITIES.values():
        if "deleted" not in entity.fields or entity.tombstones_kept:
            continue
        rows = conn.execute(
            f"SELECT {', '.join(entity.keys)}, field_versions, bucket FROM {entity.name}"
            " WHERE deleted = 1 AND json_extract(field_versions, '$.deleted') <= ?",
            (through.encode(),),
        ).fetchall()
        for found in rows:
            key = entity.key_of(found)
            xor_digest(conn, found["bucket"], row_hash(entity.name, key, found["field_versions"]))
            where = " AND ".join(f"{k} = ?" for k in entity.keys)
            conn.execute(f"DELETE FROM {entity.name} WHERE {where}",
                         tuple(entity.split_key(key).values()))
        purged += len(rows)
    rows_purged(conn, purged)
    return purged


class Tombstones(Tables):
    """What the leader's purger reads: the watermark, the oplog's times, the tombstone count.
    The purge itself runs as the watermark's op is applied (oplog.py)."""

    def purge_watermark(self) -> Version:
        row = self.get_row("purges", "tombstones")
        return Version.decode(str(row.fields["through"])) if row is not None else Version(0, 0, 0)

    def newest_version_before(self, at: float) -> Version | None:
        """The newest op applied here before wall-clock time ``at``, compacted ones included
        (compaction keeps the newest it dropped and when: store/compaction.py)."""
        row = self._conn.execute(OLDEST_OPS_NEWEST_VERSION, (at,)).fetchone()
        found = [Version.decode(row["v"])] if row["v"] else []
        floor = self._conn.execute(
            "SELECT (SELECT value FROM node_meta WHERE name = 'oplog_floor') AS v,"
            " (SELECT value FROM node_meta WHERE name = 'oplog_floor_at') AS at").fetchone()
        if floor["v"] is not None and floor["at"] is not None and float(floor["at"]) < at:
            found.append(Version.decode(floor["v"]))
        return max(found, default=None)

    def tombstones(self) -> int:
        """How many rows are tombstones now: a tally the apply path keeps, so /status (which
        the proxy polls four times a second) never counts them."""
        return tally(self._conn, TOMBSTONES)

    def purged_here(self, rows: Sequence[Row]) -> set[tuple[str, str]]:
        """Which of ``rows`` (pulled from a peer) were purged here: rows we do not hold
        whose every field was written at or before our purge watermark.

        Every live replica had acknowledged those versions when the watermark passed them, so
        a row made only of them that we lack was deleted and purged here; the peer offering
        it missed the delete (it was away, or its oplog was compacted past it), and taking
        the row back would undo the delete (docs/architecture.md section 2.5).
        """
        watermark = self.purge_watermark()
        if watermark == ZERO:
            return set()
        return {
            (row.entity, row.key) for row in rows
            if row.versions and max(row.versions.values()) <= watermark
            and self.get_row(row.entity, row.key) is None
        }
