"""The per-user Subsonic methods (issue 18), called as the dispatcher calls them (a Call with
the user it authenticated): annotations of elements, the album lists of per-user state,
favourites, ratings, scrobbles, now playing, playlists, users, the play queue and bookmarks,
and every refusal with the spec's error code and nothing changed."""

from __future__ import annotations

import hashlib
import types
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import attrs
import pytest
from twisted.internet.defer import Deferred

from distpotify import catalog
from distpotify.auth.users import User
from distpotify.idempotency import IdempotencyKey, request_digest
from distpotify.store.idempotency import ENTITY
from distpotify.store.metadata import Change
from distpotify.subsonic import annotations
from distpotify.subsonic.call import Call, Params
from distpotify.subsonic.resume import NEVER
from distpotify.userstate import MAX_COMMENT, MAX_QUEUE, iso
from tests.helpers.accounts import (
    ADMIN_PASSWORD,
    LISTENER_PASSWORD,
    Session,
    call,
    first_admin,
    listener,
    login,
)
from tests.helpers.api import InMemoryReplica, result_of
from tests.helpers.subsonic import error_code, ok_xml
from tests.helpers.subsonic import rest as subsonic_rest

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


# the methods, through the /rest dispatcher of a replica with accounts


@attrs.define
class Rest:
    """A replica with accounts: root (admin), alice and bob (listeners), three songs; the
    headers of the last answer."""

    replica: InMemoryReplica
    admin: Session
    alice: Session
    bob: Session
    headers: dict[str, str] = attrs.field(factory=dict)

    def call(self, method: str, who: str = "alice", secret: str | None = None,
             key: str | None = None, **params: Any) -> dict[str, Any]:
        """``/rest/{method}.view`` as ``who`` (with ``secret``, else their password) with
        f=json, under the Idempotency-Key ``key`` if given: the subsonic-response."""
        secret = secret or (ADMIN_PASSWORD if who == "root" else LISTENER_PASSWORD)
        query = [("u", who), ("p", secret), ("v", "1.16.1"), ("f", "json")]
        if "c" not in params:
            query.append(("c", "test"))
        for name, value in params.items():
            query += [(name, str(v)) for v in (value if isinstance(value, list) else [value])]
        headers = {"Idempotency-Key": f'"{key}"'} if key else None
        answer = self.replica.call("GET", f"/rest/{method}.view?{urlencode(query)}", None,
                                   headers, signed=False, cookies=False)
        assert answer.status == 200, (answer.status, answer.body)
        found: dict[str, Any] = answer.json()["subsonic-response"]
        self.headers = answer.headers
        return found

    def ok(self, method: str, who: str = "alice", **params: Any) -> dict[str, Any]:
        found = self.call(method, who, **params)
        assert found["status"] == "ok", found
        return found

    def refused(self, method: str, code: int, who: str = "alice", **params: Any) -> None:
        """``method`` answers error ``code`` and writes nothing."""
        head = self.replica.db.head()
        found = self.call(method, who, **params)
        assert found["status"] == "failed", found
        assert found["error"]["code"] == code, found
        assert self.replica.db.head() == head


@pytest.fixture
def rest(tmp_path: Path) -> Rest:
    replica = InMemoryReplica(tmp_path, auth=True)
    admin = first_admin(replica, tmp_path)
    alice = listener(replica, admin, "alice")
    bob = listener(replica, admin, "bob")
    replica.db.write([
        Change("songs", song_id, {**tags, "title": title, "sha256": "0" * 64, "deleted": 0,
                                  "created_at": iso(0), "track": track, "duration": 200.0,
                                  "mime": "audio/mpeg", "size": 1000})
        for song_id, tags, title, track in ((SONG, POST, "Army of Me", 1),
                                            (THIRD_SONG, POST, "Hyperballad", 2),
                                            (OTHER_SONG, DEBUT, "Human Behaviour", 1))])
    replica.clock.advance(1_800_000_000)
    return Rest(replica, admin, alice, bob)


def ids(found: list[dict[str, Any]]) -> list[str]:
    return [element["id"] for element in found]


def test_star_and_unstar_songs_albums_and_artists(rest: Rest) -> None:
    rest.ok("star", id=[SONG, OTHER_SONG], albumId=ALBUM, artistId=ARTIST)
    assert "x-distpotify-version" in rest.headers

    starred = rest.ok("getStarred2")["starred2"]
    assert ids(starred["song"]) == [SONG, OTHER_SONG] or \
        set(ids(starred["song"])) == {SONG, OTHER_SONG}
    assert ids(starred["album"]) == [ALBUM]
    assert ids(starred["artist"]) == [ARTIST]
    assert all(song["starred"] == iso(1_800_000_000) for song in starred["song"])
    assert rest.ok("getStarred2", "bob")["starred2"] == {"artist": [], "album": [],
                                                         "song": []}

    rest.ok("unstar", id=SONG, albumId=ALBUM, artistId=ARTIST)

    older = rest.ok("getStarred")["starred"]
    assert ids(older["song"]) == [OTHER_SONG]
    assert older["album"] == older["artist"] == []


def test_a_star_given_an_album_as_a_directory_id_stars_the_album(rest: Rest) -> None:
    rest.ok("star", id=ALBUM)

    starred = rest.ok("getStarred")["starred"]

    assert ids(starred["album"]) == [ALBUM]
    assert starred["album"][0]["isDir"] is True


