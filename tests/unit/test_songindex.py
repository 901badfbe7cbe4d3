"""The songs' search index, sort keys and cursors: every query answers what a straightforward
scan of the rows answers, through writes, replicated ops, anti-entropy merges, deletes,
purges, a migration of an existing database and a snapshot; each page costs an index walk."""

from __future__ import annotations

import functools
import itertools
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distpotify.model import Op, Row, Version
from distpotify.store import songindex
from distpotify.store.bookmarks import Bookmarks
from distpotify.store.metadata import SONG_ORDERS, Change, MetadataDB, SongSearch
from distpotify.store.songorder import fold

IDS = [f"{n}1111111-1111-4111-8111-11111111111{n}" for n in range(8)]
ORDERED = [name for name, order in SONG_ORDERS.items() if order.indexed]


# ---------------------------------------------------------------- the reference: a scan


def scan(db: MetadataDB, search: SongSearch) -> list[dict[str, Any]]:
    """Every song the API may show that matches, in the order asked: Python over the rows."""
    rows = [dict(r) for r in db._conn.execute("SELECT * FROM songs")]
    found = [r for r in rows if r["deleted"] == 0 and r["sha256"] is not None]

    def has(row: dict[str, Any], columns: tuple[str, ...], text: str | None) -> bool:
        return not text or any(fold(text) in fold(row[c]) for c in columns)

    visible = found
    found = [r for r in found if has(r, ("title", "artist", "album"), search.q)
             and has(r, ("artist",), search.artist) and has(r, ("album",), search.album)
             and has(r, ("genre",), search.genre)]
    compare = ORDER_RULES[search.sort]
    if search.sort == "relevance" and len(fold(search.q)) >= 3:
        compare = rule(relevance(visible, fold(search.q or "")))
    return sorted(found, key=functools.cmp_to_key(compare))


def relevance(visible: list[dict[str, Any]], text: str) -> Any:
    """bm25 over q's phrase, from its definition (sqlite's fts5_aux.c) without the IDF
    factor, the same for every song: ``text``'s places in each of q's columns (overlapping
    ones too: trigrams) by the column's weight, against the song's length in trigrams."""
    def tokens(row: dict[str, Any]) -> int:
        return sum(max(len(fold(row[c])) - 2, 0) for c in ("title", "artist", "album", "genre"))

    def places(value: str) -> int:
        return sum(value.startswith(text, at) for at in range(len(value)))

    mean = sum(tokens(r) for r in visible) / max(len(visible), 1)

    def score(row: dict[str, Any]) -> float:
        found = sum(places(fold(row[c])) * w
                    for c, w in (("title", 4.0), ("artist", 2.0), ("album", 1.0)))
        return -((found * (1.2 + 1.0)) / (found + 1.2 * (1 - 0.75 + 0.75 * tokens(row) / mean)))

    return score


def by_text(column: str) -> Any:
    return lambda r: (not r[column], fold(r[column]))


def by_number(column: str) -> Any:
    return lambda r: (r[column] is None, r[column] or 0)


def rule(*keys: Any) -> Any:
    """A comparison: the keys in turn (each ascending), then newest first, then the id."""

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        for key in keys:
            if key(a) != key(b):
                return -1 if key(a) < key(b) else 1
        for column in ("created_at", "version"):  # descending
            if a[column] != b[column]:
                return -1 if a[column] > b[column] else 1
        return -1 if a["id"] < b["id"] else int(a["id"] > b["id"])

    return compare


ORDER_RULES = {
    "newest": rule(),
    "title": rule(by_text("title"), by_text("artist")),
    "artist": rule(by_text("artist"), by_text("album"), by_number("track"), by_text("title")),
    "album": rule(by_text("album"), by_number("track"), by_text("title")),
    "duration": rule(by_number("duration"), by_text("title")),
    "relevance": rule(),  # with no q the index can match: newest first
}


