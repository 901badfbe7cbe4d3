"""The per-user Subsonic methods (issue 18), called as the dispatcher calls them (a Call with
the user it authenticated): annotations of elements, the album lists of per-user state,
favourites, ratings, scrobbles, now playing, playlists and users, and every refusal with
the spec's error code and nothing changed."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from distpotify import catalog
from distpotify.auth.users import User
from distpotify.store.metadata import Change
from distpotify.subsonic import annotations
from distpotify.subsonic.call import Call, Params
from distpotify.userstate import iso
from tests.helpers.api import InMemoryReplica, result_of

ALICE = User(id="6a8d4c1e-2b7f-4e3a-9c5d-0f1e2d3c4b5a", username="alice", role="listener",
             password_hash="", generation=0, created_at=iso(0))
BOB = User(id="0b9e8d7c-6f5a-4e3d-8c2b-1a0f9e8d7c6b", username="bob", role="listener",
           password_hash="", generation=0, created_at=iso(0))
SONG = "11111111-1111-4111-8111-111111111111"
OTHER_SONG = "22222222-2222-4222-8222-222222222222"
THIRD_SONG = "44444444-4444-4444-8444-444444444444"
UNKNOWN = "33333333-3333-4333-8333-333333333333"
POST = {"album_artist": None, "artist": "Björk", "album": "Post", "year": 1995}
DEBUT = {**POST, "album": "Debut", "year": 1993}
ALBUM = catalog.song_album_id(POST)
OTHER_ALBUM = catalog.song_album_id(DEBUT)
ARTIST = catalog.song_artist_id(POST)


class FakeRequest:
    """What a handler reads of a request: headers, method, uri, body; what it sets."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.set: dict[bytes, bytes] = {}
        self.method = b"GET"
        self.uri = b"/rest/x"
        self.content = None

    def getHeader(self, name: bytes | str) -> str | None:
        key = name.decode() if isinstance(name, bytes) else name
        return self.headers.get(key.lower())

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.set[name] = value


@pytest.fixture
def replica(tmp_path: Path) -> InMemoryReplica:
    replica = InMemoryReplica(tmp_path)
    replica.db.write([
        Change("songs", song_id, {**tags, "title": title, "sha256": "0" * 64, "deleted": 0,
                                  "created_at": iso(0), "track": track})
        for song_id, tags, title, track in ((SONG, POST, "Army of Me", 1),
                                            (THIRD_SONG, POST, "Hyperballad", 2),
                                            (OTHER_SONG, DEBUT, "Human Behaviour", 1))])
    replica.clock.advance(1_800_000_000)
    return replica


def make_call(replica: InMemoryReplica, user: User = ALICE,
              headers: dict[str, str] | None = None, **params: Any) -> Call:
    values = {name: value if isinstance(value, list) else [str(value)]
              for name, value in params.items()}
    server = types.SimpleNamespace(state=replica.service.userstate,
                                   library=replica.library, accounts=replica.accounts,
                                   store=replica.library.store)
    return Call(FakeRequest(headers), Params(values), user, server)


def run(coroutine: Any) -> Any:
    return result_of(Deferred.fromCoroutine(coroutine))


def star(replica: InMemoryReplica, user: User, kind: str | None, item: str) -> None:
    run(replica.service.userstate.star(user.id, [(kind, item)]))


def play(replica: InMemoryReplica, user: User, *song_ids: str) -> None:
    run(replica.service.userstate.scrobble(user.id, list(song_ids), [], True, "test"))


# annotate