@pytest.mark.parametrize(("method", "params", "code"), [
    ("star", {}, 10), ("unstar", {}, 10), ("star", {"id": UNKNOWN}, 70),
    ("star", {"id": [SONG, UNKNOWN]}, 70), ("star", {"albumId": SONG}, 70),
    ("star", {"artistId": "not-an-id"}, 70), ("setRating", {"id": SONG}, 10),
    ("setRating", {"rating": 3}, 10), ("setRating", {"id": UNKNOWN, "rating": 3}, 70),
    ("setRating", {"id": SONG, "rating": 6}, 0), ("setRating", {"id": SONG, "rating": "x"}, 0),
    ("scrobble", {}, 10), ("scrobble", {"id": UNKNOWN}, 70),
    ("scrobble", {"id": SONG, "time": "soon"}, 0),
    ("scrobble", {"id": SONG, "submission": "maybe"}, 0),
    ("scrobble", {"id": [SONG, OTHER_SONG], "time": "1700000000000"}, 0),
])
def test_bad_favourites_ratings_and_scrobbles_are_refused(rest: Rest, method: str,
                                                          params: dict[str, Any],
                                                          code: int) -> None:
    rest.refused(method, code, **params)


def test_ratings_show_on_elements_and_0_removes_one(rest: Rest) -> None:
    rest.ok("setRating", id=SONG, rating=4)
    rest.ok("setRating", id=ALBUM, rating=5)

    album = rest.ok("getAlbum", id=ALBUM)["album"]
    assert album["userRating"] == 5
    assert {s["id"]: s.get("userRating") for s in album["song"]} == {SONG: 4,
                                                                      THIRD_SONG: None}
    assert ids(rest.ok("getAlbumList2", type="highest")["albumList2"]["album"]) == [ALBUM]

    rest.ok("setRating", id=SONG, rating=0)
    assert "userRating" not in rest.ok("getSong", id=SONG)["song"]


def test_scrobbles_count_plays_and_feed_the_album_lists(rest: Rest) -> None:
    rest.ok("scrobble", id=OTHER_SONG)
    rest.replica.clock.advance(10)
    rest.ok("scrobble", id=[SONG, THIRD_SONG],
            time=[str(1_800_000_005_000), str(1_800_000_006_000)])

    song = rest.ok("getSong", id=SONG)["song"]
    assert song["playCount"] == 1 and song["played"] == iso(1_800_000_005)
    frequent = rest.ok("getAlbumList2", type="frequent")["albumList2"]["album"]
    assert ids(frequent) == [ALBUM, OTHER_ALBUM]
    assert frequent[0]["playCount"] == 2
    recent = rest.ok("getAlbumList", type="recent")["albumList"]["album"]
    assert ids(recent) == [ALBUM, OTHER_ALBUM]  # its plays were sent with later times
    assert rest.ok("getAlbumList2", "bob", type="frequent")["albumList2"] == {"album": []}


def test_now_playing_is_shown_to_everyone(rest: Rest) -> None:
    rest.ok("scrobble", id=SONG, submission="false", c="phone")

    entries = rest.ok("getNowPlaying", "bob")["nowPlaying"]["entry"]

    assert [(e["id"], e["username"], e["playerName"], e["minutesAgo"]) for e in entries] == [
        (SONG, "alice", "phone", 0)]
    assert isinstance(entries[0]["playerId"], int)
    assert rest.ok("getSong", id=SONG)["song"].get("playCount") is None  # not a play
    rest.replica.clock.advance(11 * 60)
    assert rest.ok("getNowPlaying", "bob")["nowPlaying"].get("entry", []) == []


# playlists


def test_create_get_update_and_delete_a_playlist(rest: Rest) -> None:
    made = rest.ok("createPlaylist", name="Mix", songId=[SONG, OTHER_SONG])["playlist"]
    assert made["name"] == "Mix" and made["owner"] == "alice" and made["public"] is False
    assert made["songCount"] == 2 and made["duration"] == 400
    assert ids(made["entry"]) == [SONG, OTHER_SONG]

    rest.ok("updatePlaylist", playlistId=made["id"], name="Best", comment="for runs",
            public="true", songIdToAdd=THIRD_SONG, songIndexToRemove=0)

    shown = rest.ok("getPlaylist", id=made["id"])["playlist"]
    assert (shown["name"], shown["comment"], shown["public"]) == ("Best", "for runs", True)
    assert ids(shown["entry"]) == [OTHER_SONG, THIRD_SONG]
    assert ids(rest.ok("getPlaylists", "bob")["playlists"]["playlist"]) == [made["id"]]
    same = rest.replica.get(f"/playlists/{made['id']}").json()["playlist"]  # the JSON API's
    assert [item["song_id"] for item in same["items"]] == [OTHER_SONG, THIRD_SONG]

    rest.ok("deletePlaylist", id=made["id"])

    assert rest.ok("getPlaylists")["playlists"].get("playlist", []) == []


def test_a_listener_naming_themself_in_another_case_gets_their_playlists(rest: Rest) -> None:
    # Names compare folded, as at login: the name a user typed ("ALICE") is theirs.
    made = rest.ok("createPlaylist", name="Mine", songId=SONG)["playlist"]

    shown = rest.ok("getPlaylists", username="ALICE")["playlists"]["playlist"]

    assert made["id"] in ids(shown)
    rest.refused("getPlaylists", 50, username="root")  # another's view stays an admin's


