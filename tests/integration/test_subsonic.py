"""Real Subsonic clients (py-sonic's libsonic, py-opensonic) against three real replicas behind
the real proxy with accounts on: ping, browse artist -> album -> song, search with a query and
without, every album list type, and stream with the bytes compared with the upload's, through
the proxy and from a replica, and the cover art an upload carried, resized; a play queue and
a bookmark saved by one client and found by another, through the proxy and on every
follower; then the same browsing while a follower is SIGKILLed."""

from __future__ import annotations

import hashlib
import io
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libopensonic
import libsonic
import pytest
from PIL import Image

from tests.helpers.audio import make_audio, require_ffmpeg
from tests.helpers.covers import embed, picture
from tests.helpers.fronted import ADMIN_NAME, ADMIN_PASSWORD, Client, Fronted
from tests.helpers.replica import ReplicaProcess, Response, request, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SONGS = [
    {"title": "Opening", "artist": "The Testers", "album": "First Light", "track": "1",
     "date": "2001", "genre": "Rock"},
    {"title": "Closing", "artist": "The Testers", "album": "First Light", "track": "2",
     "date": "2001", "genre": "Rock"},
    {"title": "Elsewhere", "artist": "Ämy Ünder", "album": "Far", "track": "1",
     "date": "2011", "genre": "Pop"},
]
# The front cover embedded in the first song (and so its album's).
COVER = picture("PNG", (120, 90), (20, 120, 200))


@pytest.fixture
def fronted(tmp_path: Path, replicas: list[ReplicaProcess]) -> Iterator[Fronted]:
    require_ffmpeg()
    with Fronted(tmp_path, replicas, "--chunk-size", "16K",
                 proxy_args=("--check-timeout", "3"), auth=True) as running:
        yield running


def upload(admin: Client, tmp_path: Path) -> dict[str, str]:
    """The songs uploaded through the proxy: the SHA-256 of each file, by title."""
    digests = {}
    for n, tags in enumerate(SONGS):
        path = make_audio(tmp_path / f"{n}.mp3", "mp3", seconds=2 + n, tags=tags)
        if n == 0:
            embed(path, "mp3", COVER)
        data = path.read_bytes()
        answer = admin.call("POST", "/songs", data, {"Content-Type": "audio/mpeg"})
        assert answer.status == 201, answer.body
        digests[tags["title"]] = hashlib.sha256(data).hexdigest()
    return digests


def sonic(fronted: Fronted) -> Any:
    """py-sonic with the password (enc: hex), its parameters in a form POST (formPost)."""
    return libsonic.Connection("http://127.0.0.1", ADMIN_NAME, ADMIN_PASSWORD,
                               port=fronted.proxy.port, legacyAuth=True)


def opensonic(fronted: Fronted) -> Any:
    """py-opensonic with the password, by GET (reads go to the followers)."""
    return libopensonic.Connection("http://127.0.0.1", ADMIN_NAME, ADMIN_PASSWORD,
                                   port=fronted.proxy.port, legacy_auth=True, use_get=True)


def visible_everywhere(client: Any, count: int) -> None:
    """Wait until a search (on whichever replica answers) finds ``count`` songs."""
    wait_until(lambda: len(client.search3("", songCount=50)["searchResult3"].get("song", []))
               == count or None, timeout=60, interval=0.3, what="the songs to replicate")


def browse(client: Any, digests: dict[str, str]) -> str:
    """artist -> album -> song with py-sonic; the id of the first song found."""
    assert client.ping()
    indexes = client.getArtists()["artists"]["index"]
    artists = [a for index in indexes for a in _list(index["artist"])]
    testers = next(a for a in artists if a["name"] == "The Testers")
    artist = client.getArtist(testers["id"])["artist"]
    albums = _list(artist["album"])
    assert [a["name"] for a in albums] == ["First Light"]
    album = client.getAlbum(albums[0]["id"])["album"]
    songs = _list(album["song"])
    assert [s["title"] for s in songs] == ["Opening", "Closing"]
    assert songs[0]["albumId"] == albums[0]["id"] and songs[0]["artistId"] == testers["id"]
    song = client.getSong(songs[0]["id"])["song"]
    assert song["title"] == "Opening" and song["suffix"] == "mp3"
    return str(song["id"])


