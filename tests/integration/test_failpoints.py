"""Real replicas SIGKILLed by a failpoint at each step of an upload, a push's apply, a join
and a purge, then restarted: whole song or nothing, no op lost, no delete undone."""

from __future__ import annotations

import http.client
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.audio import make_wav
from tests.helpers.replica import (
    STARTUP,
    Cluster,
    ReplicaProcess,
    request,
    send_json,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHUNKS = ("--chunk-size", "64K")


def song_bytes(tmp_path: Path, n: int) -> bytes:
    data = make_wav(tmp_path / f"s{n}.wav", 300_000).read_bytes()
    return data[:-8] + n.to_bytes(8, "big")  # each one different


def upload(node: ReplicaProcess, data: bytes) -> dict[str, Any]:
    answer = node.post("/songs", data, "audio/wav")
    assert answer.status == 201, answer.body
    return answer.json()["song"]  # type: ignore[no-any-return]


def files(node: ReplicaProcess) -> list[str]:
    return sorted(os.listdir(node.data_dir / "chunks"))


def whole(node: ReplicaProcess, song: dict[str, Any], data: bytes) -> bool:
    """The song's row, every chunk file, and its stream the bytes uploaded."""
    stream = node.get(f"/songs/{song['id']}/stream")
    return (stream.status == 200 and stream.body == data
            and len([f for f in files(node) if f.startswith(song["id"])]) == song["chunk_count"])


def converged(nodes: list[ReplicaProcess]) -> bool:
    digests = [n.signed("GET", "/sync/digest").json()["buckets"] for n in nodes]
    return all(d == digests[0] for d in digests)


def playlists(node: ReplicaProcess) -> set[str]:
    return {p["name"] for p in node.get("/playlists").json()["playlists"]}


def tombstones(node: ReplicaProcess) -> int:
    conn = sqlite3.connect(f"file:{node.data_dir / 'metadata.sqlite3'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM songs WHERE deleted = 1").fetchone()[0])
    finally:
        conn.close()


def settled(cluster: Cluster, leader_id: int) -> list[ReplicaProcess]:
    """Every replica up, ``leader_id`` leading and the digests equal; the replicas."""
    nodes = list(cluster.nodes.values())
    wait_until(lambda: (s := cluster.agreed_leader()) and s["node_id"] == leader_id
               and all((n.status() or {}).get("state") == "ACTIVE" for n in nodes),
               timeout=STARTUP + 30, what=f"replica {leader_id} leading, every replica ACTIVE")
    wait_until(lambda: converged(nodes), timeout=30, what="equal digests everywhere")
    return nodes


@pytest.mark.parametrize("point", [
    "upload.chunks_written", "upload.chunks_durable", "upload.committed"])
def test_an_upload_killed_at_each_step_leaves_the_whole_song_or_nothing(
    tmp_path: Path, replicas: list[ReplicaProcess], point: str
) -> None:
    node = ReplicaProcess(1, tmp_path, *CHUNKS)
    replicas.append(node)
    node.arm(point)
    node.start()
    data = song_bytes(tmp_path, 1)

    with pytest.raises((OSError, http.client.HTTPException)):  # killed before it answered
        node.post("/songs", data, "audio/wav")
    node.wait_crashed()
    node.arm()
    node.start()

    songs = node.get("/songs").json()["songs"]
    if point == "upload.committed":
        assert len(songs) == 1 and whole(node, songs[0], data)
        assert node.post("/songs", data, "audio/wav").status == 200  # the same bytes: stored
    else:
        assert songs == [] and files(node) == []  # start-up removed the temp and orphan files
        assert whole(node, upload(node, data), data)


@pytest.mark.parametrize("point", ["apply.chunks_fetched", "apply.committed"])
def test_a_follower_killed_while_it_applies_a_push_loses_no_op(
    tmp_path: Path, replicas: list[ReplicaProcess], point: str
) -> None:
    cluster = Cluster(tmp_path, replicas, *CHUNKS)
    follower = cluster.add(1, start=False)
    follower.arm(point)
    follower.start(wait=False)
    leader = cluster.add(2)
    settled(cluster, 2)
    data = song_bytes(tmp_path, 1)

    song = upload(leader, data)
    follower.wait_crashed()
    made = send_json(leader.http_port, "POST", "/playlists", {"name": "while down"})
    assert made.status == 201, made.body
    follower.arm()
    follower.start(wait=False)

    for node in settled(cluster, 2):
        assert whole(node, song, data)
        assert playlists(node) == {"while down"}