def test_a_playlists_changed_moves_with_every_edit(rest: Rest) -> None:
    """Clients re-sync a playlist when its ``changed`` moves: a rename, a removal (through
    Subsonic or the JSON API) and an addition each move it forward, never back."""
    made = rest.ok("createPlaylist", name="Mix", songId=[SONG, OTHER_SONG])["playlist"]
    seen = [made["changed"]]

    def edited(edit: Any) -> None:
        rest.replica.clock.advance(60)
        edit()
        changed = rest.ok("getPlaylist", id=made["id"])["playlist"]["changed"]
        assert changed > seen[-1], (changed, seen)
        seen.append(changed)

    edited(lambda: rest.ok("updatePlaylist", playlistId=made["id"], name="Renamed"))
    edited(lambda: rest.ok("updatePlaylist", playlistId=made["id"], songIndexToRemove=1))
    item = rest.replica.get(f"/playlists/{made['id']}").json()["playlist"]["items"][0]["id"]
    edited(lambda: rest.replica.call("DELETE", f"/playlists/{made['id']}/items/{item}"))
    edited(lambda: rest.replica.call("PATCH", f"/playlists/{made['id']}",
                                     b'{"public": true}', {"Content-Type": "application/json"}))
    edited(lambda: rest.ok("updatePlaylist", playlistId=made["id"], songIdToAdd=THIRD_SONG))
    assert rest.ok("getPlaylists")["playlists"]["playlist"][0]["changed"] == seen[-1]


def test_create_with_a_playlist_id_replaces_its_songs(rest: Rest) -> None:
    made = rest.ok("createPlaylist", name="Mix", songId=[SONG, OTHER_SONG])["playlist"]

    again = rest.ok("createPlaylist", playlistId=made["id"], songId=[THIRD_SONG])["playlist"]

    assert again["id"] == made["id"] and again["name"] == "Mix"
    assert ids(again["entry"]) == [THIRD_SONG]


def test_private_playlists_are_the_owners_and_admins(rest: Rest) -> None:
    mine = rest.ok("createPlaylist", name="Mine", songId=SONG)["playlist"]["id"]

    assert rest.ok("getPlaylists", "bob")["playlists"].get("playlist", []) == []
    rest.refused("getPlaylist", 50, "bob", id=mine)
    assert ids(rest.ok("getPlaylists", "root")["playlists"]["playlist"]) == [mine]
    listed = rest.ok("getPlaylists", "root", username="bob")["playlists"]
    assert listed.get("playlist", []) == []
    rest.refused("getPlaylists", 50, "bob", username="alice")
    rest.refused("getPlaylists", 70, "root", username="nobody")
    rest.ok("updatePlaylist", "root", playlistId=mine, name="Admin's now")


@pytest.mark.parametrize(("method", "params", "code"), [
    ("createPlaylist", {}, 10), ("createPlaylist", {"songId": SONG}, 10),
    ("createPlaylist", {"name": "x", "songId": UNKNOWN}, 70),
    ("createPlaylist", {"playlistId": UNKNOWN}, 70), ("getPlaylist", {}, 10),
    ("getPlaylist", {"id": UNKNOWN}, 70), ("getPlaylist", {"id": "nope"}, 70),
    ("updatePlaylist", {}, 10), ("updatePlaylist", {"playlistId": UNKNOWN}, 70),
    ("deletePlaylist", {}, 10), ("deletePlaylist", {"id": UNKNOWN}, 70),
])
def test_bad_playlist_calls_are_refused(rest: Rest, method: str, params: dict[str, Any],
                                        code: int) -> None:
    rest.refused(method, code, **params)


@pytest.mark.parametrize(("method", "params", "code"), [
    ("updatePlaylist", {"name": "taken over"}, 50),
    ("updatePlaylist", {"songIdToAdd": OTHER_SONG}, 50),
    ("createPlaylist", {"songId": OTHER_SONG}, 50),
    ("deletePlaylist", {}, 50),
    ("updatePlaylist", {"songIndexToRemove": 5, "who": "alice"}, 0),
    ("updatePlaylist", {"songIdToAdd": UNKNOWN, "who": "alice"}, 70),
    ("updatePlaylist", {"songIndexToRemove": "-1", "who": "alice"}, 0),
])
def test_another_users_playlist_is_refused_and_unchanged(rest: Rest, method: str,
                                                         params: dict[str, Any],
                                                         code: int) -> None:
    shared = rest.ok("createPlaylist", name="Shared", songId=SONG)["playlist"]["id"]
    rest.ok("updatePlaylist", playlistId=shared, public="true")
    who = params.pop("who", "bob")
    key = "id" if method == "deletePlaylist" else "playlistId"

    rest.refused(method, code, who, **{key: shared, **params})

    assert ids(rest.ok("getPlaylist", id=shared)["playlist"]["entry"]) == [SONG]


# users


def test_get_user_shows_ones_own_roles(rest: Rest) -> None:
    alice = rest.ok("getUser", username="alice")["user"]
    root = rest.ok("getUser", "root", username="alice")["user"]

    assert alice == root
    assert alice["username"] == "alice" and alice["adminRole"] is False
    assert alice["streamRole"] is True and alice["folder"] == [1]
    assert rest.ok("getUser", "root", username="root")["user"]["adminRole"] is True


def test_get_users_is_for_admins(rest: Rest) -> None:
    users = rest.ok("getUsers", "root")["users"]["user"]

    assert sorted(u["username"] for u in users) == ["alice", "bob", "root"]
    rest.refused("getUsers", 50)


@pytest.mark.parametrize(("who", "params", "code"), [
    ("alice", {}, 10), ("alice", {"username": "bob"}, 50), ("root", {"username": "nobody"}, 70),
])
def test_get_user_refusals(rest: Rest, who: str, params: dict[str, Any], code: int) -> None:
    rest.refused("getUser", code, who, **params)


def test_change_password_own_and_by_an_admin(rest: Rest) -> None:
    new = "a-new-password"
    rest.ok("changePassword", username="alice", password="enc:" + new.encode().hex())
    assert rest.call("ping", "alice")["error"]["code"] == 40
    assert rest.call("ping", "alice", secret=new)["status"] == "ok"
    accounts = rest.replica.accounts
    alice = accounts.directory.by_name("alice")
    assert alice is not None and accounts.subsonic_password(alice) == new

    rest.ok("changePassword", "root", username="bob", password="bobs-new-password")
    assert rest.call("ping", "bob", secret="bobs-new-password")["status"] == "ok"


