"""Every replica keeps only the oplog its ``--oplog-retention`` asks for: a periodic job drops
older ops and raises the oplog floor (store/compaction.py).

Compaction is local, never replicated: each replica's oplog serves the followers it pushes to
if it leads. A follower whose cursor falls below the leader's floor is made to take a new
snapshot (push.py); no replica's data depends on another's compaction.
"""
# test-case-name: tests.unit.test_retention

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from distpotify.config import OplogRetention
from distpotify.failpoints import NONE, Failpoints
from distpotify.periodic import Periodic
from distpotify.store.compaction import BATCH
from distpotify.store.metadata import MetadataDB, MetadataStore

log = Logger()

COUNT_EVERY = 5.0  # seconds between compactions by count or bytes


def compaction_interval(retention: OplogRetention) -> float:
    """An eighth of an age (between 1 s and a minute), so the oplog never holds much more
    than it should; counts and bytes are cheap to check often."""
    if retention.kind == "age":
        return min(60.0, max(1.0, retention.amount / 8))
    return COUNT_EVERY


class OplogCompactor:
    def __init__(self, *, store: MetadataStore, retention: OplogRetention, clock: IReactorTime,
                 failpoints: Failpoints = NONE, batch: int = BATCH) -> None:
        self._store = store
        self._batch = batch
        self._retention = retention
        self._clock = clock
        self._failpoints = failpoints
        self.loop = Periodic(lambda: Deferred.fromCoroutine(self.compact()),
                             compaction_interval(retention), clock, name="oplog compaction")
        self.compacted = 0

    async def compact(self) -> int:
        """Drop what the retention lets go, a batch per database call; how many ops went."""
        cut = await self._store.run(MetadataDB.compaction_cut, self._retention,
                                    self._clock.seconds())
        if cut is None:
            return 0
        dropped = 0
        while batch := await self._store.run(MetadataDB.compact_oplog, cut, self._batch):
            dropped += batch
        if dropped:
            self.compacted += dropped
            self._failpoints.hit("oplog.compacted")
            log.info("oplog compacted: {dropped} ops dropped, floor {floor} ({retention})",
                     dropped=dropped, floor=cut.encode(), retention=str(self._retention))
        return dropped
