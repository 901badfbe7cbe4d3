"""A bounded oplog with real replicas: a follower or joiner whose cursor falls below the
leader's oplog floor takes a new snapshot at runtime, and no delete comes back."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from distpotify.model import Version
from tests.helpers.audio import make_wav
from tests.helpers.replica import (
    STARTUP,
    Cluster,
    ReplicaProcess,
    agreed_cluster,
    request,
    send_json,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

RETENTION = "5ops"  # a handful of writes pass any cursor


def query(node: ReplicaProcess, sql: str) -> list[Any]:
    conn = sqlite3.connect(f"file:{node.data_dir / 'metadata.sqlite3'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def tombstones(node: ReplicaProcess) -> int:
    return sum(query(node, f"SELECT count(*) FROM {t} WHERE deleted = 1")[0][0]
               for t in ("songs", "chunks", "playlists", "playlist_items"))


def floor(node: ReplicaProcess) -> str:
    found = query(node, "SELECT value FROM node_meta WHERE name = 'oplog_floor'")
    return str(found[0][0]) if found else ""


def everywhere(nodes: list[ReplicaProcess], song: dict[str, Any]) -> bool:
    """The song's row and every chunk file on every replica."""
    return all(n.get(f"/songs/{song['id']}").status == 200
               and len(song_files(n, song["id"])) == song["chunk_count"] for n in nodes)


def passed_by_compaction(leader: ReplicaProcess, follower: ReplicaProcess) -> bool:
    """The leader's oplog floor is past what the follower acknowledged."""
    status = leader.status() or {}
    links = ((status.get("replication") or {}).get("push") or {}).get("followers", {})
    cursor = links.get(str(follower.node_id), {}).get("cursor")
    return cursor is not None and floor(leader) > Version(*cursor).encode()


def song_files(node: ReplicaProcess, song_id: str) -> list[str]:
    return [n for n in os.listdir(node.data_dir / "chunks") if n.startswith(song_id)]


def upload(node: ReplicaProcess, tmp_path: Path, n: int) -> dict[str, Any]:
    data = make_wav(tmp_path / f"s{n}.wav", 300_000).read_bytes()
    answer = node.post("/songs", data[:-8] + n.to_bytes(8, "big"), "audio/wav")
    assert answer.status == 201, answer.body
    return answer.json()["song"]  # type: ignore[no-any-return]


def converged(nodes: list[ReplicaProcess]) -> bool:
    digests = [n.signed("GET", "/sync/digest").json()["buckets"] for n in nodes]
    return all(d == digests[0] for d in digests)


def start(tmp_path: Path, replicas: list[ReplicaProcess], *extra: str
          ) -> tuple[Cluster, ReplicaProcess, ReplicaProcess, ReplicaProcess]:
    cluster = agreed_cluster(tmp_path, replicas, "--oplog-retention", RETENTION,
                             "--chunk-size", "64K", *extra)
    leader = cluster.leader()
    followers = [n for n in cluster.nodes.values() if n is not leader]
    return cluster, leader, followers[0], followers[1]


def test_a_paused_follower_back_below_the_floor_takes_a_snapshot_and_no_delete_comes_back(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    """The follower misses a delete while paused; the tombstone is purged everywhere else and
    the ops compacted away, so nothing can hand it the delete. It comes back ACTIVE (it never
    restarted) holding the live row: the leader sends it to take a new snapshot, and nobody
    takes the row back from it meanwhile."""
    _, leader, away, other = start(tmp_path, replicas, "--tombstone-ttl", "2")
    doomed = upload(leader, tmp_path, 1)
    kept = upload(leader, tmp_path, 2)
    nodes = [leader, away, other]
    wait_until(lambda: everywhere(nodes, doomed) and everywhere(nodes, kept), timeout=20,
               what="the songs everywhere")

    away.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: leader.status()["peers"] and not next(  # type: ignore[index]
            p for p in leader.status()["peers"] if p["node_id"] == away.node_id)["up"],
            timeout=10, what="the paused follower DOWN")
        assert request(leader.http_port, "DELETE", f"/songs/{doomed['id']}").status == 204
        made = [send_json(leader.http_port, "POST", "/playlists", {"name": f"p{n}"}).json()
                for n in range(8)]
        wait_until(lambda: tombstones(leader) == 0 and tombstones(other) == 0
                   and leader.get(f"/songs/{doomed['id']}").status == 404, timeout=30,
                   what="the delete purged on the replicas that are up")
        wait_until(lambda: passed_by_compaction(leader, away), timeout=20,
                   what="the leader's oplog compacted past the follower's cursor")
    finally:
        away.signal(signal.SIGCONT)

    status = wait_until(lambda: (s := away.status()) and s["state"] == "ACTIVE"
                        and s["sync"]["snapshots_fetched"] == 1 and s, timeout=60,
                        what="the follower ACTIVE again with a new snapshot")
    assert status["sync"]["phase"] == "DONE"
    wait_until(lambda: converged(nodes), timeout=30, what="equal digests everywhere")
    for node in nodes:
        assert node.get(f"/songs/{doomed['id']}").status == 404
        assert node.get(f"/songs/{kept['id']}").status == 200
        names = {p["name"] for p in node.get("/playlists").json()["playlists"]}
        assert {m["playlist"]["name"] for m in made} <= names
    assert song_files(away, doomed["id"]) == []
    pushed = leader.status()["replication"]["push"]["followers"]  # type: ignore[index]
    assert pushed[str(away.node_id)]["resyncs"] >= 1


