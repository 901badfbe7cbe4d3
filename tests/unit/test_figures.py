"""What /status reads from the database: nothing while the database does not change (an idle
replica polled four times a second), everything again once anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from distpotify.model import Version
from distpotify.replication.figures import COUNTS_MAX_AGE, StoredFigures
from distpotify.store.metadata import Change, MetadataDB, MetadataStore, count_tables
from tests.helpers.api import InMemoryReplica, result_of, run_now

PLAYLIST = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    database = MetadataDB(tmp_path / "meta.sqlite3", node_id=1)
    database.begin_leading(1)
    return database


def rename(db: MetadataDB, name: str) -> Version:
    return db.write([Change("playlists", PLAYLIST, {"name": name, "deleted": 0})])[0].version


def figures(stored: StoredFigures, *cursors: Version) -> dict[str, Any]:
    return result_of(Deferred.fromCoroutine(stored.figures(cursors)))


def counts(stored: StoredFigures) -> dict[str, Any]:
    return result_of(Deferred.fromCoroutine(stored.counts()))


def test_changes_stay_put_while_nothing_is_written(db: MetadataDB) -> None:
    rename(db, "one")
    before = db.changes()

    db.head(), db.tombstones(), db.get_meta("epoch"), db.digest()

    assert db.changes() == before


def test_changes_move_with_every_write(db: MetadataDB) -> None:
    before = db.changes()
    rename(db, "one")
    after_write = db.changes()
    db.set_meta("active_at", "1.0")

    assert before != after_write != db.changes()


def test_changes_move_when_a_snapshot_replaces_the_database(
    db: MetadataDB, tmp_path: Path
) -> None:
    """Another connection counts its changes from zero: the count alone could repeat."""
    rename(db, "one")
    db.backup_to(tmp_path / "copy.sqlite3")
    joiner = MetadataDB(tmp_path / "joiner.sqlite3", node_id=2)
    before = joiner.changes()

    joiner.install_snapshot(tmp_path / "copy.sqlite3")

    assert joiner.changes() != before


def test_figures_are_read_once_while_the_database_does_not_change(db: MetadataDB) -> None:
    head = rename(db, "one")
    stored = StoredFigures(MetadataStore(db, run_now), Clock(), run_now)

    first = figures(stored)
    again = [figures(stored) for _ in range(10)]

    assert stored.reads == 1 and all(f == first for f in again)
    assert first["head"] == head and first["tombstones"] == 0


def test_a_write_makes_the_figures_read_again(db: MetadataDB) -> None:
    rename(db, "one")
    stored = StoredFigures(MetadataStore(db, run_now), Clock(), run_now)
    figures(stored)

    head = rename(db, "two")

    assert figures(stored)["head"] == head and stored.reads == 2


def test_other_cursors_are_read_again(db: MetadataDB) -> None:
    first, second = rename(db, "one"), rename(db, "two")
    stored = StoredFigures(MetadataStore(db, run_now), Clock(), run_now)
    assert figures(stored, first)["ops_after"] == {first: 1}

    assert figures(stored, first, second)["ops_after"] == {first: 1, second: 0}
    assert stored.reads == 2


def test_the_tables_are_not_counted_again_while_the_database_does_not_change(
    db: MetadataDB,
) -> None:
    rename(db, "one")
    clock = Clock()
    stored = StoredFigures(MetadataStore(db, run_now), clock, run_now)
    assert counts(stored)["oplog"]["ops"] == 1

    clock.advance(COUNTS_MAX_AGE * 100)
    assert counts(stored)["oplog"]["ops"] == 1 and stored.reads == 1

    rename(db, "two")
    clock.advance(COUNTS_MAX_AGE)
    assert counts(stored)["oplog"]["ops"] == 2 and stored.reads == 2


def test_status_polled_on_an_idle_replica_reads_nothing_from_the_database(
    tmp_path: Path,
) -> None:
    replica = InMemoryReplica(tmp_path)
    replica.send_json("POST", "/playlists", {"name": "one"})
    first = replica.get("/status").json()
    reads = []

    def counting(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        reads.append(f)
        return run_now(f, *args, **kwargs)

    replica.library.store._run = counting  # the database thread, as the replica reaches it
    for _ in range(4):
        replica.clock.advance(COUNTS_MAX_AGE)
        assert replica.get("/status").json()["replication"] == first["replication"]

    assert reads == []


class Runs:
    """A runner that records what it was given, then runs it at once."""

    def __init__(self) -> None:
        self.called: list[str] = []

    def __call__(self, f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.called.append(f.__name__)
        return run_now(f, *args, **kwargs)


def test_the_tables_are_counted_on_a_worker_thread_not_the_database_thread(
    db: MetadataDB,
) -> None:
    """Counting 600,000 ops takes up to 130 ms: on the database thread, every query waited
    behind it (a p99 of 140 ms at 200,000 songs)."""
    rename(db, "one")
    database, worker = Runs(), Runs()
    stored = StoredFigures(MetadataStore(db, database), Clock(), worker)

    found = counts(stored)

    assert (database.called, worker.called) == ([], ["count_tables"])
    assert found == db.table_counts() and found["oplog"]["ops"] == 1


def test_the_count_reads_beside_a_write_under_way(db: MetadataDB) -> None:
    rename(db, "one")
    db._conn.execute("BEGIN IMMEDIATE")
    db._conn.execute("DELETE FROM oplog")  # not committed: the count does not see it

    assert count_tables(db.path)["oplog"]["ops"] == 1
    db._conn.execute("ROLLBACK")


def test_a_database_that_cannot_be_opened_is_counted_on_the_database_thread(
    db: MetadataDB, tmp_path: Path,
) -> None:
    rename(db, "one")
    database, worker = Runs(), Runs()

    def gone(f: Any, *args: Any) -> Deferred[Any]:
        worker.called.append(f.__name__)
        return run_now(f, tmp_path / "replaced-meanwhile.sqlite3")

    stored = StoredFigures(MetadataStore(db, database), Clock(), gone)

    assert counts(stored)["oplog"]["ops"] == 1
    assert (worker.called, database.called) == (["count_tables"], ["table_counts"])