def test_annotate_fills_what_the_user_did_to_each_song(replica: InMemoryReplica) -> None:
    star(replica, ALICE, "song", SONG)
    run(replica.service.userstate.set_rating(ALICE.id, OTHER_SONG, 4))
    play(replica, ALICE, SONG)
    replica.clock.advance(300)
    play(replica, ALICE, SONG)
    play(replica, BOB, OTHER_SONG)
    elements = [{"id": SONG, "title": "Army of Me"}, {"id": OTHER_SONG}, {"id": THIRD_SONG},
                {"title": "no id"}]

    run(annotations.annotate(make_call(replica), "song", elements))

    assert elements == [
        {"id": SONG, "title": "Army of Me", "starred": iso(1_800_000_000), "playCount": 2,
         "played": iso(1_800_000_300)},
        {"id": OTHER_SONG, "userRating": 4},
        {"id": THIRD_SONG},
        {"title": "no id"},
    ]


def test_annotate_albums_counts_their_songs_plays(replica: InMemoryReplica) -> None:
    star(replica, ALICE, "album", ALBUM)
    play(replica, ALICE, SONG, THIRD_SONG)
    elements = [{"id": ALBUM}, {"id": OTHER_ALBUM}]

    run(annotations.annotate(make_call(replica), "album", elements))

    when = iso(1_800_000_000)
    assert elements == [{"id": ALBUM, "starred": when, "playCount": 2, "played": when},
                        {"id": OTHER_ALBUM}]


def test_annotate_artists_shows_stars_and_ratings(replica: InMemoryReplica) -> None:
    star(replica, ALICE, "artist", ARTIST)
    run(replica.service.userstate.set_rating(ALICE.id, ARTIST, 5))
    elements = [{"id": ARTIST}]

    run(annotations.annotate(make_call(replica, BOB), "artist", elements))
    assert elements == [{"id": ARTIST}]  # bob's view: nothing of alice's
    run(annotations.annotate(make_call(replica), "artist", elements))
    assert elements == [{"id": ARTIST, "starred": iso(1_800_000_000), "userRating": 5}]


def test_annotate_reads_once_for_all_the_elements(replica: InMemoryReplica,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[object] = []
    store = replica.library.store
    original = store.run

    def counted(method: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(method)
        return original(method, *args, **kwargs)

    monkeypatch.setattr(store, "run", counted)
    elements = [{"id": f"{n:08d}-1111-4111-8111-111111111111"} for n in range(300)]

    run(annotations.annotate(make_call(replica), "song", elements))

    assert len(reads) == 1


# album lists


def test_album_lists_of_per_user_state(replica: InMemoryReplica) -> None:
    play(replica, ALICE, OTHER_SONG)
    replica.clock.advance(10)
    play(replica, ALICE, SONG, THIRD_SONG)
    star(replica, ALICE, "album", OTHER_ALBUM)
    replica.clock.advance(10)
    star(replica, ALICE, "album", ALBUM)
    call = make_call(replica)

    assert run(annotations.album_ids(call, "frequent", 10, 0)) == [ALBUM, OTHER_ALBUM]
    assert run(annotations.album_ids(call, "recent", 10, 0)) == [ALBUM, OTHER_ALBUM]
    assert run(annotations.album_ids(call, "starred", 10, 0)) == [ALBUM, OTHER_ALBUM]
    assert run(annotations.album_ids(call, "starred", 1, 1)) == [OTHER_ALBUM]
    assert run(annotations.album_ids(make_call(replica, BOB), "recent", 10, 0)) == []


def test_recent_puts_the_last_played_album_first(replica: InMemoryReplica) -> None:
    play(replica, ALICE, SONG, THIRD_SONG)
    replica.clock.advance(10)
    play(replica, ALICE, OTHER_SONG)

    assert run(annotations.album_ids(make_call(replica), "recent", 10, 0)) == [OTHER_ALBUM,
                                                                              ALBUM]
    assert run(annotations.album_ids(make_call(replica), "frequent", 10, 0)) == [ALBUM,
                                                                                OTHER_ALBUM]


def test_a_starred_album_whose_songs_are_gone_is_not_listed(replica: InMemoryReplica) -> None:
    star(replica, ALICE, "album", OTHER_ALBUM)
    replica.db.write([Change("songs", OTHER_SONG, {"deleted": 1})])

    assert run(annotations.album_ids(make_call(replica), "starred", 10, 0)) == []
