"""Per-user state (issue 18): stars, ratings, plays, now playing, the play queue and bookmarks
as replicated records. Written on two sides of a partition and merged in any order they
converge, no play is lost, the same star or bookmark is one record and the newer play queue
wins whole; refused writes change nothing; reads are per user."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from distpotify import catalog
from distpotify.errors import BadRequest, NotFound, NotLeader
from distpotify.idempotency import IdempotencyKey
from distpotify.model import ZERO, Op
from distpotify.store.metadata import Change, MetadataDB
from distpotify.store.userstate import bookmark_id, item_record_id, play_queue_id
from distpotify.userstate import (
    MAX_COMMENT,
    MAX_POSITION_MS,
    MAX_QUEUE,
    UserState,
    _bookmark,
    _play,
    _rate,
    _save_queue,
    _star,
    _unbookmark,
    iso,
    shown_queue,
)
from tests.helpers.api import InMemoryReplica, NoLeader, result_of

ALICE = "6a8d4c1e-2b7f-4e3a-9c5d-0f1e2d3c4b5a"
BOB = "0b9e8d7c-6f5a-4e3d-8c2b-1a0f9e8d7c6b"
SONG = "11111111-1111-4111-8111-111111111111"
OTHER_SONG = "22222222-2222-4222-8222-222222222222"
UNKNOWN = "33333333-3333-4333-8333-333333333333"
ALBUM_FIELDS = {"album_artist": None, "artist": "Björk", "album": "Post", "year": 1995}
ALBUM = catalog.song_album_id(ALBUM_FIELDS)
ARTIST = catalog.song_artist_id(ALBUM_FIELDS)


def song_change(song_id: str, **tags: Any) -> Change:
    return Change("songs", song_id, {**ALBUM_FIELDS, "title": song_id[:4], "sha256": "0" * 64,
                                     "deleted": 0, "created_at": iso(0), **tags})


def leader(path: Path, node_id: int, epoch: int) -> MetadataDB:
    db = MetadataDB(path, node_id)
    db.begin_leading(epoch)
    return db


def two_sides() -> tuple[MetadataDB, list[MetadataDB]]:
    """The leader of epoch 1, which wrote both songs, and the two sides of a partition after
    it: leaders 1 and 2 of epoch 2, each holding what it wrote (in memory)."""
    memory = Path(":memory:")
    first = leader(memory, 1, 1)
    first.write([song_change(SONG), song_change(OTHER_SONG)])
    sides = [leader(memory, 1, 2), leader(memory, 2, 2)]
    for side in sides:
        side.apply_ops(first.ops_after(ZERO))
    return first, sides


def state_of(db: MetadataDB) -> dict[str, Any]:
    """What the users see: every user's annotations of both songs, the album and the
    artist."""
    return {
        user: {kind: db.annotations(user, kind, ids)
               for kind, ids in (("song", [SONG, OTHER_SONG]), ("album", [ALBUM]),
                                 ("artist", [ARTIST]))}
        for user in (ALICE, BOB)
    }


def rows_of(db: MetadataDB) -> dict[str, Any]:
    return {entity: [dict(r) for r in db._conn.execute(
        f"SELECT * FROM {entity} ORDER BY id")] for entity in ("stars", "ratings", "plays")}


# merging in a partition


@pytest.fixture
def partition(tmp_path: Path) -> tuple[list[Op], list[Op], list[Op]]:
    """The ops of a common past (two songs), then each side's own: both star the same song
    and play it, each rates it, one side unstars the other song, each plays at its moments."""
    first = leader(tmp_path / "first.sqlite3", 1, 1)
    common = first.write([song_change(SONG), song_change(OTHER_SONG, album="Debut")])
    _star(first, ALICE, [("song", OTHER_SONG)], iso(10), True)
    common = first.ops_after(ZERO)

    side_a = leader(tmp_path / "a.sqlite3", 1, 2)
    side_b = leader(tmp_path / "b.sqlite3", 2, 2)
    for side in (side_a, side_b):
        side.apply_ops(common)
    head = side_a.head()
    _star(side_a, ALICE, [("song", SONG), ("album", ALBUM)], iso(100), True)
    _play(side_a, ALICE, [SONG, SONG], [iso(101), iso(102)])
    _rate(side_a, ALICE, SONG, 4, iso(103))
    _star(side_a, ALICE, [(None, OTHER_SONG)], iso(104), False)
    _star(side_b, ALICE, [("song", SONG)], iso(200), True)
    _play(side_b, ALICE, [SONG], [iso(201)])
    _play(side_b, BOB, [OTHER_SONG], [iso(202)])
    _rate(side_b, ALICE, SONG, 2, iso(203))
    return common, side_a.ops_after(head), side_b.ops_after(head)


def test_a_partitions_two_sides_merge_in_any_order_to_one_state(
        tmp_path: Path, partition: tuple[list[Op], list[Op], list[Op]]) -> None:
    common, ops_a, ops_b = partition
    states, rows = [], []
    for seed in range(6):
        db = MetadataDB(tmp_path / f"merged{seed}.sqlite3", 3)
        shuffled = common + ops_a + ops_b + ops_a[:2]  # some ops arrive twice
        random.Random(seed).shuffle(shuffled)
        for op in shuffled:
            db.apply_ops([op])
        states.append(state_of(db))
        rows.append(rows_of(db))

    assert all(state == states[0] for state in states)
    assert all(row == rows[0] for row in rows)


def test_no_play_is_lost_and_the_same_star_is_one_record(
        tmp_path: Path, partition: tuple[list[Op], list[Op], list[Op]]) -> None:
    common, ops_a, ops_b = partition
    db = MetadataDB(tmp_path / "merged.sqlite3", 3)

    db.apply_ops(common + ops_b + ops_a)

    songs = db.annotations(ALICE, "song", [SONG, OTHER_SONG])
    assert songs[SONG]["play_count"] == 3  # two on one side, one on the other
    assert songs[SONG]["played"] == iso(201)
    assert db.play_count(BOB) == 1
    stars = db._conn.execute("SELECT count(*) FROM stars WHERE item_id = ?", (SONG,))
    assert stars.fetchone()[0] == 1
    assert songs[SONG]["starred"] == iso(200)  # the same field: the higher version's
    assert songs[SONG]["rating"] == 2  # side b's leader has the higher id in epoch 2
    assert "starred" not in songs.get(OTHER_SONG, {})  # unstarred by one side alone
    assert db.annotations(ALICE, "album", [ALBUM])[ALBUM]["starred"] == iso(100)


def test_a_play_applied_twice_counts_once(tmp_path: Path) -> None:
    db = leader(tmp_path / "db.sqlite3", 1, 1)
    db.write([song_change(SONG)])
    _play(db, ALICE, [SONG], [iso(5)])

    db.apply_ops(db.ops_after(ZERO))
    _play(db, ALICE, [SONG], [iso(5)])  # the same scrobble sent again

    assert db.annotations(ALICE, "song", [SONG])[SONG]["play_count"] == 1


def test_star_and_rating_ids_derive_from_user_kind_and_item() -> None:
    assert item_record_id("stars", ALICE, "song", SONG) == \
        item_record_id("stars", ALICE, "song", SONG)
    assert len({item_record_id("stars", ALICE, "song", SONG),
                item_record_id("stars", BOB, "song", SONG),
                item_record_id("stars", ALICE, "album", SONG),
                item_record_id("ratings", ALICE, "song", SONG)}) == 4


# the domain on a replica


@pytest.fixture
def replica(tmp_path: Path) -> InMemoryReplica:
    replica = InMemoryReplica(tmp_path)
    replica.db.write([song_change(SONG), song_change(OTHER_SONG, album="Debut", year=None)])
    return replica


def state(replica: InMemoryReplica) -> UserState:
    found = replica.service.userstate
    assert found is not None
    return found


def run(coroutine: Any) -> Any:
    return result_of(Deferred.fromCoroutine(coroutine))


def test_a_keyed_scrobble_without_a_time_applied_by_two_leaders_is_one_play(
        tmp_path: Path) -> None:
    """The old leader applies it and dies before replicating; the proxy sends it again, under
    its key, to the next leader, whose clock says another moment. Merged, one play."""
    old = InMemoryReplica(tmp_path / "old")
    old.db.write([song_change(SONG), song_change(OTHER_SONG)])
    new = InMemoryReplica(tmp_path / "new")
    new.db.apply_ops(old.db.ops_after(ZERO))
    new.db.begin_leading(2)
    old.clock.advance(1_700_000_000)
    new.clock.advance(1_700_000_003)  # the retry lands 3 s later
    key = IdempotencyKey(f"{ALICE} k1", "d" * 64)
    head = old.db.head()

    for side in (old, new):
        answer = run(state(side).scrobble(ALICE, [SONG, OTHER_SONG], [], True, "c", key))
        assert (answer.status, answer.replayed) == (200, False)
    for one, other in ((old, new), (new, old)):
        one.db.apply_ops(other.db.ops_after(head))

    for side in (old, new):
        plays = side.db._conn.execute("SELECT song_id, played_at FROM plays").fetchall()
        assert sorted(song for song, _ in plays) == sorted([SONG, OTHER_SONG])
        assert {at for _, at in plays} == {iso(1_700_000_003)}  # the later leader's moment
    assert rows_of(old.db)["plays"] == rows_of(new.db)["plays"]


def test_starring_by_id_finds_a_song_an_album_or_an_artist(replica: InMemoryReplica) -> None:
    run(state(replica).star(ALICE, [(None, SONG), (None, ALBUM), (None, ARTIST)]))

    assert run(state(replica).starred(ALICE, "song")) == [(SONG, iso(0))]
    assert [a for a, _ in run(state(replica).starred(ALICE, "album"))] == [ALBUM]
    assert [a for a, _ in run(state(replica).starred(ALICE, "artist"))] == [ARTIST]
    assert run(state(replica).starred(BOB, "song")) == []


@pytest.mark.parametrize("items", [
    [("song", UNKNOWN)], [(None, UNKNOWN)], [("album", SONG)], [("artist", ALBUM)],
    [("song", SONG), ("song", "not-a-uuid")], [("song", SONG), ("album", UNKNOWN)],
])
def test_a_star_naming_nothing_is_404_and_stars_nothing(replica: InMemoryReplica,
                                                       items: list[tuple[str, str]]) -> None:
    head = replica.db.head()

    with pytest.raises(NotFound):
        run(state(replica).star(ALICE, items))

    assert replica.db.head() == head


def test_a_star_of_a_song_since_deleted_can_be_taken_back(replica: InMemoryReplica) -> None:
    run(state(replica).star(ALICE, [("song", SONG)]))
    replica.db.write([Change("songs", SONG, {"deleted": 1})])

    with pytest.raises(NotFound):
        run(state(replica).star(ALICE, [("song", SONG)]))
    run(state(replica).unstar(ALICE, [(None, SONG)]))

    assert run(state(replica).starred(ALICE, "song")) == []


def test_unstarring_what_was_never_starred_writes_nothing(replica: InMemoryReplica) -> None:
    head = replica.db.head()

    run(state(replica).unstar(ALICE, [("song", SONG)]))

    assert replica.db.head() == head


def test_a_rating_of_0_removes_it(replica: InMemoryReplica) -> None:
    run(state(replica).set_rating(ALICE, SONG, 5))
    assert replica.db.annotations(ALICE, "song", [SONG])[SONG]["rating"] == 5

    run(state(replica).set_rating(ALICE, SONG, 0))

    assert "rating" not in replica.db.annotations(ALICE, "song", [SONG]).get(SONG, {})


@pytest.mark.parametrize(("item", "rating", "error"), [
    (SONG, 6, BadRequest), (SONG, -1, BadRequest), (UNKNOWN, 3, NotFound),
    ("nope", 3, NotFound),
])
def test_a_bad_rating_is_refused_and_changes_nothing(replica: InMemoryReplica, item: str,
                                                     rating: int, error: type) -> None:
    head = replica.db.head()

    with pytest.raises(error):
        run(state(replica).set_rating(ALICE, item, rating))

    assert replica.db.head() == head


def test_scrobbles_count_plays_per_user(replica: InMemoryReplica) -> None:
    replica.clock.advance(1_800_000_000)
    run(state(replica).scrobble(ALICE, [SONG, OTHER_SONG], [], True, "dsub"))
    replica.clock.advance(60)
    run(state(replica).scrobble(ALICE, [SONG], [1_700_000_000.0], True, "dsub"))
    run(state(replica).scrobble(BOB, [SONG], [], True, "dsub"))

    found = replica.db.annotations(ALICE, "song", [SONG, OTHER_SONG])

    assert found[SONG]["play_count"] == 2
    assert found[SONG]["played"] == iso(1_800_000_000)  # the latest play, not the last sent
    assert found[OTHER_SONG]["play_count"] == 1
    assert replica.db.annotations(BOB, "song", [SONG])[SONG]["play_count"] == 1


@pytest.mark.parametrize(("ids", "times", "error"), [
    ([UNKNOWN], [], NotFound), ([SONG, UNKNOWN], [], NotFound), ([], [], BadRequest),
    ([SONG], [1.0], BadRequest), ([SONG, SONG], [1_700_000_000.0], BadRequest),
])
def test_a_bad_scrobble_counts_nothing(replica: InMemoryReplica, ids: list[str],
                                       times: list[float], error: type) -> None:
    head = replica.db.head()

    with pytest.raises(error):
        run(state(replica).scrobble(ALICE, ids, times, True, "dsub"))

    assert replica.db.head() == head


def test_now_playing_shows_each_client_for_ten_minutes(replica: InMemoryReplica) -> None:
    replica.clock.advance(1000)
    run(state(replica).scrobble(ALICE, [SONG], [], False, "phone"))
    run(state(replica).scrobble(ALICE, [OTHER_SONG], [], False, "car"))
    replica.clock.advance(120)
    run(state(replica).scrobble(ALICE, [SONG], [], False, "car"))

    playing = run(state(replica).now_playing())
    assert [(p["client"], p["song_id"], p["minutes_ago"]) for p in playing] == [
        ("car", SONG, 0), ("phone", SONG, 2)]
    assert replica.db.play_count(ALICE) == 0  # now playing is no play

    replica.clock.advance(540)
    assert [p["client"] for p in run(state(replica).now_playing())] == ["car"]
    replica.clock.advance(200)
    assert run(state(replica).now_playing()) == []


def test_writes_on_a_follower_are_refused(tmp_path: Path) -> None:
    follower = InMemoryReplica(tmp_path, leadership=NoLeader())

    with pytest.raises(NotLeader):
        run(state(follower).star(ALICE, [("song", SONG)]))


def test_album_plays_count_the_plays_of_the_albums_songs(replica: InMemoryReplica) -> None:
    third = "44444444-4444-4444-8444-444444444444"
    replica.db.write([song_change(third, title="b-side")])  # the same album as SONG
    run(state(replica).scrobble(ALICE, [SONG, third, OTHER_SONG], [], True, "x"))
    replica.clock.advance(5)
    run(state(replica).scrobble(ALICE, [third], [], True, "x"))

    plays = run(state(replica).album_plays(ALICE))

    debut = catalog.song_album_id({**ALBUM_FIELDS, "album": "Debut", "year": None})
    assert plays == {ALBUM: (3, iso(5)), debut: (1, iso(0))}
    assert replica.db.annotations(ALICE, "album", [ALBUM, debut]) == {
        ALBUM: {"play_count": 3, "played": iso(5)}, debut: {"play_count": 1, "played": iso(0)}}


# any partition, any order (hypothesis)

ACTIONS = st.lists(st.tuples(
    st.sampled_from(["star", "unstar", "rate", "play"]),
    st.sampled_from([ALICE, BOB]),
    st.sampled_from([SONG, OTHER_SONG]),
    st.integers(0, 5),
), max_size=8)


def act(db: MetadataDB, actions: list[tuple[str, str, str, int]], start: int) -> None:
    for n, (action, user, song, value) in enumerate(actions):
        at = iso(start + n)
        if action == "star":
            _star(db, user, [("song", song)], at, True)
        elif action == "unstar":
            _star(db, user, [("song", song)], at, False)
        elif action == "rate":
            _rate(db, user, song, value, at)
        else:
            _play(db, user, [song], [at])


@settings(max_examples=40, deadline=None)
@given(side_a=ACTIONS, side_b=ACTIONS, seed=st.integers(0, 2**16))
def test_both_sides_merge_to_one_state_whatever_the_order(
        side_a: list[tuple[str, str, str, int]], side_b: list[tuple[str, str, str, int]],
        seed: int) -> None:
    first, sides = two_sides()
    common = first.ops_after(ZERO)
    for side, actions, start in zip(sides, (side_a, side_b), (100, 200), strict=True):
        act(side, actions, start)
    written = [op for side in sides for op in side.ops_after(first.head())]

    memory = Path(":memory:")
    in_order, shuffled = MetadataDB(memory, 3), MetadataDB(memory, 3)
    in_order.apply_ops(common + written)
    mixed = common + written + written[: len(written) // 2]
    random.Random(seed).shuffle(mixed)
    for op in mixed:
        shuffled.apply_ops([op])

    assert state_of(in_order) == state_of(shuffled)
    plays = sum(1 for action, *_ in side_a + side_b if action == "play")
    assert in_order.play_count(ALICE) + in_order.play_count(BOB) == plays  # none lost
    stars = in_order._conn.execute("SELECT count(*) FROM stars").fetchone()[0]
    starred = {(user, song) for action, user, song, _ in side_a + side_b
               if action in ("star", "unstar")}
    assert stars <= len(starred)  # one record per user and song, however often starred


# the play queue


def test_of_two_saves_made_on_two_leaders_the_newer_wins_whole() -> None:
    """Each side of a partition saves alice's queue; merged in either order, every field is
    the newer save's (by version: side b's leader has the higher id in epoch 2, though side
    a saved later by its clock): never one save's songs with the other's current song."""
    first, (side_a, side_b) = two_sides()
    common = first.ops_after(ZERO)
    _save_queue(side_a, ALICE, [SONG, OTHER_SONG, SONG], 2, 90_000, "phone", iso(300))
    _save_queue(side_b, ALICE, [OTHER_SONG], 0, 1_000, "car", iso(200))
    newer = side_b.play_queue(ALICE)
    ops_a, ops_b = side_a.ops_after(first.head()), side_b.ops_after(first.head())

    for order in (ops_a + ops_b, ops_b + ops_a):
        merged = MetadataDB(Path(":memory:"), 3)
        merged.apply_ops(common + order)
        assert merged.play_queue(ALICE) == newer == {
            "entries": [OTHER_SONG], "current": 0, "position_ms": 1_000,
            "changed_at": iso(200), "changed_by": "car"}
        assert merged.get_row("play_queues", play_queue_id(ALICE)) == \
            side_b.get_row("play_queues", play_queue_id(ALICE))


SAVES = st.lists(st.tuples(
    st.lists(st.sampled_from([SONG, OTHER_SONG]), min_size=1, max_size=4),
    st.integers(0, 3), st.integers(0, 10**6),
), max_size=4)


@settings(max_examples=40, deadline=None)
@given(side_a=SAVES, side_b=SAVES, seed=st.integers(0, 2**16))
def test_merged_saves_are_always_one_whole_save(
        side_a: list[tuple[list[str], int, int]], side_b: list[tuple[list[str], int, int]],
        seed: int) -> None:
    first, sides = two_sides()
    common = first.ops_after(ZERO)
    saved = []
    for side, saves, name in zip(sides, (side_a, side_b), "ab", strict=True):
        for n, (entries, current, position) in enumerate(saves):
            _save_queue(side, ALICE, entries, current % len(entries), position, f"{name}{n}",
                        iso(n))
            saved.append(side.play_queue(ALICE))
    written = [op for side in sides for op in side.ops_after(first.head())]

    mixed = common + written + written[: len(written) // 2]
    random.Random(seed).shuffle(mixed)
    merged = MetadataDB(Path(":memory:"), 3)
    for op in mixed:
        merged.apply_ops([op])

    # The newest version is side b's last save if it saved, else side a's last.
    assert merged.play_queue(ALICE) == (saved[-1] if saved else None)


@pytest.mark.parametrize(("entries", "current", "live", "shown"), [
    (["a", "b", "c"], 1, "abc", (["a", "b", "c"], 1, False)),
    (["a", "b", "c"], 2, "bc", (["b", "c"], 1, False)),  # the current entry follows
    (["a", "b", "a", "c"], 2, "ac", (["a", "a", "c"], 1, False)),  # its own place
    (["a", "b", "c"], 1, "ac", (["a", "c"], 1, True)),  # gone: the next one kept
    (["a", "b", "b", "c"], 1, "ac", (["a", "c"], 1, True)),
    (["a", "b", "c"], 2, "ab", (["a", "b"], 1, True)),  # gone, none after it: the last
    (["a", "b"], 0, "", ([], None, True)),
    ([], None, "abc", ([], None, False)),  # cleared
])
def test_a_queue_is_shown_without_songs_deleted_since(
        entries: list[str], current: int | None, live: str,
        shown: tuple[list[str], int | None, bool]) -> None:
    assert shown_queue(entries, current, set(live)) == shown


def test_a_saved_queue_reads_back_with_its_live_songs(replica: InMemoryReplica) -> None:
    replica.clock.advance(1000)
    run(state(replica).save_play_queue(ALICE, [SONG, OTHER_SONG, SONG], 2, 61_000, "phone"))

    found = run(state(replica).play_queue(ALICE))
    assert [song["id"] for song in found.songs] == [SONG, OTHER_SONG, SONG]
    assert (found.current, found.position_ms, found.changed_at, found.changed_by) == (
        2, 61_000, iso(1000), "phone")
    assert run(state(replica).play_queue(BOB)) is None

    replica.db.write([Change("songs", SONG, {"deleted": 1})])  # the current song is gone
    found = run(state(replica).play_queue(ALICE))
    assert [song["id"] for song in found.songs] == [OTHER_SONG]
    assert (found.current, found.position_ms) == (0, 0)  # none after it: the last one kept


def test_a_save_of_no_songs_clears_the_queue(replica: InMemoryReplica) -> None:
    run(state(replica).save_play_queue(ALICE, [SONG], 0, 5, "phone"))

    run(state(replica).save_play_queue(ALICE, [], None, 0, "car"))

    found = run(state(replica).play_queue(ALICE))
    assert (found.songs, found.current, found.changed_by) == ([], None, "car")


@pytest.mark.parametrize(("ids", "current", "position", "error"), [
    ([UNKNOWN], 0, 0, NotFound), ([SONG, UNKNOWN], 0, 0, NotFound),
    ([SONG, "not-a-uuid"], 0, 0, NotFound),
    ([SONG], 1, 0, BadRequest), ([SONG], -1, 0, BadRequest), ([SONG], None, 0, BadRequest),
    ([], 0, 0, BadRequest), ([SONG], 0, -1, BadRequest),
    ([SONG], 0, MAX_POSITION_MS + 1, BadRequest),
    ([SONG] * (MAX_QUEUE + 1), 0, 0, BadRequest),
])
def test_a_bad_queue_is_refused_and_changes_nothing(replica: InMemoryReplica, ids: list[str],
                                                    current: int | None, position: int,
                                                    error: type) -> None:
    run(state(replica).save_play_queue(ALICE, [OTHER_SONG], 0, 7, "phone"))
    head = replica.db.head()

    with pytest.raises(error):
        run(state(replica).save_play_queue(ALICE, ids, current, position, "phone"))

    assert replica.db.head() == head
    assert replica.db.play_queue(ALICE)["entries"] == [OTHER_SONG]


def test_a_queue_of_the_most_songs_is_kept(replica: InMemoryReplica) -> None:
    run(state(replica).save_play_queue(ALICE, [SONG, OTHER_SONG] * (MAX_QUEUE // 2),
                                       MAX_QUEUE - 1, 0, "phone"))

    found = run(state(replica).play_queue(ALICE))

    assert len(found.songs) == MAX_QUEUE and found.current == MAX_QUEUE - 1


def test_a_queue_saved_on_a_follower_is_refused(tmp_path: Path) -> None:
    follower = InMemoryReplica(tmp_path, leadership=NoLeader())

    with pytest.raises(NotLeader):
        run(state(follower).save_play_queue(ALICE, [], None, 0, "phone"))


# bookmarks


def marks(replica: InMemoryReplica, user: str) -> list[tuple[str, int, str | None, str, str]]:
    return [(mark.song["id"], mark.position_ms, mark.comment, mark.created_at, mark.changed_at)
            for mark in run(state(replica).bookmarks(user))]


def test_a_bookmark_is_kept_replaced_and_deleted(replica: InMemoryReplica) -> None:
    run(state(replica).create_bookmark(ALICE, SONG, 61_000, "chapter 3"))
    replica.clock.advance(60)
    run(state(replica).create_bookmark(ALICE, OTHER_SONG, 5, None))
    assert marks(replica, ALICE) == [(OTHER_SONG, 5, None, iso(60), iso(60)),
                                     (SONG, 61_000, "chapter 3", iso(0), iso(0))]
    assert marks(replica, BOB) == []

    replica.clock.advance(60)
    run(state(replica).create_bookmark(ALICE, SONG, 90_000, None))  # in place of the first
    assert marks(replica, ALICE)[0] == (SONG, 90_000, None, iso(0), iso(120))

    run(state(replica).delete_bookmark(ALICE, SONG))
    assert [song for song, *_ in marks(replica, ALICE)] == [OTHER_SONG]
    replica.clock.advance(60)
    run(state(replica).create_bookmark(ALICE, SONG, 1, None))  # made anew: a new creation
    assert marks(replica, ALICE)[0] == (SONG, 1, None, iso(180), iso(180))


def test_a_bookmark_in_a_song_since_deleted_is_not_shown_and_can_be_deleted(
        replica: InMemoryReplica) -> None:
    run(state(replica).create_bookmark(ALICE, SONG, 1_000, None))
    replica.db.write([Change("songs", SONG, {"deleted": 1})])

    assert marks(replica, ALICE) == []
    with pytest.raises(NotFound):
        run(state(replica).create_bookmark(ALICE, SONG, 2_000, None))
    run(state(replica).delete_bookmark(ALICE, SONG))

    row = replica.db.get_row("song_bookmarks", bookmark_id(ALICE, SONG))
    assert row is not None and row.fields["deleted"] == 1


def test_deleting_a_bookmark_never_made_writes_nothing(replica: InMemoryReplica) -> None:
    head = replica.db.head()

    run(state(replica).delete_bookmark(ALICE, SONG))

    assert replica.db.head() == head


@pytest.mark.parametrize(("song", "position", "comment", "error"), [
    (UNKNOWN, 0, None, NotFound), ("not-a-uuid", 0, None, NotFound),
    (SONG, -1, None, BadRequest), (SONG, MAX_POSITION_MS + 1, None, BadRequest),
    (SONG, 0, "x" * (MAX_COMMENT + 1), BadRequest),
])
def test_a_bad_bookmark_is_refused_and_changes_nothing(replica: InMemoryReplica, song: str,
                                                       position: int, comment: str | None,
                                                       error: type) -> None:
    run(state(replica).create_bookmark(ALICE, SONG, 7, "kept"))
    head = replica.db.head()

    with pytest.raises(error):
        run(state(replica).create_bookmark(ALICE, song, position, comment))

    assert replica.db.head() == head
    assert marks(replica, ALICE) == [(SONG, 7, "kept", iso(0), iso(0))]


@pytest.mark.parametrize(("song", "error"), [(UNKNOWN, NotFound), ("nope", NotFound)])
def test_deleting_a_bookmark_of_no_song_is_refused(replica: InMemoryReplica, song: str,
                                                   error: type) -> None:
    head = replica.db.head()

    with pytest.raises(error):
        run(state(replica).delete_bookmark(ALICE, song))

    assert replica.db.head() == head


def test_a_bookmark_made_on_both_sides_is_one_record_and_merges_in_any_order() -> None:
    """Both sides bookmark the same song; one side deletes it, the other moves it on. Merged
    in either order: one record, each field the higher version's (side b's leader's)."""
    first, (side_a, side_b) = two_sides()
    common = first.ops_after(ZERO)
    _bookmark(side_a, ALICE, SONG, 1_000, "a", iso(100))
    _bookmark(side_b, ALICE, SONG, 2_000, None, iso(200))
    _unbookmark(side_a, ALICE, SONG)
    _bookmark(side_b, ALICE, SONG, 3_000, "b", iso(201))
    ops = [side.ops_after(first.head()) for side in (side_a, side_b)]

    rows = []
    for order in (ops[0] + ops[1], ops[1] + ops[0]):
        merged = MetadataDB(Path(":memory:"), 3)
        merged.apply_ops(common + order)
        assert merged._conn.execute("SELECT count(*) FROM song_bookmarks").fetchone()[0] == 1
        rows.append(merged.get_row("song_bookmarks", bookmark_id(ALICE, SONG)))
    assert rows[0] == rows[1]
    assert rows[0] is not None and rows[0].fields == {
        "user_id": ALICE, "song_id": SONG, "position_ms": 3_000, "comment": "b",
        "created_at": iso(200), "changed_at": iso(201), "deleted": 0}
