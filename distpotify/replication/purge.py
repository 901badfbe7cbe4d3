"""Purging by replicated watermarks: the leader moves a watermark as an ordinary op, and every
replica that applies it drops what lies at or below it: tombstones, and idempotency keys.

The tombstone watermark is the newest version older than tombstone_ttl that every ACTIVE
follower has acknowledged. A replica away longer than tombstone_ttl rejoins by snapshot
(bootstrap.py), so no replica can bring a purged row back. The key watermark is the newest
version older than idempotency_ttl; a key row at or below it is refused wherever it arrives
(store/oplog.py), so a key expires on every replica alike, never by a local clock.
"""
# test-case-name: tests.unit.test_purge, tests.integration.test_purge

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from distpotify.cluster.membership import Membership
from distpotify.failpoints import NONE, Failpoints
from distpotify.model import IDEMPOTENCY_KEYS, TOMBSTONES, Version
from distpotify.periodic import Periodic
from distpotify.replication.push import Pusher
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from distpotify.wire import ACTIVE

log = Logger()


class Purger:
    def __init__(
        self,
        *,
        store: MetadataStore,
        pusher: Pusher,
        membership: Membership,
        leading: Callable[[], bool],
        clock: IReactorTime,
        ttl: float,
        key_ttl: float,
        failpoints: Failpoints = NONE,
    ) -> None:
        self._store = store
        self._pusher = pusher
        self._membership = membership
        self._leading = leading
        self._clock = clock
        self._ttl = ttl
        self._failpoints = failpoints
        self._key_ttl = key_ttl
        # The service that moves the watermarks every (shorter) ttl/4, at most hourly.
        self.loop = Periodic(lambda: Deferred.fromCoroutine(self.advance()),
                             max(0.25, min(min(ttl, key_ttl) / 4, 3600.0)), clock,
                             name="purge")
        self.watermarks = 0
        self.key_watermarks = 0

    async def advance(self) -> None:
        """Move the watermarks if the leader may; each op replicates like any write."""
        if not self._leading():
            return
        await self._advance_tombstones()
        await self._advance_keys()

    async def _advance_tombstones(self) -> None:
        horizon = await self._store.run(
            MetadataDB.newest_version_before, self._clock.seconds() - self._ttl)
        if horizon is None or not await self._store.run(MetadataDB.tombstones):
            return
        followers = [p for p in self._membership.live_peers() if p.state == ACTIVE]
        cursors = [self._pusher.links[p.node_id].cursor if p.node_id in self._pusher.links
                   else None for p in followers]
        if any(cursor is None for cursor in cursors):
            return  # a follower whose position is unknown has not acknowledged anything yet
        through = min([horizon, *(c for c in cursors if c is not None)])
        if await self._move(TOMBSTONES, through, MetadataDB.purge_watermark):
            self.watermarks += 1
            log.info("tombstones purged through {through}", through=through.encode())

    async def _advance_keys(self) -> None:
        # No follower needs to acknowledge a key first: one that receives a key row after
        # the watermark drops it (store/oplog.py), so an expired key cannot come back.
        through = await self._store.run(
            MetadataDB.newest_version_before, self._clock.seconds() - self._key_ttl)
        if through is None or not await self._store.run(MetadataDB.idempotency_keys):
            return
        if await self._move(IDEMPOTENCY_KEYS, through, MetadataDB.key_watermark):
            self.key_watermarks += 1
            log.info("idempotency keys expired through {through}", through=through.encode())

    async def _move(self, name: str, through: Version,
                    current: Callable[[MetadataDB], Version]) -> bool:
        if through <= await self._store.run(current):
            return False
        await self._store.run(
            MetadataDB.write, [Change("purges", name, {"through": through.encode()})])
        self._failpoints.hit("purge.written")
        self._pusher.wake()
        return True