@pytest.mark.parametrize(("who", "params", "code"), [
    ("alice", {"username": "alice"}, 10), ("alice", {"password": "long-enough"}, 10),
    ("alice", {"username": "bob", "password": "long-enough"}, 50),
    ("root", {"username": "nobody", "password": "long-enough"}, 70),
    ("alice", {"username": "alice", "password": "short"}, 0),
    ("alice", {"username": "alice", "password": "enc:zz"}, 0),
])
def test_change_password_refusals(rest: Rest, who: str, params: dict[str, Any],
                                  code: int) -> None:
    rest.refused("changePassword", code, who, **params)



def test_a_keyed_password_change_sent_again_is_answered_its_first_outcome(rest: Rest) -> None:
    """An admin's changePassword under one key, sent again (the proxy's retry after an
    unknown outcome): the stored outcome answers, the sessions end once, nothing is written;
    the digest leaves the new password out, so the same key with another password is the
    same write, and no SHA-256 of a password is kept."""
    key_header = {"Idempotency-Key": '"bobs-password"'}

    def change(password: str, username: str = "bob") -> tuple[dict[str, Any], dict[str, str]]:
        query = urlencode({"u": "root", "p": ADMIN_PASSWORD, "v": "1.16.1", "c": "test",
                           "f": "json", "username": username, "password": password})
        answer = rest.replica.call("GET", f"/rest/changePassword.view?{query}", None,
                                   key_header, signed=False, cookies=False)
        return answer.json()["subsonic-response"], answer.headers

    def bob() -> User:
        found = rest.replica.accounts.directory.by_name("bob")
        assert found is not None
        return found

    generation = bob().generation
    first, headers = change("bobs-new-password")
    assert first["status"] == "ok" and "idempotent-replayed" not in headers
    assert bob().generation == generation + 1
    head = rest.replica.db.head()

    for password in ("bobs-new-password", "another-password"):
        again, headers = change(password)
        assert again["status"] == "ok" and headers.get("idempotent-replayed") == "true"
        assert rest.replica.db.head() == head and bob().generation == generation + 1
    assert rest.call("ping", "bob", secret="bobs-new-password")["status"] == "ok"
    assert rest.call("ping", "bob", secret="another-password")["error"]["code"] == 40
    # The same key for another account is another write: refused (the API's 422), alice
    # untouched.
    other, _ = change("alices-new-password", "alice")
    assert other["status"] == "failed" and other["error"]["code"] == 0, other
    assert "different request" in other["error"]["message"]
    assert rest.replica.db.head() == head
    assert rest.call("ping", "alice", secret="alices-new-password")["error"]["code"] == 40
    assert rest.call("ping", "alice")["status"] == "ok"
    row = rest.replica.db.get_row(ENTITY, IdempotencyKey(f"{rest.admin.id} bobs-password", "").id)
    assert row is not None
    kept = "/rest/changePassword.view?" + urlencode({"c": "test", "f": "json",
                                                     "username": "bob", "v": "1.16.1"})
    assert row.fields["request"] == request_digest(b"SUBSONIC", kept.encode(), None)

def test_an_api_key_made_on_the_account_api_works_for_rest(rest: Rest) -> None:
    session = login(rest.replica, "alice", LISTENER_PASSWORD)  # the clock moved on since
    made = call(rest.replica, "POST", "/auth/apikeys", {"name": "phone"}, session.bearer)
    assert made.status == 201, made.body
    key = made.json()["apiKey"]

    answer = rest.replica.call("GET", f"/rest/getUser?apiKey={key}&username=alice&f=json",
                               signed=False, cookies=False)

    assert answer.json()["subsonic-response"]["user"]["username"] == "alice"


def test_an_api_key_cannot_change_a_password(rest: Rest) -> None:
    # A key leaked from an app must not become the account: a password it set would log in.
    session = login(rest.replica, "alice", LISTENER_PASSWORD)
    made = call(rest.replica, "POST", "/auth/apikeys", {"name": "phone"}, session.bearer)
    key = made.json()["apiKey"]

    answer = rest.replica.call(
        "GET", f"/rest/changePassword?apiKey={key}&username=alice&password=taken-over-now",
        signed=False, cookies=False)

    assert error_code(answer) == 50
    assert login(rest.replica, "alice", LISTENER_PASSWORD).bearer  # the password stands
    refused = call(rest.replica, "POST", "/auth/login",
                   {"username": "alice", "password": "taken-over-now"})
    assert refused.status == 401


def test_a_disabled_users_api_key_and_password_are_refused_and_change_nothing(
        rest: Rest) -> None:
    session = login(rest.replica, "alice", LISTENER_PASSWORD)
    made = call(rest.replica, "POST", "/auth/apikeys", {"name": "phone"}, session.bearer)
    assert made.status == 201, made.body
    key = made.json()["apiKey"]
    rest.ok("star", id=SONG)  # u + p proven once: remembered by the authenticator
    assert rest.ok("getStarred2")["starred2"]["song"][0]["id"] == SONG

    admin = login(rest.replica, "root", ADMIN_PASSWORD)  # the clock moved on since
    disabled = call(rest.replica, "PATCH", f"/users/{rest.alice.id}", {"disabled": True},
                    admin.bearer)
    assert disabled.status == 200, disabled.body

    head = rest.replica.db.head()
    for method, params in (("star", {"id": OTHER_SONG}), ("unstar", {"id": SONG}),
                           ("getStarred2", {}), ("ping", {})):
        query = urlencode({"apiKey": key, "f": "json", "c": "x", **params})
        found = rest.replica.call("GET", f"/rest/{method}.view?{query}", signed=False,
                                  cookies=False).json()["subsonic-response"]
        assert found["status"] == "failed" and found["error"]["code"] in (44, 50), found
        rest.refused(method, 40, **params)
    assert rest.replica.db.head() == head


