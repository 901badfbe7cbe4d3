"""Read repair and scrubbing: a chunk is served only once its bytes are known good.

ChunkGuard remembers which files it verified (by inode, mtime and size, so a file replaced or
rewritten is verified again); a missing or corrupt chunk is fetched from another replica
within the request that needed it. The Scrubber re-hashes stored chunks slowly in the
background and repairs the corrupt ones the same way.
"""
# test-case-name: tests.integration.test_replication

from __future__ import annotations

import os
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from distpotify.periodic import Periodic
from distpotify.replication.fetch import ChunkFetcher, ChunkRef
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner

log = Logger()

VERIFIED_MAX = 16_384  # files remembered as verified (about 5 MB): a played song's chunks stay


@attrs.define
class RepairCounters:
    verified: int = 0
    missing: int = 0
    corrupt: int = 0
    repaired: int = 0
    unrepairable: int = 0


def _file_identity(path: os.PathLike[str]) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ChunkGuard:
    def __init__(
        self,
        chunks: ChunkStore,
        fetcher: ChunkFetcher,
        blocking: Runner,
        peers: Callable[[], Sequence[str]],
    ) -> None:
        self._chunks = chunks
        self._fetcher = fetcher
        self._blocking = blocking
        self._peers = peers
        # Recently verified files, the most recent last; bounded, since the scrubber verifies
        # every chunk in turn and a library may hold millions.
        self._verified: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self.counters = RepairCounters()

    async def ensure(self, ref: ChunkRef, recheck: bool = False) -> bool:
        """True once the chunk file holds exactly its registered bytes, repairing if needed."""
        path = self._chunks.path(ref.song_id, ref.idx)
        identity = _file_identity(path)
        if not recheck and identity is not None and self._verified.get(path.name) == identity:
            self._verified.move_to_end(path.name)
            return True
        if identity is not None and identity[2] == ref.size:
            good: bool = await self._blocking(self._chunks.verify, ref.song_id, ref.idx,
                                              ref.sha256)
            if good:
                self.counters.verified += 1
                self._remember(path.name, identity)
                return True
        self._verified.pop(path.name, None)
        if identity is None:
            self.counters.missing += 1
            log.warn("chunk {name} is missing; repairing", name=path.name)
        else:
            self.counters.corrupt += 1
            log.warn("chunk {name} fails its SHA-256; repairing", name=path.name)
            await self._blocking(self._chunks.remove, [(ref.song_id, ref.idx)])
        if await self._fetcher.fetch_durably(ref, self._peers()):
            self.counters.repaired += 1
            if (fetched := _file_identity(path)) is not None:
                self._remember(path.name, fetched)
            return True
        self.counters.unrepairable += 1
        return False

    async def scrub(self, refs: Sequence[ChunkRef]) -> None:
        """Re-hash the files of ``refs`` on one worker thread, then repair those that are
        missing or corrupt one by one (``ensure``): a page of scrubbing costs one hand-off to
        a thread, not one per file."""
        identities = await self._blocking(self._hash_all, refs)
        for ref, identity in zip(refs, identities, strict=True):
            if identity is None:
                await self.ensure(ref, recheck=True)
            else:
                self.counters.verified += 1
                self._remember(f"{ref.song_id}_{ref.idx}", identity)

    def _hash_all(self, refs: Sequence[ChunkRef]) -> list[tuple[int, int, int] | None]:
        """Each file's identity if it holds its registered bytes, else None (worker thread)."""
        found: list[tuple[int, int, int] | None] = []
        for ref in refs:
            identity = _file_identity(self._chunks.path(ref.song_id, ref.idx))
            good = identity is not None and identity[2] == ref.size and self._chunks.verify(
                ref.song_id, ref.idx, ref.sha256)
            found.append(identity if good else None)
        return found

    def _remember(self, name: str, identity: tuple[int, int, int]) -> None:
        self._verified[name] = identity
        self._verified.move_to_end(name)
        if len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)

    def forget(self, names: Sequence[str]) -> None:
        for name in names:
            self._verified.pop(name, None)


# Chunk files re-hashed per second at most: as many as the byte rate's worth of chunks of the
# default size (8 MiB/s of 256 KiB chunks), so full-size chunks keep the byte rate. With tiny
# songs the byte rate alone never paused more than the one second between pages: 64 files
# opened and hashed every second, for ever, on an idle replica (issue 22).
SCRUB_FILES_PER_SECOND = 32


class Scrubber:
    """Re-hashes every stored chunk in turn, at most ``rate`` bytes and ``files_rate`` files
    per second."""

    def __init__(
        self, store: MetadataStore, guard: ChunkGuard, clock: IReactorTime, rate: float,
        page: int = 64, files_rate: float = SCRUB_FILES_PER_SECOND,
    ) -> None:
        self._store = store
        self._guard = guard
        self._rate = rate
        self._files_rate = files_rate
        self._page = page
        self._position = 0  # the registry's rowid scrubbed last
        # What the last step read: the pause after it keeps to both rates.
        self._read = 0
        self._files = 0
        self.passes = 0
        self.checked = 0
        # Starts at a random point so replicas restarted together do not scrub in lockstep.
        self.loop = Periodic(
            lambda: Deferred.fromCoroutine(self._scrub()),
            self.pause, clock,
            name="scrub", first=random.uniform(1.0, 5.0),
        )

    def pause(self) -> float:
        """Seconds until the next page: at least one, and what keeps the last page's bytes and
        files to their rates."""
        return max(1.0, self._read / self._rate, self._files / self._files_rate)

    async def _scrub(self) -> None:
        self._read = self._files = 0
        before = self.checked
        self._read = await self.step()
        self._files = self.checked - before

    async def step(self) -> int:
        """Verify the next page of chunks; how many bytes were read."""
        rows = await self._store.run(MetadataDB.registry_after, self._position, self._page)
        if not rows:
            self._position = 0
            self.passes += 1
            return 0
        refs = [ChunkRef(*row[1:]) for row in rows]
        await self._guard.scrub(refs)
        self.checked += len(refs)
        self._position = rows[-1][0]
        return sum(ref.size for ref in refs)

    def status(self) -> dict[str, Any]:
        return {"passes": self.passes, "checked": self.checked,
                "rate_bytes_per_s": self._rate, "rate_files_per_s": self._files_rate}
