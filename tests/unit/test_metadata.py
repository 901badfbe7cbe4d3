"""MetadataDB: durable writes with oplog versions, search, and the store's thread."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed

from distpotify.errors import NotLeader
from distpotify.model import Op, Version
from distpotify.store.metadata import SONG_ORDERS, Change, MetadataDB, MetadataStore, SongSearch
from distpotify.store.schema import Transaction

SONG = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    database = MetadataDB(tmp_path / "meta.sqlite3", node_id=2)
    database.begin_leading(1)
    return database


def song_fields(**overrides: object) -> dict[str, object]:
    return {"title": "T", "artist": "A", "album": "B", "sha256": "ab" * 32, "size": 10,
            "created_at": "2026-01-01T00:00:00.000Z", "deleted": 0, **overrides}


def test_database_runs_in_wal_mode(db: MetadataDB, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "meta.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_oplog_from_before_ops_had_a_time_is_migrated(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "old.sqlite3")
    old.execute("CREATE TABLE oplog (version TEXT PRIMARY KEY, entity TEXT NOT NULL,"
                " key TEXT NOT NULL, body TEXT NOT NULL)")
    old.execute("INSERT INTO oplog VALUES (?, 'songs', ?, '{}')", (Version(1, 2, 3).encode(), SONG))
    old.commit()
    old.close()

    db = MetadataDB(tmp_path / "old.sqlite3", node_id=2, now=lambda: 100.0)
    db.begin_leading(1)
    written = db.write([Change("songs", SONG, song_fields())])[0].version

    assert db.head() == written == Version(1, 2, 4)
    assert db.newest_version_before(100.5) == written  # an op without a time is never "old"
    assert db.newest_version_before(99.5) is None


def test_writes_get_consecutive_versions_of_this_leader(db: MetadataDB) -> None:
    ops = db.write([Change("songs", SONG, song_fields()), Change("songs", SONG, {"title": "U"})])

    assert [op.version for op in ops] == [Version(1, 2, 1), Version(1, 2, 2)]
    assert db.head() == Version(1, 2, 2)
    assert db.ops_after(Version(1, 2, 1)) == [ops[1]]


def test_numbering_continues_after_reopening(db: MetadataDB, tmp_path: Path) -> None:
    db.write([Change("songs", SONG, song_fields())])
    db.close()

    reopened = MetadataDB(tmp_path / "meta.sqlite3", node_id=2)
    reopened.begin_leading(1)

    assert reopened.write([Change("songs", SONG, {"title": "x"})])[0].version == Version(1, 2, 2)


def test_failed_write_leaves_no_row_no_op_and_no_gap(db: MetadataDB) -> None:
    with pytest.raises(KeyError):
        db.write([Change("songs", SONG, song_fields()), Change("nope", "k", {})])

    assert db.song(SONG) is None and db.head() == Version(0, 0, 0)
    assert db.write([Change("songs", SONG, song_fields())])[0].version.seq == 1


def test_replicated_ops_apply_by_version(db: MetadataDB) -> None:
    newer = Op(Version(3, 1, 1), "songs", SONG, song_fields(title="newer"))
    older = Op(Version(2, 1, 7), "songs", SONG, song_fields(title="older"))

    assert db.apply_ops([newer, older]) == 1
    assert db.apply_ops([newer]) == 0

    song = db.song(SONG)
    assert song is not None and song["title"] == "newer" and song["version"] == [3, 1, 1]


def test_tombstoned_song_is_invisible(db: MetadataDB) -> None:
    db.write([Change("songs", SONG, song_fields())])

    db.write([Change("songs", SONG, {"deleted": 1})])

    assert db.song(SONG) is None
    assert db.search_songs(SongSearch(limit=10)).total == 0
    row = db.get_row("songs", SONG)
    assert row is not None and row.fields["deleted"] == 1


def test_search_is_case_insensitive_paginated_and_newest_first(db: MetadataDB) -> None:
    for n, (title, artist) in enumerate([("Águila", "Zoë"), ("Beta", "ZOË"), ("Gamma", "x")]):
        db.write([Change("songs", f"{n}1111111-1111-4111-8111-111111111111",
                         song_fields(title=title, artist=artist, sha256=f"{n}" * 64,
                                     created_at=f"2026-01-0{n + 1}T00:00:00.000Z"))])

    page = db.search_songs(SongSearch(q="zoë", limit=1))
    assert page.total == 2 and [s["title"] for s in page.songs] == ["Beta"]
    assert [s["title"] for s in db.search_songs(SongSearch(q="ÁGUILA")).songs] == ["Águila"]
    assert db.search_songs(SongSearch(artist="zoë", offset=1)).songs[0]["title"] == "Águila"
    assert db.search_songs(SongSearch(q="%")).total == 0


def test_every_sort_is_a_total_order_with_empty_values_last(db: MetadataDB) -> None:
    rows = [  # title, artist, album, track, duration
        ("beta", "Zoë", "B", 2, 30.0), ("Águila", "zoe", "B", 1, None),
        ("", "Ann", "A", None, 10.0), ("alpha", "", "", 1, 20.0), ("alpha", "Ann", "A", 2, 20.0),
    ]
    for n, (title, artist, album, track, duration) in enumerate(rows):
        db.write([Change("songs", f"{n}1111111-1111-4111-8111-111111111111", song_fields(
            title=title, artist=artist, album=album, track=track, duration=duration,
            sha256=f"{n}" * 64, created_at=f"2026-01-0{n + 1}T00:00:00.000Z"))])

    def order(sort: str) -> list[int]:
        page = db.search_songs(SongSearch(sort=sort, limit=10))
        assert page.total == len(rows)
        return [int(song["id"][0]) for song in page.songs]

    assert order("newest") == [4, 3, 2, 1, 0]
    assert order("title") == [1, 4, 3, 0, 2]  # Águila as aguila; ties by artist; "" last
    assert order("artist") == [4, 2, 1, 0, 3]  # Zoë = zoe, then album and track (none last)
    assert order("album") == [4, 2, 1, 0, 3]
    assert order("duration") == [2, 4, 3, 0, 1]
    # pages of any sort are slices of one order: nothing repeats or goes missing
    for sort in SONG_ORDERS:
        paged = [song["id"] for offset in range(0, 5, 2)
                 for song in db.search_songs(SongSearch(sort=sort, limit=2, offset=offset)).songs]
        assert len(set(paged)) == 5


def test_chunk_registry_lists_live_chunks_in_order(db: MetadataDB) -> None:
    db.write([Change("chunks", f"{SONG}/{idx}", {"size": 5, "sha256": "c" * 64, "deleted": 0})
              for idx in (1, 0)])
    db.write([Change("chunks", f"{SONG}/1", {"deleted": 1})])

    assert [c["idx"] for c in db.chunks_of(SONG)] == [0]
    assert db.chunk(SONG, 1) is None
    assert db.live_chunk_names() == {f"{SONG}_0"}
    # The files missing for the live chunks, counted: deleted chunks and stray files do not count.
    assert db.count_missing_chunks(set()) == 1
    assert db.count_missing_chunks({f"{SONG}_0", f"{SONG}_1", "stray_3"}) == 0
    assert db.count_missing_chunks({f"{SONG}_1"}) == 1


def test_the_registry_is_paged_in_table_order_each_live_chunk_once(db: MetadataDB) -> None:
    songs = [f"{n}1111111-1111-4111-8111-111111111111" for n in (9, 3, 5, 1, 7)]
    db.write([Change("chunks", f"{song}/0", {"size": 5, "sha256": "c" * 64, "deleted": 0})
              for song in songs])
    db.write([Change("chunks", f"{songs[2]}/0", {"deleted": 1})])

    pages, position = [], 0
    while page := db.registry_after(position, 2):
        pages.append([(song_id, idx) for _, song_id, idx, _, _ in page])
        position = page[-1][0]

    # As written (the table's order, not the ids'), the deleted one left out, two a page.
    assert pages == [[(songs[0], 0), (songs[1], 0)], [(songs[3], 0), (songs[4], 0)]]


def test_store_runs_every_call_on_its_runner(db: MetadataDB) -> None:
    threads: list[str] = []

    def runner(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return succeed(f(*args, **kwargs))

    store = MetadataStore(db, runner)
    result: list[Version] = []
    d: Deferred[Version] = store.run(MetadataDB.head)
    d.addCallback(result.append)

    assert result == [Version(0, 0, 0)] and len(threads) == 1


def test_a_leader_holding_writes_of_a_later_claim_writes_nothing_until_it_claims_above(
        db: MetadataDB) -> None:
    """Its writes, numbered below those rows, would lose the merge to them: 421, nothing
    written, until the election's new epoch (BullyElection.data_seen)."""
    db.write([Change("songs", SONG, song_fields())])
    db.apply_ops([Op(Version(1, 3, 4), "songs", SONG, {"title": "of leader 3"})])

    with pytest.raises(NotLeader, match="claiming a new one"):
        db.write([Change("songs", SONG, {"title": "ours"})])

    assert db.head() == Version(1, 3, 4) and db.song(SONG)["title"] == "of leader 3"
    db.begin_leading(2)
    assert db.write([Change("songs", SONG, {"title": "ours"})])[0].version == Version(2, 2, 1)
    assert db.song(SONG)["title"] == "ours"


def test_a_transaction_sqlite_rolled_back_itself_raises_the_error_that_said_why() -> None:
    """On a full disk SQLite may roll the transaction back itself: the disk-full error is
    what reaches the caller (a 507), not "cannot rollback - no transaction is active" (a
    500 with a traceback: the random lab run)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")

    with (pytest.raises(sqlite3.OperationalError, match="database or disk is full"),
          Transaction(conn)):
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("ROLLBACK")  # what SQLite does on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    assert not conn.in_transaction
    with Transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
    assert conn.execute("SELECT x FROM t").fetchall() == [(2,)]


def test_a_commit_that_fails_leaves_no_transaction_open() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(
        "PRAGMA foreign_keys = ON; CREATE TABLE parent (id PRIMARY KEY);"
        " CREATE TABLE child (p REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);")

    with pytest.raises(sqlite3.IntegrityError), Transaction(conn):
        conn.execute("INSERT INTO child VALUES (1)")  # refused at COMMIT only

    assert not conn.in_transaction
    with Transaction(conn):
        conn.execute("INSERT INTO parent VALUES (1)")
    assert conn.execute("SELECT count(*) FROM child").fetchone() == (0,)
