"""A new replica joins a running cluster by snapshot and chunks; a restarted one rejoins."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.helpers.audio import make_wav
from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import (
    STARTUP,
    Cluster,
    ReplicaProcess,
    agreed_cluster,
    send_json,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SONGS = 50
CHUNKS = SONGS * 32


@pytest.fixture
def library(tmp_path: Path, replicas: list[ReplicaProcess]) -> Cluster:
    """Three replicas holding 50 songs of 1 MiB in 32 KiB chunks (1,600 chunk files), fully
    replicated."""
    cluster = agreed_cluster(tmp_path, replicas, "--chunk-size", "32K")
    boss = cluster.leader()
    wav = make_wav(tmp_path / "base.wav", 1024 * 1024)
    data = wav.read_bytes()
    for n in range(SONGS):
        answer = boss.post("/songs", data[:-8] + n.to_bytes(8, "big"), "audio/wav")
        assert answer.status == 201, answer.body

    def replicated() -> bool:
        return all(len(os.listdir(node.data_dir / "chunks")) == CHUNKS
                   for node in cluster.nodes.values())

    wait_until(replicated, timeout=60, what="the library on every replica")
    return cluster


def verified_chunks(node: ReplicaProcess) -> dict[str, str]:
    """Every chunk file of ``node`` and its SHA-256, checked against the registry."""
    files = {}
    songs = node.get("/songs?limit=500").json()["songs"]
    for song in songs:
        for chunk in node.get(f"/songs/{song['id']}").json()["chunks"]:
            name = f"{song['id']}_{chunk['idx']}"
            data = (node.data_dir / "chunks" / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == chunk["sha256"], name
            files[name] = chunk["sha256"]
    return files


def status_of(node: ReplicaProcess) -> dict | None:
    return node.status()


def test_an_empty_replica_joins_and_ends_active_with_every_chunk(library: Cluster) -> None:
    newcomer = library.add(4)
    phases = set()

    def active() -> dict | None:
        status = status_of(newcomer)
        if status:
            phases.add(status["sync"]["phase"])
        return status if status and status["state"] == "ACTIVE" else None

    final = wait_until(active, timeout=90, what="the new replica to be ACTIVE")

    assert final["sync"]["snapshots_fetched"] == 1
    assert final["sync"]["chunks_done"] == final["sync"]["chunks_total"] == CHUNKS
    assert phases & {"ANNOUNCING", "SNAPSHOT", "CHUNKS"}
    assert verified_chunks(newcomer).keys() == set(os.listdir(newcomer.data_dir / "chunks"))
    assert len(os.listdir(newcomer.data_dir / "chunks")) == CHUNKS
    leader = wait_until(library.agreed_leader, timeout=10, what="agreement with four")
    assert 4 in {p["node_id"] for p in leader["peers"]} or leader["node_id"] == 4


def test_a_join_killed_mid_chunks_resumes_without_a_second_snapshot(library: Cluster) -> None:
    newcomer = library.add(4)

    def downloading() -> bool:
        sync = (status_of(newcomer) or {}).get("sync", {})
        return sync.get("phase") == "CHUNKS" and sync.get("chunks_done", 0) > 0

    wait_until(downloading, timeout=60, interval=0.005, what="the chunk phase")
    newcomer.kill()
    partial = len(os.listdir(newcomer.data_dir / "chunks"))
    newcomer.start(wait=False)
    final = newcomer.wait_ready(timeout=90)

    assert 0 < partial < CHUNKS
    assert final["sync"]["snapshots_fetched"] == 1
    assert len(verified_chunks(newcomer)) == CHUNKS


def test_a_restarted_follower_rejoins_by_cursor_without_a_snapshot(library: Cluster) -> None:
    leader = library.nodes[wait_until(library.agreed_leader, timeout=10)["node_id"]]
    follower = next(n for n in library.nodes.values() if n is not leader)
    follower.kill()
    made = [send_json(leader.http_port, "POST", "/playlists", {"name": f"while away {n}"})
            for n in range(5)]

    follower.start(wait=False)
    status = follower.wait_ready(timeout=30)

    assert status["sync"]["snapshots_fetched"] == 0
    names = {p["id"] for p in follower.get("/playlists").json()["playlists"]}
    assert {m.json()["playlist"]["id"] for m in made} <= names


def test_a_join_survives_the_death_of_its_leader(library: Cluster) -> None:
    leader = wait_until(library.agreed_leader, timeout=10)
    newcomer = library.add(4)

    def joining() -> bool:
        sync = (status_of(newcomer) or {}).get("sync", {})
        return sync.get("phase") in ("SNAPSHOT", "CHUNKS")

    wait_until(joining, timeout=60, interval=0.005, what="the join to start")
    library.nodes[leader["node_id"]].kill()
    final = newcomer.wait_ready(timeout=90)

    assert final["state"] == "ACTIVE"
    assert len(verified_chunks(newcomer)) == CHUNKS


def test_a_replica_whose_database_is_unreadable_bootstraps_again(library: Cluster) -> None:
    leader = library.nodes[wait_until(library.agreed_leader, timeout=10)["node_id"]]
    follower = next(n for n in library.nodes.values() if n is not leader)
    follower.kill()
    database = follower.data_dir / "metadata.sqlite3"
    for suffix in ("-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    database.write_bytes(b"this is not a database" * 1000)

    follower.start(wait=False)
    final = follower.wait_ready(timeout=90)

    assert final["sync"]["snapshots_fetched"] == 1
    assert len(verified_chunks(follower)) == CHUNKS
    assert list(follower.data_dir.glob("metadata.sqlite3.unreadable-*"))
    assert "is unreadable" in follower.log_path.read_text()


def test_the_proxy_reads_from_a_new_replica_without_a_restart(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    cluster = Cluster(tmp_path, replicas)
    for node_id in (3, 4):
        cluster.add(node_id)
    wait_until(lambda: (s := cluster.agreed_leader()) and s["node_id"] == 4, timeout=STARTUP)
    song = cluster.nodes[4].post("/songs", make_wav(tmp_path / "s.wav", 200_000).read_bytes(),
                                 "audio/wav").json()["song"]
    (tmp_path / "proxy").mkdir()
    proxy = ProxyProcess(tmp_path / "proxy", [cluster.nodes[3], cluster.nodes[4]]).start()
    try:
        proxy.wait_view(lambda view: view["leader"] is not None)
        newcomer = cluster.add(1)  # lower than the leader: it joins as a follower
        newcomer.wait_ready(timeout=60)
        served: set[str] = set()

        def read_from_the_newcomer() -> bool:
            answer = proxy.get(f"/songs/{song['id']}/stream")
            assert answer.status == 200 and hashlib.sha256(answer.body).hexdigest() == song[
                "sha256"]
            served.add(answer.headers["x-served-by"])
            return "1" in served

        wait_until(read_from_the_newcomer, timeout=20, what="a read served by replica 1")
    finally:
        assert proxy.process is not None
        proxy.process.kill()
        proxy.process.wait(10)
    assert "4" not in served  # the leader serves no read while followers are healthy
