"""The /rest API on an in-memory replica with accounts: the envelope in XML (checked against
the schema) and JSON, every way to authenticate and every refusal, hostile parameters
answered with the spec's codes (never a 500), browsing, stream with Range, and the HTTP
answers kept for the proxy (421 for a write on a follower, 503 while joining)."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher

from distpotify.model import Version
from distpotify.subsonic import absent, browse
from distpotify.subsonic.call import METHODS, Params, method
from distpotify.subsonicmethods import WRITES
from distpotify.wire import loggable_uri
from tests.helpers.accounts import ADMIN_PASSWORD, call, first_admin, login
from tests.helpers.api import InMemoryReplica, NoLeader, result_of, run_now
from tests.helpers.audio import require_ffmpeg
from tests.helpers.covers import album_tags, audio_with_cover, picture
from tests.helpers.subsonic import (
    NS,
    error_code,
    json_of,
    ok_xml,
    path,
    rest,
    upload_song,
    valid_xml,
)

USER = {"u": "root", "p": ADMIN_PASSWORD}
ENVELOPE = {"status", "version", "type", "serverVersion", "openSubsonic"}


@pytest.fixture
def replica(tmp_path: Path) -> InMemoryReplica:
    found = InMemoryReplica(tmp_path / "data", auth=True)
    first_admin(found, tmp_path / "data")
    return found


@pytest.fixture
def library(replica: InMemoryReplica, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Two albums of one artist (one of two songs, out of track order), one of another."""
    return {
        "b": upload_song(replica, tmp_path, 1, title="Second", artist="The Band", album="First",
                         track=2, year=1999, genre="Rock"),
        "a": upload_song(replica, tmp_path, 2, title="Opening", artist="The Band",
                         album="First", track=1, year=1999, genre="Rock"),
        "c": upload_song(replica, tmp_path, 3, title="Later", artist="The Band", album="Next",
                         track=1, year=2005, genre="Pop"),
        "d": upload_song(replica, tmp_path, 4, title="Solo", artist="Ämy", album="Alone",
                         genre="Pop"),
    }


# the envelope


def test_ping_answers_the_opensubsonic_envelope_in_xml(replica: InMemoryReplica) -> None:
    root = ok_xml(rest(replica, "ping", **USER))
    assert root.tag == f"{NS}subsonic-response"
    assert (root.get("version"), root.get("type"), root.get("openSubsonic")) == \
        ("1.16.1", "distpotify", "true")
    assert root.get("serverVersion")


def test_json_and_jsonp_carry_the_same_envelope(replica: InMemoryReplica) -> None:
    found = json_of(rest(replica, "ping", f="json", **USER))
    assert found == {"status": "ok", "version": "1.16.1", "type": "distpotify",
                     "serverVersion": found["serverVersion"], "openSubsonic": True}
    answer = rest(replica, "ping", f="jsonp", callback="app.done", **USER)
    assert answer.body.startswith(b"app.done({") and answer.body.endswith(b"});")
    assert error_code(rest(replica, "ping", f="jsonp", callback="alert(1)", **USER)) == 0
    assert error_code(rest(replica, "ping", f="yaml", **USER)) == 0


def test_method_names_ignore_case_and_view(replica: InMemoryReplica) -> None:
    for name in ("PING", "ping", "Ping"):
        ok_xml(replica.call("GET", path(name, **USER).replace(".view", ""), signed=False,
                            cookies=False))


def test_an_unknown_method_is_error_0_and_an_unimplemented_one_says_so(
        replica: InMemoryReplica) -> None:
    assert error_code(rest(replica, "noSuchMethod", **USER)) == 0
    for name in ("hls", "createShare", "jukeboxControl", "startScan"):
        answer = rest(replica, name, id="x", **USER)
        assert error_code(answer) == 0 and b"not implemented" in answer.body, name


@pytest.mark.parametrize("name", sorted(absent.EMPTY))
def test_reads_of_what_the_server_does_not_keep_are_answered_empty(
        replica: InMemoryReplica, library: dict[str, Any], name: str) -> None:
    # An app's podcast tab or artist page gets an empty answer, valid by the schema, where it
    # got error 0 "not implemented" and showed a failure.
    song = next(iter(library.values()))["id"]
    ok_xml(rest(replica, name, id=song, artist="The Band", title="Opening", **USER))
    found = json_of(rest(replica, name, id=song, f="json", **USER))
    (element, value), = ((k, v) for k, v in found.items() if k not in ENVELOPE)
    assert value == absent.EMPTY[name][element]
    assert all(items in ([], "") for items in value.values())


