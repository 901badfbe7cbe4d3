"""The compaction job with a Clock: it keeps what --oplog-retention asks for, in batches."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from distpotify.config import OplogRetention
from distpotify.model import ZERO
from distpotify.replication.retention import OplogCompactor, compaction_interval
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from tests.helpers.api import result_of, run_now

PLAYLIST = "11111111-1111-4111-8111-111111111111"


def test_the_job_compacts_to_the_retention_in_batches(tmp_path: Path) -> None:
    clock = Clock()
    db = MetadataDB(tmp_path / "m.sqlite3", node_id=2, now=clock.seconds)
    db.begin_leading(1)
    ops = [op for i in range(25)
           for op in db.write([Change("playlists", PLAYLIST, {"name": str(i)})])]
    calls: list[int] = []

    def counting(f: object, *args: object) -> Deferred[object]:
        if f is MetadataDB.compact_oplog:
            calls.append(1)
        return run_now(f, *args)

    compactor = OplogCompactor(store=MetadataStore(db, counting),
                               retention=OplogRetention("ops", 5), clock=clock, batch=7)

    dropped = result_of(Deferred.fromCoroutine(compactor.compact()))

    assert dropped == 20 and compactor.compacted == 20 and len(calls) == 4  # 7 + 7 + 6 + 0
    assert [op.version for op in db.ops_after(ZERO)] == [op.version for op in ops[20:]]
    assert result_of(Deferred.fromCoroutine(compactor.compact())) == 0


def test_an_age_is_checked_eight_times_per_span_between_a_second_and_a_minute() -> None:
    assert compaction_interval(OplogRetention("age", 2 * 86400)) == 60.0
    assert compaction_interval(OplogRetention("age", 16.0)) == 2.0
    assert compaction_interval(OplogRetention("age", 2.0)) == 1.0
    assert compaction_interval(OplogRetention("ops", 1000)) == 5.0
