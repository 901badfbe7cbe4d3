"""Failures the randomized lab run (``make lab SCENARIO=random``) found, each reduced to its
smallest reproduction with real processes on 127.0.0.1. Each failed on the code before its
fix (the commit that added it says so), and guards that fix from now on."""

from __future__ import annotations

import http.client
import shutil
import signal
import time
from pathlib import Path

import pytest

from lab.workload import make_wav
from tests.helpers.replica import STARTUP, Cluster, ReplicaProcess, request, send_json, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PUSH_BATCH = 500  # ops per POST /sync/ops (distpotify/replication/push.py BATCH)


def test_a_follower_behind_a_song_uploaded_then_deleted_catches_up(
        tmp_path: Path, replicas: list[ReplicaProcess]) -> None:
    cluster = Cluster(tmp_path, replicas)
    follower, leader = cluster.add(1), cluster.add(2)
    follower.wait_ready()
    leader.wait_ready()
    wait_until(lambda: (cluster.agreed_leader() or {}).get("node_id") == 2, timeout=STARTUP)
    first = send_json(leader.http_port, "POST", "/playlists", {"name": "first"})
    playlist = first.json()["playlist"]["id"]
    wait_until(lambda: follower.get(f"/playlists/{playlist}").status == 200, timeout=20)
    follower.kill()
    # While the follower is down: a song, more than a push batch of other writes, and the
    # song's delete, so its upload and its delete travel in different batches.
    song = leader.post("/songs", make_wav("behind", 20_000), "audio/wav").json()["song"]["id"]
    for number in range(PUSH_BATCH + 10):
        assert send_json(leader.http_port, "POST", "/playlists",
                         {"name": f"p{number}"}).status == 201
    assert request(leader.http_port, "DELETE", f"/songs/{song}").status == 204

    follower.start(wait=False)

    deadline = time.monotonic() + 30  # a follower this far behind catches up in seconds
    while (follower.status() or {}).get("state") != "ACTIVE":
        assert time.monotonic() < deadline, (
            f"node 1 still {(follower.status() or {}).get('sync')} at head "
            f"{(follower.status() or {}).get('head')}; the leader is at "
            f"{(leader.status() or {}).get('head')}")
        time.sleep(0.5)
    assert follower.get(f"/songs/{song}").status == 404


def test_a_replica_that_only_followed_leads_alone_above_the_epoch_of_its_data(
        tmp_path: Path, replicas: list[ReplicaProcess]) -> None:
    """Node 1 followed node 2 and never led in node 2's epoch; restarted alone, it leads,
    and the edit it acknowledges then must survive node 2's return. It claimed the epoch
    after the last one it had claimed itself, no later than the song's upload: its edit
    carried a version older than the upload's and lost the merge on every replica, its own
    included (the random run's acknowledged edits and deletes undone)."""
    cluster = Cluster(tmp_path, replicas)
    follower, leader = cluster.add(1), cluster.add(2)
    follower.wait_ready()
    leader.wait_ready()
    wait_until(lambda: (cluster.agreed_leader() or {}).get("node_id") == 2, timeout=STARTUP)
    # A new leadership of node 2, so the song is written in an epoch node 1 never claimed.
    leader.kill()
    leader.start()
    wait_until(lambda: (cluster.agreed_leader() or {}).get("node_id") == 2, timeout=STARTUP)
    song = leader.post("/songs", make_wav("alone", 20_000), "audio/wav").json()["song"]
    upload_epoch = int(leader.status()["epoch"])  # type: ignore[index]
    wait_until(lambda: follower.get(f"/songs/{song['id']}").status == 200, timeout=20)
    follower.kill()
    leader.kill()

    follower.start()
    wait_until(lambda: (follower.status() or {}).get("role") == "leader", timeout=STARTUP)
    assert int(follower.status()["epoch"]) > upload_epoch  # type: ignore[index]
    edited = send_json(follower.http_port, "PATCH", f"/songs/{song['id']}",
                       {"album": "edited alone"})
    assert edited.status == 200, edited.body
    leader.start(wait=False)

    for node in (follower, leader):
        wait_until(lambda node=node: (answer := node.get(f"/songs/{song['id']}")).status == 200
                   and answer.json()["album"] == "edited alone", timeout=60,
                   what=f"the edit on node {node.node_id}")


def album(node: ReplicaProcess, song: str) -> str | None:
    answer = node.get(f"/songs/{song}")
    return answer.json().get("album") if answer.status == 200 else None


