"""Per-user Subsonic state and credentials across three real replicas with --auth on: API keys
made and revoked through the proxy and honoured by every replica; stars, ratings, plays, now
playing and playlists written with plain /rest calls on the leader and read on the followers
once replicated; token auth (t + s) on a follower from the replicated password box."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import libopensonic
import libsonic
import pytest

from tests.helpers.audio import make_wav
from tests.helpers.fronted import Client, Fronted
from tests.helpers.replica import ReplicaProcess, killed_at_end, request, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PASSWORD = "alice-password-1"
REPLICATED = 15.0  # seconds a write may take to reach every follower


class Cluster:
    """The cluster, alice (a listener) logged in through the proxy, two songs of one album."""

    def __init__(self, fronted: Fronted) -> None:
        self.fronted = fronted
        admin = fronted.admin()
        made = admin.send_json("POST", "/users", {"username": "alice", "password": PASSWORD})
        assert made.status == 201, made.body
        self.alice: Client = fronted.log_in("alice", PASSWORD)
        self.songs = []
        for n in (1, 2):
            wav = make_wav(fronted.cluster.root / f"song{n}.wav", 20 * 1024, seed=n)
            answer = admin.call("POST", f"/songs?title=song{n}&album=Homogenic&artist=Bjork",
                                wav.read_bytes(), {"Content-Type": "audio/wav"})
            assert answer.status == 201, answer.body
            self.songs.append(answer.json()["song"]["id"])
        leader_id = fronted.proxy_follows()
        self.leader = fronted.cluster.nodes[leader_id]
        self.followers = [n for n in fronted.nodes if n is not self.leader]

    def rest(self, node: ReplicaProcess, method: str, **params: Any) -> dict[str, Any]:
        """``/rest/{method}`` on ``node`` directly (plain HTTP, u and p unless given other
        credentials), f=json: the subsonic-response."""
        query: list[tuple[str, str]] = [("v", "1.16.1"), ("f", "json")]
        if "c" not in params:
            query.append(("c", "it"))
        if not {"apiKey", "t"} & set(params):
            query += [("u", "alice"), ("p", PASSWORD)]
        for name, value in params.items():
            query += [(name, str(v)) for v in (value if isinstance(value, list) else [value])]
        answer = request(node.http_port, "GET", f"/rest/{method}?{urlencode(query)}",
                         timeout=10)
        assert answer.status == 200, (method, answer.status, answer.body)
        found: dict[str, Any] = json.loads(answer.body)["subsonic-response"]
        return found

    def on_every_follower(self, check: Any, what: str) -> None:
        for node in self.followers:
            wait_until(lambda node=node: check(node), timeout=REPLICATED, interval=0.1,
                       what=f"{what} on replica {node.node_id}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("subsonic-user")
    with (
        killed_at_end() as started,
        Fronted(root, started, "--chunk-size", "16K", auth=True) as fronted,
    ):
        yield Cluster(fronted)


def test_an_api_key_made_through_the_proxy_works_on_every_replica_until_revoked(
        cluster: Cluster) -> None:
    made = cluster.alice.send_json("POST", "/auth/apikeys", {"name": "phone"})
    assert made.status == 201, made.body
    key, secret = made.json()["key"], made.json()["apiKey"]

    listed = cluster.alice.get("/auth/apikeys")  # read-your-writes through the proxy
    assert listed.status == 200 and listed.json() == {"keys": [key]}
    assert secret not in listed.body.decode()
    for node in cluster.fronted.nodes:
        wait_until(lambda node=node: cluster.rest(node, "ping", apiKey=secret)["status"] == "ok",
                   timeout=REPLICATED, interval=0.1, what=f"the key on {node.node_id}")

    revoked = cluster.alice.call("DELETE", f"/auth/apikeys/{key['id']}")
    assert revoked.status == 200, revoked.body

    def refused(node: ReplicaProcess) -> bool:
        found = cluster.rest(node, "ping", apiKey=secret)
        return found["status"] == "failed" and found["error"]["code"] == 44

    for node in cluster.fronted.nodes:
        wait_until(lambda node=node: refused(node), timeout=REPLICATED, interval=0.1,
                   what=f"the key revoked on {node.node_id}")


def test_a_key_made_under_an_idempotency_key_is_made_once_and_answered_again(
        cluster: Cluster) -> None:
    """A client's create sent again under its key (as after a lost answer) gets the same key
    and secret, served from the stored outcome, which holds neither."""
    sent = json.dumps({"name": "tablet"}).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": '"tablet-1"'}

    first = cluster.alice.call("POST", "/auth/apikeys", sent, headers)
    again = cluster.alice.call("POST", "/auth/apikeys", sent, headers)

    assert (first.status, again.status) == (201, 201), again.body
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    listed = cluster.alice.get("/auth/apikeys").json()["keys"]
    assert [k["id"] for k in listed if k["name"] == "tablet"] == [first.json()["key"]["id"]]
    for node in cluster.fronted.nodes:
        wait_until(lambda node=node: cluster.rest(
            node, "ping", apiKey=first.json()["apiKey"])["status"] == "ok",
            timeout=REPLICATED, interval=0.1, what=f"the key on {node.node_id}")


def test_another_users_key_cannot_be_revoked_through_the_proxy(cluster: Cluster) -> None:
    admin = cluster.fronted.admin()
    made = admin.send_json("POST", "/auth/apikeys", {"name": "admin's"})
    assert made.status == 201

    answer = cluster.alice.call("DELETE", f"/auth/apikeys/{made.json()['key']['id']}")

    assert answer.status == 403
    assert [k["name"] for k in admin.get("/auth/apikeys").json()["keys"]] == ["admin's"]


def test_favourites_and_plays_written_on_the_leader_show_on_every_follower(
        cluster: Cluster) -> None:
    first, second = cluster.songs
    for method, params in (("star", {"id": first}), ("setRating", {"id": first, "rating": 4}),
                           ("scrobble", {"id": [first, second]}),
                           ("scrobble", {"id": second, "submission": "false", "c": "car"})):
        found = cluster.rest(cluster.leader, method, **params)
        assert found["status"] == "ok", (method, found)

    def shown(node: ReplicaProcess) -> bool:
        song = cluster.rest(node, "getSong", id=first).get("song", {})
        starred = cluster.rest(node, "getStarred2")["starred2"].get("song", [])
        playing = cluster.rest(node, "getNowPlaying")["nowPlaying"].get("entry", [])
        return (song.get("userRating") == 4 and song.get("playCount") == 1
                and [s["id"] for s in starred] == [first]
                and [(e["id"], e["playerName"]) for e in playing] == [(second, "car")])

    cluster.on_every_follower(shown, "the star, rating, plays and now playing")

    assert cluster.rest(cluster.leader, "unstar", id=first)["status"] == "ok"
    cluster.on_every_follower(
        lambda node: cluster.rest(node, "getStarred2")["starred2"].get("song", []) == [],
        "the unstar")


def test_a_playlist_made_over_rest_is_the_libraries_own(cluster: Cluster) -> None:
    first, second = cluster.songs
    made = cluster.rest(cluster.leader, "createPlaylist", name="Road", songId=[first, second])
    assert made["status"] == "ok", made
    playlist_id = made["playlist"]["id"]
    updated = cluster.rest(cluster.leader, "updatePlaylist", playlistId=playlist_id,
                           songIndexToRemove=0, public="true")
    assert updated["status"] == "ok", updated

    def shown(node: ReplicaProcess) -> bool:
        found = cluster.rest(node, "getPlaylist", id=playlist_id).get("playlist", {})
        return [e["id"] for e in found.get("entry", [])] == [second] and found["public"]

    cluster.on_every_follower(shown, "the playlist")
    through_proxy = cluster.alice.get(f"/playlists/{playlist_id}")
    assert [i["song_id"] for i in through_proxy.json()["playlist"]["items"]] == [second]


def test_token_auth_works_on_a_follower_from_the_replicated_box(cluster: Cluster) -> None:
    salt = "c19b2d"
    token = hashlib.md5((PASSWORD + salt).encode()).hexdigest()  # the spec asks for md5

    def accepted(node: ReplicaProcess) -> bool:
        return cluster.rest(node, "ping", u="alice", t=token, s=salt)["status"] == "ok"

    cluster.on_every_follower(accepted, "token auth")


def test_a_write_sent_to_a_follower_is_421_for_the_proxy_to_redirect(cluster: Cluster) -> None:
    query = urlencode({"u": "alice", "p": PASSWORD, "id": cluster.songs[0], "f": "json"})

    answer = request(cluster.followers[0].http_port, "GET", f"/rest/star?{query}", timeout=10)

    assert answer.status == 421



def test_real_clients_star_rate_scrobble_and_edit_playlists(cluster: Cluster) -> None:
    """py-sonic (token auth: t + s, from the password box) writing on the leader directly
    (the proxy does not send Subsonic writes to the leader yet), and py-opensonic reading
    the same state, parsed into its types, on a follower."""
    first, second = cluster.songs
    writer = libsonic.Connection("http://127.0.0.1", "alice", PASSWORD,
                                 port=cluster.leader.http_port)
    before = writer.getSong(first)["song"]
    album, plays = before["albumId"], before.get("playCount", 0)

    writer.star(sids=[first], albumIds=[album])
    writer.setRating(second, 5)
    writer.scrobble(first, submission=True, listenTime=1_700_000_000)
    writer.scrobble(second, submission=False)
    made = writer.createPlaylist(name="Road", songIds=[first, second])["playlist"]
    writer.updatePlaylist(made["id"], name="Road trip", comment="for the car",
                          songIdsToAdd=[first], songIndexesToRemove=[0])

    reader = libopensonic.Connection("http://127.0.0.1", "alice", PASSWORD,
                                     port=cluster.followers[0].http_port, use_get=True)

    def replicated() -> bool:
        starred = reader.get_starred2()
        playlists = reader.get_playlists()
        return bool([s.id for s in starred.song or []] == [first]
                    and [a.id for a in starred.album or []] == [album]
                    and any(p.name == "Road trip" for p in playlists)
                    and any(e.id == second for e in reader.get_now_playing()))

    wait_until(replicated, timeout=REPLICATED, interval=0.2, what="alice's state on a follower")
    playlist = next(p for p in reader.get_playlists() if p.name == "Road trip")
    shown = reader.get_playlist(playlist.id)
    assert [e.id for e in shown.entry or []] == [second, first]
    assert shown.comment == "for the car" and shown.song_count == 2
    song = reader.get_song(first)
    assert song.play_count == plays + 1 and song.starred is not None
    assert reader.get_user("alice").username == "alice"

    writer.unstar(sids=[first], albumIds=[album])
    writer.deletePlaylist(made["id"])
    assert writer.getStarred2()["starred2"].get("song", []) == []


def _proxy_sends_subsonic_writes_to_the_leader() -> bool:
    """The proxy's routing of /rest writes by method name (proxy/decision.py's ``is_write``,
    made on another branch of issue 18); this test waits for it."""
    import proxy.decision

    return hasattr(proxy.decision, "is_write")


@pytest.mark.skipif(not _proxy_sends_subsonic_writes_to_the_leader(),
                    reason="the proxy does not send Subsonic writes to the leader yet")
def test_a_real_client_through_the_proxy_reads_its_own_writes(cluster: Cluster) -> None:
    first, second = cluster.songs
    client = libsonic.Connection("http://127.0.0.1", "alice", PASSWORD,
                                 port=cluster.fronted.proxy.port)

    client.star(sids=[second])
    assert [s["id"] for s in client.getStarred2()["starred2"]["song"]] == [second]
    made = client.createPlaylist(name="Via the proxy", songIds=[first])["playlist"]
    client.updatePlaylist(made["id"], songIdsToAdd=[second])
    assert [e["id"] for e in client.getPlaylist(made["id"])["playlist"]["entry"]] == [first,
                                                                                     second]
    plays = client.getSong(second)["song"].get("playCount", 0)
    client.scrobble(second)
    assert client.getSong(second)["song"]["playCount"] == plays + 1
    client.unstar(sids=[second])
    assert client.getStarred2()["starred2"].get("song", []) == []
