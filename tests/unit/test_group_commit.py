"""Group commit: writes that arrive while a commit runs share the next transaction (one
fsync); each is answered once that has committed, and a failing one is undone alone."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred

from distpotify.auth.access import UNRESTRICTED
from distpotify.errors import NotFound
from distpotify.idempotency import IdempotencyKey
from distpotify.library import _create_playlist, _keyed
from distpotify.model import Version
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from tests.unit.test_digest import digest_of_rows

IDS = [f"{n}1111111-1111-4111-8111-11111111111{n}" for n in range(8)]


class DatabaseThread:
    """A runner that holds each call until the test lets the 'database thread' run it."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.pending.append((lambda: f(*args, **kwargs), done))
        return done

    def run_one(self) -> None:
        call, done = self.pending.pop(0)
        maybeDeferred(call).chainDeferred(done)


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    database = MetadataDB(tmp_path / "meta.sqlite3", node_id=2)
    database.begin_leading(1)
    return database


def commits_of(db: MetadataDB) -> list[str]:
    statements: list[str] = []
    db._conn.set_trace_callback(statements.append)
    return statements


def playlist(db: MetadataDB, key: str, name: str) -> str:
    db.write([Change("playlists", key, {"name": name, "deleted": 0})])
    return key


def rename_live(db: MetadataDB, key: str, name: str) -> str:
    """A library-style write: decide (404 unless live), then write."""
    if db.playlist(key) is None:
        raise NotFound(f"no playlist {key}")
    db.write([Change("playlists", key, {"name": name})])
    return key


