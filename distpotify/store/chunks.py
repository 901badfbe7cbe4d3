"""Chunk files of one replica: ``<data-dir>/chunks/<song-uuid>_<idx>``, immutable once renamed.

A chunk is written to a temp file, fsynced, renamed into place and the directory fsynced, so a
crash leaves either the whole verified chunk or a temp file that start-up removes. A song's
chunks are written as a batch: a small pool writes, hashes and fsyncs them side by side (a
filesystem commits concurrent fsyncs together) while the next are read, then all are renamed
and the directory is fsynced once.
"""
# test-case-name: tests.unit.test_chunks

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from types import TracebackType

from distpotify.model import valid_uuid

TMP_SUFFIX = ".tmp"
PART_SUFFIX = ".part"  # a download in progress (replication/fetch.py), resumed after a crash
SYNC_THREADS = 8  # fsyncs in flight at once: several per journal commit, not one each
IN_FLIGHT = 2 * SYNC_THREADS  # chunks of one batch handed to the pool and not yet durable


def write_durably(path: Path, data: bytes) -> str:
    """Write ``data`` to a new file at ``path`` and fsync it (a pool thread); its SHA-256:
    every new chunk file, a batch's or an upload spool's (chunkspool.py)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        digest = hashlib.sha256(data).hexdigest()  # while the page cache takes the write
        os.fsync(f.fileno())
    return digest


def fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    """fsync the file (or, with O_DIRECTORY, the directory) at ``path``."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkBatch:
    """The new chunk files of one song: ``add`` hands each to the pool, which writes it to a
    temp file, hashes and fsyncs it (the chunks of a song are written, hashed and synced side
    by side, and a filesystem commits concurrent fsyncs together); ``commit`` waits for them,
    renames them into place and fsyncs the directory once. Leaving the ``with`` block on an
    error removes every file of the batch."""

    def __init__(self, store: ChunkStore, song_id: str) -> None:
        self._store = store
        self._song_id = song_id
        self._files: list[tuple[Path, Path]] = []  # (temp, final) of every chunk begun
        self._writes: list[Future[str]] = []
        self._room = threading.BoundedSemaphore(IN_FLIGHT)
        self._failed: BaseException | None = None

    def add(self, idx: int, data: bytes) -> Future[str]:
        """Begin chunk ``idx``: its SHA-256 once it is written and durable as a temp file.
        Waits while IN_FLIGHT chunks are being written (their bytes are held until then);
        raises at once if one of the batch already failed (a full disk)."""
        if self._failed is not None:
            raise self._failed
        final = self._store.path(self._song_id, idx)
        tmp = final.with_name(final.name + TMP_SUFFIX)
        self._files.append((tmp, final))  # before the write: a half-written one goes too
        self._room.acquire()
        try:
            written = self._store.pool().submit(write_durably, tmp, data)
        except BaseException:
            self._room.release()
            raise
        written.add_done_callback(self._done)
        self._writes.append(written)
        return written

    def _done(self, written: Future[str]) -> None:
        self._room.release()
        if self._failed is None and written.exception() is not None:
            self._failed = written.exception()

    def written(self) -> list[str]:
        """Wait until every chunk added is durable as its temp file; their SHA-256s in order.
        Raises the first failure (a full disk fails the batch)."""
        try:
            return [written.result() for written in self._writes]
        except BaseException as e:
            self._failed = self._failed or e
            raise

    def commit(self) -> None:
        """Every chunk durable and in place, the directory entries too."""
        self.written()
        for tmp, final in self._files:
            os.replace(tmp, final)
        self._store.sync_dir()

    def __enter__(self) -> ChunkBatch:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            return
        wait(self._writes)  # no write or fsync may still hold a file we remove
        for tmp, final in self._files:
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)


class ChunkStore:
    """Synchronous file operations; callers run them off the reactor thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._pool: ThreadPoolExecutor | None = None

    def pool(self) -> ThreadPoolExecutor:
        """The threads that fsync the chunks of batches, made on first use."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fsync")
        return self._pool

    def batch(self, song_id: str) -> ChunkBatch:
        return ChunkBatch(self, song_id)

    def path(self, song_id: str, idx: int) -> Path:
        """The file of a chunk; only validated ids and indexes ever become a path."""
        if not valid_uuid(song_id) or not isinstance(idx, int) or idx < 0:
            raise ValueError(f"bad chunk name {song_id!r} {idx!r}")
        return self.root / f"{song_id}_{idx}"

    def sync_dir(self) -> None:
        """Make renames in the chunk directory durable."""
        fsync_path(self.root, os.O_RDONLY | os.O_DIRECTORY)

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
        return self._clean(live, None)

    def clean_and_list(self, live: set[str]) -> tuple[int, int, set[str]]:
        """``clean``, and the names of the complete chunk files that stay (all live): what
        start-up hands to anti-entropy, so the directory is listed once."""
        kept: set[str] = set()
        temps, orphans = self._clean(live, kept)
        return temps, orphans, kept

    def _clean(self, live: set[str], kept: set[str] | None) -> tuple[int, int]:
        """``clean``, adding the names kept to ``kept`` if given (a join's clean-up does not
        need a second set of every chunk name beside ``live``)."""
        temps = orphans = 0
        for entry in os.scandir(self.root):
            if entry.name.endswith(TMP_SUFFIX):
                os.unlink(entry.path)
                temps += 1
            elif entry.name.removesuffix(PART_SUFFIX) not in live:
                os.unlink(entry.path)
                orphans += 1
            elif kept is not None and not entry.name.endswith(PART_SUFFIX):
                kept.add(entry.name)
        if temps or orphans:
            self.sync_dir()
        return temps, orphans
