"""Idempotency keys in the store: the outcome a keyed write stored, and the keys' expiry by
the replicated key watermark (rows at or below it are dropped and never come back).
"""
# test-case-name: tests.unit.test_idempotency

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from distpotify.idempotency import IdempotencyKey, Outcome
from distpotify.model import ENTITIES, IDEMPOTENCY_KEYS, KEY_ROWS, ZERO, Version
from distpotify.store.schema import (
    Tables,
    bucket_of,
    identity,
    row_hash,
    written_whole,
    xor_digest,
)

ENTITY = KEY_ROWS
FIELDS = frozenset(ENTITIES[ENTITY].fields)  # a key row is written whole, by one write
_INSERT = (f"INSERT INTO {ENTITY} (id, {', '.join(sorted(FIELDS))}, version, field_versions,"
           f" bucket) VALUES (?, {', '.join('?' * len(FIELDS))}, ?, ?, ?)")
_UNLESS_STORED = f" ON CONFLICT ({', '.join(identity(ENTITIES[ENTITY]))}) DO NOTHING"
# A key's row under one id, or under either of two (IdempotencyKey.ids).
_LOOKUP = {count: f"SELECT id, {', '.join(sorted(FIELDS))} FROM {ENTITY} WHERE "
           + " OR ".join(["(bucket = ? AND id = ?)"] * count) for count in (1, 2)}


def key_watermark(conn: sqlite3.Connection) -> Version:
    """The key watermark: idempotency rows written at or below it are gone everywhere."""
    row = conn.execute("SELECT through FROM purges WHERE id = ?", (IDEMPOTENCY_KEYS,)).fetchone()
    return Version.decode(row["through"]) if row is not None and row["through"] else ZERO


def add_key_row(conn: sqlite3.Connection, version: Version, key: str,
                fields: Mapping[str, Any], absent: bool = False) -> bool:
    """Store the key row ``key`` written whole by ``version``, with its bucket's digest,
    unless a row for that key exists (False: the caller merges the two). ``absent``: the
    caller knows there is none. What merge.py would make of it, without reading the row."""
    versions = written_whole(fields, version)
    bucket = bucket_of(ENTITY, key)
    added = conn.execute(
        _INSERT if absent else _INSERT + _UNLESS_STORED,
        (key, *(fields[name] for name in sorted(FIELDS)), version.encode(), versions, bucket),
    ).rowcount
    if added:
        xor_digest(conn, bucket, row_hash(ENTITY, key, versions))
    return bool(added)


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
        """The outcome stored under ``key`` (under either of its rows: ``key.ids``), or None;
        KeyReused if it was stored for another request. One statement, one probe of the
        key's index a row."""
        ids = [name for name in key.ids if name is not None]
        found = self._conn.execute(
            _LOOKUP[len(ids)], [value for name in ids for value in (bucket_of(ENTITY, name), name)]
        ).fetchall()
        if not found:
            return None
        row = min(found, key=lambda row: row["id"] != key.id)  # the row of this code first
        return Outcome.stored(key, {name: row[name] for name in FIELDS})

    def key_watermark(self) -> Version:
        return key_watermark(self._conn)

    def idempotency_keys(self) -> int:
        """How many keys are stored (the purger moves the watermark only when some are)."""
        return int(self._conn.execute(f"SELECT count(*) FROM {ENTITY}").fetchone()[0])