def test_a_leader_killed_before_it_stores_a_follower_ack_loses_no_op(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    """The follower applied the batch; the leader dies before its cursor moves, comes back,
    takes the lead again and pushes the batch again: applied once, nothing lost.
    Asynchronous (--sync-replicas 0), so the upload is answered before the push: with a
    semi-synchronous ack the leader would die before answering it."""
    cluster = Cluster(tmp_path, replicas, *CHUNKS, "--sync-replicas", "0")
    follower = cluster.add(1)
    leader = cluster.add(2, start=False)
    leader.arm("push.acknowledged")
    leader.start(wait=False)
    settled(cluster, 2)
    data = song_bytes(tmp_path, 1)

    song = upload(leader, data)  # answered once durable here, before the push
    leader.wait_crashed()
    wait_until(lambda: whole(follower, song, data), timeout=10, what="the song on the follower")
    leader.arm()
    leader.start(wait=False)

    for node in settled(cluster, 2):
        assert whole(node, song, data)
        assert node.get("/songs").json()["total"] == 1
    assert upload(leader, song_bytes(tmp_path, 2))


@pytest.mark.parametrize("point", ["snapshot.fetched", "snapshot.installed",
                                   "join.chunks_fetched"])
def test_a_joiner_killed_at_each_step_of_its_join_joins_whole_on_restart(
    tmp_path: Path, replicas: list[ReplicaProcess], point: str
) -> None:
    cluster = Cluster(tmp_path, replicas, *CHUNKS)
    leader = cluster.add(2)
    settled(cluster, 2)
    uploaded = {n: song_bytes(tmp_path, n) for n in range(3)}
    songs = {n: upload(leader, data) for n, data in uploaded.items()}
    assert request(leader.http_port, "DELETE", f"/songs/{songs[0]['id']}").status == 204
    joiner = cluster.add(1, start=False)
    joiner.arm(point)
    joiner.start(wait=False)
    joiner.wait_crashed(timeout=STARTUP + 30)
    joiner.arm()
    joiner.start(wait=False)

    for node in settled(cluster, 2):
        assert node.get(f"/songs/{songs[0]['id']}").status == 404
        assert not [f for f in files(node) if f.startswith(songs[0]["id"])]
        for n in (1, 2):
            assert whole(node, songs[n], uploaded[n])
    assert joiner.status()["sync"]["phase"] == "DONE"  # type: ignore[index]


def test_a_leader_killed_after_it_wrote_a_purge_watermark_undoes_no_delete(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    cluster = Cluster(tmp_path, replicas, *CHUNKS, "--tombstone-ttl", "2")
    follower = cluster.add(1)
    leader = cluster.add(2, start=False)
    leader.arm("purge.written")
    leader.start(wait=False)
    settled(cluster, 2)
    doomed, kept = song_bytes(tmp_path, 1), song_bytes(tmp_path, 2)
    gone, song = upload(leader, doomed), upload(leader, kept)
    wait_until(lambda: whole(follower, gone, doomed), timeout=20, what="the song everywhere")

    assert request(leader.http_port, "DELETE", f"/songs/{gone['id']}").status == 204
    leader.wait_crashed(timeout=30)
    leader.arm()
    leader.start(wait=False)

    nodes = settled(cluster, 2)
    wait_until(lambda: all(tombstones(n) == 0 for n in nodes), timeout=30,
               what="the tombstone purged everywhere")
    for node in nodes:
        assert node.get(f"/songs/{gone['id']}").status == 404
        assert not [f for f in files(node) if f.startswith(gone["id"])]
        assert whole(node, song, kept)


def test_a_leader_killed_after_it_compacted_its_oplog_loses_no_op(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    cluster = Cluster(tmp_path, replicas, *CHUNKS, "--oplog-retention", "5ops")
    cluster.add(1)
    leader = cluster.add(2, start=False)
    leader.arm("oplog.compacted")
    leader.start(wait=False)
    settled(cluster, 2)

    names = set()
    for n in range(10):
        made = send_json(leader.http_port, "POST", "/playlists", {"name": f"p{n}"})
        assert made.status == 201, made.body
        names.add(f"p{n}")
    leader.wait_crashed(timeout=30)
    leader.arm()
    leader.start(wait=False)

    for node in settled(cluster, 2):
        assert playlists(node) == names
    made = send_json(leader.http_port, "POST", "/playlists", {"name": "after"})
    assert made.status == 201, made.body
    wait_until(lambda: all("after" in playlists(n) for n in cluster.nodes.values()),
               timeout=20, what="a write after the restart everywhere")
