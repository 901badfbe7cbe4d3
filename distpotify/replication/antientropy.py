"""Anti-entropy: every interval (with jitter) compare digests with one peer, pull what differs.

Only differing buckets are listed and only rows whose versions differ are fetched, so a round
costs the 256 bucket hashes plus the difference. Each round also looks for chunk files the
registry says should be here and are not: the first compares the whole registry with the
chunk directory (or takes what start-up found doing the same: ``missing_at_start``), every
later one the next CHUNK_PAGE registry rows, so a round's cost does not grow with the library.
What changes needs no more: rows arriving from elsewhere, pushed or pulled, are applied only
once their chunk files are here (receive.py), and a leader writes a song's files before its
rows. The sweep is for files lost since; reads repair those too, and the scrubber walks every
chunk as well.
"""
# test-case-name: tests.integration.test_replication

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.periodic import Periodic
from distpotify.replication.client import KEYS_PER_REQUEST, PeerClient
from distpotify.replication.fetch import ChunkRef
from distpotify.replication.receive import Receiver
from distpotify.replication.repair import ChunkGuard
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner

log = Logger()
T = TypeVar("T")

CHUNKS_PER_ROUND = 256  # missing chunks fetched at most per round; the rest wait for the next
CHUNK_PAGE = 256  # registry rows a round looks for (a stat each): 200,000 in about 2 hours
REQUESTS_IN_FLIGHT = 8  # bucket listings and row batches a round asks a peer for at once