def test_another_users_stars_ratings_and_plays_are_never_shown(rest: Rest) -> None:
    rest.ok("star", id=[SONG, ALBUM, ARTIST])
    rest.ok("setRating", id=SONG, rating=5)
    rest.ok("setRating", id=ALBUM, rating=4)
    rest.ok("scrobble", id=SONG)

    assert rest.ok("getStarred", "bob")["starred"] == {"artist": [], "album": [], "song": []}
    assert rest.ok("getStarred2", "bob")["starred2"] == {"artist": [], "album": [],
                                                         "song": []}
    for kind in ("starred", "highest", "frequent", "recent"):
        assert rest.ok("getAlbumList2", "bob", type=kind)["albumList2"] == {"album": []}
        assert rest.ok("getAlbumList", "bob", type=kind)["albumList"] == {"album": []}
    shown = [rest.ok("getSong", "bob", id=SONG)["song"], rest.ok("getAlbum", "bob", id=ALBUM)[
        "album"], rest.ok("getArtist", "bob", id=ARTIST)["artist"]]
    shown += rest.ok("getAlbum", "bob", id=ALBUM)["album"]["song"]
    shown += rest.ok("search3", "bob", query="")["searchResult3"]["song"]
    for element in shown:
        assert not {"starred", "userRating", "playCount", "played"} & set(element), element
    # bob's unstar and rating of the same items are his own: alice's stay
    rest.ok("unstar", "bob", id=SONG, albumId=ALBUM, artistId=ARTIST)
    rest.ok("setRating", "bob", id=SONG, rating=0)
    song = rest.ok("getSong", id=SONG)["song"]
    assert (song["starred"], song["userRating"], song["playCount"]) == (
        iso(1_800_000_000), 5, 1)
    assert ids(rest.ok("getStarred2")["starred2"]["album"]) == [ALBUM]


@pytest.mark.parametrize(("method", "params"), [
    ("getPlaylist", {}), ("updatePlaylist", {"name": "taken over"}),
    ("updatePlaylist", {"public": "true"}), ("updatePlaylist", {"songIndexToRemove": 0}),
    ("updatePlaylist", {"songIdToAdd": OTHER_SONG}), ("createPlaylist", {"songId": OTHER_SONG}),
    ("createPlaylist", {"name": "x"}), ("deletePlaylist", {}),
])
def test_another_users_private_playlist_is_refused_and_unchanged(
        rest: Rest, method: str, params: dict[str, Any]) -> None:
    private = rest.ok("createPlaylist", name="Private", songId=SONG)["playlist"]
    key = "id" if method in ("getPlaylist", "deletePlaylist") else "playlistId"

    found = rest.call(method, "bob", **{key: private["id"], **params})

    assert found["status"] == "failed" and found["error"]["code"] in (50, 70), found
    assert "playlist" not in found
    assert rest.ok("getPlaylist", id=private["id"])["playlist"] == private
    assert rest.ok("getPlaylists", "bob")["playlists"].get("playlist", []) == []


def test_a_form_posts_values_count_once(rest: Rest) -> None:
    # twisted.web parses a form body into request.args itself unless its Site says not to
    # (this test's stub does): the dispatcher reads the query and the body on its own.
    body = urlencode({"u": "alice", "p": LISTENER_PASSWORD, "name": "Form",
                      "songId": SONG}).encode()
    answer = rest.replica.call("POST", "/rest/createPlaylist.view?f=json", body,
                               {"Content-Type": "application/x-www-form-urlencoded"},
                               signed=False, cookies=False)
    made = answer.json()["subsonic-response"]

    assert made["status"] == "ok", made
    assert ids(made["playlist"]["entry"]) == [SONG]


def test_a_keyed_write_is_known_by_what_it_does_not_by_the_credentials_it_carries(
        rest: Rest) -> None:
    """The digest a key's outcome is stored with leaves the credentials out: the same write
    sent with a password, a token or in a form body is the same write, and no SHA-256 of
    the password lands in every replica's idempotency table."""
    key = {"Idempotency-Key": '"star-once"'}

    def star(query: str, body: bytes | None = None) -> Any:
        headers = dict(key)
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        answer = rest.replica.call("POST" if body is not None else "GET",
                                   f"/rest/star.view?{query}", body, headers, signed=False,
                                   cookies=False)
        return answer.json()["subsonic-response"], answer.headers

    first, headers = star(urlencode({"u": "alice", "p": LISTENER_PASSWORD, "id": SONG,
                                     "f": "json"}))
    assert first["status"] == "ok" and "idempotent-replayed" not in headers
    salt = "a1b2c3"
    token = hashlib.md5((LISTENER_PASSWORD + salt).encode(), usedforsecurity=False).hexdigest()
    again, headers = star(urlencode({"u": "alice", "t": token, "s": salt, "id": SONG,
                                     "f": "json"}))
    assert again["status"] == "ok" and headers.get("idempotent-replayed") == "true"
    form, headers = star("f=json", urlencode({"u": "alice", "p": LISTENER_PASSWORD,
                                              "id": SONG}).encode())
    assert form["status"] == "ok" and headers.get("idempotent-replayed") == "true", form["error"]

    other, _ = star(urlencode({"u": "alice", "p": LISTENER_PASSWORD, "id": OTHER_SONG,
                               "f": "json"}))
    assert other["status"] == "failed" and other["error"]["code"] == 0  # another write
    row = rest.replica.db.get_row(ENTITY, IdempotencyKey(f"{rest.alice.id} star-once", "").id)
    assert row is not None
    sent = "/rest/star.view?" + urlencode({"u": "alice", "p": LISTENER_PASSWORD, "id": SONG,
                                           "f": "json"})
    kept = "/rest/star.view?" + urlencode({"f": "json", "id": SONG})
    assert row.fields["request"] == request_digest(b"SUBSONIC", kept.encode(), None)
    assert row.fields["request"] != request_digest(b"GET", sent.encode(), None)