def test_a_lone_leader_that_pulls_newer_rows_leads_on_above_them(
        tmp_path: Path, replicas: list[ReplicaProcess]) -> None:
    """Node 2 leads alone in an epoch above its own data, but below an edit node 3 made
    while it was away; node 1 returns with that edit, which node 2 pulls by anti-entropy.
    Node 2's next edit must be the newer one: numbered in its epoch, it lost to the row it
    changed, on node 2 itself too, though it was acknowledged (a second reader found it)."""
    cluster = Cluster(tmp_path, replicas, "--anti-entropy-interval", "1")
    one, two, three = cluster.add(1), cluster.add(2), cluster.add(3)
    for node in (one, two, three):
        node.wait_ready()
    wait_until(lambda: (cluster.agreed_leader() or {}).get("node_id") == 3, timeout=STARTUP)
    song = three.post("/songs", make_wav("pulled", 20_000), "audio/wav").json()["song"]["id"]
    for node in (one, two):
        wait_until(lambda node=node: node.get(f"/songs/{song}").status == 200, timeout=30)
    two.kill()
    three.kill()
    three.start()  # a new epoch of node 3's, which node 2 never sees
    wait_until(lambda: (cluster.agreed_leader() or {}).get("node_id") == 3, timeout=STARTUP)
    assert send_json(three.http_port, "PATCH", f"/songs/{song}",
                     {"album": "three"}).status == 200
    wait_until(lambda: album(one, song) == "three", timeout=30)
    one.kill()
    three.kill()

    two.start()
    wait_until(lambda: (two.status() or {}).get("role") == "leader", timeout=STARTUP)
    one.start(wait=False)
    wait_until(lambda: album(two, song) == "three", timeout=60, what="node 1's row on node 2")
    edited = wait_until(lambda: (answer := send_json(two.http_port, "PATCH", f"/songs/{song}",
                                                      {"album": "two"})).status == 200
                        and answer, timeout=STARTUP, what="node 2 taking the edit")

    assert edited.json()["song"]["album"] == "two"
    for node in (two, one):
        wait_until(lambda node=node: album(node, song) == "two", timeout=30,
                   what=f"the edit on node {node.node_id}")


def three_with_a_playlist(tmp_path: Path, replicas: list[ReplicaProcess]) -> tuple[
        Cluster, list[ReplicaProcess], ReplicaProcess, str]:
    """Three replicas of --cluster-size 3, their leader, and the id of a playlist it made."""
    cluster = Cluster(tmp_path, replicas, "--cluster-size", "3")
    nodes = [cluster.add(node_id) for node_id in (1, 2, 3)]
    leader = cluster.leader()
    created = send_json(leader.http_port, "POST", "/playlists", {"name": "kept"})
    assert created.status == 201
    return cluster, nodes, leader, created.json()["playlist"]["id"]


def test_a_replica_whose_disk_was_lost_founds_nothing_cut_off_and_joins_the_others(
        tmp_path: Path, replicas: list[ReplicaProcess]) -> None:
    """Random run of seed 7373 (four replicas): node 3's data directory was lost, and it
    restarted cut off from the other replicas. Hearing nobody, it founded a cluster of its
    own, led it, answered 404 for the whole library to the clients the proxy sent it, and
    took writes; once the partition healed, the leader pushed to it from the cursor it had
    acknowledged before, and the rest of the library reached it only by anti-entropy,
    minutes later. With --cluster-size 3 an empty replica founds nothing until it hears a
    majority of three, and joins the cluster that holds data as soon as it hears it."""
    _, nodes, leader, playlist = three_with_a_playlist(tmp_path, replicas)
    lost = next(node for node in nodes if node is not leader)
    wait_until(lambda: lost.get(f"/playlists/{playlist}").status == 200, timeout=20)
    lost.kill()
    shutil.rmtree(lost.data_dir)
    others = [node for node in nodes if node is not lost]
    for node in others:  # cut off: the lost replica hears nobody
        node.signal(signal.SIGSTOP)
    before = len(lost.log_path.read_bytes())
    try:
        lost.start(wait=False)
        wait_until(lambda: b"it founds no cluster until it hears a majority"
                   in lost.log_path.read_bytes()[before:],
                   timeout=STARTUP, what="the lost replica to wait for the others")
        # Two seconds (twenty heartbeat intervals) of planning again: still waiting, no
        # leader, and nothing served or taken.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            status = lost.status()
            assert status is not None
            assert (status["state"], status["role"]) == ("JOINING", "follower"), status
            assert status["sync"]["waiting_for"] == "peers"
            time.sleep(0.1)
        assert lost.get(f"/playlists/{playlist}").status == 503
        refused = send_json(lost.http_port, "POST", "/playlists", {"name": "alone"})
        assert refused.status in (421, 503), refused.body
    finally:
        for node in others:
            node.signal(signal.SIGCONT)

    lost.wait_ready()
    assert lost.get(f"/playlists/{playlist}").status == 200
    assert b"will join the cluster" in lost.log_path.read_bytes()[before:]
    names = [p["name"] for p in leader.get("/playlists").json()["playlists"]]
    assert names == ["kept"]


