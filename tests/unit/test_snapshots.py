"""The leader's snapshot builds with a Clock: one build shared by the joiners that ask, 503
while it runs, kept on disk while read, a new one once the head has moved on."""

from __future__ import annotations

import gzip
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from distpotify.model import Version
from distpotify.replication.snapshots import Build, SnapshotBuilds
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from tests.helpers.api import result_of, run_now

PLAYLIST = "11111111-1111-4111-8111-111111111111"


class HeldWork:
    """A blocking runner whose calls run only when ``release`` says so (a slow build)."""

    def __init__(self) -> None:
        self.queued: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self.calls = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls += 1
        d: Deferred[Any] = Deferred()
        self.queued.append((d, f, args))
        return d

    def release(self) -> None:
        while self.queued:
            d, f, args = self.queued.pop(0)
            d.callback(f(*args))


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    database = MetadataDB(tmp_path / "leader.sqlite3", node_id=3)
    database.begin_leading(1)
    database.write([Change("playlists", PLAYLIST, {"name": "a", "deleted": 0})])
    (tmp_path / "tmp").mkdir()
    return database


def builds(db: MetadataDB, tmp_path: Path, blocking: Any = None) -> tuple[SnapshotBuilds, Clock]:
    clock = Clock()
    return SnapshotBuilds(store=MetadataStore(db, run_now), tmp_dir=tmp_path / "tmp",
                          blocking=blocking or (lambda f, *a: defer.execute(f, *a)),
                          clock=clock, head=db.head), clock


def acquire(shelf: SnapshotBuilds, wait: float = 2.0) -> Deferred[Build | None]:
    return Deferred.fromCoroutine(shelf.acquire(wait))


def test_a_snapshot_holds_the_database_at_its_version(db: MetadataDB, tmp_path: Path) -> None:
    shelf, _ = builds(db, tmp_path)

    build = result_of(acquire(shelf))

    assert build is not None and build.version == db.head() == Version(1, 3, 1)
    (tmp_path / "copy.sqlite3").write_bytes(gzip.decompress(build.path.read_bytes()))
    copy = sqlite3.connect(tmp_path / "copy.sqlite3")
    assert copy.execute("SELECT name FROM playlists").fetchall() == [("a",)]


def test_joiners_asking_during_a_build_share_it_and_a_retry_queues_none(
    db: MetadataDB, tmp_path: Path
) -> None:
    work = HeldWork()
    shelf, clock = builds(db, tmp_path, work)

    first, second = acquire(shelf), acquire(shelf)
    clock.advance(2.5)  # the build outlasts the wait: both are told to ask again
    assert result_of(first) is None and result_of(second) is None
    retry = acquire(shelf)
    work.release()

    build = result_of(retry)
    assert build is not None and work.calls == 2  # one backup, one gzip: one build
    assert shelf.built == 1


def test_a_snapshot_is_handed_out_again_until_the_head_moves_and_it_ages(
    db: MetadataDB, tmp_path: Path
) -> None:
    shelf, clock = builds(db, tmp_path)
    first = result_of(acquire(shelf))
    assert first is not None
    shelf.release(first)

    db.write([Change("playlists", PLAYLIST, {"name": "b"})])
    clock.advance(10)
    again = result_of(acquire(shelf))  # fresh enough although the head moved
    assert again is first
    shelf.release(again)
    clock.advance(30)
    newer = result_of(acquire(shelf))

    assert newer is not None and newer is not first and newer.version == db.head()
    assert not first.path.exists()  # superseded and nobody reads it


def test_a_snapshot_passed_by_compaction_is_not_handed_out_again(
    db: MetadataDB, tmp_path: Path
) -> None:
    shelf, clock = builds(db, tmp_path)
    first = result_of(acquire(shelf))
    assert first is not None
    shelf.release(first)
    ops = db.write([Change("playlists", PLAYLIST, {"name": "b"}),
                    Change("playlists", PLAYLIST, {"name": "c"})])
    db.compact_oplog(ops[0].version)
    clock.advance(1)

    newer = result_of(acquire(shelf))

    assert newer is not first and newer is not None and newer.version == ops[-1].version


def test_a_snapshot_being_read_stays_on_disk_until_its_last_reader_is_done(
    db: MetadataDB, tmp_path: Path
) -> None:
    shelf, clock = builds(db, tmp_path)
    reading = result_of(acquire(shelf))
    assert reading is not None
    db.write([Change("playlists", PLAYLIST, {"name": "b"})])
    clock.advance(60)

    newer = result_of(acquire(shelf))
    assert newer is not reading and reading.path.exists()
    shelf.release(reading)

    assert not reading.path.exists() and newer is not None and newer.path.exists()


def test_a_failed_build_is_reported_and_the_next_request_builds_again(
    db: MetadataDB, tmp_path: Path
) -> None:
    failures = [OSError(28, "No space left on device")]

    def blocking(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if failures:
            return defer.fail(failures.pop())
        return defer.execute(f, *args)

    shelf, _ = builds(db, tmp_path, blocking)

    with pytest.raises(RuntimeError, match=r"could not be built: .*No space left"):
        result_of(acquire(shelf))

    assert result_of(acquire(shelf)) is not None
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.suffix != ".gz"] == []