def test_scan_status_says_no_scan_runs_and_counts_the_songs(
        replica: InMemoryReplica, library: dict[str, Any]) -> None:
    assert ok_xml(rest(replica, "getScanStatus", **USER)).find(f"{NS}scanStatus").get(
        "scanning") == "false"
    found = json_of(rest(replica, "getScanStatus", f="json", **USER))
    assert found["scanStatus"] == {"scanning": False, "count": len(library)}


def test_a_web_app_of_another_origin_may_call_rest(replica: InMemoryReplica) -> None:
    # The browser's preflight, then the call itself: both say any origin may read the answer.
    origin = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "content-type"}
    preflight = replica.call("OPTIONS", "/rest/ping.view", headers=origin, signed=False,
                             cookies=False)
    assert preflight.status == 204 and preflight.body == b""
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
    answer = rest(replica, "ping", {"Origin": "https://app.example"}, f="json", **USER)
    assert json_of(answer)["status"] == "ok"
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "content-range" in answer.headers["access-control-expose-headers"].lower()
    refused = rest(replica, "ping", {"Origin": "https://app.example"}, u="root", p="wrong")
    assert error_code(refused) == 40  # the credentials still decide, whatever the origin
    assert refused.headers["access-control-allow-origin"] == "*"


def test_extensions_are_listed_without_credentials(replica: InMemoryReplica) -> None:
    root = ok_xml(rest(replica, "getOpenSubsonicExtensions"))
    names = [e.get("name") for e in root.findall(f"{NS}openSubsonicExtensions")]
    assert "formPost" in names and "indexBasedQueue" in names
    found = json_of(rest(replica, "getOpenSubsonicExtensions", f="json"))
    assert {"name": "formPost", "versions": [1]} in found["openSubsonicExtensions"]
    assert {"name": "indexBasedQueue", "versions": [1]} in found["openSubsonicExtensions"]


def test_license_and_music_folders(replica: InMemoryReplica) -> None:
    assert ok_xml(rest(replica, "getLicense", **USER)).find(f"{NS}license").get("valid") == "true"
    folders = json_of(rest(replica, "getMusicFolders", f="json", **USER))
    assert folders["musicFolders"] == {"musicFolder": [{"id": 1, "name": "Music"}]}


# auth


def test_a_hex_encoded_password_works(replica: InMemoryReplica) -> None:
    ok_xml(rest(replica, "ping", u="root", p="enc:" + ADMIN_PASSWORD.encode().hex()))


@pytest.mark.parametrize(("params", "code"), [
    ({}, 10),
    ({"u": "root"}, 10),
    ({"p": ADMIN_PASSWORD}, 10),
    ({"u": "root", "p": "wrong-password"}, 40),
    ({"u": "nobody", "p": ADMIN_PASSWORD}, 40),
    ({"u": "root", "p": "enc:zz"}, 40),
    ({"u": "root", "p": "enc:ff"}, 40),
    ({"u": "root", "p": ADMIN_PASSWORD, "t": "a" * 32, "s": "salt"}, 43),
    ({"u": "root", "apiKey": "key"}, 43),
    ({"apiKey": "key", "p": ADMIN_PASSWORD}, 43),
    ({"apiKey": "key", "t": "a" * 32}, 43),
    ({"apiKey": "key", "s": "salt"}, 43),
    ({"u": "root", "t": "a" * 32}, 10),
], ids=["nothing", "no-password", "no-user", "wrong", "unknown-user", "bad-hex",
        "not-utf8-hex", "p-and-token", "key-and-user", "key-and-p", "key-and-token",
        "key-and-salt", "token-without-salt"])
def test_refused_credentials_get_the_spec_codes(replica: InMemoryReplica,
                                                params: dict[str, str], code: int) -> None:
    assert error_code(rest(replica, "ping", **params)) == code


def token_of(password: str, salt: str) -> str:
    return hashlib.md5((password + salt).encode(), usedforsecurity=False).hexdigest()


def test_token_auth_with_the_kept_password(replica: InMemoryReplica) -> None:
    ok_xml(rest(replica, "ping", u="root", t=token_of(ADMIN_PASSWORD, "c19b2d"), s="c19b2d"))
    ok_xml(rest(replica, "ping", u="root", t=token_of(ADMIN_PASSWORD, "x").upper(), s="x"))
    assert error_code(rest(replica, "ping", u="root", t=token_of(ADMIN_PASSWORD, "a"),
                           s="b")) == 40
    assert error_code(rest(replica, "ping", u="nobody", t=token_of(ADMIN_PASSWORD, "a"),
                           s="a")) == 40