def pages(db: MetadataDB, search: SongSearch) -> Iterator[list[str]]:
    """The ids of each page, following the ``next`` cursors from the first."""
    search = attrs.evolve(search, after=None, offset=0)
    while True:
        page = db.search_songs(search)
        yield [song["id"] for song in page.songs]
        if page.next is None:
            return
        after = SONG_ORDERS[search.sort].parse_cursor(page.next)
        search = attrs.evolve(search, after=after, offset=0)


def check(db: MetadataDB, search: SongSearch) -> None:
    expected = [r["id"] for r in scan(db, search)]
    page = db.search_songs(search)
    got = [song["id"] for song in page.songs]
    assert page.total == len(expected), search
    walked = [song for page_ids in pages(db, search) for song in page_ids]
    assert got == expected[search.offset:search.offset + search.limit], search
    assert walked == expected, search


def check_index(db: MetadataDB) -> None:
    """The index agrees with the rows: FTS5's own check, and the tallies recounted."""
    db._conn.execute("INSERT INTO song_search (song_search) VALUES ('integrity-check')")
    visible = db._conn.execute(
        "SELECT count(*) FROM songs WHERE deleted = 0 AND sha256 IS NOT NULL").fetchone()[0]
    indexed = db._conn.execute("SELECT count(*) FROM song_search").fetchone()[0]
    assert songindex.tally(db._conn, songindex.SONGS) == visible == indexed
    tombstones = sum(db._conn.execute(f"SELECT count(*) FROM {t} WHERE deleted = 1").fetchone()[0]
                     for t in ("songs", "chunks", "playlists", "playlist_items", "users"))
    assert db.tombstones() == tombstones


# ---------------------------------------------------------------- histories


# Letters that fold (accents, ligatures, ß, a lone combining mark), FTS5's query syntax, LIKE's
# wildcards and quotes: all must be plain text to the search.
ALPHABET = "aAbBeéÉèñÑsßﬁ\u0301 0123\"'*%_:{}()-^."
texts = st.one_of(st.none(), st.text(ALPHABET, max_size=12))
# A song's creating op: the one that brings its sha256 also brings created_at.
song_fields = st.fixed_dictionaries(
    {"sha256": st.just("ab" * 32), "deleted": st.just(0),
     "created_at": st.sampled_from(["2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z"])},
    optional={"title": texts, "artist": texts, "album": texts, "genre": texts,
              "track": st.one_of(st.none(), st.integers(0, 3)),
              "duration": st.one_of(st.none(), st.sampled_from([1.5, 2.0, 3.25]))})
edits = st.fixed_dictionaries(
    {}, optional={"title": texts, "artist": texts, "album": texts, "genre": texts,
                  "track": st.one_of(st.none(), st.integers(0, 3))})
song_ids = st.sampled_from(IDS)
actions = st.one_of(
    st.tuples(st.just("create"), song_ids, song_fields),
    st.tuples(st.just("edit"), song_ids, edits),
    st.tuples(st.just("delete"), song_ids, st.just({})),
    # ops of another leader (epoch 1: older than ours; 9: newer), possibly without sha256
    st.tuples(st.just("remote"), song_ids, st.tuples(st.sampled_from([1, 9]),
                                                    st.one_of(song_fields, edits))),
    st.tuples(st.just("merge"), song_ids, st.tuples(st.sampled_from([1, 9]), song_fields)),
    st.tuples(st.just("purge"), song_ids, st.just({})),
)


def play(db: MetadataDB, history: list[tuple[str, str, Any]]) -> None:
    remote_seq = itertools.count(1)
    for action, song_id, value in history:
        if action in ("create", "edit", "delete", "purge") and db.head() > db.written():
            # Ops of a newer leader arrived: the election claims an epoch above them before
            # this leader writes again (BullyElection.data_seen).
            db.begin_leading(db.head().epoch + 1)
        live = action == "edit" and value and db.song(song_id) is not None
        if action == "create" or live:
            db.write([Change("songs", song_id, value)])
        elif action == "delete":
            db.write([Change("songs", song_id, {"deleted": 1})])
        elif action == "remote" and value[1]:
            db.apply_ops([Op(Version(value[0], 7, next(remote_seq)), "songs", song_id, value[1])])
        elif action == "merge":
            version = Version(value[0], 8, next(remote_seq))
            db.apply_rows([Row("songs", song_id, value[1], dict.fromkeys(value[1], version))])
        elif action == "purge":
            db.write([Change("purges", "tombstones", {"through": db.head().encode()})])


