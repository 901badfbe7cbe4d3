"""A replica whose disk fills, with real processes on a small tmpfs data dir: uploads answer
507 and leave no chunk behind, reads and heartbeats go on, and space freed is used again."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.audio import make_wav
from tests.helpers.replica import STARTUP, Cluster, ReplicaProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DISK = 32 << 20  # the full replica's data dir: a tmpfs this big
SONG = 1 << 20  # bytes of each uploaded song
BLOCK = 1 << 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/node2``, the data dir of replica 2, on a tmpfs of DISK bytes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "node2"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount)],
                   check=True)
    yield mount
    # Lazily: a replica the test failed to kill must not keep the mount forever.
    subprocess.run(["umount", "-l", str(mount)], check=False)


def free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file until at most ``leave`` bytes are free; that file."""
    filler = disk / "filler"
    # Unbuffered: a buffered file's close would flush what ENOSPC left in its buffer, and
    # raise ENOSPC again outside the suppress.
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):  # ENOSPC: full
        while True:
            f.write(b"\0" * BLOCK)
    with open(filler, "r+b") as f:
        f.truncate(max(0, os.path.getsize(filler) - leave))
    return filler


def song_bytes(tmp_path: Path, n: int) -> bytes:
    data = make_wav(tmp_path / f"s{n}.wav", SONG).read_bytes()
    return data[:-8] + n.to_bytes(8, "big")  # each one different


def files(node: ReplicaProcess) -> set[str]:
    return set(os.listdir(node.data_dir / "chunks"))


def upload(node: ReplicaProcess, data: bytes) -> Any:
    return node.post("/songs", data, "audio/wav")


def upload_multipart(node: ReplicaProcess, data: bytes) -> Any:
    head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n")
    return node.post("/songs", head + data + b"\r\n--b--\r\n", "multipart/form-data; boundary=b")