def test_a_restarted_follower_below_the_floor_catches_up_by_snapshot(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    """Away for less than the tombstone ttl, it starts to catch up by cursor; the leader no
    longer holds the ops past its cursor, so the catch-up becomes a join, and every write
    made while it was away, the delete included, is there once it is ACTIVE."""
    _, leader, away, other = start(tmp_path, replicas)
    doomed = upload(leader, tmp_path, 1)
    nodes = [leader, away, other]
    wait_until(lambda: everywhere(nodes, doomed), timeout=20, what="the song everywhere")

    away.kill()
    assert request(leader.http_port, "DELETE", f"/songs/{doomed['id']}").status == 204
    made = [send_json(leader.http_port, "POST", "/playlists", {"name": f"p{n}"}).json()
            for n in range(8)]
    wait_until(lambda: passed_by_compaction(leader, away), timeout=20,
               what="the leader's oplog compacted past the follower's cursor")
    away.start(wait=False)

    status = away.wait_ready(timeout=STARTUP + 30)
    assert status["sync"]["snapshots_fetched"] == 1
    assert "takes a new snapshot" in leader.log_path.read_text()
    wait_until(lambda: converged(nodes), timeout=30, what="equal digests everywhere")
    assert away.get(f"/songs/{doomed['id']}").status == 404
    names = {p["name"] for p in away.get("/playlists").json()["playlists"]}
    assert {m["playlist"]["name"] for m in made} <= names
    assert song_files(away, doomed["id"]) == []


def test_a_joiner_back_in_its_chunk_phase_below_the_floor_takes_a_new_snapshot(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    """A joiner killed while it fetched chunks comes back after its snapshot has fallen below
    the leader's oplog floor: it fetches a new snapshot instead of finishing the old one."""
    cluster, leader, _, _ = start(tmp_path, replicas)
    songs = [upload(leader, tmp_path, n) for n in range(6)]
    joiner = cluster.add(4, start=False)
    joiner.arm("snapshot.installed")
    joiner.start(wait=False)
    joiner.wait_crashed(timeout=STARTUP + 30)
    joiner.arm()
    snapshot = query(joiner, "SELECT max(version) FROM oplog")[0][0]
    doomed = songs[0]
    assert request(leader.http_port, "DELETE", f"/songs/{doomed['id']}").status == 204
    made = [send_json(leader.http_port, "POST", "/playlists", {"name": f"p{n}"}).json()
            for n in range(8)]
    wait_until(lambda: floor(leader) > snapshot, timeout=20,
               what="the leader's oplog compacted past the joiner's snapshot")
    joiner.start(wait=False)

    status = joiner.wait_ready(timeout=90)

    assert status["sync"]["snapshots_fetched"] == 2
    wait_until(lambda: converged(list(cluster.nodes.values())), timeout=30,
               what="equal digests everywhere")
    assert joiner.get(f"/songs/{doomed['id']}").status == 404
    assert song_files(joiner, doomed["id"]) == []
    names = {p["name"] for p in joiner.get("/playlists").json()["playlists"]}
    assert {m["playlist"]["name"] for m in made} <= names
    for song in songs[1:]:
        assert len(song_files(joiner, song["id"])) == song["chunk_count"]
