"""Registry rows of live chunks kept in memory, so a served chunk is found from the reactor
thread without a trip to the database thread.
"""
# test-case-name: tests.unit.test_chunkcache

from __future__ import annotations

from typing import Any

# Registry rows kept in memory: about 65 MB when full (some 660 bytes a row: its (song id,
# index) key, the row's dict and its SHA-256 text). A leader fills it with every new chunk its
# followers fetch, so under steady uploads its RSS climbs for hours before it levels off.
CHUNK_CACHE_SIZE = 100_000


class ChunkCache:
    """A bounded map (song_id, idx) -> registry row; when full, the oldest entry goes first.

    Threading rule: only the database thread writes (``remember``, ``forget``, ``clear``),
    any thread may ``get``. Each is a single dict operation, atomic under the GIL, so a
    reader sees a row whole or not at all. A live chunk's row never changes, so a cached row
    is only ever dropped: when the chunk is tombstoned, or the tables are replaced.
    """

    def __init__(self, capacity: int = CHUNK_CACHE_SIZE) -> None:
        self._capacity = capacity
        self._rows: dict[tuple[str, int], dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, song_id: str, idx: int) -> dict[str, Any] | None:
        """The row of a chunk looked up before; safe from any thread."""
        return self._rows.get((song_id, idx))

    def remember(self, song_id: str, idx: int, row: dict[str, Any]) -> None:
        if len(self._rows) >= self._capacity:
            self._rows.pop(next(iter(self._rows)))
        self._rows[(song_id, idx)] = row

    def forget(self, song_id: str, idx: int) -> None:
        self._rows.pop((song_id, idx), None)

    def clear(self) -> None:
        self._rows.clear()
