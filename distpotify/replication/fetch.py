"""Getting chunk bytes from other replicas: verified before they become visible.

A download goes to ``<name>.part`` (resumed with Range after a crash or a failed peer, alone
or as the first chunk of a run), is hashed, fsynced and renamed into place only when its
SHA-256 matches the registry; a wrong byte sends the fetch to the next replica. At most
``concurrency`` downloads run at once. A fetch that fails tells a chunk the replicas say they
do not hold (404) from one they could not give (unreachable, an error, wrong bytes).
"""
# test-case-name: tests.unit.test_fetch

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from distpotify.detach import detached
from distpotify.diskfull import what_is_full
from distpotify.replication.client import Joining, NotHeld, PeerClient, PeerError
from distpotify.store.chunks import PART_SUFFIX, ChunkStore
from distpotify.store.metadata import Runner

log = Logger()

# A peer that answered 503 joining (joining the cluster itself, while our view of it still
# said ACTIVE) is asked after the others for this long: each chunk asked of it first cost a
# request and a log line (4,116 of them in a random lab run), until a heartbeat told us.
JOINING_FOR = 2.0


@attrs.frozen
class ChunkRef:
    song_id: str
    idx: int
    size: int
    sha256: str


class Fetched(enum.Enum):
    """How a chunk's fetch ended."""

    DONE = "done"  # verified and in place
    # No source gave it, and one at least answered 404: its registry row is not live there
    # (deleted since, or not received yet), as opposed to a source that could not answer.
    NOT_HELD = "not held"
    FAILED = "failed"  # no source gave it: unreachable, an error, wrong bytes
    # This replica's disk is full: the bytes came but could not be stored. No other source
    # is asked (their bytes would not fit either).
    NO_ROOM = "no room"


@attrs.define
class FetchCounters:
    fetched: int = 0
    bytes: int = 0
    bad_bytes: int = 0
    failed: int = 0


def _partial(final: Path, size: int) -> int:
    """How many bytes of the chunk ``final`` its part file holds, if it holds fewer than all
    (worker thread); a part file of the whole size or more is a failed one: removed."""
    part = final.with_name(final.name + PART_SUFFIX)
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        return 0
    if have >= size:
        part.unlink(missing_ok=True)
        return 0
    return have