# the play queue


def test_a_saved_queue_is_read_back_by_id_and_by_index(rest: Rest) -> None:
    rest.ok("savePlayQueue", id=[SONG, OTHER_SONG, SONG], current=OTHER_SONG,
            position=61_500, c="phone")
    assert "x-distpotify-version" in rest.headers

    queue = rest.ok("getPlayQueue")["playQueue"]
    assert {k: v for k, v in queue.items() if k != "entry"} == {
        "current": OTHER_SONG, "position": 61_500, "username": "alice",
        "changed": iso(1_800_000_000), "changedBy": "phone"}
    assert ids(queue["entry"]) == [SONG, OTHER_SONG, SONG]  # a song may come twice
    assert queue["entry"][1]["title"] == "Human Behaviour"
    by_index = rest.ok("getPlayQueueByIndex")["playQueueByIndex"]
    assert by_index["currentIndex"] == 1 and by_index["entry"] == queue["entry"]


def test_a_song_that_comes_twice_is_current_at_its_own_place_by_index(rest: Rest) -> None:
    rest.ok("savePlayQueueByIndex", id=[SONG, OTHER_SONG, SONG], currentIndex=2)

    assert rest.ok("getPlayQueueByIndex")["playQueueByIndex"]["currentIndex"] == 2
    queue = rest.ok("getPlayQueue")["playQueue"]
    assert queue["current"] == SONG and queue["position"] == 0  # none given: 0

    rest.ok("savePlayQueue", id=[SONG, OTHER_SONG, SONG], current=SONG)  # by id: its first
    assert rest.ok("getPlayQueueByIndex")["playQueueByIndex"]["currentIndex"] == 0


@pytest.mark.parametrize("method", ["savePlayQueue", "savePlayQueueByIndex"])
def test_a_save_without_songs_clears_the_queue(rest: Rest, method: str) -> None:
    rest.ok("savePlayQueue", id=[SONG], current=SONG, position=5)
    rest.replica.clock.advance(60)

    rest.ok(method, c="car")

    for name, element in (("getPlayQueue", "playQueue"),
                          ("getPlayQueueByIndex", "playQueueByIndex")):
        assert rest.ok(name)[element] == {"username": "alice",
                                          "changed": iso(1_800_000_060), "changedBy": "car"}


def test_a_save_of_one_empty_id_clears_the_queue_too(rest: Rest) -> None:
    rest.ok("savePlayQueue", id=[SONG], current=SONG, position=5)

    rest.ok("savePlayQueueByIndex", id="", c="car")

    assert "entry" not in rest.ok("getPlayQueue")["playQueue"]


def test_a_queue_never_saved_is_no_queue_and_another_users_is_never_shown(rest: Rest) -> None:
    rest.ok("savePlayQueue", id=[SONG], current=SONG)

    assert rest.ok("getPlayQueue", "bob")["playQueue"] == {
        "username": "bob", "changed": NEVER, "changedBy": ""}
    assert rest.ok("getPlayQueueByIndex", "bob")["playQueueByIndex"] == {
        "username": "bob", "changed": NEVER, "changedBy": ""}


def test_a_save_without_current_plays_the_first_song(rest: Rest) -> None:
    """Subsonic 1.12-1.16 left ``current`` optional, and apps written against it send none."""
    rest.ok("savePlayQueue", id=[OTHER_SONG, SONG], position=3_000)

    queue = rest.ok("getPlayQueue")["playQueue"]
    assert (queue["current"], queue["position"]) == (OTHER_SONG, 3_000)
    assert rest.ok("getPlayQueueByIndex")["playQueueByIndex"]["currentIndex"] == 0


def test_songs_deleted_since_are_left_out_and_the_current_one_follows(rest: Rest) -> None:
    rest.ok("savePlayQueueByIndex", id=[SONG, THIRD_SONG, SONG, OTHER_SONG], currentIndex=2,
            position=9_000)

    def shown() -> tuple[list[str], int | None, int]:
        queue = rest.ok("getPlayQueueByIndex")["playQueueByIndex"]
        return ids(queue.get("entry", [])), queue.get("currentIndex"), queue.get("position")

    rest.replica.db.write([Change("songs", THIRD_SONG, {"deleted": 1})])
    assert shown() == ([SONG, SONG, OTHER_SONG], 1, 9_000)  # the same entry, one place on
    rest.replica.db.write([Change("songs", SONG, {"deleted": 1})])
    assert shown() == ([OTHER_SONG], 0, 0)  # gone: the next one, from its start
    assert rest.ok("getPlayQueue")["playQueue"]["current"] == OTHER_SONG
    rest.replica.db.write([Change("songs", OTHER_SONG, {"deleted": 1})])
    assert shown() == ([], None, None)  # nothing left: no queue