def test_token_auth_turned_off_is_41(replica: InMemoryReplica) -> None:
    replica.service.subsonic.auth.token_auth = False
    assert error_code(rest(replica, "ping", u="root", t=token_of(ADMIN_PASSWORD, "s"),
                           s="s")) == 41


def test_an_api_key_alone_authenticates(replica: InMemoryReplica) -> None:
    session = login(replica, "root", ADMIN_PASSWORD)
    made = call(replica, "POST", "/auth/apikeys", {"name": "phone"}, session.bearer)
    assert made.status == 201, made.body
    key = made.json()["apiKey"]
    ok_xml(rest(replica, "ping", apiKey=key))
    assert json_of(rest(replica, "getArtists", apiKey=key, f="json"))["status"] == "ok"
    assert error_code(rest(replica, "ping", apiKey=key + "x")) == 44
    assert error_code(rest(replica, "ping", apiKey=key, u="root")) == 43
    names = [e.get("name") for e in ok_xml(rest(replica, "getOpenSubsonicExtensions"))]
    assert "apiKeyAuthentication" in names


def test_token_info_names_the_user_of_an_api_key(replica: InMemoryReplica) -> None:
    # OpenSubsonic's apiKeyAuthentication includes tokenInfo: a client that logs in with a
    # key alone learns whose it is there (py-opensonic's token_info()).
    session = login(replica, "root", ADMIN_PASSWORD)
    made = call(replica, "POST", "/auth/apikeys", {"name": "phone"}, session.bearer)
    assert made.status == 201, made.body
    key = made.json()["apiKey"]
    root = ok_xml(rest(replica, "tokenInfo", apiKey=key))
    assert root.find(f"{NS}tokenInfo").get("username") == "root"
    found = json_of(rest(replica, "tokenInfo", apiKey=key, f="json"))
    assert found["tokenInfo"] == {"username": "root"}
    assert error_code(rest(replica, "tokenInfo", apiKey=key + "x")) == 44


def test_failed_attempts_are_limited_like_logins(replica: InMemoryReplica) -> None:
    for _ in range(6):
        assert error_code(rest(replica, "ping", u="root", p="wrong-password")) == 40
    answer = rest(replica, "ping", **USER)
    assert error_code(answer) == 40 and b"Too many" in answer.body
    replica.clock.advance(3600)
    ok_xml(rest(replica, "ping", **USER))


def test_a_proven_password_is_remembered_until_the_password_changes(
        replica: InMemoryReplica) -> None:
    auth = replica.service.subsonic.auth
    ok_xml(rest(replica, "ping", **USER))
    ok_xml(rest(replica, "ping", **USER))
    assert auth.cache_hits == 1
    user = replica.accounts.directory.by_name("root")
    session = login(replica, "root", ADMIN_PASSWORD)
    changed = call(replica, "PUT", "/auth/password",
                   {"old_password": ADMIN_PASSWORD, "password": "another-password-2"},
                   session.bearer)
    assert changed.status in (200, 204), changed.body
    assert replica.accounts.directory.by_id(user.id).generation != user.generation
    assert error_code(rest(replica, "ping", **USER)) == 40
    assert auth.cache_hits == 1
    ok_xml(rest(replica, "ping", u="root", p="another-password-2"))


def test_requests_sent_at_once_with_a_right_password_are_all_answered(
        replica: InMemoryReplica) -> None:
    # An app that sends p (legacy auth) asks for a page of covers and lists at once when it
    # starts: none of them is in the cache yet, and each used to be a password check of its
    # own, so past the login limit's free attempts the rest were error 40 ("Too many failed
    # attempts"): the app's right password taken for a wrong one.
    verify = replica.accounts.passwords.verify
    held: list[tuple[Deferred[bool], bool]] = []

    def slow(stored: str | None, password: str) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        held.append((d, result_of(verify(stored, password))))
        return d

    replica.accounts.passwords.verify = slow
    auth = replica.service.subsonic.auth
    params = Params({"u": ["root"], "p": [ADMIN_PASSWORD]})
    calls = [Deferred.fromCoroutine(auth.user(params)) for _ in range(12)]
    while held:
        d, matched = held.pop(0)
        d.callback(matched)
    users = [result_of(d) for d in calls]
    assert {user.username for user in users} == {"root"}
    assert replica.accounts.logins_limited == 0