def test_a_full_disk_answers_507_keeps_serving_and_recovers_by_itself(
    tmp_path: Path, small_disk: Path, replicas: list[ReplicaProcess]
) -> None:
    """Replica 2 (the leader: the highest id) fills its disk: a raw upload whose body (spooled
    straight into chunk files) cannot be stored from its first byte or from its middle, and a
    multipart one whose body fits but whose chunks do not, all get 507 and leave no file;
    the stored song still streams from it, its follower still sees it up and leading;
    once the filler goes, uploads work again and reach the follower."""
    cluster = Cluster(tmp_path, replicas, "--chunk-size", "256K")
    follower, leader = cluster.add(1), cluster.add(2)
    assert leader.data_dir == small_disk
    wait_until(lambda: (s := cluster.agreed_leader()) and s["node_id"] == 2, timeout=STARTUP,
               what="replica 2 leading")
    stored = upload(leader, song_bytes(tmp_path, 1))
    assert stored.status == 201, stored.body
    song = stored.json()["song"]
    wait_until(lambda: follower.get(f"/songs/{song['id']}").status == 200, timeout=20,
               what="the song on the follower")
    before = files(leader)

    filler = fill(small_disk, leave=0)
    no_spool = upload(leader, song_bytes(tmp_path, 2))
    fill(small_disk, leave=SONG // 2)  # half of the body's chunks fit
    half_spooled = upload(leader, song_bytes(tmp_path, 2))
    fill(small_disk, leave=SONG + SONG // 2)  # room for the spooled body, not its chunks too
    no_chunks = upload_multipart(leader, song_bytes(tmp_path, 3))

    # A raw body's pieces are written by the pool: the spool refuses it ("could not be
    # stored") once one fails, or the upload does at its end ("could not be written").
    assert "a file could not be written" in no_chunks.json()["message"]  # a chunk
    for answer in (no_spool, half_spooled, no_chunks):
        assert answer.status == 507, answer.body
        assert answer.json()["error"] == "insufficient_storage"
        assert "disk is full" in answer.json()["message"]
    # No chunk of any, not even a temp file (a refused spool's pieces go once it has stopped).
    wait_until(lambda: files(leader) == before, timeout=10, what="no file of the refused")
    assert "POST /songs refused: [Errno 28] No space left on device" in leader.log_path.read_text()
    assert leader.get("/songs").json()["total"] == 1
    streamed = leader.get(f"/songs/{song['id']}/stream")
    assert streamed.status == 200 and streamed.body == song_bytes(tmp_path, 1)
    status = follower.status()
    assert status is not None and status["leader_id"] == 2
    assert next(p for p in status["peers"] if p["node_id"] == 2)["up"]

    filler.unlink()
    again = upload(leader, song_bytes(tmp_path, 3))
    assert again.status == 201, again.body
    new = again.json()["song"]
    wait_until(lambda: follower.get(f"/songs/{new['id']}").status == 200, timeout=20,
               what="the upload after recovery on the follower")
    assert follower.get(f"/songs/{new['id']}/stream").body == song_bytes(tmp_path, 3)


def test_a_follower_whose_disk_fills_catches_up_once_space_returns(
    tmp_path: Path, small_disk: Path, replicas: list[ReplicaProcess]
) -> None:
    """Replica 2 follows here (replica 3 leads): pushes it cannot store fail without a half
    chunk and are retried; when space returns it holds every song, whole."""
    cluster = Cluster(tmp_path, replicas, "--chunk-size", "256K")
    nodes = [cluster.add(node_id) for node_id in (1, 2, 3)]
    full, leader = nodes[1], nodes[2]
    wait_until(lambda: (s := cluster.agreed_leader()) and s["node_id"] == 3, timeout=STARTUP,
               what="replica 3 leading")
    filler = fill(small_disk, leave=SONG // 2)

    songs = []
    for n in range(3):
        answer = upload(leader, song_bytes(tmp_path, n))
        assert answer.status == 201, answer.body
        songs.append(answer.json()["song"])
    wait_until(lambda: all(nodes[0].get(f"/songs/{s['id']}").status == 200 for s in songs),
               timeout=30, what="the songs on the other follower")
    assert full.get(f"/songs/{songs[-1]['id']}").status == 404
    assert not any(name.endswith(".tmp") for name in files(full))
    assert full.status()["state"] == "ACTIVE"  # type: ignore[index]

    filler.unlink()
    wait_until(lambda: all(full.get(f"/songs/{s['id']}").status == 200 for s in songs),
               timeout=60, what="the songs on the follower whose disk was full")
    for n, song in enumerate(songs):
        assert full.get(f"/songs/{song['id']}/stream").body == song_bytes(tmp_path, n)


def test_a_replica_restarted_on_a_full_disk_refuses_to_start_and_keeps_its_database(
    tmp_path: Path, small_disk: Path, replicas: list[ReplicaProcess]
) -> None:
    """Its database cannot be opened while the disk is full: the replica says so and exits,
    the database untouched, and starts with it once space returns. It took the failure for
    an unreadable database before: moved it aside, and, once space returned, started empty
    (the random lab run: the writes only it held were lost)."""
    cluster = Cluster(tmp_path, replicas)
    alone = cluster.add(2)  # on the small disk; alone, it leads and holds the only copy
    wait_until(lambda: (alone.status() or {}).get("role") == "leader", timeout=STARTUP,
               what="replica 2 leading alone")
    stored = upload(alone, song_bytes(tmp_path, 1))
    assert stored.status == 201, stored.body
    song = stored.json()["song"]["id"]
    alone.stop()  # a clean stop: SQLite removes its WAL and shared-memory files
    filler = fill(small_disk, leave=0)

    alone.start(wait=False)
    assert alone.process is not None
    assert alone.process.wait(timeout=STARTUP) == 1
    assert not list(small_disk.glob("metadata.sqlite3.unreadable-*"))  # not set aside
    assert "distpotify: cannot open the database" in alone.log()  # one line, no traceback

    filler.unlink()
    alone.start()
    assert alone.get(f"/songs/{song}").status == 200
    assert alone.get(f"/songs/{song}/stream").body == song_bytes(tmp_path, 1)