@pytest.mark.parametrize(("method", "params", "code"), [
    ("savePlayQueue", {"id": UNKNOWN, "current": UNKNOWN}, 70),
    ("savePlayQueue", {"id": [SONG, UNKNOWN], "current": SONG}, 70),
    ("savePlayQueue", {"id": [SONG, "not-an-id"], "current": SONG}, 70),
    ("savePlayQueue", {"id": SONG, "current": OTHER_SONG}, 10),
    ("savePlayQueue", {"id": SONG, "current": SONG, "position": -1}, 0),
    ("savePlayQueue", {"id": SONG, "current": SONG, "position": "1.5"}, 0),
    ("savePlayQueue", {"id": SONG, "current": SONG, "position": "soon"}, 0),
    ("savePlayQueue", {"id": SONG, "current": SONG, "position": 2**53}, 0),
    ("savePlayQueueByIndex", {"id": SONG}, 10),
    ("savePlayQueueByIndex", {"id": SONG, "currentIndex": 1}, 10),
    ("savePlayQueueByIndex", {"id": SONG, "currentIndex": -1}, 10),
    ("savePlayQueueByIndex", {"id": SONG, "currentIndex": "first"}, 10),
    ("savePlayQueueByIndex", {"id": [SONG, UNKNOWN], "currentIndex": 0}, 70),
    ("savePlayQueueByIndex", {"id": SONG, "currentIndex": 0, "position": -5}, 0),
    ("savePlayQueueByIndex", {"id": [SONG, "", OTHER_SONG], "currentIndex": 2}, 10),
    ("savePlayQueue", {"id": SONG, "current": SONG, "position": "+5"}, 0),
    ("savePlayQueue", {"id": SONG, "current": SONG, "position": "5_000"}, 0),
    ("savePlayQueue", {"id": SONG, "current": SONG, "position": " 5"}, 0),
])
def test_a_bad_queue_is_refused_and_changes_nothing(rest: Rest, method: str,
                                                    params: dict[str, Any], code: int) -> None:
    rest.ok("savePlayQueue", id=[OTHER_SONG], current=OTHER_SONG, position=7)
    before = rest.ok("getPlayQueue")["playQueue"]

    rest.refused(method, code, **params)

    assert rest.ok("getPlayQueue")["playQueue"] == before


