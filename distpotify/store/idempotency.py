"""Idempotency keys in the store: the outcome a keyed write stored, and the keys' expiry by
the replicated key watermark (rows at or below it are dropped and never come back).
"""
# test-case-name: tests.unit.test_idempotency

from __future__ import annotations

import sqlite3

from distpotify.idempotency import IdempotencyKey, Outcome
from distpotify.model import IDEMPOTENCY_KEYS, KEY_ROWS, ZERO, Version
from distpotify.store.digest import row_hash, xor_digest
from distpotify.store.schema import Tables

ENTITY = KEY_ROWS


def key_watermark(conn: sqlite3.Connection) -> Version:
    """The key watermark: idempotency rows written at or below it are gone everywhere."""
    row = conn.execute("SELECT through FROM purges WHERE id = ?", (IDEMPOTENCY_KEYS,)).fetchone()
    return Version.decode(row["through"]) if row is not None and row["through"] else ZERO


def purge_keys(conn: sqlite3.Connection, through: Version) -> int:
    """Drop the idempotency rows whose newest field was written at or before ``through``,
    taking them out of their buckets' digests."""
    rows = conn.execute(
        f"SELECT id, field_versions, bucket FROM {ENTITY} WHERE version <= ?",
        (through.encode(),),
    ).fetchall()
    for found in rows:
        xor_digest(conn, found["bucket"], row_hash(ENTITY, found["id"], found["field_versions"]))
    conn.execute(f"DELETE FROM {ENTITY} WHERE version <= ?", (through.encode(),))
    return len(rows)


class IdempotencyKeys(Tables):
    """What a keyed write reads in its own transaction, and what the purger reads."""

    def stored_outcome(self, key: IdempotencyKey) -> Outcome | None:
        """The outcome stored under ``key``, or None; KeyReused if it was stored for another
        request."""
        row = self.get_row(ENTITY, key.id)
        return None if row is None else Outcome.stored(key, dict(row.fields))

    def key_watermark(self) -> Version:
        return key_watermark(self._conn)

    def idempotency_keys(self) -> int:
        """How many keys are stored (the purger moves the watermark only when some are)."""
        return int(self._conn.execute(f"SELECT count(*) FROM {ENTITY}").fetchone()[0])
