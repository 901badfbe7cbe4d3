"""Getting cover pictures from other replicas, verified by SHA-256 before they are stored.

A follower fetches the covers a batch names before applying it, as it does chunks, but a
cover that cannot be had does not hold the batch back: the song is worth more than its
picture. What is still missing is fetched by the repair sweep (each anti-entropy interval
once a song or an album's cover changed, or while covers are missing; at once after a join;
and every FULL_SWEEP_EVERY intervals whatever happened) and by the read that needs it
(covers.py).
"""
# test-case-name: tests.unit.test_cover_replication, tests.integration.test_covers

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.images import MAX_COVER_BYTES
from distpotify.model import Op
from distpotify.periodic import Periodic
from distpotify.replication.client import PeerClient
from distpotify.store.covers import CoverStore, valid_sha256
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner

log = Logger()

SWEEP_MAX = 256  # covers fetched at most per sweep; the rest wait for the next
# Intervals between sweeps while no song or album cover changes and none is missing: a sweep
# reads the cover of every live song (at 200,000 songs with covers, 0.45 s), and a file lost
# meanwhile is fetched by the first read that needs it.
FULL_SWEEP_EVERY = 60


@attrs.define
class CoverCounters:
    fetched: int = 0
    bad_bytes: int = 0
    failed: int = 0
    sweeps: int = 0
    missing: int = 0  # named by a live row, not here, at the last sweep


def covers_named(ops: Sequence[Op]) -> set[str]:
    """The covers ``ops`` set on songs or albums."""
    named = (op.fields.get("cover_sha256") for op in ops
             if op.entity in ("songs", "album_covers"))
    return {cover for cover in named if isinstance(cover, str) and valid_sha256(cover)}


class CoverFetcher:
    def __init__(self, client: PeerClient, files: CoverStore, blocking: Runner,
                 store: MetadataStore, peers: Callable[[], Sequence[str]],
                 clock: IReactorTime, interval: float) -> None:
        self._client = client
        self._files = files
        self._blocking = blocking
        self._store = store
        self._peers = peers
        self.counters = CoverCounters()
        # One download per cover: a push and a read asking at once share it.
        self._inflight: dict[str, Deferred[bool]] = {}
        self.loop = Periodic(lambda: Deferred.fromCoroutine(self._sweep_logged()), interval,
                             clock, name="cover repair", jitter=0.2)
        self._swept_at: object = None  # MetadataDB.catalog_key before the last periodic sweep
        self._idle_intervals = 0  # intervals since it, each found nothing changed

    async def fetch(self, sha256: str, sources: Sequence[str]) -> bool:
        """Cover ``sha256`` here, from the first of ``sources`` that gives the right bytes;
        False if none did."""
        if await self._blocking(self._files.has, sha256):
            return True
        work = self._inflight.get(sha256)
        if work is None:
            # Runs to its end even if every caller goes away (a push timeout, a client gone).
            work = Deferred.fromCoroutine(self._download(sha256, list(sources)))
            self._inflight[sha256] = work
            work.addBoth(self._done, sha256)
        mine: Deferred[bool] = Deferred()

        def relay(result: object) -> object:
            if not mine.called:  # a caller cancelled has gone
                mine.callback(result is True)
            return result

        work.addBoth(relay)
        return await mine

    def _done(self, result: object, sha256: str) -> object:
        self._inflight.pop(sha256, None)
        if isinstance(result, Failure):
            log.failure("the download of cover {sha256} failed", result, sha256=sha256)
            return False
        return result

    async def _download(self, sha256: str, sources: list[str]) -> bool:
        for base in sources:
            try:
                data = await self._client.cover(base, sha256, MAX_COVER_BYTES)
            except Exception as e:
                log.info("cover {sha256} from {base} failed: {error}", sha256=sha256,
                         base=base, error=e)
                continue
            if hashlib.sha256(data).hexdigest() != sha256:
                self.counters.bad_bytes += 1
                log.warn("cover {sha256} from {base} failed its SHA-256; discarded",
                         sha256=sha256, base=base)
                continue
            stored: bool = await self._blocking(self._files.put_verified, data, sha256)
            if stored:
                self.counters.fetched += 1
                return True
        self.counters.failed += 1
        return False

    async def for_ops(self, ops: Sequence[Op], sources: Sequence[str]) -> None:
        """Fetch the covers ``ops`` name that are not here (before they are applied); one
        that no source gives is left to the repair sweep."""
        for sha256 in sorted(covers_named(ops)):
            if not await self.fetch(sha256, sources):
                log.warn("cover {sha256} could not be fetched before its row; the repair"
                         " sweep will try again", sha256=sha256)

    async def _sweep_logged(self) -> None:
        try:
            await self.sweep_if_due()
        except Exception as e:
            log.info("cover repair sweep failed: {error}", error=e)

    async def sweep_if_due(self) -> None:
        """What the loop runs every interval: a sweep, unless no song or album cover changed
        since the last one, which left nothing missing, less than FULL_SWEEP_EVERY intervals
        ago."""
        key = await self._store.run(MetadataDB.catalog_key)
        if (key == self._swept_at and not self.counters.missing
                and self._idle_intervals < FULL_SWEEP_EVERY - 1):
            self._idle_intervals += 1
            return
        await self.sweep()
        self._swept_at, self._idle_intervals = key, 0

    async def sweep(self) -> int:
        """Fetch up to SWEEP_MAX of the covers live rows name that are not here; how many
        were fetched."""
        named = await self._store.run(MetadataDB.live_cover_names)
        present = await self._blocking(self._files.names)
        missing = sorted(named - present)
        self.counters.sweeps += 1
        fetched = 0
        peers = list(self._peers())
        if peers:
            for sha256 in missing[:SWEEP_MAX]:
                fetched += await self.fetch(sha256, peers)
        self.counters.missing = len(missing) - fetched
        if missing:
            log.info("cover repair: {fetched} of {missing} missing covers fetched",
                     fetched=fetched, missing=len(missing))
        return fetched

    def status(self) -> dict[str, Any]:
        return attrs.asdict(self.counters)
