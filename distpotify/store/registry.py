"""Reads of the chunk registry (the ``chunks`` table): a song's chunks, one chunk for serving
(remembered in the chunk cache), and live chunks for scrubbing, clean-up and anti-entropy.
"""
# test-case-name: tests.unit.test_chunkcache,tests.unit.test_metadata

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Any

from distpotify.store.chunkcache import ChunkCache
from distpotify.store.schema import Tables

_LIVE = "deleted = 0 AND sha256 IS NOT NULL"


class ChunkRegistry(Tables):
    """Live chunks are those not tombstoned whose checksum is known."""

    _chunk_cache: ChunkCache  # set by MetadataDB.__init__

    def chunks_of(self, song_id: str) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            f"SELECT idx, size, sha256 FROM chunks WHERE song_id = ? AND {_LIVE} ORDER BY idx",
            (song_id,),
        )
        return [dict(row) for row in rows]

    def chunk(self, song_id: str, idx: int) -> dict[str, Any] | None:
        row = self._conn.execute(
            f"SELECT idx, size, sha256 FROM chunks WHERE song_id = ? AND idx = ? AND {_LIVE}",
            (song_id, idx),
        ).fetchone()
        if row is None:
            return None
        found = dict(row)
        self._chunk_cache.remember(song_id, idx, found)
        return found

    def cached_chunk(self, song_id: str, idx: int) -> dict[str, Any] | None:
        """A live chunk's registry row if it was looked up before; safe from any thread."""
        return self._chunk_cache.get(song_id, idx)

    def live_chunk_names(self) -> set[str]:
        rows = self._conn.execute(f"SELECT song_id, idx FROM chunks WHERE {_LIVE}")
        return {f"{row['song_id']}_{row['idx']}" for row in rows}

    def count_missing_chunks(self, present: Container[str]) -> int:
        """How many live chunks are not among the ``present`` file names: the size of
        ``live_chunk_names() - present`` without holding either set (each is tens of MiB
        in a library of 200,000 songs)."""
        rows = self._conn.execute(f"SELECT song_id, idx FROM chunks WHERE {_LIVE}")
        return sum(f"{song_id}_{idx}" not in present for song_id, idx in rows)

    def registry_after(self, rowid: int, limit: int) -> list[tuple[int, str, int, int, str]]:
        """Live chunk registry rows past ``rowid`` (0: from the first), in the table's own
        order, for the scrubber and the search for missing files, a page at a time: each
        (rowid, song_id, idx, size, sha256). In rowid order a page is read from a page or two
        of the table; in (song_id, idx) order each row was one more random read, of a
        database larger than its cache in a big library (issue 22)."""
        rows = self._conn.execute(
            f"SELECT rowid, song_id, idx, size, sha256 FROM chunks WHERE {_LIVE}"
            " AND rowid > ? ORDER BY rowid LIMIT ?", (rowid, limit))
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def chunk_rows(self, names: Iterable[str]) -> list[tuple[str, int, int, str]]:
        """Registry rows of the live chunks named ``<song_id>_<idx>``."""
        found = []
        for name in names:
            song_id, _, idx = name.rpartition("_")
            chunk = self.chunk(song_id, int(idx))
            if chunk is not None:
                found.append((song_id, chunk["idx"], chunk["size"], chunk["sha256"]))
        return found