queries = st.builds(
    SongSearch,
    q=st.one_of(st.none(), st.text(ALPHABET, max_size=5)),
    artist=st.one_of(st.none(), st.text(ALPHABET, max_size=4)),
    album=st.one_of(st.none(), st.text(ALPHABET, max_size=2)),
    genre=st.one_of(st.none(), st.text(ALPHABET, max_size=3)),
    sort=st.sampled_from(list(SONG_ORDERS)),
    limit=st.integers(1, 4),
    offset=st.integers(0, 3),
)


def stored_queries(db: MetadataDB) -> list[SongSearch]:
    """Queries cut from stored values (so they match), case changed, a short one too, and
    q with a filter (relevance ranked without bm25's IDF: queries.py)."""
    found = []
    for title, artist in db._conn.execute(
            "SELECT title, artist FROM songs WHERE title IS NOT NULL"):
        for cut in (title[1:5], title[:2].upper()):
            found += [SongSearch(q=cut, sort=sort, limit=3) for sort in SONG_ORDERS]
        for narrower in (artist or "")[:3], (artist or "")[-2:]:
            found.append(SongSearch(q=title[:4], artist=narrower, sort="relevance", limit=3))
    return found


def fresh(path: Path) -> MetadataDB:
    db = MetadataDB(path, node_id=5)
    db.begin_leading(5)
    # No fsync: these tests are about what the index answers, not about durability.
    db._conn.execute("PRAGMA synchronous = OFF")
    return db


@pytest.mark.timeout(600)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, max_size=25), st.lists(queries, max_size=6))
def test_every_query_answers_what_a_scan_of_the_rows_answers(
    history: list[tuple[str, str, Any]], searches: list[SongSearch]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = fresh(Path(tmp) / "meta.sqlite3")
        play(db, history)

        check_index(db)
        for search in [*searches, *stored_queries(db)]:
            check(db, search)


deep_pages = st.builds(
    SongSearch, sort=st.sampled_from(list(SONG_ORDERS)), limit=st.integers(1, 4),
    offset=st.integers(0, len(IDS) + 2),
)


@pytest.mark.timeout(600)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, max_size=25), st.lists(actions, min_size=1, max_size=8),
       st.lists(deep_pages, min_size=1, max_size=6))
def test_pages_by_offset_from_bookmarks_answer_what_a_scan_answers_through_changes(
    history: list[tuple[str, str, Any]], changes: list[tuple[str, str, Any]],
    searches: list[SongSearch],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = fresh(Path(tmp) / "meta.sqlite3")
        db._song_bookmarks = Bookmarks(every=2)  # a bookmark every other song
        play(db, history)
        for search in searches:
            check(db, search)

        play(db, changes)  # bookmarks made before no longer hold

        for search in searches:
            check(db, search)


@pytest.mark.timeout(600)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(actions, max_size=20), st.lists(queries, min_size=1, max_size=4))
def test_a_database_from_before_the_index_is_migrated_and_a_snapshot_carries_it(
    history: list[tuple[str, str, Any]], searches: list[SongSearch]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = fresh(Path(tmp) / "meta.sqlite3")
        play(db, history)
        db.close()
        strip_index(Path(tmp) / "meta.sqlite3")

        migrated = fresh(Path(tmp) / "meta.sqlite3")
        check_index(migrated)
        migrated.backup_to(Path(tmp) / "snapshot.sqlite3")
        joiner = fresh(Path(tmp) / "joiner.sqlite3")
        joiner.install_snapshot(Path(tmp) / "snapshot.sqlite3")
        check_index(joiner)
        for search in [*searches, *stored_queries(migrated)]:
            check(migrated, search)
            check(joiner, search)


def strip_index(path: Path) -> None:
    """Make ``path`` a database of the release before the index: no search table, no sort
    keys, no tallies, no order indexes (the newest order by created_at alone)."""
    conn = sqlite3.connect(path)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                " AND (name LIKE 'songs_by_%' OR name LIKE '%_tombstones')"
                                ).fetchall():
        conn.execute(f"DROP INDEX {name}")
    conn.execute("DROP TABLE song_search")
    conn.execute("DROP TABLE derived")
    for column in songindex.SONG_KEY_COLUMNS:
        conn.execute(f"ALTER TABLE songs DROP COLUMN {column}")
    conn.execute("CREATE INDEX songs_created ON songs (created_at)")
    conn.commit()
    conn.close()


