"""A raw upload's body spooled straight into chunk files while it arrives.

The request's spool (bodylimit.py) writes the body of ``POST /songs`` with an audio body into
temp files of ``chunk_size`` bytes in the chunk directory, named after a fresh spool id
(``<spool-id>_<idx>.tmp``): each full piece is handed to the chunk store's pool, which creates,
writes, hashes and fsyncs it while the rest arrives (at most IN_FLIGHT at once, side by side:
a creation may wait for the journal commit another fsync forces, so one thread creating them
in turn would be the bottleneck), and the song's SHA-256 follows the bytes as they come. So
an upload's chunks are written and made durable while it is received, not split from a spool
file afterwards. A piece that cannot be written (a full disk) fails the next write, so the
spool refuses the request (507) before the rest is stored.

Once the whole body is in, the spool reads like one file (the tags are read from it, a keyed
request is hashed from it), and ``adopt(song_id)`` (the id is known only then) renames the
pieces to the song's chunk names and fsyncs the directory once: the crash rule of a batch
(store/chunks.py) holds, temp files until every piece is durable. A spool not adopted removes
its pieces when it is closed; after a crash, start-up removes them as any temp file.
"""
# test-case-name: tests.unit.test_chunkspool

from __future__ import annotations

import hashlib
import io
import os
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

# IN_FLIGHT: pieces handed to the pool and not yet written (their bytes are held), as many
# as a batch's chunks.
from distpotify.store.chunks import IN_FLIGHT, TMP_SUFFIX, ChunkStore, write_durably


class ChunkSpool(io.RawIOBase):
    """Written once, in order, by the spool's thread; then read (seekable) and adopted or
    closed by the upload."""

    def __init__(self, store: ChunkStore, chunk_size: int) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self._store = store
        self._id = str(uuid.uuid4())
        self._paths: list[Path] = []  # every piece handed to the pool
        self._sizes: list[int] = []
        self._hashes: list[Future[str]] = []  # each piece's write: its SHA-256
        self._filling = bytearray()  # the piece being received
        self._room = threading.Semaphore(IN_FLIGHT)
        self._song = hashlib.sha256()
        self._size = 0
        self._sealed = False
        self._pos = 0
        self._reading: tuple[int, io.BufferedReader] | None = None
        self._lock = threading.Lock()  # the pool's writes and adopt against close
        self._adopted = False
        self._failed: BaseException | None = None  # the first piece that could not be written

    # written by the spool

    def writable(self) -> bool:
        return not self._sealed

    def write(self, data: Any) -> int:  # any buffer: bytes, bytearray, memoryview
        if self.closed:
            raise ValueError("the upload's body was closed while it was written")
        if self._sealed:
            raise ValueError("the body is complete: nothing more is written")
        if self._failed is not None:
            raise self._failed
        view = memoryview(data).cast("B")
        self._song.update(view)
        written = len(view)
        while view:
            part = view[:self.chunk_size - len(self._filling)]
            self._filling += part
            view = view[len(part):]
            if len(self._filling) == self.chunk_size:
                self._room.acquire()  # the spool's thread waits: the client is paused
                self._hand_over()
        self._size += written
        return written

    def _hand_over(self) -> None:
        """The pool creates, writes and hashes the piece: file creations run side by side
        (each may wait for a journal commit that another process's fsync forces)."""
        path = self._store.root / f"{self._id}_{len(self._paths)}{TMP_SUFFIX}"
        self._paths.append(path)
        self._sizes.append(len(self._filling))
        data, self._filling = bytes(self._filling), bytearray()
        self._hashes.append(self._store.pool().submit(self._write_piece, path, data))

    def _write_piece(self, path: Path, data: bytes) -> str:
        try:
            return write_durably(path, data)
        except BaseException as e:
            self._failed = self._failed or e
            raise
        finally:
            self._room.release()
            with self._lock:
                if self.closed and not self._adopted:  # written after close's clean-up
                    path.unlink(missing_ok=True)

    def _seal(self) -> None:
        """The body is whole: its last piece goes to the pool (on the reactor: no wait)."""
        if not self._sealed:
            self._sealed = True
            if self._filling:
                self._room.acquire(blocking=False)  # may be overdrawn by one: never waits
                self._hand_over()

    # read by the upload, once the body is complete (twisted.web seeks to 0 before the
    # resource sees it, which seals the last piece)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._seal()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:  # any writable buffer
        """Fill ``buffer`` from the pieces (a read never stops short at a piece's end)."""
        self._seal()
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._pos < self._size:
            index, offset = divmod(self._pos, self.chunk_size)
            if self._reading is None or self._reading[0] != index:
                self._hashes[index].result()  # written (a worker thread waits, never the reactor)
                if self._reading is not None:
                    self._reading[1].close()
                self._reading = (index, open(self._paths[index], "rb"))  # noqa: SIM115
            piece = self._reading[1]
            piece.seek(offset)
            got = piece.readinto(view[filled:filled + self.chunk_size - offset])
            if not got:
                raise OSError(f"piece {index} of an upload's body is shorter than written")
            self._pos += got
            filled += got
        return filled

    # the upload's decision

    @property
    def size(self) -> int:
        return self._size

    def sha256(self) -> str:
        """The SHA-256 of the whole body."""
        return self._song.hexdigest()

    def hashes(self) -> list[str]:
        """Wait until every piece is written and fsynced: their SHA-256s. Raises the first
        failure (a full disk), which a reader of the spool would otherwise meet as a short
        file."""
        self._seal()
        return [piece.result() for piece in self._hashes]

    def written(self) -> list[tuple[int, int, str]]:
        """Wait until every piece is durable as its temp file: (index, size, SHA-256) of
        each. Raises the first failure (a full disk)."""
        hashes = self.hashes()
        return list(zip(range(len(hashes)), self._sizes, hashes, strict=True))

    def adopt(self, song_id: str) -> None:
        """Rename the pieces to the chunks of ``song_id`` and fsync the directory: from now
        on they are the song's, and closing the spool leaves them."""
        if self.closed:
            raise ValueError("the upload's body was closed before it was stored")
        self.written()
        with self._lock:
            if self.closed:
                raise ValueError("the upload's body was closed before it was stored")
            self._adopted = True
        for idx, path in enumerate(self._paths):
            os.replace(path, self._store.path(song_id, idx))
        self._store.sync_dir()

    def close(self) -> None:
        """Close the files; a spool not adopted removes its pieces (on the pool: closing is
        the reactor's, which must not wait for the disk; a piece written after this removes
        itself)."""
        with self._lock:
            if self.closed:
                return
            super().close()
            adopted = self._adopted
        if self._reading is not None:
            self._reading[1].close()
            self._reading = None
        self._filling = bytearray()
        if not adopted and self._paths:
            self._store.pool().submit(_remove, list(self._paths))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
