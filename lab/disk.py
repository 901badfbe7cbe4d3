"""Replica data dirs on small tmpfs mounts of their own, so the nemesis can fill a replica's
disk and free it again (the "disk full" fault) without touching the machine's real disks.

A ``Disk`` is a tmpfs mounted at ``<lab dir>/node<N>.disk`` with the data dir inside it
(``data/``), so wiping the data dir leaves the mount. ``fill`` lowers the mount's size to
what is used and writes a filler file into the last free pages: every later write of the
replica gets ENOSPC; ``free`` removes the filler and gives the size back (more, if the data
outgrew it). tmpfs costs memory only for what is written, so the size is a ceiling, not a
reservation.
"""
# test-case-name: tests.lab.test_disk

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from lab.netns import LabError, run

DEFAULT_SIZE = 512 * 1024 * 1024
# What a randomized run's library grows by on each replica, at most, per second of run (a
# 30-minute run wrote about 0.3 MiB/s, plus the snapshots a rejoin builds): the disks of a
# long run are sized from it, so that only the nemesis's "disk full" fills one.
GROWTH_PER_SECOND = 1024 * 1024
FILLER = "lab-filler"
_PAGE = 4096
_SHRINK_TRIES = 20


def size_for(duration: float) -> int:
    """The tmpfs size of each replica for a run of ``duration`` seconds."""
    wanted = max(DEFAULT_SIZE, int(duration * GROWTH_PER_SECOND))
    return -(-wanted // _PAGE) * _PAGE


def _mounted_paths() -> list[str]:
    with open("/proc/self/mounts") as mounts:
        # Mount points with spaces are written with octal escapes; lab paths have none.
        return [line.split()[1] for line in mounts if line.strip()]


def unmount_under(directory: Path) -> list[str]:
    """Lazily unmount every mount at or below DIRECTORY (a killed lab's disks)."""
    base = str(directory).rstrip("/")
    found = [m for m in _mounted_paths() if m == base or m.startswith(base + "/")]
    for mount in sorted(found, reverse=True):
        run(["umount", "-l", mount], check=False)
    return found


class Disk:
    """A tmpfs of SIZE bytes at MOUNT; ``data_dir`` is where the replica keeps its files."""

    def __init__(self, mount: Path, size: int = DEFAULT_SIZE) -> None:
        if size < 1024 * 1024:
            raise LabError(f"a lab disk needs at least 1 MiB, not {size} bytes")
        self.mount = mount
        self.size = size
        self.full = False

    @property
    def data_dir(self) -> Path:
        return self.mount / "data"

    @property
    def filler(self) -> Path:
        return self.mount / FILLER

    def create(self) -> None:
        self.mount.mkdir(parents=True, exist_ok=True)
        if str(self.mount) in _mounted_paths():
            raise LabError(f"{self.mount} is already a mount point")
        run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs",
             str(self.mount)])
        self.data_dir.mkdir()

    def destroy(self) -> None:
        if str(self.mount) in _mounted_paths():
            run(["umount", "-l", str(self.mount)], check=False)
        self.full = False

    def used(self) -> int:
        stat = os.statvfs(self.mount)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize

    def free_bytes(self) -> int:
        stat = os.statvfs(self.mount)
        return stat.f_bavail * stat.f_frsize

    def fill(self) -> int:
        """Leave no free byte: shrink the mount to what is used (the replica may be writing,
        so try again with the new figure), then fill what is left. Returns the filler's size."""
        for _ in range(_SHRINK_TRIES):
            limit = -(-(self.used() + 2 * _PAGE) // _PAGE) * _PAGE
            try:
                self._resize(limit)
                break
            except LabError:
                continue  # the replica wrote meanwhile: more is used than the new limit
        else:
            raise LabError(f"could not shrink {self.mount} to what it uses")
        self.full = True
        written = 0
        with open(self.filler, "ab", buffering=0) as filler:
            block = b"\0" * _PAGE
            while True:
                try:
                    written += filler.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        return written

    def release(self) -> None:
        """Undo ``fill``: remove the filler and give the mount its size back, or more, as an
        operator freeing a disk would: at least a quarter of the size free. A long run's
        library outgrows the size (30 minutes of uploads fill 512 MiB), and the mount cannot
        shrink below what is used: given back only its size, it would stay full for good."""
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()
        self.make_room()
        self.full = False

    def make_room(self) -> bool:
        """Grow the mount until a quarter of its size is free (never shrink it); whether it
        had to grow. A disk the library itself filled is as full as one the nemesis filled."""
        room = -(-(self.used() + self.size // 4) // _PAGE) * _PAGE
        current = os.statvfs(self.mount)
        if current.f_blocks * current.f_frsize >= max(self.size, room):
            return False
        self._resize(max(self.size, room))
        return True

    def _resize(self, size: int) -> None:
        run(["mount", "-o", f"remount,size={size}", str(self.mount)])
