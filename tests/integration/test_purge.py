"""Tombstones are purged everywhere once every replica has them and tombstone_ttl passed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.helpers.audio import make_audio
from tests.helpers.replica import (
    ReplicaProcess,
    agreed_cluster,
    request,
    send_json,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def tombstones(node: ReplicaProcess) -> int:
    conn = sqlite3.connect(f"file:{node.data_dir / 'metadata.sqlite3'}?mode=ro", uri=True)
    try:
        return sum(conn.execute(f"SELECT count(*) FROM {t} WHERE deleted = 1").fetchone()[0]
                   for t in ("songs", "chunks", "playlists", "playlist_items"))
    finally:
        conn.close()


def test_tombstones_are_purged_on_every_replica_after_the_ttl(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    cluster = agreed_cluster(tmp_path, replicas, "--tombstone-ttl", "2", "--chunk-size", "16K")
    leader = cluster.leader()
    song = leader.post("/songs", make_audio(tmp_path / "a.wav", "wav", seconds=1).read_bytes(),
                       "audio/wav").json()["song"]
    kept = send_json(leader.http_port, "POST", "/playlists", {"name": "kept"}).json()
    assert request(leader.http_port, "DELETE", f"/songs/{song['id']}").status == 204
    nodes = list(cluster.nodes.values())
    wait_until(lambda: all(tombstones(n) > 0 for n in nodes), timeout=10,
               what="the tombstones everywhere")

    wait_until(lambda: all(tombstones(n) == 0 for n in nodes), timeout=30,
               what="the tombstones purged everywhere")

    digests = [n.signed("GET", "/sync/digest").json()["buckets"] for n in nodes]
    assert digests[0] == digests[1] == digests[2]
    for node in nodes:
        assert node.get(f"/songs/{song['id']}").status == 404
        assert node.get(f"/playlists/{kept['playlist']['id']}").status == 200
        assert node.wait_ready()["replication"]["purged_through"] != [0, 0, 0]