def test_the_password_never_reaches_the_log(replica: InMemoryReplica) -> None:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    try:
        rest(replica, "ping", u="root", p="secret-guess-123")
        rest(replica, "getAlbum", id="not-a-uuid", u="root", p="secret-guess-456")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not [line for line in lines if "secret-guess" in line]


# hostile parameters


@pytest.mark.parametrize("query", [
    "size=abc", "size=-1", "size=99999999999999999999999", "size=%D9%A1", "offset=1e3",
    "type=", "type=bogus", "type=byYear&fromYear=x&toYear=2000", "type=byYear",
    "type=byGenre", "type=random&type=newest&size=1&size=2",
], ids=lambda q: q)
def test_hostile_list_parameters_get_spec_errors_never_a_500(
        replica: InMemoryReplica, library: dict[str, Any], query: str) -> None:
    answer = replica.call("GET", "/rest/getAlbumList2?u=root&p=" + ADMIN_PASSWORD + "&" + query,
                          signed=False, cookies=False)
    assert answer.status == 200
    root = ok_xml(answer) if b'status="ok"' in answer.body else None
    if root is None:
        assert error_code(answer) in (0, 10)


@pytest.mark.parametrize("query", [
    "id=%ff%fe", "id=a%00b", "u=%ff&p=x", "id=" + "x" * 5000, "id=",
    "id=00000000-0000-4000-8000-000000000000",
])
def test_hostile_ids_are_not_found_or_refused(replica: InMemoryReplica, query: str) -> None:
    for name in ("getAlbum", "getSong", "getArtist", "getMusicDirectory", "stream",
                 "getCoverArt"):
        answer = replica.call("GET", f"/rest/{name}?u=root&p={ADMIN_PASSWORD}&{query}",
                              signed=False, cookies=False)
        assert answer.status == 200, (name, answer.body)
        assert error_code(answer) in (0, 10, 40, 70), (name, answer.body)


def test_parameters_may_come_as_a_form_post(replica: InMemoryReplica) -> None:
    body = f"u=root&p={ADMIN_PASSWORD}&f=json".encode()
    answer = replica.call("POST", "/rest/ping.view", body,
                          {"Content-Type": "application/x-www-form-urlencoded"},
                          signed=False, cookies=False)
    assert json_of(answer)["status"] == "ok"
    too_big = b"u=root&p=x&pad=" + b"a" * (1024 * 1024)
    answer = replica.call("POST", "/rest/ping.view", too_big,
                          {"Content-Type": "application/x-www-form-urlencoded"},
                          signed=False, cookies=False)
    assert error_code(answer) == 0