# ---------------------------------------------------------------- one behaviour each


def song(n: int, **fields: Any) -> Change:
    return Change("songs", IDS[n], {"title": f"Song {n}", "sha256": "ab" * 32, "deleted": 0,
                                    "created_at": f"2026-01-0{n + 1}T00:00:00.000Z", **fields})


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    return fresh(tmp_path / "meta.sqlite3")


def test_a_search_finds_any_substring_ignoring_case_and_accents(db: MetadataDB) -> None:
    db.write([song(0, title="Águila Real"), song(1, title="Ola", artist="Los Aguilares")])

    titles = {s["title"] for s in db.search_songs(SongSearch(q="AGUIL")).songs}
    middle = {s["title"] for s in db.search_songs(SongSearch(q="ila r")).songs}

    assert titles == {"Águila Real", "Ola"} and middle == {"Águila Real"}


def test_short_queries_are_answered_by_a_scan(db: MetadataDB) -> None:
    db.write([song(0, title="ab"), song(1, title="xyz")])

    assert [s["title"] for s in db.search_songs(SongSearch(q="B")).songs] == ["ab"]


def test_relevance_puts_a_title_match_before_an_album_match(db: MetadataDB) -> None:
    db.write([song(0, title="Other", album="Blue Train Sessions"),
              song(1, title="Blue Train"), song(2, title="Unrelated")])

    page = db.search_songs(SongSearch(q="blue train", sort="relevance"))

    assert [s["title"] for s in page.songs] == ["Blue Train", "Other"] and page.total == 2


RANKED = [  # (title, album, artist): q="aaa" is in each, more or less prominently
    ("aaa", "", "Trio"), ("aaaa", "", "Solo"), ("aaa aaa", "", "Trio"), ("aaaa", "", "Trio"),
    ("Other", "aaa", "Trio"), ("the long aaa of a very long title", "aaa", "Solo"),
    ("aaab", "aaa", "Trio"),
]


def test_a_filter_narrows_the_relevance_order_without_changing_it(db: MetadataDB) -> None:
    db.write([song(n, title=title, album=album, artist=artist)
              for n, (title, album, artist) in enumerate(RANKED)])
    everyone = [s["id"] for s in db.search_songs(SongSearch(q="AAA", sort="relevance")).songs]

    trio = db.search_songs(SongSearch(q="AAA", artist="trio", sort="relevance"))

    # bm25 for q alone, its IDF-free term in SQL with the filter: the same order.
    assert [s["id"] for s in trio.songs] == [i for i in everyone if i in {
        IDS[n] for n, row in enumerate(RANKED) if row[2] == "Trio"}]
    # Overlapping places count: "aaa" is twice in "aaaa", which is shorter than "aaa aaa".
    assert trio.songs[0]["title"] == "aaaa" and len(trio.songs) == 5
    for search in (SongSearch(q="aaa", sort="relevance", limit=3),
                   SongSearch(q="aaa", artist="trio", sort="relevance", limit=2),
                   SongSearch(q="aaa", genre="x", sort="relevance")):
        check(db, search)


