"""A replica's own small disk: the lab fills it and frees it, and the replica on it refuses
writes while it is full, keeps serving reads, and takes writes again once it is freed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.chaos import Chaos
from lab.disk import DEFAULT_SIZE, Disk, size_for
from lab.lab import HTTP_PORT, Lab
from lab.nemesis import Nemesis
from lab.netns import LabError
from lab.workload import make_wav
from tests.helpers.lab import lone_lab

pytestmark = [pytest.mark.lab]

SIZE = 64 * 1024 * 1024


@pytest.fixture
def lone_on_disk(tmp_path: Path) -> Iterator[Lab]:
    """One real replica on a disk of SIZE, once it leads."""
    with lone_lab(tmp_path, timeout=15, disk_size=SIZE) as running:
        yield running


def _upload(lab: Lab, tag: str) -> int:
    host = lab.replicas[1].host
    return lab.client(1, timeout=15).request(
        "POST", host.address, HTTP_PORT, "/songs", make_wav(tag, 40_000),
        {"Content-Type": "audio/wav"}).status


@pytest.mark.timeout(90)
def test_a_full_disk_refuses_writes_keeps_reads_and_recovers_when_freed(
        lone_on_disk: Lab) -> None:
    lab = lone_on_disk
    replica = lab.replicas[1]
    disk = replica.disk
    assert disk is not None and replica.data_dir == disk.data_dir
    assert _upload(lab, "before") == 201

    Nemesis(lab).disk_full(1)

    assert disk.full and disk.free_bytes() == 0
    assert not 200 <= _upload(lab, "while-full") < 300
    host = replica.host
    assert lab.client(1).request("GET", host.address, HTTP_PORT, "/songs").status == 200
    assert replica.running

    Nemesis(lab).disk_free(1)

    assert not disk.full and disk.free_bytes() > SIZE // 2
    deadline = time.monotonic() + 30
    while (status := _upload(lab, "after")) != 201:  # the replica recovers by itself
        assert time.monotonic() < deadline, f"uploads still answer {status} after the free"
        time.sleep(0.5)


@pytest.mark.timeout(60)
def test_a_disk_is_a_mount_of_its_own_that_a_wipe_keeps_and_close_removes(
        tmp_path: Path) -> None:
    lab = Lab(1, base_dir=tmp_path, echo=print, disk_size=SIZE, replica="standin").start()
    try:
        disk = lab.replicas[1].disk
        assert disk is not None
        assert str(disk.mount) in Path("/proc/self/mounts").read_text()
        Nemesis(lab).wipe(1)
        assert not disk.data_dir.exists()
        assert str(disk.mount) in Path("/proc/self/mounts").read_text()
    finally:
        lab.close()
    assert str(disk.mount) not in Path("/proc/self/mounts").read_text()


def test_a_disk_smaller_than_a_mebibyte_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="at least 1 MiB"):
        Disk(tmp_path / "d", 1000)


def test_freeing_a_disk_its_data_has_outgrown_leaves_a_quarter_of_it_free(
        tmp_path: Path) -> None:
    """A long run's library can fill the whole disk by itself: freeing it must give room
    back, not the old size (the mount cannot shrink below what is used)."""
    disk = Disk(tmp_path / "d", 4 * 1024 * 1024)
    disk.create()
    try:
        (disk.data_dir / "library").write_bytes(b"\1" * (4 * 1024 * 1024 - 64 * 1024))
        disk.fill()
        assert disk.free_bytes() == 0

        disk.release()

        assert not disk.full and disk.free_bytes() >= disk.size // 4
        (disk.data_dir / "more").write_bytes(b"\2" * (disk.size // 8))
    finally:
        disk.destroy()


def test_a_disk_the_library_filled_by_itself_gets_room_and_a_roomy_one_is_left_alone(
        tmp_path: Path) -> None:
    """The heal before the checks makes room on a disk the data filled without the nemesis
    (a leader that cannot write a snapshot would keep joiners waiting), and leaves a disk with
    room as it is."""
    disk = Disk(tmp_path / "d", 4 * 1024 * 1024)
    disk.create()
    try:
        assert not disk.make_room()
        with pytest.raises(OSError), open(disk.data_dir / "library", "wb") as library:
            library.write(b"\1" * (5 * 1024 * 1024))
        assert disk.free_bytes() < disk.size // 4

        assert disk.make_room()

        assert disk.free_bytes() >= disk.size // 4
        assert not disk.make_room()
    finally:
        disk.destroy()


def test_a_long_run_gets_disks_sized_for_its_length() -> None:
    assert size_for(120) == DEFAULT_SIZE
    assert size_for(1800) >= 1800 * 1024 * 1024
    assert size_for(1800) % 4096 == 0


@pytest.mark.timeout(90)
def test_a_replica_started_on_its_full_disk_stops_whole_and_the_run_notes_it(
        lone_on_disk: Lab) -> None:
    """Stopped cleanly (SQLite removes its WAL), then started while the nemesis holds its
    disk full: the replica cannot open its database, says so and stops, the database left
    as it is; the random run records that stop as one on a full disk, not a crash."""
    lab = lone_on_disk
    replica = lab.replicas[1]
    assert _upload(lab, "kept") == 201
    assert replica.process is not None
    replica.process.terminate()
    replica.process.wait(30)
    nemesis = Nemesis(lab)
    nemesis.disk_full(1)

    lab.start_replica(1, wait=False)
    assert replica.process is not None
    assert replica.process.wait(30) == 1
    Chaos(lab, nemesis, seed=1).notice_exits()

    [exited] = [e for e in nemesis.events if e.op == "exited"]
    assert exited.target == 1 and exited.detail == {"status": 1, "disk_full": True}
    assert not list(replica.data_dir.glob("metadata.sqlite3.unreadable-*"))
    nemesis.disk_free(1)
    lab.start_replica(1)
    host = replica.host
    songs = lab.client(1).get_json(host.address, HTTP_PORT, "/songs")
    assert songs["total"] == 1  # the song it held alone