def committed_names(path: Path) -> set[str]:
    """What another connection sees: only what is committed."""
    conn = sqlite3.connect(path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM playlists")}
    finally:
        conn.close()


def test_writes_arriving_during_a_commit_share_the_next_one(db: MetadataDB, tmp_path: Path
                                                           ) -> None:
    thread = DatabaseThread()
    store = MetadataStore(db, thread)
    statements = commits_of(db)
    first = store.write(playlist, IDS[0], "first")
    waiting = [store.write(playlist, IDS[n], f"p{n}") for n in range(1, 6)]

    thread.run_one()  # the first write's own commit
    assert first.called and not any(d.called for d in waiting)
    thread.run_one()  # the five that waited: one transaction

    assert all(d.called for d in waiting)
    assert statements.count("COMMIT") == 2 and (store.commits, store.writes) == (2, 6)
    assert committed_names(tmp_path / "meta.sqlite3") == {"first", "p1", "p2", "p3", "p4", "p5"}


def test_a_write_is_answered_only_once_its_group_has_committed(db: MetadataDB, tmp_path: Path
                                                               ) -> None:
    thread = DatabaseThread()
    store = MetadataStore(db, thread)
    seen: list[set[str]] = []
    store.write(playlist, IDS[0], "durable").addCallback(
        lambda _: seen.append(committed_names(tmp_path / "meta.sqlite3")))

    assert seen == [] and len(thread.pending) == 1
    thread.run_one()

    assert seen == [{"durable"}]


def test_a_failing_write_is_undone_alone_and_leaves_no_gap_in_versions(db: MetadataDB) -> None:
    thread = DatabaseThread()
    store = MetadataStore(db, thread)
    store.write(playlist, IDS[0], "a")
    results: list[Any] = []
    for d in (store.write(rename_live, IDS[0], "renamed"),
              store.write(rename_live, IDS[5], "nobody"),  # no such playlist: 404
              store.write(playlist, IDS[1], "b")):
        d.addBoth(results.append)

    thread.run_one()
    thread.run_one()

    assert results[0] == IDS[0] and results[2] == IDS[1]
    assert results[1].check(NotFound)
    assert [op.version for op in db.ops_after(Version(0, 0, 0))] == [
        Version(1, 2, n) for n in (1, 2, 3)]
    assert {p["name"] for p in db.playlists()} == {"renamed", "b"}
    assert db.cached_head() == db.head() == Version(1, 2, 3)


def test_a_write_undone_after_writing_takes_its_versions_back(db: MetadataDB) -> None:
    def write_then_fail(db: MetadataDB) -> None:
        db.write([Change("playlists", IDS[2], {"name": "half", "deleted": 0})])
        raise ValueError("changed its mind")

    outcomes = db.write_together([lambda: write_then_fail(db), lambda: playlist(db, IDS[3], "c")])

    assert outcomes[0].check(ValueError) and outcomes[1] == IDS[3]
    assert db.get_row("playlists", IDS[2]) is None
    assert [op.version for op in db.ops_after(Version(0, 0, 0))] == [Version(1, 2, 1)]
    assert db.cached_head() == Version(1, 2, 1)


@pytest.mark.parametrize("then", ["raises", "returns"])
def test_a_group_sqlite_rolled_back_in_one_write_fails_every_write_of_it(
        db: MetadataDB, then: str) -> None:
    """On a full disk SQLite may roll the whole transaction back inside one write's savepoint:
    the writes before it are gone too. Every write of the group fails, as when its commit
    fails; before, that one write failed alone, the next began and committed a transaction
    of its own, and the first was answered as written, its row gone."""
    def rolled_back(db: MetadataDB) -> None:
        db.write([Change("playlists", IDS[1], {"name": "b", "deleted": 0})])
        db._conn.execute("ROLLBACK")  # what SQLite does on SQLITE_FULL
        if then == "raises":
            raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(sqlite3.OperationalError):
        db.write_together([lambda: playlist(db, IDS[0], "a"), lambda: rolled_back(db),
                           lambda: playlist(db, IDS[2], "c")])

    assert db.playlists() == [] and not db._conn.in_transaction
    assert db.ops_after(Version(0, 0, 0)) == [] and db.cached_head() == Version(0, 0, 0)
    assert db.write([Change("playlists", IDS[3], {"name": "next", "deleted": 0})]
                    )[0].version == Version(1, 2, 1)
    assert db.digest() == digest_of_rows(db)


class FailingCommit:
    """The connection, but its next COMMIT fails, as a full disk would make it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_failed_commit_fails_every_write_of_its_group(db: MetadataDB) -> None:
    thread = DatabaseThread()
    store = MetadataStore(db, thread)
    real = db._conn
    db._conn = FailingCommit(real)  # type: ignore[assignment]
    results: list[Any] = []
    for n in range(3):
        store.write(playlist, IDS[n], f"p{n}").addBoth(results.append)

    thread.run_one()  # the first write alone
    thread.run_one()  # the two that waited for it
    db._conn = real

    assert all(r.check(sqlite3.OperationalError) for r in results) and len(results) == 3
    assert db.playlists() == [] and db.cached_head() == Version(0, 0, 0)
    assert db.write([Change("playlists", IDS[4], {"name": "next", "deleted": 0})]
                    )[0].version == Version(1, 2, 1)


def test_a_group_keeps_its_savepoint_journals_in_memory_then_the_setting_it_found(
    db: MetadataDB,
) -> None:
    """A group's transaction begins with temp_store MEMORY, so each write's savepoint journal
    (a copy of every page it changes, which SQLite spills to a file past 64 KiB) stays in
    memory; afterwards the connection's own setting is back, and a write that changed more
    than that is still undone alone."""
    db._conn.execute("PRAGMA temp_store = FILE")
    seen: list[int] = []
    failing = [str(uuid.uuid4()) for _ in range(40)]
    kept = [str(uuid.uuid4()) for _ in range(40)]

    def many(ids: list[str], fail: bool) -> None:
        seen.append(db._conn.execute("PRAGMA temp_store").fetchone()[0])
        db.write([Change("playlists", i, {"name": "x" * 2000, "deleted": 0}) for i in ids])
        if fail:  # after some 80 KiB of pages
            raise ValueError("changed its mind")

    outcomes = db.write_together([lambda: many(failing, True), lambda: many(kept, False)])

    assert seen == [2, 2]  # MEMORY
    assert outcomes[0].check(ValueError) and outcomes[1] is None
    assert all(db.get_row("playlists", i) is None for i in failing)
    assert all(db.get_row("playlists", i) is not None for i in kept)
    assert db._conn.execute("PRAGMA temp_store").fetchone()[0] == 1  # FILE, as it was


def test_a_write_that_changes_nothing_answers_the_version_its_group_made(
        db: MetadataDB) -> None:
    """Two keyed creates of one record in one group: the second changes nothing (200), and
    answers the version of the record the first made in the same, uncommitted, transaction,
    not the head before the group, which a follower may have applied without that record
    (the client's next read, waiting for that version, would not see it)."""
    fields = {"name": "n", "owner": None, "created_at": "x", "deleted": 0, "public": 0}
    first, second = IdempotencyKey("k1", "a" * 64), IdempotencyKey("k2", "b" * 64)

    made, seen = db.write_together([
        lambda: _keyed(db, first, _create_playlist, IDS[0], fields, UNRESTRICTED),
        lambda: _keyed(db, second, _create_playlist, IDS[0], fields, UNRESTRICTED)])

    row = db.get_row("playlists", IDS[0])
    assert row is not None
    assert (made.status, seen.status) == (201, 200)
    assert made.version == seen.version == row.version == Version(1, 2, 1)
    assert db.stored_outcome(second).version == row.version  # a replay says so too