def eventually(attempt: Any, what: str) -> Any:
    """``attempt()``'s first answer that does not raise, tried until a deadline."""
    def once() -> Any:
        try:
            return attempt()
        except Exception:
            return None
    return wait_until(once, timeout=30, interval=0.3, what=what)


def _list(found: Any) -> list[Any]:
    return found if isinstance(found, list) else [found]


def test_each_way_to_authenticate(fronted: Fronted) -> None:
    admin = fronted.admin()
    made = admin.send_json("POST", "/auth/apikeys", {"name": "phone"})
    assert made.status == 201, made.body
    port = fronted.proxy.port
    assert sonic(fronted).ping()  # u + p (enc:), form POST
    token = libsonic.Connection("http://127.0.0.1", ADMIN_NAME, ADMIN_PASSWORD, port=port)
    assert token.ping()  # u + t + s, the password kept for token auth
    by_key = libopensonic.Connection("http://127.0.0.1", api_key=made.json()["apiKey"],
                                     port=port, use_get=True)
    try:
        # By GET, from a follower: the key's record may be a moment behind the leader's.
        eventually(by_key.ping, "the API key to reach the followers")
    finally:
        by_key.cleanup()
    wrong = libsonic.Connection("http://127.0.0.1", ADMIN_NAME, "wrong-password", port=port,
                                legacyAuth=True)
    with pytest.raises(Exception, match=r"40|Wrong"):
        wrong.ping()

    # A web app of another origin, through the proxy: the preflight of a write (star goes to
    # the leader) and a read both let the browser read the answer.
    page = {"Origin": "https://app.example"}
    for name in ("star", "ping"):
        preflight = request(port, "OPTIONS", f"/rest/{name}.view", headers={
            **page, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status == 204, (name, preflight.status, preflight.body)
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "POST" in preflight.headers["access-control-allow-methods"]
    answer = request(port, "GET", f"/rest/ping.view?u={ADMIN_NAME}&p={ADMIN_PASSWORD}&f=json",
                     headers=page)
    assert answer.status == 200 and b'"ok"' in answer.body
    assert answer.headers["access-control-allow-origin"] == "*"


def test_real_clients_browse_search_and_stream(fronted: Fronted, tmp_path: Path) -> None:
    digests = upload(fronted.admin(), tmp_path)
    client = sonic(fronted)
    visible_everywhere(client, len(SONGS))
    song_id = browse(client, digests)

    found = client.search3("test")["searchResult3"]
    assert [a["name"] for a in _list(found["artist"])] == ["The Testers"]
    assert {s["title"] for s in _list(found["song"])} == {"Opening", "Closing"}
    everything = client.search3("", artistCount=1, albumCount=10, songCount=2)["searchResult3"]
    page = client.search3("", artistCount=0, albumCount=0, songCount=2,
                          songOffset=2)["searchResult3"]
    titles = [s["title"] for s in _list(everything["song"]) + _list(page["song"])]
    assert sorted(titles) == sorted(digests)
    assert len(_list(everything["album"])) == 2

    other = opensonic(fronted)
    try:
        assert other.ping()
        names = {e.name for e in other.get_open_subsonic_extensions()}
        assert "formPost" in names
        for kind, extra in (("random", {}), ("newest", {}), ("alphabeticalByName", {}),
                            ("alphabeticalByArtist", {}),
                            ("byYear", {"from_year": 2020, "to_year": 1990}),
                            ("byGenre", {"genre": "Rock"}), ("starred", {}), ("frequent", {}),
                            ("recent", {})):
            albums = other.get_album_list2(kind, size=10, **extra)
            if kind in ("random", "newest", "alphabeticalByName", "alphabeticalByArtist"):
                assert {a.name for a in albums} == {"First Light", "Far"}, kind
        by_year = other.get_album_list2("byYear", from_year=2020, to_year=1990)
        assert [a.name for a in by_year] == ["Far", "First Light"]
        assert [a.name for a in other.get_album_list2("byGenre", genre="Rock")] == \
            ["First Light"]
        searched = other.search3("Ämy")
        assert [a.name for a in searched.artist] == ["Ämy Ünder"]
        # What an app asks for as it opens its tabs and pages, of what is not kept here.
        assert other.get_podcasts() == [] and other.get_internet_radio_stations() == []
        assert other.get_bookmarks() == [] and other.get_shares() == []
        assert other.get_similar_songs2(song_id) == []
        assert other.get_artist_info2(searched.artist[0].id).biography is None
        assert other.get_album_info2(searched.artist[0].id).notes is None
        status = other.get_scan_status()
        assert (status.scanning, status.count) == (False, len(SONGS))
    finally:
        other.cleanup()

    album = client.getAlbum(client.getSong(song_id)["song"]["albumId"])["album"]
    cover = album["coverArt"]
    original = eventually(lambda: client.getCoverArt(cover).read(), "the cover")
    assert original == COVER
    small = Image.open(io.BytesIO(client.getCoverArt(cover, size=40).read()))
    assert max(small.size) == 40 and small.size == (40, 30)

    streamed = client.stream(song_id).read()
    assert hashlib.sha256(streamed).hexdigest() == digests["Opening"]
    direct = request(fronted.nodes[0].http_port, "GET",
                     f"/rest/download?u={ADMIN_NAME}&p={ADMIN_PASSWORD}&id={song_id}")
    assert direct.status == 200
    assert hashlib.sha256(direct.body).hexdigest() == digests["Opening"]
    part = request(fronted.proxy.port, "GET",
                   f"/rest/stream.view?u={ADMIN_NAME}&p={ADMIN_PASSWORD}&id={song_id}",
                   headers={"Range": "bytes=0-99"})
    assert part.status == 206 and part.body == streamed[:100]


def rest_on(node: ReplicaProcess, method: str) -> dict[str, Any]:
    """``method`` asked of one replica directly, as the admin, f=json: its answer's payload."""
    answer: Response = request(node.http_port, "GET", f"/rest/{method}.view?u={ADMIN_NAME}"
                               f"&p={ADMIN_PASSWORD}&v=1.16.1&c=it&f=json", timeout=10)
    assert answer.status == 200, answer.body
    found: dict[str, Any] = answer.json()["subsonic-response"]
    return found


def test_a_play_queue_saved_on_one_device_resumes_on_another(fronted: Fronted,
                                                              tmp_path: Path) -> None:
    """py-sonic saves (a form POST the proxy sends to the leader); py-opensonic reads it
    through the proxy (a GET a follower may answer), and each follower has it once
    replicated; then the same by index (py-opensonic's GETs, which the proxy must send to
    the leader too), and a save of nothing clears it everywhere."""
    upload(fronted.admin(), tmp_path)
    phone = sonic(fronted)
    visible_everywhere(phone, len(SONGS))
    songs = sorted(s["id"] for s in _list(phone.search3("", songCount=10)["searchResult3"]
                                          ["song"]))
    queue = [songs[0], songs[1], songs[0]]
    leader = fronted.proxy_follows()
    followers = [n for n in fronted.nodes if n.node_id != leader]

    phone.savePlayQueue(queue, current=songs[1], position=42_000)

    desktop = opensonic(fronted)

    def queued() -> Any:
        found = desktop.get_play_queue()
        return found if found.entry else None

    try:
        saved = wait_until(queued, timeout=30, interval=0.3, what="the queue through the proxy")
        assert [e.id for e in saved.entry] == queue
        assert (saved.current, saved.position, saved.username, saved.changed_by) == (
            songs[1], 42_000, ADMIN_NAME, "py-sonic")
        for node in followers:
            shown = wait_until(lambda node=node: rest_on(node, "getPlayQueue")["playQueue"]
                               .get("entry"), timeout=30, interval=0.3,
                               what=f"the queue on replica {node.node_id}")
            assert [e["id"] for e in shown] == queue

        desktop.save_play_queue_by_index(queue, current_index=2, position=7_000)
        for node in followers:
            wait_until(lambda node=node: rest_on(node, "getPlayQueueByIndex")
                       ["playQueueByIndex"].get("currentIndex") == 2, timeout=30,
                       interval=0.3, what=f"the queue by index on replica {node.node_id}")
        by_index = desktop.get_play_queue_by_index()
        assert (by_index.current_index, by_index.position) == (2, 7_000)

        desktop.save_play_queue_by_index()
        for node in followers:
            wait_until(lambda node=node: "entry" not in rest_on(node, "getPlayQueue")
                       ["playQueue"], timeout=30, interval=0.3,
                       what=f"the cleared queue on replica {node.node_id}")
        assert desktop.get_play_queue().entry is None
    finally:
        desktop.cleanup()


def test_a_bookmark_made_on_one_device_is_found_on_another(fronted: Fronted,
                                                           tmp_path: Path) -> None:
    """py-sonic bookmarks a song through the proxy; py-opensonic finds it through the proxy and
    each follower holds it once replicated; deleted, it is gone everywhere."""
    upload(fronted.admin(), tmp_path)
    phone = sonic(fronted)
    visible_everywhere(phone, len(SONGS))
    song = _list(phone.search3("Elsewhere")["searchResult3"]["song"])[0]["id"]
    leader = fronted.proxy_follows()
    followers = [n for n in fronted.nodes if n.node_id != leader]

    phone.createBookmark(song, 754_000, comment="the bridge")

    desktop = opensonic(fronted)
    try:
        (mark,) = wait_until(desktop.get_bookmarks, timeout=30, interval=0.3,
                             what="the bookmark through the proxy")
        assert (mark.entry.id, mark.position, mark.comment, mark.username) == (
            song, 754_000, "the bridge", ADMIN_NAME)
        for node in followers:
            shown = wait_until(lambda node=node: rest_on(node, "getBookmarks")["bookmarks"]
                               .get("bookmark"), timeout=30, interval=0.3,
                               what=f"the bookmark on replica {node.node_id}")
            assert [(m["entry"]["id"], m["position"]) for m in shown] == [(song, 754_000)]

        desktop.delete_bookmark(song)
        for node in followers:
            wait_until(lambda node=node: rest_on(node, "getBookmarks")["bookmarks"]
                       .get("bookmark", []) == [], timeout=30, interval=0.3,
                       what=f"the bookmark deleted on replica {node.node_id}")
        assert desktop.get_bookmarks() == []
    finally:
        desktop.cleanup()


def test_browsing_goes_on_while_a_follower_is_killed(fronted: Fronted, tmp_path: Path) -> None:
    digests = upload(fronted.admin(), tmp_path)
    client = sonic(fronted)
    visible_everywhere(client, len(SONGS))
    leader = fronted.proxy_follows()
    follower = next(n for n in fronted.nodes if n.node_id != leader)
    follower.signal(signal.SIGKILL)
    try:
        for _ in range(3):
            song_id = browse(client, digests)
            streamed = client.stream(song_id).read()
            assert hashlib.sha256(streamed).hexdigest() == digests["Opening"]
            found = client.search3("")["searchResult3"]
            assert len(_list(found["song"])) == len(SONGS)
    finally:
        fronted.restore(follower, signal.SIGKILL)
