"""Tombstone purging: the leader moves a replicated watermark; every replica then drops the
tombstones at or below it.

The watermark is the newest version older than tombstone_ttl that every ACTIVE follower has
acknowledged. A replica away longer than tombstone_ttl rejoins by snapshot (bootstrap.py),
so no replica can bring a purged row back.
"""
# test-case-name: tests.integration.test_purge

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from distpotify.cluster.membership import Membership
from distpotify.failpoints import NONE, Failpoints
from distpotify.periodic import Periodic
from distpotify.replication.push import Pusher
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from distpotify.wire import ACTIVE

log = Logger()


class TombstonePurger:
    def __init__(
        self,
        *,
        store: MetadataStore,
        pusher: Pusher,
        membership: Membership,
        leading: Callable[[], bool],
        clock: IReactorTime,
        ttl: float,
        failpoints: Failpoints = NONE,
    ) -> None:
        self._store = store
        self._pusher = pusher
        self._membership = membership
        self._leading = leading
        self._clock = clock
        self._ttl = ttl
        self._failpoints = failpoints
        # The service that moves the watermark every ttl/4, at most hourly.
        self.loop = Periodic(lambda: Deferred.fromCoroutine(self.advance()),
                             max(0.25, min(ttl / 4, 3600.0)), clock, name="tombstone purge")
        self.watermarks = 0

    async def advance(self) -> None:
        """Move the watermark if the leader may; the op replicates like any write."""
        if not self._leading():
            return
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
        if through <= await self._store.run(MetadataDB.purge_watermark):
            return
        await self._store.run(
            MetadataDB.write, [Change("purges", "tombstones", {"through": through.encode()})])
        self._failpoints.hit("purge.written")
        self.watermarks += 1
        log.info("tombstones purged through {through}", through=through.encode())
        self._pusher.wake()
