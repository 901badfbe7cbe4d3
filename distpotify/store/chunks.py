"""Chunk files of one replica: ``<data-dir>/chunks/<song-uuid>_<idx>``, immutable once renamed.

A chunk is written to a temp file, fsynced, renamed into place and the directory fsynced, so a
crash leaves either the whole verified chunk or a temp file that start-up removes.
"""
# test-case-name: tests.unit.test_chunks

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from distpotify.model import valid_uuid

TMP_SUFFIX = ".tmp"
PART_SUFFIX = ".part"  # a download in progress (replication/fetch.py), resumed after a crash


class ChunkStore:
    """Synchronous file operations; callers run them off the reactor thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, song_id: str, idx: int) -> Path:
        """The file of a chunk; only validated ids and indexes ever become a path."""
        if not valid_uuid(song_id) or not isinstance(idx, int) or idx < 0:
            raise ValueError(f"bad chunk name {song_id!r} {idx!r}")
        return self.root / f"{song_id}_{idx}"

    def write(self, song_id: str, idx: int, data: bytes) -> str:
        """Store one chunk durably (except the directory entry: see sync_dir); its SHA-256."""
        final = self.path(song_id, idx)
        tmp = final.with_name(final.name + TMP_SUFFIX)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk keeps no half-written temp file
            raise
        return hashlib.sha256(data).hexdigest()

    def sync_dir(self) -> None:
        """Make renames in the chunk directory durable."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def names(self) -> set[str]:
        """The names of the complete chunk files present."""
        return {
            entry.name for entry in os.scandir(self.root)
            if not entry.name.endswith((TMP_SUFFIX, PART_SUFFIX))
        }

    def read(self, song_id: str, idx: int) -> bytes:
        return self.path(song_id, idx).read_bytes()

    def verify(self, song_id: str, idx: int, sha256: str) -> bool:
        """True when the file exists and its bytes hash to ``sha256``."""
        digest = hashlib.sha256()
        try:
            with open(self.path(song_id, idx), "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except FileNotFoundError:
            return False
        return digest.hexdigest() == sha256

    def remove(self, names: Iterable[tuple[str, int]]) -> int:
        removed = 0
        for song_id, idx in names:
            try:
                self.path(song_id, idx).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        if removed:
            self.sync_dir()
        return removed

    def clean(self, live: set[str]) -> tuple[int, int]:
        """Remove temp files and chunk files without a live registry row: (temps, orphans).

        Partial downloads of live chunks stay, to be resumed.
        """
        temps = orphans = 0
        for entry in os.scandir(self.root):
            if entry.name.endswith(TMP_SUFFIX):
                os.unlink(entry.path)
                temps += 1
            elif entry.name.removesuffix(PART_SUFFIX) not in live:
                os.unlink(entry.path)
                orphans += 1
        if temps or orphans:
            self.sync_dir()
        return temps, orphans
