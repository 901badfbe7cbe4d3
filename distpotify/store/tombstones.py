"""Tombstones and their purge: rows deleted at or before the leader's watermark (which every
replica has acknowledged) are removed, and taken out of their bucket's digest.
"""
# test-case-name: tests.unit.test_digest,tests.unit.test_purge

from __future__ import annotations

import sqlite3

from distpotify.model import ENTITIES, Version
from distpotify.store.digest import row_hash, xor_digest
from distpotify.store.schema import Tables
from distpotify.store.songindex import TOMBSTONES, rows_purged, tally


def purge_tombstones(conn: sqlite3.Connection, through: Version) -> int:
    """Remove tombstoned rows deleted at or before ``through`` (every replica has them:
    the leader's watermark), taking them out of the digests too."""
    purged = 0
    for entity in ENTITIES.values():
        if "deleted" not in entity.fields:
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
        """The newest op applied here before wall-clock time ``at``."""
        row = self._conn.execute(
            "SELECT max(version) AS v FROM oplog WHERE at < ?", (at,)).fetchone()
        return Version.decode(row["v"]) if row["v"] else None

    def tombstones(self) -> int:
        """How many rows are tombstones now: a tally the apply path keeps, so /status (which
        the proxy polls four times a second) never counts them."""
        return tally(self._conn, TOMBSTONES)