def test_a_queue_of_the_most_songs_is_saved_and_one_more_is_refused(rest: Rest) -> None:
    most = [SONG, OTHER_SONG] * (MAX_QUEUE // 2)
    body = urlencode([("u", "alice"), ("p", LISTENER_PASSWORD), ("f", "json"),
                      ("currentIndex", str(MAX_QUEUE - 1))] + [("id", i) for i in most])

    def save(form: str) -> dict[str, Any]:
        answer = rest.replica.call("POST", "/rest/savePlayQueueByIndex.view", form.encode(),
                                   {"Content-Type": "application/x-www-form-urlencoded"},
                                   signed=False, cookies=False)
        found: dict[str, Any] = answer.json()["subsonic-response"]
        return found

    assert save(body)["status"] == "ok"
    head = rest.replica.db.head()
    refused = save(f"{body}&id={SONG}")
    assert (refused["status"], refused["error"]["code"]) == ("failed", 0)
    assert f"at most {MAX_QUEUE} songs" in refused["error"]["message"]
    assert rest.replica.db.head() == head
    queue = rest.ok("getPlayQueueByIndex")["playQueueByIndex"]
    assert len(queue["entry"]) == MAX_QUEUE and queue["currentIndex"] == MAX_QUEUE - 1


def test_a_keyed_save_sent_again_is_one_write(rest: Rest) -> None:
    """The proxy's retry of a save whose answer was lost: answered the stored outcome, nothing
    written again (a later save's queue is not overwritten by the retry)."""
    def save() -> None:
        rest.ok("savePlayQueue", key="queue-once", id=[SONG, OTHER_SONG], current=OTHER_SONG,
                position=1000)

    save()
    assert "idempotent-replayed" not in rest.headers
    rest.ok("savePlayQueue", id=[THIRD_SONG], current=THIRD_SONG)
    head = rest.replica.db.head()

    save()

    assert rest.headers.get("idempotent-replayed") == "true"
    assert rest.replica.db.head() == head
    assert ids(rest.ok("getPlayQueue")["playQueue"]["entry"]) == [THIRD_SONG]


# bookmarks


def test_bookmarks_are_made_shown_moved_and_deleted(rest: Rest) -> None:
    rest.ok("createBookmark", id=SONG, position=61_000, comment="chapter 3")
    assert "x-distpotify-version" in rest.headers
    rest.replica.clock.advance(60)
    rest.ok("createBookmark", id=OTHER_SONG, position=5)

    found = rest.ok("getBookmarks")["bookmarks"]["bookmark"]
    assert [{k: v for k, v in mark.items() if k != "entry"} for mark in found] == [
        {"position": 5, "username": "alice", "created": iso(1_800_000_060),
         "changed": iso(1_800_000_060)},
        {"position": 61_000, "username": "alice", "comment": "chapter 3",
         "created": iso(1_800_000_000), "changed": iso(1_800_000_000)}]
    assert [(m["entry"]["id"], m["entry"]["bookmarkPosition"]) for m in found] == [
        (OTHER_SONG, 5), (SONG, 61_000)]
    assert found[1]["entry"]["title"] == "Army of Me"
    assert rest.ok("getBookmarks", "bob")["bookmarks"] == {"bookmark": []}

    rest.ok("createBookmark", id=SONG, position=90_000)  # in its place: one per song
    rest.ok("deleteBookmark", id=OTHER_SONG)

    (only,) = rest.ok("getBookmarks")["bookmarks"]["bookmark"]
    assert (only["entry"]["id"], only["position"], only["created"]) == (
        SONG, 90_000, iso(1_800_000_000))
    assert "comment" not in only  # replaced whole: no comment given this time


def test_a_bookmark_in_a_song_deleted_since_is_left_out(rest: Rest) -> None:
    rest.ok("createBookmark", id=SONG, position=1)
    rest.ok("createBookmark", id=OTHER_SONG, position=2)

    rest.replica.db.write([Change("songs", SONG, {"deleted": 1})])

    found = rest.ok("getBookmarks")["bookmarks"]["bookmark"]
    assert [mark["entry"]["id"] for mark in found] == [OTHER_SONG]
    rest.ok("deleteBookmark", id=SONG)  # still its own to delete


@pytest.mark.parametrize(("method", "params", "code"), [
    ("createBookmark", {}, 10), ("createBookmark", {"id": SONG}, 10),
    ("createBookmark", {"position": 5}, 10),
    ("createBookmark", {"id": UNKNOWN, "position": 5}, 70),
    ("createBookmark", {"id": "not-an-id", "position": 5}, 70),
    ("createBookmark", {"id": SONG, "position": -1}, 0),
    ("createBookmark", {"id": SONG, "position": "1.5"}, 0),
    ("createBookmark", {"id": SONG, "position": 5, "comment": "x" * (MAX_COMMENT + 1)}, 0),
    ("deleteBookmark", {}, 10), ("deleteBookmark", {"id": UNKNOWN}, 70),
])
def test_a_bad_bookmark_call_is_refused_and_changes_nothing(rest: Rest, method: str,
                                                            params: dict[str, Any],
                                                            code: int) -> None:
    rest.ok("createBookmark", id=SONG, position=7, comment="kept")
    before = rest.ok("getBookmarks")["bookmarks"]

    rest.refused(method, code, **params)

    assert rest.ok("getBookmarks")["bookmarks"] == before


def test_a_keyed_bookmark_sent_again_is_one_write(rest: Rest) -> None:
    rest.ok("createBookmark", key="mark-once", id=SONG, position=1000)
    assert "idempotent-replayed" not in rest.headers
    rest.ok("createBookmark", id=SONG, position=2000)
    head = rest.replica.db.head()

    rest.ok("createBookmark", key="mark-once", id=SONG, position=1000)

    assert rest.headers.get("idempotent-replayed") == "true"
    assert rest.replica.db.head() == head
    assert rest.ok("getBookmarks")["bookmarks"]["bookmark"][0]["position"] == 2000


# every answer as the schema says (XML, validated against tests/data/subsonic-1.16.1.xsd)


def test_every_per_user_answer_is_valid_xml(rest: Rest) -> None:
    who = {"u": "alice", "p": LISTENER_PASSWORD, "v": "1.16.1", "c": "phone"}
    admin = {**who, "u": "root", "p": ADMIN_PASSWORD}
    rest.ok("star", id=[SONG, ALBUM, ARTIST])
    rest.ok("setRating", id=SONG, rating=3)
    rest.ok("scrobble", id=SONG)
    rest.ok("scrobble", id=OTHER_SONG, submission="false", c="car")
    playlist = rest.ok("createPlaylist", name="Mix", songId=[SONG, THIRD_SONG])["playlist"]
    rest.ok("updatePlaylist", playlistId=playlist["id"], comment="<&\">")
    calls: list[tuple[str, dict[str, Any]]] = [
        ("getStarred", who), ("getStarred2", who), ("getNowPlaying", who),
        ("getPlaylists", who), ("getPlaylist", {**who, "id": playlist["id"]}),
        ("createPlaylist", {**who, "name": "Other", "songId": OTHER_SONG}),
        ("updatePlaylist", {**who, "playlistId": playlist["id"], "name": "Renamed"}),
        ("star", {**who, "albumId": ALBUM}), ("unstar", {**who, "id": SONG}),
        ("setRating", {**who, "id": ALBUM, "rating": 5}), ("scrobble", {**who, "id": SONG}),
        ("getUser", {**who, "username": "alice"}), ("getUsers", admin),
        ("getAlbumList2", {**who, "type": "frequent"}),
        ("getAlbumList", {**who, "type": "starred"}),
        ("deletePlaylist", {**who, "id": playlist["id"]}),
        ("changePassword", {**who, "username": "alice", "password": LISTENER_PASSWORD}),
        ("getPlayQueue", who), ("getPlayQueueByIndex", who),
        ("savePlayQueue", {**who, "id": [SONG, OTHER_SONG], "current": SONG,
                           "position": 1500}),
        ("getPlayQueue", who), ("getPlayQueueByIndex", who),
        ("savePlayQueueByIndex", {**who, "id": [SONG, SONG], "currentIndex": 1}),
        ("savePlayQueue", who),
        ("getBookmarks", who), ("createBookmark", {**who, "id": SONG, "position": 5}),
        ("createBookmark", {**who, "id": OTHER_SONG, "position": 9, "comment": "<&\">"}),
        ("getBookmarks", who), ("deleteBookmark", {**who, "id": SONG}),
    ]

    for method, params in calls:
        ok_xml(subsonic_rest(rest.replica, method, **params))


@pytest.mark.parametrize(("method", "params", "code"), [
    ("star", {}, 10), ("star", {"id": UNKNOWN}, 70), ("getUsers", {}, 50),
    ("getPlaylist", {"id": UNKNOWN}, 70), ("changePassword", {"username": "bob",
                                                              "password": "long-enough"}, 50),
])
def test_refusals_are_valid_xml_errors(rest: Rest, method: str, params: dict[str, Any],
                                       code: int) -> None:
    answer = subsonic_rest(rest.replica, method, u="alice", p=LISTENER_PASSWORD, v="1.16.1",
                           c="x", **params)

    assert error_code(answer) == code
