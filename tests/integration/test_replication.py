"""Three real replicas: every acknowledged write and every chunk reaches every replica."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.helpers.audio import make_audio, make_wav
from tests.helpers.replica import (
    Cluster,
    ReplicaProcess,
    agreed_cluster,
    request,
    send_json,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def cluster(tmp_path: Path, replicas: list[ReplicaProcess]) -> Cluster:
    return agreed_cluster(tmp_path, replicas, "--chunk-size", "16K", "--anti-entropy-interval", "1")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(node: ReplicaProcess) -> list[str]:
    return node.signed("GET", "/sync/digest").json()["buckets"]  # type: ignore[no-any-return]


def converged(nodes: list[ReplicaProcess]) -> bool:
    digests = [digest(node) for node in nodes]
    return all(d == digests[0] for d in digests)


def upload(node: ReplicaProcess, data: bytes, kind: str = "audio/wav") -> dict:
    answer = node.post("/songs", data, kind)
    assert answer.status in (200, 201), answer.body
    return answer.json()["song"]  # type: ignore[no-any-return]


def test_write_on_the_leader_reads_back_byte_for_byte_from_each_follower(
    cluster: Cluster, tmp_path: Path
) -> None:
    audio = make_audio(tmp_path / "a.mp3", "mp3", seconds=6, tags={"title": "Everywhere"})
    data = audio.read_bytes()
    song = upload(cluster.leader(), data, "audio/mpeg")

    for node in cluster.nodes.values():
        def visible(node: ReplicaProcess = node) -> bool:
            return node.get(f"/songs/{song['id']}").status == 200

        wait_until(visible, timeout=5, what=f"the song on replica {node.node_id}")
        stream = node.get(f"/songs/{song['id']}/stream")
        part = node.get(f"/songs/{song['id']}/stream", {"Range": "bytes=10000-30000"})
        assert stream.headers["x-served-by"] == str(node.node_id)
        assert sha(stream.body) == sha(data) and part.body == data[10000:30001]
        assert node.get(f"/songs/{song['id']}").json()["title"] == "Everywhere"


def test_a_follower_that_was_down_catches_up_on_fifty_writes(
    cluster: Cluster, tmp_path: Path
) -> None:
    boss = cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not boss)
    base = make_audio(tmp_path / "b.wav", "wav", seconds=1).read_bytes()
    keep = upload(boss, base)
    follower.kill()

    songs = [upload(boss, base + bytes([n]) * 4096) for n in range(10)]
    playlists = [send_json(boss.http_port, "POST", "/playlists", {"name": f"p{n}"}).json()
                 ["playlist"] for n in range(10)]
    for n in range(20):
        send_json(boss.http_port, "POST", f"/playlists/{playlists[n % 10]['id']}/items",
                  {"song_id": songs[n % 10]["id"]})
    for song in songs[:5]:
        assert request(boss.http_port, "DELETE", f"/songs/{song['id']}").status == 204
    for playlist in playlists[:5]:
        send_json(boss.http_port, "PATCH", f"/playlists/{playlist['id']}", {"name": "renamed"})
    follower.start()

    wait_until(lambda: converged(list(cluster.nodes.values())), timeout=20, what="convergence")
    listing = follower.get("/songs?limit=100").json()
    assert {s["id"] for s in listing["songs"]} == {keep["id"]} | {s["id"] for s in songs[5:]}
    chunk_files = set(os.listdir(follower.data_dir / "chunks"))
    assert chunk_files == set(os.listdir(boss.data_dir / "chunks"))
    renamed = follower.get(f"/playlists/{playlists[0]['id']}").json()["playlist"]
    assert renamed["name"] == "renamed" and renamed["items"] == []


def test_missing_and_corrupt_chunk_files_are_repaired_on_read(
    cluster: Cluster, tmp_path: Path
) -> None:
    data = make_audio(tmp_path / "c.wav", "wav", seconds=2).read_bytes()
    boss = cluster.leader()
    song = upload(boss, data)
    follower = next(n for n in cluster.nodes.values() if n is not boss)
    wait_until(lambda: follower.get(f"/songs/{song['id']}").status == 200, timeout=5)
    chunks_dir = follower.data_dir / "chunks"
    (chunks_dir / f"{song['id']}_0").unlink()
    corrupt = chunks_dir / f"{song['id']}_1"
    corrupt.write_bytes(b"\0" * corrupt.stat().st_size)

    whole = follower.get(f"/songs/{song['id']}/stream")
    chunk1 = follower.get(f"/songs/{song['id']}/chunks/1")

    assert whole.status == 200 and sha(whole.body) == sha(data)
    assert sha(chunk1.body) == chunk1.headers["etag"].strip('"')
    assert (chunks_dir / f"{song['id']}_0").exists()
    assert sha(corrupt.read_bytes()) == chunk1.headers["etag"].strip('"')
    repair = follower.wait_ready()["replication"]["repair"]
    assert repair["missing"] >= 1 and repair["corrupt"] >= 1 and repair["repaired"] >= 2


def test_writes_survive_the_leader_dying_mid_batch(cluster: Cluster, tmp_path: Path) -> None:
    boss = cluster.leader()
    wav = make_wav(tmp_path / "big.wav", 6 * 1024 * 1024)
    song = upload(boss, wav.read_bytes())
    acked = [send_json(boss.http_port, "POST", "/playlists", {"name": f"n{n}"}).json()
             ["playlist"]["id"] for n in range(30)]

    boss.kill()
    survivors = [n for n in cluster.nodes.values() if n is not boss]
    wait_until(lambda: cluster.agreed_leader(survivors), timeout=10, what="a new leader")
    boss.start()

    nodes = list(cluster.nodes.values())
    wait_until(lambda: converged(nodes), timeout=30, what="convergence")
    for node in nodes:
        names = {p["id"] for p in node.get("/playlists").json()["playlists"]}
        assert set(acked) <= names
        assert sha(node.get(f"/songs/{song['id']}/stream").body) == song["sha256"]


def test_sync_refuses_malformed_batches_whole(cluster: Cluster) -> None:
    node = cluster.nodes[1]
    before = digest(node)
    good = {"version": "0000000009-00009-000000000001", "entity": "playlists",
            "key": "5a5e1c8e-3c3b-4e6a-9d7e-2f0b8e1d4c11", "fields": {"name": "x", "deleted": 0}}
    for bad in ({**good, "entity": "passwords"}, {**good, "key": "../../etc"},
                {**good, "version": "yesterday"}, {**good, "fields": {"name": ["x"]}},
                {**good, "fields": {"colour": "red"}}, "not an op"):
        answer = node.signed("POST", "/sync/ops",
                             json.dumps({"source": None, "ops": [good, bad]}).encode(),
                             {"Content-Type": "application/json"})
        assert answer.status == 400, bad
        assert answer.json()["error"] == "bad_request"
    assert digest(node) == before