def test_a_large_form_is_split_on_a_worker_thread_before_its_caller_is_known(
        replica: InMemoryReplica, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spooled form (over 100 KB) of 10,000 parameters took half a second to split: on the
    reactor, any client could hold it that long per request, credentials or not."""
    server = replica.service.subsonic
    assert server is not None
    ran: list[str] = []

    def blocking(f: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append(f.__name__)
        return run_now(f, *args, **kwargs)

    monkeypatch.setattr(server, "blocking", blocking)
    body = ("&".join(f"pad{n}=%41" for n in range(10_000)) + "&u=nobody&p=x&f=json").encode()
    assert len(body) > 100_000

    answer = replica.call("POST", "/rest/ping.view", body,
                          {"Content-Type": "application/x-www-form-urlencoded"},
                          signed=False, cookies=False)

    assert json_of(answer)["error"]["code"] == 40  # parsed (its f=json), then refused
    assert ran == ["_form_pairs"]


def test_parameters_past_ascii_are_utf_8_in_the_query_and_in_a_form(
        replica: InMemoryReplica, library: dict[str, Any]) -> None:
    query = {"query": "Ämy", "f": "json", **USER}
    found = json_of(rest(replica, "search3", **query))["searchResult3"]
    assert [a["name"] for a in found["artist"]] == ["Ämy"]
    form = json_of(replica.call("POST", "/rest/search3.view?f=json",
                                urlencode({"query": "Ämy", **USER}).encode(),
                                {"Content-Type": "application/x-www-form-urlencoded"},
                                signed=False, cookies=False))
    assert form["searchResult3"] == found
    made = json_of(replica.call("POST", "/rest/createPlaylist.view?f=json&name=Caf%C3%A9",
                                urlencode({"songId": library["a"]["id"], **USER}).encode(),
                                {"Content-Type": "application/x-www-form-urlencoded"},
                                signed=False, cookies=False))
    assert made["playlist"]["name"] == "Café", made
    bad = replica.call("GET", "/rest/search3.view?query=%ff&u=root&p=" + ADMIN_PASSWORD,
                       signed=False, cookies=False)
    assert error_code(bad) == 0 and b"UTF-8" in bad.body


def test_an_unexpected_failure_is_error_0_not_a_500(replica: InMemoryReplica) -> None:
    @method("distpotifyTestBroken")
    async def broken(call: Any) -> dict[str, Any]:
        raise RuntimeError("boom")
    try:
        answer = rest(replica, "distpotifyTestBroken", **USER)
        assert error_code(answer) == 0 and b"boom" not in answer.body
    finally:
        del METHODS["distpotifytestbroken"]


@pytest.mark.parametrize(("fmt", "tree"), [
    ("xml", {"song": {"id": "x", "averageRating": float("nan")}}),
    ("json", {"song": {"id": "x", "averageRating": float("inf")}}),
    ("json", {"song": {"id": object()}}), ("xml", None), ("json", None),
])
def test_an_answer_that_cannot_be_rendered_is_error_0_not_a_dropped_connection(
        replica: InMemoryReplica, fmt: str, tree: Any) -> None:
    @method("distpotifyTestUnrenderable")
    async def unrenderable(call: Any) -> Any:
        return tree
    try:
        answer = rest(replica, "distpotifyTestUnrenderable", f=fmt, **USER)
    finally:
        del METHODS["distpotifytestunrenderable"]
    if fmt == "xml":
        assert error_code(answer) == 0
    else:
        assert json_of(answer)["error"]["code"] == 0


# writes, followers, joining


def test_every_write_method_is_a_proxy_write_and_every_other_is_not() -> None:
    for found in METHODS.values():
        assert found.writes == (found.name.lower() in WRITES), found.name


def test_a_write_on_a_follower_is_421_for_the_proxy(tmp_path: Path) -> None:
    follower = InMemoryReplica(tmp_path, leadership=NoLeader())
    follower.accounts.directory = replica_directory(tmp_path)
    answer = rest(follower, "star", id="00000000-0000-4000-8000-000000000000", **USER)
    assert answer.status == 421, answer.body
    assert answer.json()["error"] == "not_leader"


def replica_directory(tmp_path: Path) -> Any:
    leader = InMemoryReplica(tmp_path / "leader", auth=True)
    first_admin(leader, tmp_path / "leader")
    return leader.accounts.directory


def test_a_joining_replica_answers_503_with_error_0(replica: InMemoryReplica) -> None:
    replica.service.subsonic.serving = lambda: False
    answer = rest(replica, "getArtists", **USER)
    assert answer.status == 503
    assert b'code="0"' in answer.body and b"joining" in answer.body


def test_a_read_waits_for_the_version_it_names(replica: InMemoryReplica,
                                               library: dict[str, Any]) -> None:
    head = replica.db.head().encode()
    answer = rest(replica, "getArtists", headers={"X-Distpotify-Min-Version": head}, **USER)
    ok_xml(answer)
    bad = rest(replica, "getArtists", headers={"X-Distpotify-Min-Version": "nope"}, **USER)
    assert bad.status == 400


# browsing


def test_browse_artist_album_song(replica: InMemoryReplica, library: dict[str, Any]) -> None:
    artists = json_of(rest(replica, "getArtists", f="json", **USER))["artists"]
    ok_xml(rest(replica, "getArtists", **USER))
    letters = {index["name"]: index["artist"] for index in artists["index"]}
    assert [a["name"] for a in letters["B"]] == ["The Band"]  # "The" is ignored
    assert [a["name"] for a in letters["A"]] == ["Ämy"]
    band = letters["B"][0]
    assert band["albumCount"] == 2
    artist = json_of(rest(replica, "getArtist", id=band["id"], f="json", **USER))["artist"]
    ok_xml(rest(replica, "getArtist", id=band["id"], **USER))
    assert [a["name"] for a in artist["album"]] == ["First", "Next"]
    first = artist["album"][0]
    assert (first["songCount"], first["year"], first["artistId"]) == (2, 1999, band["id"])
    album = json_of(rest(replica, "getAlbum", id=first["id"], f="json", **USER))["album"]
    ok_xml(rest(replica, "getAlbum", id=first["id"], **USER))
    assert [s["title"] for s in album["song"]] == ["Opening", "Second"]
    song = album["song"][0]
    assert song["id"] == library["a"]["id"]
    assert (song["albumId"], song["artistId"], song["parent"]) == \
        (first["id"], band["id"], first["id"])
    assert (song["isDir"], song["type"], song["mediaType"], song["suffix"]) == \
        (False, "music", "song", "wav")
    assert song["path"] == "The Band/First/01 - Opening.wav"
    got = json_of(rest(replica, "getSong", id=song["id"], f="json", **USER))["song"]
    assert got == song
    ok_xml(rest(replica, "getSong", id=song["id"], **USER))
    assert error_code(rest(replica, "getAlbum", id=band["id"], **USER)) == 70


def test_directories_and_indexes(replica: InMemoryReplica, library: dict[str, Any]) -> None:
    root = ok_xml(rest(replica, "getIndexes", **USER))
    assert root.find(f"{NS}indexes").get("ignoredArticles") == "The El La Los Las Le Les"
    indexes = json_of(rest(replica, "getIndexes", f="json", **USER))["indexes"]
    band = next(a for i in indexes["index"] for a in i["artist"] if a["name"] == "The Band")
    directory = json_of(rest(replica, "getMusicDirectory", id=band["id"], f="json", **USER))
    albums = directory["directory"]["child"]
    assert [(a["title"], a["isDir"]) for a in albums] == [("First", True), ("Next", True)]
    ok_xml(rest(replica, "getMusicDirectory", id=band["id"], **USER))
    songs = json_of(rest(replica, "getMusicDirectory", id=albums[0]["id"], f="json", **USER))
    assert [s["title"] for s in songs["directory"]["child"]] == ["Opening", "Second"]
    ok_xml(rest(replica, "getMusicDirectory", id=albums[0]["id"], **USER))


def test_genres_lists_and_random_songs(replica: InMemoryReplica,
                                       library: dict[str, Any]) -> None:
    genres = json_of(rest(replica, "getGenres", f="json", **USER))["genres"]["genre"]
    assert {(g["value"], g["songCount"], g["albumCount"]) for g in genres} == \
        {("Rock", 2, 1), ("Pop", 2, 2)}
    ok_xml(rest(replica, "getGenres", **USER))
    for kind, extra in (("random", {}), ("newest", {}), ("alphabeticalByName", {}),
                        ("alphabeticalByArtist", {}), ("byYear", {"fromYear": 2010,
                                                                  "toYear": 1990}),
                        ("byGenre", {"genre": "Pop"}), ("starred", {}), ("frequent", {}),
                        ("recent", {})):
        for name in ("getAlbumList", "getAlbumList2"):
            ok_xml(rest(replica, name, type=kind, **extra, **USER))
    by_year = json_of(rest(replica, "getAlbumList2", type="byYear", fromYear=2010, toYear=1990,
                           f="json", **USER))["albumList2"]["album"]
    assert [a["name"] for a in by_year] == ["Next", "First"]
    by_name = json_of(rest(replica, "getAlbumList2", type="alphabeticalByName", size=2,
                           offset=1, f="json", **USER))["albumList2"]["album"]
    assert [a["name"] for a in by_name] == ["First", "Next"]
    random_songs = json_of(rest(replica, "getRandomSongs", size=3, f="json", **USER))
    assert len(random_songs["randomSongs"]["song"]) == 3
    ok_xml(rest(replica, "getRandomSongs", genre="Rock", **USER))
    pop = json_of(rest(replica, "getSongsByGenre", genre="Pop", f="json", **USER))
    assert {s["title"] for s in pop["songsByGenre"]["song"]} == {"Later", "Solo"}
    ok_xml(rest(replica, "getSongsByGenre", genre="Pop", **USER))
    ok_xml(rest(replica, "getTopSongs", artist="The Band", **USER))


def test_a_page_larger_than_the_servers_is_answered_the_servers_not_refused(
        replica: InMemoryReplica, library: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Subsonic's own server and Navidrome answer at most their page for a larger size; a
    # client that asks for more than ours (some sync with 1,000 or more) pages on by offset.
    huge = 2**31 - 1
    for name, extra in (("getAlbumList2", {"type": "newest"}), ("getRandomSongs", {}),
                        ("getSongsByGenre", {"genre": "Pop", "count": huge})):
        answer = json_of(rest(replica, name, size=huge, f="json", **extra, **USER))
        assert answer["status"] == "ok", answer
    everything = json_of(rest(replica, "search3", query="", songCount=huge, albumCount=huge,
                              artistCount=huge, f="json", **USER))["searchResult3"]
    assert len(everything["song"]) == len(library)
    monkeypatch.setattr(browse, "MAX_LIST", 1)
    monkeypatch.setattr(browse, "MAX_SEARCH", 2)
    albums = json_of(rest(replica, "getAlbumList2", type="alphabeticalByName", size=600,
                          f="json", **USER))["albumList2"]["album"]
    assert len(albums) == 1
    songs = json_of(rest(replica, "getRandomSongs", size=600, f="json", **USER))
    assert len(songs["randomSongs"]["song"]) == 1
    pop = json_of(rest(replica, "getSongsByGenre", genre="Pop", count=600, f="json", **USER))
    assert len(pop["songsByGenre"]["song"]) == 1
    found = json_of(rest(replica, "search3", query="", songCount=5000, f="json",
                         **USER))["searchResult3"]
    assert len(found["song"]) == 2
    for query in ("size=-1", "size=abc"):  # still refused: not a count at all
        answer = replica.call("GET", f"/rest/getRandomSongs?u=root&p={ADMIN_PASSWORD}&{query}",
                              signed=False, cookies=False)
        assert error_code(answer) == 0


def test_search_with_a_query_and_with_none(replica: InMemoryReplica,
                                           library: dict[str, Any]) -> None:
    found = json_of(rest(replica, "search3", query="band", f="json", **USER))["searchResult3"]
    assert [a["name"] for a in found["artist"]] == ["The Band"]
    assert {s["title"] for s in found["song"]} == {"Opening", "Second", "Later"}
    ok_xml(rest(replica, "search3", query="band", **USER))
    ok_xml(rest(replica, "search2", query="band", **USER))
    everything = json_of(rest(replica, "search3", query="", songCount=3, f="json", **USER))
    assert len(everything["searchResult3"]["song"]) == 3
    assert len(everything["searchResult3"]["album"]) == 3
    rest_of = json_of(rest(replica, "search3", query='""', songCount=3, songOffset=3,
                           f="json", **USER))
    ids = [s["id"] for s in
           everything["searchResult3"]["song"] + rest_of["searchResult3"]["song"]]
    assert sorted(ids) == sorted(s["id"] for s in library.values())
    nothing = json_of(rest(replica, "search3", query="zzzz", f="json", **USER))
    assert nothing["searchResult3"] == {"artist": [], "album": [], "song": []}


# stream


def test_stream_and_download_serve_the_original_bytes_with_range(
        replica: InMemoryReplica, library: dict[str, Any], tmp_path: Path) -> None:
    song = library["a"]
    original = (tmp_path / "song-2.wav").read_bytes()
    for name in ("stream", "download"):
        answer = rest(replica, name, id=song["id"], maxBitRate=128, format="mp3", **USER)
        assert answer.status == 200
        assert hashlib.sha256(answer.body).hexdigest() == song["sha256"]
        assert answer.body == original
    part = rest(replica, "stream", id=song["id"], headers={"Range": "bytes=10-19"}, **USER)
    assert part.status == 206 and part.body == original[10:20]
    assert error_code(rest(replica, "stream", id="00000000-0000-4000-8000-000000000000",
                           **USER)) == 70
    refused = rest(replica, "stream", id=song["id"], u="root", p="wrong-password")
    assert error_code(refused) == 40


def test_cover_art_is_not_found_without_covers(replica: InMemoryReplica) -> None:
    replica.service.subsonic.covers = None
    assert error_code(rest(replica, "getCoverArt", id="a" * 64, **USER)) == 70


def test_secrets_in_a_logged_uri_are_hidden() -> None:
    # The whole query of a /rest URI: a parameter's name may come %-escaped ("%70" is "p").
    assert loggable_uri(b"/rest/ping.view?u=ann&p=enc:41&t=ab&s=cd&apiKey=k&f=json") == \
        "/rest/ping.view?<hidden>"
    assert loggable_uri(b"/rest/ping.view?u=ann&%70=secret") == "/rest/ping.view?<hidden>"


# albums from real files: discs, compilations, covers


def test_a_two_disc_compilation_with_a_cover(replica: InMemoryReplica, tmp_path: Path) -> None:
    require_ffmpeg()
    cover = picture("PNG", (64, 64))
    made = []
    for n, (disc, track, artist, with_cover) in enumerate(
            [("2/2", "1", "Zed", True), ("1/2", "2", "Amy", False), ("1/2", "1", "Bob", False)]):
        clip = tmp_path / f"hit{n}.mp3"
        audio_with_cover(clip, "mp3", cover if with_cover else None, seconds=1.0 + n / 10,
                         tags={"title": f"hit {n}", "artist": artist, "album": "Hits",
                               "track": track, "date": "2020"})
        album_tags(clip, "mp3", disc=disc, compilation=True)
        answer = replica.upload(clip.read_bytes(), "audio/mpeg")
        assert answer.status == 201, answer.body
        made.append(answer.json()["song"])
    search = json_of(rest(replica, "search3", query="hits", f="json", **USER))["searchResult3"]
    [album] = search["album"]
    assert album["artist"] == "Various Artists" and album["songCount"] == 3
    assert album["coverArt"] == hashlib.sha256(cover).hexdigest()
    found = json_of(rest(replica, "getAlbum", id=album["id"], f="json", **USER))["album"]
    ok_xml(rest(replica, "getAlbum", id=album["id"], **USER))
    assert [(s["discNumber"], s["track"], s["artist"]) for s in found["song"]] == \
        [(1, 1, "Bob"), (1, 2, "Amy"), (2, 1, "Zed")]
    assert {s["displayAlbumArtist"] for s in found["song"]} == {"Various Artists"}
    whole = rest(replica, "getCoverArt", id=album["coverArt"], **USER)
    assert whole.status == 200 and whole.body == cover
    small = rest(replica, "getCoverArt", id=album["coverArt"], size=32, **USER)
    assert small.status == 200 and small.body != cover
    assert error_code(rest(replica, "getCoverArt", id="f" * 64, **USER)) == 70


def test_a_read_of_a_version_not_applied_here_is_409_behind(replica: InMemoryReplica) -> None:
    future = Version(replica.db.head().epoch + 5, 1, 1).encode()
    d = replica.treq.request("GET", "http://replica" + path("getArtists", **USER),
                             headers={"X-Distpotify-Min-Version": future})
    replica.treq.flush()
    replica.clock.advance(5)
    replica.treq.flush()
    assert result_of(d).code == 409


def xml_shape(element: ET.Element) -> Any:
    """An XML element as the JSON rendering would hold it: attributes as text, children by
    name (a list when the JSON has one), text as "value"."""
    found: dict[str, Any] = dict(element.attrib)
    for child in element:
        found.setdefault(child.tag.removeprefix(NS), []).append(xml_shape(child))
    if element.text and element.text.strip():
        found["value"] = element.text
    return found


def json_shape(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: json_shape(v) if isinstance(v, dict | list) else _text(v)
                for k, v in node.items()}
    return [json_shape(item) if isinstance(item, dict | list) else {"value": _text(item)}
            for item in node]


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _lists(node: Any) -> Any:
    """Every child as a list (a JSON object child is one element); empty lists left out."""
    if isinstance(node, list):
        return [_lists(item) for item in node]
    return {k: _lists(v if isinstance(v, list) else [v]) if isinstance(v, dict | list) else v
            for k, v in node.items() if v != []}


@pytest.mark.parametrize(("name", "params"), [
    ("ping", {}), ("getLicense", {}), ("getMusicFolders", {}), ("getIndexes", {}),
    ("getArtists", {}), ("getGenres", {}), ("getAlbumList", {"type": "newest"}),
    ("getAlbumList2", {"type": "alphabeticalByName"}), ("search2", {"query": ""}),
    ("search3", {"query": "the"}), ("getSongsByGenre", {"genre": "Rock"}),
    ("getTopSongs", {"artist": "x"}), ("getAlbum", {"id": "00000000-0000-4000-8000-0"}),
    ("getOpenSubsonicExtensions", {}),
])
def test_json_answers_hold_what_the_xml_answers_hold(
        replica: InMemoryReplica, library: dict[str, Any], name: str, params: dict[str, Any]
) -> None:
    root = valid_xml(rest(replica, name, **params, **USER))
    found = json_of(rest(replica, name, f="json", **params, **USER))
    assert _lists(xml_shape(root)) == _lists(json_shape(found))
