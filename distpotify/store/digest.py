"""Anti-entropy's view of the tables: rows hashed into BUCKETS buckets by identity, one digest
per bucket (the XOR of its rows' hashes, kept by schema.xor_digest as rows are written), and
the rows of a bucket to compare.
"""
# test-case-name: tests.unit.test_digest

from __future__ import annotations

from collections.abc import Iterable

from distpotify.model import ENTITIES, Row
from distpotify.store.schema import BUCKETS, Tables


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
