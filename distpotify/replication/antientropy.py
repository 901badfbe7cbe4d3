"""Anti-entropy: every interval (with jitter) compare digests with one peer, pull what differs.

Only differing buckets are listed and only rows whose versions differ are fetched, so a round
costs the 256 bucket hashes plus the difference. Some rounds also fetch chunk files that the
registry says should be here and are not: the first, any that pulled rows, any after a round
that left missing chunks for later, and every CHUNK_CHECK_EVERY-th. The check lists the whole
registry and chunk directory, so it does not run every 10 s on a large library; pushes and
pulled rows bring their chunks themselves, and reads repair what disappears in between.
"""
# test-case-name: tests.integration.test_replication

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.periodic import Periodic
from distpotify.replication.client import PeerClient
from distpotify.replication.fetch import ChunkRef
from distpotify.replication.receive import Receiver
from distpotify.replication.repair import ChunkGuard
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner

log = Logger()

KEYS_PER_REQUEST = 100
CHUNKS_PER_ROUND = 256
CHUNK_CHECK_EVERY = 30  # rounds: 5 minutes at the default interval


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
        self._busy = False
        self.rounds = 0
        self.last: dict[str, Any] | None = None
        self.rows_repaired = 0
        self.chunks_repaired = 0
        self.chunk_checks = 0
        self.errors = 0
        self._chunks_left = False

    def _tick(self) -> Deferred[None]:
        peers = list(self._peers())
        d = self.run_round(self._rng.choice(peers)) if peers else Deferred.fromCoroutine(_none())
        return d.addErrback(self._failed)

    def run_round(self, peer: str) -> Deferred[None]:
        """One exchange with ``peer`` now (also used when a peer comes back)."""
        if self._busy:
            return Deferred.fromCoroutine(_none())
        self._busy = True

        def done(result: object) -> object:
            self._busy = False
            return result

        return Deferred.fromCoroutine(self._round(peer)).addBoth(done)

    def run_round_soon(self, peer: str, delay: float) -> None:
        """A round with ``peer`` after ``delay`` (a peer just heard again may not serve yet)."""
        self._clock.callLater(delay, lambda: self.run_round(peer).addErrback(self._failed))

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return  # stopped with the replica: not a failed round
        self.errors += 1
        log.info("anti-entropy round failed: {error}", error=failure.getErrorMessage())

    async def _round(self, peer: str) -> None:
        started = self._clock.seconds()
        received = self._client.bytes_received
        theirs = await self._client.digest(peer)
        mine = await self._store.run(MetadataDB.digest)
        differing = [b for b, (a, c) in enumerate(zip(mine, theirs, strict=False)) if a != c]
        wanted: list[tuple[str, str]] = []
        for bucket in differing:
            local = {(e, k): v for e, k, v in await self._store.run(MetadataDB.bucket_rows,
                                                                     bucket)}
            wanted += [(e, k) for e, k, v in await self._client.bucket(peer, bucket)
                       if local.get((e, k)) != v]
        for start in range(0, len(wanted), KEYS_PER_REQUEST):
            rows = await self._client.rows(peer, wanted[start:start + KEYS_PER_REQUEST])
            await self._receiver.apply_rows(rows, peer)
        check = bool(wanted) or self._chunks_left or self.rounds % CHUNK_CHECK_EVERY == 0
        chunks = await self._repair_missing_chunks() if check else 0
        self.rounds += 1
        self.rows_repaired += len(wanted)
        self.chunks_repaired += chunks
        self.last = {
            "peer": peer, "at": started, "buckets_differing": len(differing),
            "rows_pulled": len(wanted), "chunks_checked": check, "chunks_fetched": chunks,
            "bytes_received": self._client.bytes_received - received,
            "seconds": round(self._clock.seconds() - started, 3),
        }
        if wanted or chunks:
            log.info("anti-entropy with {peer}: {buckets} buckets differed, pulled {rows} rows,"
                     " fetched {chunks} chunks", peer=peer, buckets=len(differing),
                     rows=len(wanted), chunks=chunks)

    async def _repair_missing_chunks(self) -> int:
        live = await self._store.run(MetadataDB.live_chunk_names)
        present = await self._blocking(self._chunks.names)
        self.chunk_checks += 1
        absent = sorted(live - present)
        # Anything not repaired this round (past the round's share, or no peer had it yet)
        # is looked for again next round.
        self._chunks_left = bool(absent)
        if not absent:
            return 0
        rows = await self._store.run(MetadataDB.chunk_rows, absent[:CHUNKS_PER_ROUND])
        repaired = 0
        for song_id, idx, size, sha256 in rows:
            repaired += await self._guard.ensure(ChunkRef(song_id, idx, size, sha256))
        self._chunks_left = repaired < len(absent)
        return repaired

    def status(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "errors": self.errors, "interval": self._interval,
                "last": self.last,
                "rows_repaired": self.rows_repaired, "chunks_repaired": self.chunks_repaired,
                "chunk_checks": self.chunk_checks}


async def _none() -> None:
    return None
