"""Oplog compaction: what each kind of --oplog-retention lets go, the floor it leaves, and
what the purge's horizon and a snapshot make of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from distpotify.config import OplogRetention
from distpotify.model import ZERO, Op, Version
from distpotify.replication.figures import COUNTS_MAX_AGE, COUNTS_SHARE
from distpotify.store.compaction import OLDEST_OPS_NEWEST_VERSION, Compaction
from distpotify.store.metadata import Change, MetadataDB
from tests.helpers.api import InMemoryReplica

PLAYLIST = "11111111-1111-4111-8111-111111111111"


class Now:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def now() -> Now:
    return Now()


@pytest.fixture
def db(tmp_path: Path, now: Now) -> MetadataDB:
    database = MetadataDB(tmp_path / "meta.sqlite3", node_id=2, now=now)
    database.begin_leading(1)
    return database


def write(db: MetadataDB, n: int, now: Now | None = None, step: float = 0.0) -> list[Op]:
    ops = []
    for i in range(n):
        ops += db.write([Change("playlists", PLAYLIST, {"name": f"name {i}", "deleted": 0})])
        if now is not None:
            now.t += step
    return ops


def versions(db: MetadataDB) -> list[Version]:
    return [op.version for op in db.ops_after(ZERO, 100_000)]


def test_a_count_keeps_the_newest_ops_and_the_floor_is_the_newest_dropped(db: MetadataDB) -> None:
    ops = write(db, 10)

    cut = db.compaction_cut(OplogRetention("ops", 4), 0.0)
    dropped = db.compact_oplog(cut) if cut else 0

    assert cut == ops[5].version and dropped == 6
    assert versions(db) == [op.version for op in ops[6:]]
    assert db.oplog_floor() == ops[5].version
    assert db.head() == ops[-1].version
    assert db.compaction_cut(OplogRetention("ops", 4), 0.0) is None  # nothing more to drop


def test_an_age_drops_the_ops_applied_before_it(db: MetadataDB, now: Now) -> None:
    old = write(db, 3, now, step=10.0)  # applied at 1000, 1010, 1020
    recent = write(db, 2, now, step=10.0)  # at 1030, 1040

    cut = db.compaction_cut(OplogRetention("age", 25.0), now.t)  # now 1050: keep after 1025
    assert cut is not None
    db.compact_oplog(cut)

    assert versions(db) == [op.version for op in recent]
    assert db.oplog_floor() == old[-1].version and db.oplog_floor_at() == 1020.0


def test_bytes_keep_the_newest_ops_whose_bodies_fit(db: MetadataDB) -> None:
    ops = write(db, 10)
    size = len('{"name": "name 0", "deleted": 0}') + len(PLAYLIST)

    cut = db.compaction_cut(OplogRetention("bytes", 3 * size), 0.0)
    assert cut is not None
    db.compact_oplog(cut)

    assert versions(db) == [op.version for op in ops[7:]]


@pytest.mark.parametrize("retention", [OplogRetention("ops", 1), OplogRetention("age", 1.0),
                                       OplogRetention("bytes", 1)])
def test_the_head_always_stays(db: MetadataDB, now: Now, retention: OplogRetention) -> None:
    ops = write(db, 3)
    now.t += 100

    cut = db.compaction_cut(retention, now.t)
    assert cut is not None
    db.compact_oplog(cut)

    assert versions(db) == [ops[-1].version] and db.head() == ops[-1].version


def test_a_lone_op_is_never_compacted(db: MetadataDB, now: Now) -> None:
    write(db, 1)

    assert db.compaction_cut(OplogRetention("ops", 1), now.t + 100) is None


def test_compaction_goes_in_batches_each_raising_the_floor(db: MetadataDB) -> None:
    ops = write(db, 10)

    assert db.compact_oplog(ops[8].version, limit=4) == 4
    assert db.oplog_floor() == ops[3].version
    assert db.compact_oplog(ops[8].version, limit=4) == 4
    assert db.compact_oplog(ops[8].version, limit=4) == 1
    assert db.compact_oplog(ops[8].version, limit=4) == 0
    assert db.oplog_floor() == ops[8].version and versions(db) == [ops[9].version]


def test_the_floor_only_rises(db: MetadataDB) -> None:
    ops = write(db, 5)
    db.compact_oplog(ops[3].version)
    # an old op arrives late (a partition's merge), and is compacted in turn
    db.apply_ops([Op(Version(1, 1, 1), "playlists", PLAYLIST, {"name": "late"})])

    db.compact_oplog(Version(1, 1, 1))

    assert db.oplog_floor() == ops[3].version


def test_the_purge_horizon_counts_compacted_ops(db: MetadataDB, now: Now) -> None:
    old = write(db, 3, now, step=10.0)
    write(db, 1, now, step=10.0)
    db.compact_oplog(old[-1].version)

    # Every op older than 1025 is gone, but the newest of them is still the horizon.
    assert db.newest_version_before(1025.0) == old[-1].version
    assert db.newest_version_before(1015.0) is None  # the floor's op is not older than that


def test_a_snapshot_carries_the_floor_and_the_oplog_above_it(
    db: MetadataDB, tmp_path: Path
) -> None:
    ops = write(db, 5)
    db.set_meta("epoch", "1")
    db.compact_oplog(ops[2].version)
    db.backup_to(tmp_path / "copy.sqlite3")
    joiner = MetadataDB(tmp_path / "joiner.sqlite3", node_id=4)
    joiner.set_meta("epoch", "7")

    joiner.install_snapshot(tmp_path / "copy.sqlite3")

    assert joiner.oplog_floor() == ops[2].version
    assert versions(joiner) == [op.version for op in ops[3:]]
    assert joiner.get_meta("epoch") == "7"


def test_the_oplog_stats(db: MetadataDB) -> None:
    ops = write(db, 4)
    db.compact_oplog(ops[1].version)

    assert db.oplog_stats() == {"ops": 2, "oldest": ops[2].version.as_list(),
                                "floor": ops[1].version.as_list()}


def test_status_counts_the_oplog_at_most_once_every_few_seconds(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    replica.send_json("POST", "/playlists", {"name": "one"})
    first = replica.get("/status").json()["replication"]["oplog"]["ops"]

    replica.send_json("POST", "/playlists", {"name": "two"})
    unchanged = replica.get("/status").json()["replication"]["oplog"]["ops"]
    replica.clock.advance(COUNTS_MAX_AGE)
    recounted = replica.get("/status").json()["replication"]["oplog"]["ops"]

    assert unchanged == first and recounted == first + 1


def test_the_ops_older_than_a_time_are_found_through_the_index_on_their_time(
        db: MetadataDB, now: Now) -> None:
    """The age cut and the purge horizon read only the ops old enough: with none that old
    (a young oplog, the usual case), max(version) must not walk the whole oplog down from
    the head, which at 600,000 ops took 175 ms every compaction round."""
    ops = write(db, 50, now, step=1.0)

    plan = " ".join(str(row[3]) for row in db._conn.execute(
        "EXPLAIN QUERY PLAN " + OLDEST_OPS_NEWEST_VERSION, (now.t - 100,)))

    assert "oplog_at" in plan, plan
    # and the answers are the ones max(version) gives
    assert db.newest_version_before(now.t - 100) is None
    assert db.newest_version_before(now.t - 20.5) == max(
        op.version for op in ops if op.version <= ops[-21].version)
    assert db.compaction_cut(OplogRetention("age", 20.5), now.t) == ops[-21].version


def test_a_slow_count_is_taken_less_often(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A count that takes 0.1 s (600,000 ops do) is shown 20 s, not 5: counting an idle
    replica's oplog must not cost it more than COUNTS_SHARE of its time."""
    replica = InMemoryReplica(tmp_path)
    counted = Compaction.oplog_stats  # what the count, on its own connection, calls

    def slow(db: Compaction) -> dict[str, object]:
        replica.clock.advance(0.1)
        return counted(db)

    monkeypatch.setattr(Compaction, "oplog_stats", slow)
    replica.send_json("POST", "/playlists", {"name": "one"})
    first = replica.get("/status").json()["replication"]["oplog"]["ops"]
    replica.send_json("POST", "/playlists", {"name": "two"})

    replica.clock.advance(COUNTS_MAX_AGE)
    assert replica.get("/status").json()["replication"]["oplog"]["ops"] == first
    replica.clock.advance(0.1 / COUNTS_SHARE - COUNTS_MAX_AGE)
    assert replica.get("/status").json()["replication"]["oplog"]["ops"] == first + 1
