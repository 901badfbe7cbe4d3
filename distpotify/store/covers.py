"""Cover pictures of one replica: ``<data-dir>/covers/<sha256>``, content-addressed and
immutable, written like chunks (temp file, fsync, rename, directory fsync); and the resized
copies under ``<data-dir>/cover-cache/``, bounded in bytes, the least recently used removed.

Only a validated SHA-256 in lowercase hex ever becomes a file name.
"""
# test-case-name: tests.unit.test_covers

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from pathlib import Path

from distpotify.store.chunks import TMP_SUFFIX, fsync_path

_SHA256 = re.compile(r"[0-9a-f]{64}")


def valid_sha256(text: object) -> bool:
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


class CoverStore:
    """Synchronous file operations on the cover files; callers run them off the reactor."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not valid_sha256(sha256):
            raise ValueError(f"bad cover name {sha256!r}")
        return self.root / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put(self, data: bytes) -> str:
        """Store ``data`` durably (if it is not here already); its SHA-256."""
        sha256 = hashlib.sha256(data).hexdigest()
        self.put_verified(data, sha256)
        return sha256

    def put_verified(self, data: bytes, sha256: str) -> bool:
        """Store ``data`` as cover ``sha256`` if it hashes to it: temp file, fsync, rename,
        directory fsync, so a crash leaves the whole file or a temp file start-up removes.
        False (and nothing stored) if the bytes are wrong."""
        final = self.path(sha256)
        if hashlib.sha256(data).hexdigest() != sha256:
            return False
        if final.exists():
            return True
        # A name of its own per writer: two uploads of the same picture may race.
        tmp = final.with_name(f"{sha256}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_path(self.root, os.O_RDONLY | os.O_DIRECTORY)
        return True

    def read(self, sha256: str) -> bytes | None:
        """The cover's bytes if the file is here and whole (its hash checked); a corrupt one
        is removed, to be fetched again."""
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            self.path(sha256).unlink(missing_ok=True)
            return None
        return data

    def names(self) -> set[str]:
        return {entry.name for entry in os.scandir(self.root) if valid_sha256(entry.name)}

    def clean(self, live: set[str]) -> tuple[int, int]:
        """Remove temp files and covers no live song or album names: (temps, orphans). Run
        at start-up only, when no upload or fetch of this process can be between writing a
        cover and writing the row that names it."""
        temps = orphans = 0
        for entry in os.scandir(self.root):
            if entry.name.endswith(TMP_SUFFIX):
                os.unlink(entry.path)
                temps += 1
            elif entry.name not in live:
                os.unlink(entry.path)
                orphans += 1
        if temps or orphans:
            fsync_path(self.root, os.O_RDONLY | os.O_DIRECTORY)
        return temps, orphans


class CoverCache:
    """Resized covers, ``<sha256>_<size>``, at most ``limit`` bytes in all: a hit touches its
    file's mtime, and a store past the limit removes the least recently touched. A derived
    copy needs no fsync: lost, it is made again."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit
        root.mkdir(parents=True, exist_ok=True)
        self._total: int | None = None  # bytes in the cache, counted on first use

    def _path(self, sha256: str, size: int) -> Path:
        if not valid_sha256(sha256) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"bad cached cover {sha256!r} {size!r}")
        return self.root / f"{sha256}_{size}"

    def get(self, sha256: str, size: int) -> bytes | None:
        path = self._path(sha256, size)
        try:
            data = path.read_bytes()
            os.utime(path)
        except FileNotFoundError:
            return None
        return data

    def put(self, sha256: str, size: int, data: bytes) -> None:
        if len(data) > self.limit:
            return
        path = self._path(sha256, size)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        if self._total is None:
            self._total = self.size()
        else:
            self._total += len(data)
        if self._total > self.limit:
            self._evict()

    def size(self) -> int:
        """The bytes the cache holds now."""
        return sum(entry.stat().st_size for entry in os.scandir(self.root)
                   if not entry.name.endswith(TMP_SUFFIX))

    def _evict(self) -> None:
        """Remove the least recently used files until the cache holds at most 3/4 of its
        limit (not just under it: one eviction pays for many stores)."""
        entries = []
        for entry in os.scandir(self.root):
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime_ns, stat.st_size, entry.path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        target = self.limit * 3 // 4
        for _, size, path in entries:
            if total <= target:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size
        self._total = total

    def clear_temps(self) -> None:
        for entry in os.scandir(self.root):
            if entry.name.endswith(TMP_SUFFIX):
                os.unlink(entry.path)