def test_two_lost_disks_found_no_empty_cluster_beside_a_replica_still_joining(
        tmp_path: Path, replicas: list[ReplicaProcess]) -> None:
    """Random run of seed 5353 (three replicas, --auth on): one replica's disk was lost and,
    while it joined again (its snapshot installed, its chunks not all fetched), a second's;
    then the third, the one that held the whole library, was cut off from both. The two
    empty replicas were a majority of --cluster-size 3, so the second founded an empty
    cluster and led it; the library's sessions were refused there (its first admin was
    not), and the two histories had not merged 30 s after the faults. A replica heard
    holding data, ACTIVE or not, means the cluster exists: the empty one waits for it."""
    cluster, nodes, leader, playlist = three_with_a_playlist(tmp_path, replicas)
    joining, empty = [node for node in nodes if node is not leader]
    for node in (joining, empty):
        wait_until(lambda node=node: node.get(f"/playlists/{playlist}").status == 200,
                   timeout=20, what=f"the playlist on replica {node.node_id}")
        node.kill()
        shutil.rmtree(node.data_dir)
    joining.arm("snapshot.installed")  # dies with the snapshot installed, no chunk fetched
    joining.start(wait=False)
    joining.wait_crashed()
    joining.arm()
    leader.signal(signal.SIGSTOP)  # the library, cut off from both
    try:
        joining.start(wait=False)  # holds the snapshot: data, but JOINING until it ends
        before = len(empty.log_path.read_bytes()) if empty.log_path.exists() else 0
        empty.start(wait=False)

        def planned() -> bytes | None:  # the empty replica's plan: to wait, or to act
            text = empty.log_path.read_bytes()[before:]
            return text if b"it founds no cluster beside theirs" in text or b" will " in text \
                else None

        log = wait_until(planned, timeout=STARTUP, what="the empty replica's plan")
        assert b" will " not in log, "the empty replica decided without the library's holder"
        wait_until(lambda: joining.status() is not None and empty.status() is not None,
                   timeout=STARTUP, what="both to answer /status")
        # Two seconds (twenty heartbeat intervals) of planning again: neither founds, nobody
        # leads, nothing is served.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for node in (joining, empty):
                status = node.status()
                assert status is not None
                assert (status["state"], status["role"]) == ("JOINING", "follower"), status
            assert empty.status()["sync"]["waiting_for"] == "holders"
            time.sleep(0.1)
        assert empty.get(f"/playlists/{playlist}").status == 503
    finally:
        leader.signal(signal.SIGCONT)

    for node in (joining, empty):
        node.wait_ready()
        assert node.get(f"/playlists/{playlist}").status == 200
    log = empty.log_path.read_bytes()[before:]
    assert b"will join the cluster" in log and b"will found" not in log, log[-3000:]
    assert cluster.agreed_leader()["node_id"] == leader.node_id
    names = [p["name"] for p in leader.get("/playlists").json()["playlists"]]
    assert names == ["kept"]


def test_a_replica_back_after_another_leader_wrote_below_its_head_gets_those_writes_at_once(
        tmp_path: Path, replicas: list[ReplicaProcess]) -> None:
    """Random run of seed 7373 (four replicas), after the two fixes above: a replica synced
    (a join, a catch-up) from a leader whose oplog held writes below the head it synced to,
    writes another leader made cut off that reached this one by anti-entropy later: no push
    carries them. The replica heard its peers while it was still JOINING (no round for
    those), and its first round came with its anti-entropy tick: past the lab's 30 s, here
    an hour away. A replica that has just synced runs a round with each live peer at once."""
    cluster = Cluster(tmp_path, replicas, "--anti-entropy-interval", "3600")
    one, two = cluster.add(1), cluster.add(2)
    three = cluster.add(3, start=False)
    three.arm("upload.committed")  # dies with the song committed, before any push
    three.start(wait=False)
    wait_until(lambda: (cluster.agreed_leader() or {}).get("node_id") == 3, timeout=STARTUP)
    with pytest.raises((OSError, http.client.HTTPException)):
        three.post("/songs", make_wav("below", 20_000), "audio/wav")
    three.wait_crashed()
    wait_until(lambda: (cluster.agreed_leader([one, two]) or {}).get("node_id") == 2,
               timeout=STARTUP)
    later = send_json(two.http_port, "POST", "/playlists", {"name": "later"})
    assert later.status == 201, later.body
    playlist = later.json()["playlist"]["id"]
    wait_until(lambda: one.get(f"/playlists/{playlist}").status == 200, timeout=20)
    # Node 1 is away while node 3 returns (and leads again): node 2 pulls the song by the
    # round it runs with a peer heard again; node 3's oplog holds it at its first epoch.
    one.kill()
    three.arm()
    three.start(wait=False)
    song = wait_until(lambda: two.get("/songs").json()["songs"], timeout=30,
                      what="node 3's song on node 2")[0]["id"]
    before = len(one.log_path.read_bytes())

    one.start()

    wait_until(lambda: one.get(f"/songs/{song}").status == 200, timeout=10,
               what="node 3's song on node 1, back at a head above it")
    assert b"will rejoin the cluster" in one.log_path.read_bytes()[before:]