def _finish_part(part: Path, final: Path, size: int, sha256: str) -> bool:
    """Verify a complete download and move it into place (worker thread); False if wrong.

    The directory is not fsynced here: callers do it once for a batch (sync_dir) before
    committing anything that refers to the chunks.
    """
    digest = hashlib.sha256()
    with open(part, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
        os.fsync(f.fileno())
    if part.stat().st_size != size or digest.hexdigest() != sha256:
        part.unlink()
        return False
    os.replace(part, final)
    return True


class ChunkFetcher:
    def __init__(
        self,
        client: PeerClient,
        chunks: ChunkStore,
        blocking: Runner,
        clock: IReactorTime,
        concurrency: int = 8,
    ) -> None:
        self._client = client
        self._chunks = chunks
        self._blocking = blocking
        self._clock = clock
        # Each peer that answered 503 joining, and until when it is asked last (JOINING_FOR).
        self._joining_until: dict[str, float] = {}
        self._limit = DeferredSemaphore(concurrency)
        self.counters = FetchCounters()
        # One writer per part file: a chunk asked for again while it downloads (a join and a
        # push, a retry) waits for the download in flight instead of writing beside it.
        self._inflight: dict[tuple[str, int], Deferred[bool]] = {}

    def by_readiness(self, sources: Sequence[str]) -> list[str]:
        """``sources`` in their order, but those that answered 503 joining in the last
        JOINING_FOR seconds after the others (still asked, if all the others fail)."""
        now = self._clock.seconds()
        return sorted(sources, key=lambda base: self._joining_until.get(base, now) > now)

    def _answered(self, base: str, error: Exception) -> None:
        if isinstance(error, Joining):
            self._joining_until[base] = self._clock.seconds() + JOINING_FOR

    async def fetch_durably(self, ref: ChunkRef, sources: Sequence[str]) -> bool:
        """fetch, then make the chunk directory durable (one chunk: read repair)."""
        fetched = await self.fetch(ref, sources)
        if fetched:
            await self._blocking(self._chunks.sync_dir)
        return fetched

    async def sync(self) -> None:
        """Make every fetched chunk's directory entry durable."""
        await self._blocking(self._chunks.sync_dir)

    def downloading(self) -> set[str]:
        """The file names of the chunks being downloaded now: a clean-up of the chunk
        directory leaves their part files alone, though no row names them yet (their rows
        are written once the chunks are in, and the caller that asked may be gone)."""
        return {self._chunks.path(song_id, idx).name for song_id, idx in self._inflight}

    async def fetch(self, ref: ChunkRef, sources: Sequence[str]) -> bool:
        """Download ``ref`` from the first of ``sources`` that gives the right bytes."""
        return await self.fetch_outcome(ref, sources) is Fetched.DONE

    async def fetch_outcome(self, ref: ChunkRef, sources: Sequence[str]) -> Fetched:
        """fetch, saying why it failed: NOT_HELD when a source answered that it does not
        hold the chunk."""
        key = (ref.song_id, ref.idx)
        while key in self._inflight:
            await _follow(self._inflight[key])
            # Only verified downloads are renamed into place: the file is the answer.
            if self._chunks.path(ref.song_id, ref.idx).exists():
                return Fetched.DONE
        # The download runs to its end even if this caller is cancelled (a push timeout, a
        # client gone): its in-flight entry must outlive the caller, or a retry would write
        # the same .part while this one's verify step renames it.
        return await detached(Deferred.fromCoroutine(self._download(ref, sources, key)),
                              f"the download of chunk {ref.song_id}/{ref.idx}")

    async def _download(self, ref: ChunkRef, sources: Sequence[str],
                        key: tuple[str, int]) -> Fetched:
        mine: Deferred[bool] = Deferred()
        self._inflight[key] = mine
        outcome = Fetched.FAILED
        try:
            await self._limit.acquire()
            try:
                outcome = await self._fetch_any(ref, sources)
            finally:
                self._limit.release()
        finally:
            del self._inflight[key]
            mine.callback(outcome is Fetched.DONE)
        return outcome

    async def _fetch_any(self, ref: ChunkRef, sources: Sequence[str]) -> Fetched:
        if not sources:  # no live peer to ask (all down, or cut off): an info line, no warning
            self.counters.failed += 1
            log.info("chunk {song_id}/{idx} not fetched: no peer to ask", song_id=ref.song_id,
                     idx=ref.idx)
            return Fetched.FAILED
        not_held = False
        for base in self.by_readiness(sources):
            outcome = await self._fetch_from(ref, base)
            if outcome is Fetched.DONE:
                self.counters.fetched += 1
                return outcome
            if outcome is Fetched.NO_ROOM:
                self.counters.failed += 1
                log.warn("chunk {song_id}/{idx} could not be stored: the disk is full",
                         song_id=ref.song_id, idx=ref.idx)
                return outcome
            not_held = not_held or outcome is Fetched.NOT_HELD
        self.counters.failed += 1
        log.warn("chunk {song_id}/{idx} not available from {sources}{why}",
                 song_id=ref.song_id, idx=ref.idx, sources=list(sources),
                 why=" (not held: 404)" if not_held else "")
        return Fetched.NOT_HELD if not_held else Fetched.FAILED

    async def fetch_run(
        self, refs: Sequence[ChunkRef], start: int, song_sha256: str, base: str
    ) -> list[ChunkRef]:
        """Download consecutive chunks of one song with a single ranged request of its
        stream (bootstrap: one request per run instead of one per chunk), each chunk
        verified on its own; the chunks that arrived whole and right."""
        keys = [(ref.song_id, ref.idx) for ref in refs]
        if any(key in self._inflight for key in keys):
            return []  # the caller fetches chunk by chunk, joining the downloads in flight
        mine: Deferred[bool] = Deferred()
        for key in keys:
            self._inflight[key] = mine
        done: list[ChunkRef] = []
        try:
            await self._limit.acquire()
            try:
                done = await self._fetch_run(refs, start, song_sha256, base)
            finally:
                self._limit.release()
        finally:
            for key in keys:
                del self._inflight[key]
            # Those waiting on a chunk of this run look again, chunk by chunk.
            mine.callback(False)
        return done

    async def _fetch_run(
        self, refs: Sequence[ChunkRef], start: int, song_sha256: str, base: str
    ) -> list[ChunkRef]:
        pending = list(refs)
        finished: list[Deferred[bool]] = []
        done: list[ChunkRef] = []
        bad: list[ChunkRef] = []  # whole, but failed their SHA-256
        current: list[Any] = []  # [ref, file, bytes still expected]
        # What a download of the first chunk left before a crash or a failed peer: the run
        # asks for the bytes after it and appends them.
        resumed = await self._blocking(_partial, self._chunks.path(refs[0].song_id, refs[0].idx),
                                       refs[0].size)

        def open_next() -> None:
            ref = pending.pop(0)
            final = self._chunks.path(ref.song_id, ref.idx)
            have = resumed if ref is refs[0] else 0
            current[:] = [ref, open(final.with_name(final.name + PART_SUFFIX),  # noqa: SIM115
                                    "ab" if have else "wb"), ref.size - have]

        def close_current() -> None:
            ref, out, _ = current
            out.close()
            final = self._chunks.path(ref.song_id, ref.idx)
            part = final.with_name(final.name + PART_SUFFIX)
            def verified(ok: bool, ref: ChunkRef = ref) -> bool:
                (done if ok else bad).append(ref)
                return ok

            d: Deferred[bool] = self._blocking(_finish_part, part, final, ref.size, ref.sha256)
            finished.append(d.addCallback(verified))
            current.clear()

        def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                if not current:
                    if not pending:
                        raise PeerError("more bytes than the chunks asked for")
                    open_next()
                take = min(len(view), current[2])
                current[1].write(view[:take])
                current[2] -= take
                view = view[take:]
                self.counters.bytes += take
                if current[2] == 0:
                    close_current()

        end = start + sum(ref.size for ref in refs) - 1
        cancelled = False
        try:
            await self._client.stream_range(base, refs[0].song_id, start + resumed, end,
                                            song_sha256, write)
        except CancelledError:
            cancelled = True  # its caller stops (a join cancelled): after the verify steps
        except Exception as e:
            self._answered(base, e)
            log.info("run of {n} chunks of {song_id} from {base} failed: {error}",
                     n=len(refs), song_id=refs[0].song_id, base=base, error=e)
        finally:
            if current:
                try:
                    current[1].close()
                except OSError as e:  # its last bytes met a full disk as they were flushed
                    log.info("run of {n} chunks of {song_id}: chunk {idx} cut short: {error}",
                             n=len(refs), song_id=refs[0].song_id, idx=current[0].idx, error=e)
        # Every verify step, to its end: one failing must not leave others still writing.
        await DeferredList(finished, consumeErrors=True)
        self.counters.fetched += len(done)
        self.counters.bad_bytes += len(finished) - len(done)
        if bad:  # one line a run, not one a chunk: a run asks one peer for up to 64
            bad.sort(key=lambda ref: ref.idx)  # verify steps on worker threads end in any order
            log.warn("run of {n} chunks of {song_id} from {base}: {failed} failed their"
                     " SHA-256; discarded: chunks {first}{more}", n=len(refs),
                     song_id=refs[0].song_id, base=base, failed=len(bad),
                     first=", ".join(str(ref.idx) for ref in bad[:5]),
                     more=", ..." if len(bad) > 5 else "")
        if cancelled:
            raise CancelledError(f"the run of {len(refs)} chunks of {refs[0].song_id}")
        return done

    async def _fetch_from(self, ref: ChunkRef, base: str) -> Fetched:
        final = self._chunks.path(ref.song_id, ref.idx)
        part = final.with_name(final.name + PART_SUFFIX)
        try:
            offset = part.stat().st_size
        except FileNotFoundError:
            offset = 0
        if offset >= ref.size:
            offset = 0
            part.unlink(missing_ok=True)
        received = 0

        def write(data: bytes) -> None:
            nonlocal received
            received += len(data)
            if offset + received > ref.size:
                raise PeerError(f"more than {ref.size} bytes for chunk {ref.idx}")
            out.write(data)

        try:
            with open(part, "ab") as out:
                try:
                    await self._client.chunk(base, ref.song_id, ref.idx, offset, ref.sha256,
                                             write)
                except Exception as e:
                    if what_is_full(e) is not None:
                        raise  # a write of ours, not the source's failure (below)
                    self._answered(base, e)
                    # What arrived stays in the part file: the next source resumes after it.
                    log.info("chunk {song_id}/{idx} from {base} failed after {n} bytes:"
                             " {error}", song_id=ref.song_id, idx=ref.idx, base=base,
                             n=received, error=e)
                    return Fetched.NOT_HELD if isinstance(e, NotHeld) else Fetched.FAILED
        except OSError as e:
            # The part file could not be opened, written or flushed (a small chunk's bytes
            # meet the disk only as the file closes).
            if what_is_full(e) is None:
                raise
            return Fetched.NO_ROOM
        self.counters.bytes += received
        try:
            done: bool = await self._blocking(_finish_part, part, final, ref.size, ref.sha256)
        except FileNotFoundError:
            # Its part file was removed as it downloaded (a clean-up of files no row names,
            # which leaves the downloads in flight alone: ``downloading``, so only one begun
            # during its scan): not fetched, and whoever needs the chunk asks again.
            log.info("chunk {song_id}/{idx}: its part file was removed during the download;"
                     " not fetched", song_id=ref.song_id, idx=ref.idx)
            return Fetched.FAILED
        except OSError as e:  # its fsync found the disk full (the blocks allocated then)
            if what_is_full(e) is None:
                raise
            return Fetched.NO_ROOM
        if not done:
            self.counters.bad_bytes += 1
            log.warn("chunk {song_id}/{idx} from {base} failed its SHA-256; discarded",
                     song_id=ref.song_id, idx=ref.idx, base=base)
            return Fetched.FAILED
        return Fetched.DONE


async def _follow(download: Deferred[bool]) -> None:
    """Wait for a download another caller started, leaving its result to that caller."""
    ended: Deferred[None] = Deferred()

    def passed_on(result: object) -> object:
        ended.callback(None)
        return result

    download.addBoth(passed_on)
    await ended


def sources_for(first: str | None, others: Callable[[], Sequence[str]]) -> list[str]:
    """The known live replicas (``others``), ``first`` (the sender of the ops) first if it is
    one of them. Any other ``first`` is ignored: a batch can never make us fetch from an
    address that is not a peer's advertised one."""
    known = list(others())
    if first in known:
        return [first, *(base for base in known if base != first)]
    return known