class AntiEntropy:
    def __init__(
        self,
        *,
        store: MetadataStore,
        client: PeerClient,
        receiver: Receiver,
        guard: ChunkGuard,
        chunks: ChunkStore,
        blocking: Runner,
        peers: Callable[[], Sequence[str]],
        clock: IReactorTime,
        interval: float,
        rng: random.Random | None = None,
        chunk_page: int = CHUNK_PAGE,
        missing_at_start: Sequence[ChunkRef] | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._receiver = receiver
        self._guard = guard
        self._chunks = chunks
        self._blocking = blocking
        self._peers = peers
        self._clock = clock
        self._interval = interval
        self._rng = rng or random.Random()
        self.loop = Periodic(self._tick, interval, clock, name="anti-entropy", jitter=0.2,
                             rng=self._rng)
        self._lock = DeferredLock()  # one round at a time
        self._periodic: Deferred[None] | None = None  # a tick's (or a peer back's) under way
        self.rounds = 0
        self.last: dict[str, Any] | None = None
        self.rows_repaired = 0
        self.chunks_repaired = 0
        self.chunk_checks = 0  # rounds that looked for missing chunk files
        self.chunk_passes = 0  # times the whole registry was looked through
        self.errors = 0
        self._chunk_page = chunk_page
        # The registry's rowid looked at last; None: the first, whole check is due.
        self._position: int | None = None
        self._missing: list[ChunkRef] = []  # found missing, not repaired yet
        if missing_at_start is not None:  # start-up made the whole check
            self._position = 0
            self.chunk_passes = 1
            self._missing = list(missing_at_start)

    def _tick(self) -> Deferred[None]:
        peers = list(self._peers())
        d = self.run_round(self._rng.choice(peers)) if peers else Deferred.fromCoroutine(_none())
        return d.addErrback(self._failed)

    def run_round(self, peer: str) -> Deferred[None]:
        """One exchange with ``peer`` now (also used when a peer comes back); none if a round
        is under way. A reconcile that comes meanwhile cancels it (it is everyone's at the
        next tick)."""
        if self._lock.locked:
            return Deferred.fromCoroutine(_none())
        round_ = self._periodic = self._lock.run(self._round, peer)
        return round_.addBoth(self._periodic_over, round_)

    def _periodic_over(self, result: object, round_: Deferred[None]) -> object:
        if self._periodic is round_:
            self._periodic = None
        return result

    def reconcile(self, peers: Sequence[str], *, chunks: bool = True) -> Deferred[list[str]]:
        """A round with each of ``peers`` in turn, each once the round under way is over: a
        new leader relies on these to mend what its catch-up could not pull (section 5.1),
        so none is skipped as a tick is while busy, and a periodic round under way is
        cancelled rather than waited for (its peer may have stopped answering: writes wait
        for these). Without ``chunks`` the rounds compare rows only (no sweep for lost
        chunk files). Fires with the peers whose round failed (counted and logged)."""
        if self._periodic is not None:
            self._periodic.cancel()
        return Deferred.fromCoroutine(self._reconcile(list(peers), chunks))

    async def _reconcile(self, peers: list[str], chunks: bool) -> list[str]:
        failed = []
        for peer in peers:
            try:
                await self._lock.run(self._round, peer, chunks)
            except Exception:
                self._failed(Failure())
                failed.append(peer)
        return failed

    def run_round_soon(self, peer: str, delay: float) -> None:
        """A round with ``peer`` after ``delay`` (a peer just heard again may not serve yet)."""
        self._clock.callLater(delay, lambda: self.run_round(peer).addErrback(self._failed))

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return  # stopped with the replica: not a failed round
        self.errors += 1
        log.info("anti-entropy round failed: {error}", error=failure.getErrorMessage())

    async def _round(self, peer: str, chunks: bool = True) -> None:
        started = self._clock.seconds()
        received = self._client.bytes_received
        theirs = await self._client.digest(peer)
        mine = await self._store.run(MetadataDB.digest)
        differing = [b for b, (a, c) in enumerate(zip(mine, theirs, strict=False)) if a != c]
        # Several requests in flight: a round after a partition differs in most buckets, and
        # one request after another over a slow or lossy link took longer than the writes
        # of a new leader wait for it (the random lab run: 255 buckets, 6 s).
        listings = run_limited([functools.partial(self._wanted, peer, bucket)
                            for bucket in differing], REQUESTS_IN_FLIGHT)
        try:
            wanted = [key for listing in listings for key in await listing]
        finally:
            abandon(listings)
        batches = [wanted[start:start + KEYS_PER_REQUEST]
                   for start in range(0, len(wanted), KEYS_PER_REQUEST)]
        # Each batch is fetched while the ones before it are applied, in order.
        fetches = run_limited([functools.partial(self._client.rows, peer, batch)
                           for batch in batches], REQUESTS_IN_FLIGHT)
        try:
            for fetch in fetches:
                await self._receiver.apply_rows(await fetch, peer)
        finally:
            abandon(fetches)
        checked = await self._look_for_missing_chunks() if chunks else 0
        fetched = await self._repair_missing_chunks() if chunks else 0
        self.rounds += 1
        self.rows_repaired += len(wanted)
        self.chunks_repaired += fetched
        self.last = {
            "peer": peer, "at": started, "buckets_differing": len(differing),
            "rows_pulled": len(wanted), "chunks_checked": checked, "chunks_fetched": fetched,
            "bytes_received": self._client.bytes_received - received,
            "seconds": round(self._clock.seconds() - started, 3),
        }
        if wanted or fetched:
            log.info("anti-entropy with {peer}: {buckets} buckets differed, pulled {rows} rows,"
                     " fetched {chunks} chunks", peer=peer, buckets=len(differing),
                     rows=len(wanted), chunks=fetched)

    async def _wanted(self, peer: str, bucket: int) -> list[tuple[str, str]]:
        """The rows of ``bucket`` in which ``peer`` has a field written later than ours."""
        theirs = await self._client.bucket(peer, bucket)
        local = {(e, k): v for e, k, v in await self._store.run(MetadataDB.bucket_rows, bucket)}
        return [(e, k) for e, k, v in theirs
                if local.get((e, k)) != v and newer(v, local.get((e, k)))]

    async def _look_for_missing_chunks(self) -> int:
        """Add the live chunks whose files are absent to those to repair: the whole registry
        at the first round, then CHUNK_PAGE rows a round, round and round; how many rows were
        looked at."""
        self.chunk_checks += 1
        if self._position is None:
            live = await self._store.run(MetadataDB.live_chunk_names)
            present = await self._blocking(self._chunks.names)
            rows = await self._store.run(MetadataDB.chunk_rows, sorted(live - present))
            self._position = 0
            self.chunk_passes += 1
            self._remember_missing(rows)
            return len(live)
        page = await self._store.run(MetadataDB.registry_after, self._position,
                                     self._chunk_page)
        if len(page) < self._chunk_page:
            self._position = 0
            self.chunk_passes += 1
        else:
            self._position = page[-1][0]
        rows = [row[1:] for row in page]
        self._remember_missing(await self._blocking(self._absent, rows))
        return len(rows)

    def _absent(self, rows: list[tuple[str, int, int, str]]) -> list[tuple[str, int, int, str]]:
        """The rows whose chunk files are not here (worker thread: one stat each)."""
        return [row for row in rows if not self._chunks.path(row[0], row[1]).exists()]

    def _remember_missing(self, rows: list[tuple[str, int, int, str]]) -> None:
        known = set(self._missing)
        self._missing += [ref for row in rows if (ref := ChunkRef(*row)) not in known]

    async def _repair_missing_chunks(self) -> int:
        """Fetch up to CHUNKS_PER_ROUND of the missing chunks; any not repaired (past the
        round's share, or no peer had it yet) is tried again next round."""
        repaired = 0
        trying, self._missing = self._missing[:CHUNKS_PER_ROUND], self._missing[CHUNKS_PER_ROUND:]
        if not trying:
            return 0
        # Only those still live and still absent: a chunk deleted meanwhile is no longer
        # wanted anywhere, and one found at start-up may have come with a snapshot since.
        rows = await self._store.run(MetadataDB.chunk_rows,
                                     [f"{ref.song_id}_{ref.idx}" for ref in trying])
        for ref in (ChunkRef(*row) for row in await self._blocking(self._absent, rows)):
            if await self._guard.ensure(ref):
                repaired += 1
            else:
                self._missing.append(ref)
        return repaired

    def status(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "errors": self.errors, "interval": self._interval,
                "last": self.last,
                "rows_repaired": self.rows_repaired, "chunks_repaired": self.chunks_repaired,
                "chunk_checks": self.chunk_checks, "chunk_passes": self.chunk_passes,
                "chunks_missing": len(self._missing)}


async def _none() -> None:
    return None


def run_limited(calls: Sequence[Callable[[], Coroutine[Any, Any, T]]], limit: int
                ) -> list[Deferred[T]]:
    """Each of ``calls`` run, at most ``limit`` at once, in order; their Deferreds."""
    semaphore = DeferredSemaphore(limit)
    return [semaphore.run(call) for call in calls]


def abandon(runs: Sequence[Deferred[Any]]) -> None:
    """Once the caller has stopped awaiting ``runs`` (done, or a failure): cancel those still
    running, and let none of their failures go unhandled."""
    for run in reversed(runs):  # the queued first: none starts as a running one ends
        run.addErrback(lambda _: None)
        run.cancel()  # nothing for one that has ended


def newer(theirs: str, mine: str | None) -> bool:
    """Whether the peer's row (its ``field_versions``) holds a field written later than ours:
    a row only ours is newer in (a follower that lags) is not fetched, merged and dropped."""
    if mine is None:
        return True
    try:
        ours = json.loads(mine)
        return any(version > ours.get(name, "") for name, version in json.loads(theirs).items())
    except (ValueError, AttributeError, TypeError):
        return True  # not what we store: let the merge decide