def test_the_mean_length_is_read_from_fts5s_own_totals(db: MetadataDB) -> None:
    assert songindex.average_tokens(db._conn) == 0.0
    db.write([song(0, title="Águila", artist="ab"), song(1, title="x" * 300, genre="rock"),
              song(2, title="gone")])
    db.write([Change("songs", IDS[2], {"deleted": 1})])

    # Trigrams: len - 2 per column of three characters or more (folded: "aguila" is 6).
    assert songindex.average_tokens(db._conn) == (4 + (298 + 2)) / 2
    assert songindex._varints(bytes([0x82, 0x2C, 0x05])) == [300, 5]


def test_relevance_without_a_q_to_rank_by_is_newest_first(db: MetadataDB) -> None:
    db.write([song(n, title=title, album=album, artist=artist)
              for n, (title, album, artist) in enumerate(RANKED)])

    page = db.search_songs(SongSearch(artist="trio", sort="relevance"))

    assert [s["id"] for s in page.songs] == [
        IDS[n] for n in reversed(range(len(RANKED))) if RANKED[n][2] == "Trio"]


@pytest.mark.parametrize("sort", ORDERED)
def test_a_page_walks_its_order_index_without_sorting(db: MetadataDB, sort: str) -> None:
    db.write([song(n) for n in range(3)])
    order = SONG_ORDERS[sort]
    first = db.search_songs(SongSearch(sort=sort, limit=1))
    after = order.parse_cursor(first.next or "")
    statements: list[str] = []
    db._conn.set_trace_callback(statements.append)

    db.search_songs(SongSearch(sort=sort, limit=1, after=after))

    plan = db._conn.execute(f"EXPLAIN QUERY PLAN {statements[-1]}".replace("?", "NULL")
                            ).fetchall()
    details = " ".join(row[3] for row in plan)
    assert f"USING INDEX {order.index}" in details and "TEMP B-TREE" not in details
    assert "count(" not in " ".join(statements)  # the total is a tally


def test_the_last_page_has_no_next_cursor(db: MetadataDB) -> None:
    db.write([song(n) for n in range(3)])

    first = db.search_songs(SongSearch(limit=2))
    last = db.search_songs(SongSearch(limit=2, after=SONG_ORDERS["newest"].parse_cursor(
        first.next or "")))

    assert len(first.songs) == 2 and first.next is not None
    assert [s["title"] for s in last.songs] == ["Song 0"] and last.next is None


@pytest.mark.parametrize("cursor", [
    "", "not base64!", "bm90IGpzb24", "eyJhIjoxfQ",  # not JSON; a JSON object
    SONG_ORDERS["title"].cursor({"title_key": "0a", "artist_key": "1", "created_at": "x",
                                 "version": "v", "id": "i"}),  # another order's
    "WyJuZXdlc3QiLCJ4IiwidiJd",  # ["newest","x","v"]: a key short
    "WyJuZXdlc3QiLDEsInYiLCJpIl0",  # ["newest",1,"v","i"]: a number for a text key
])
def test_anything_but_a_cursor_of_the_order_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError):
        SONG_ORDERS["newest"].parse_cursor(cursor)


def test_tallies_follow_deletes_and_purges(db: MetadataDB) -> None:
    db.write([song(0), song(1), Change("playlists", IDS[2], {"name": "p", "deleted": 0})])
    db.write([Change("songs", IDS[0], {"deleted": 1}),
              Change("playlists", IDS[2], {"deleted": 1})])
    assert db.tombstones() == 2 and db.search_songs(SongSearch()).total == 1

    db.write([Change("purges", "tombstones", {"through": db.head().encode()})])

    assert db.tombstones() == 0 and db.search_songs(SongSearch()).total == 1
    check_index(db)


def test_an_index_of_another_format_is_rebuilt_at_start(tmp_path: Path) -> None:
    db = fresh(tmp_path / "meta.sqlite3")
    db.write([song(0, title="Águila")])
    db._conn.execute("UPDATE derived SET value = 'songindex 0' WHERE name = 'format'")
    db._conn.execute("DELETE FROM song_search")
    db.close()

    reopened = fresh(tmp_path / "meta.sqlite3")

    assert [s["title"] for s in reopened.search_songs(SongSearch(q="aguila")).songs] == ["Águila"]
    check_index(reopened)
