"""What /status shows from the database, read in one hand-off to the database thread and kept
until the database changes: the proxy polls /status four times a second, and the database of
an idle replica does not change. The table counts, scans, are made on a worker thread through
a connection of their own, so no query waits behind them.
"""
# test-case-name: tests.unit.test_figures, tests.unit.test_compaction

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from distpotify.model import Version
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner, count_tables

COUNTS_MAX_AGE = 5.0  # seconds a changed table count is shown before it is counted again,
COUNTS_SHARE = 0.005  # or longer: counting takes at most this share of the time


class StoredFigures:
    """The figures of ``MetadataDB.status_figures`` and ``MetadataDB.table_counts``, each
    read again only once ``MetadataStore.changes`` has moved.

    The table counts are scans that grow with the history: after a change they are counted
    at most once every COUNTS_MAX_AGE seconds, and less often when counting is slow (at most
    COUNTS_SHARE of the time).
    """

    def __init__(self, store: MetadataStore, clock: IReactorTime, blocking: Runner) -> None:
        self._store = store
        self._clock = clock
        self._blocking = blocking  # the counts run on a worker thread, not the database's
        # What was read last, with the changes (and cursors) it was read at; counts with when.
        self._figures: tuple[object, dict[str, Any]] | None = None
        self._counts: tuple[object, float, dict[str, Any]] | None = None
        self._counts_age = COUNTS_MAX_AGE
        self.reads = 0  # hand-offs to the database thread

    async def figures(self, cursors: Iterable[Version]) -> dict[str, Any]:
        """The head, tombstones, watermarks and ops past each of ``cursors``."""
        wanted = frozenset(cursors)
        # Taken before the read: a write between the two makes the next call read again.
        at = (self._store.changes(), wanted)
        if self._figures is None or self._figures[0] != at:
            self.reads += 1
            self._figures = (at, await self._store.run(MetadataDB.status_figures, wanted))
        return self._figures[1]

    async def counts(self) -> dict[str, Any]:
        """The oplog's and the key table's sizes (``MetadataDB.table_counts``)."""
        now = self._clock.seconds()
        changes = self._store.changes()
        if self._counts is None or (changes != self._counts[0]
                                    and now - self._counts[1] >= self._counts_age):
            self.reads += 1
            try:
                counted = await self._blocking(count_tables, self._store.path)
            except sqlite3.Error:  # the file replaced as it opened (a snapshot installed)
                counted = await self._store.run(MetadataDB.table_counts)
            self._counts = (changes, now, counted)
            # 600,000 ops (a 200,000-song library) take 30-100 ms to count: every 5 s that
            # was a quarter of an idle replica's CPU time.
            took = self._clock.seconds() - now
            self._counts_age = max(COUNTS_MAX_AGE, took / COUNTS_SHARE)
        return self._counts[2]
