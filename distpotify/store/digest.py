"""Anti-entropy's view of the tables: rows hashed into BUCKETS buckets by identity, one digest
per bucket (the XOR of its rows' hashes), and the rows of a bucket to compare.
"""
# test-case-name: tests.unit.test_digest

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable

from distpotify.model import ENTITIES, Row
from distpotify.store.schema import BUCKETS, Tables


def row_hash(entity: str, key: str, versions_text: str) -> int:
    """What a row contributes to its bucket's digest: its identity and every field version."""
    digest = hashlib.sha256(f"{entity}/{key}/{versions_text}".encode()).digest()
    return int.from_bytes(digest[:16], "big")


def xor_digest(conn: sqlite3.Connection, bucket: int, change: int) -> None:
    """Fold ``change`` into ``bucket``'s digest: a row's hash in when it is written, out when
    it is replaced or removed (XOR is its own inverse, so order never matters). One
    statement: the XOR is the SQL function xor_hex (schema.connect)."""
    conn.execute(
        "INSERT INTO digest (bucket, hash) VALUES (?, ?)"
        " ON CONFLICT (bucket) DO UPDATE SET hash = xor_hex(hash, excluded.hash)",
        (bucket, f"{change:032x}"),
    )


class Digests(Tables):
    """What a peer's anti-entropy reads from us: digests, a bucket's rows, rows by key."""

    def digest(self) -> list[str]:
        """One hash per bucket (hex); equal lists mean equal replicated tables."""
        hashes = ["0" * 32] * BUCKETS
        for row in self._conn.execute("SELECT bucket, hash FROM digest"):
            hashes[row["bucket"]] = row["hash"]
        return hashes

    def bucket_rows(self, bucket: int) -> list[tuple[str, str, str]]:
        """(entity, key, field versions) of every row in ``bucket``."""
        found = []
        for entity in ENTITIES.values():
            rows = self._conn.execute(
                f"SELECT {', '.join(entity.keys)}, field_versions FROM {entity.name}"
                " WHERE bucket = ?",
                (bucket,),
            )
            found += [(entity.name, entity.key_of(r), r["field_versions"]) for r in rows]
        return found

    def rows(self, keys: Iterable[tuple[str, str]]) -> list[Row]:
        return [row for entity, key in keys if (row := self.get_row(entity, key)) is not None]
