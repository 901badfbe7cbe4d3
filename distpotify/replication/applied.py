"""Read your writes on a replica: a read that names a version (X-Distpotify-Min-Version)
waits, up to --read-wait, until the op of exactly that version has been applied here.

Waiters are woken as ops are applied (the Receiver reports each batch), never by polling
the database; a version not applied within the wait answers False (the API's 409 behind).
"""
# test-case-name: tests.unit.test_applied

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from distpotify.model import Op, Version
from distpotify.store.metadata import MetadataDB, MetadataStore


class AppliedOps:
    """Which ops are applied here, for reads that must see one of them."""

    def __init__(self, store: MetadataStore, clock: IReactorTime, read_wait: float,
                 head: Callable[[], Version]) -> None:
        self._store = store
        self._clock = clock
        self._read_wait = read_wait
        self._head = head
        self._waiting: dict[Version, dict[Deferred[bool], IDelayedCall]] = {}
        self.asked = 0  # reads that named a version
        self.waited = 0  # of those, the ones that found it not applied yet
        self.behind = 0  # and the ones answered 409: not applied within the read wait

    async def wait_for(self, version: Version) -> bool:
        """True once the op of ``version`` is applied here; False if it is not within the
        read wait."""
        self.asked += 1
        head = self._head()
        if version == head:
            return True
        # Above the head it cannot be in the oplog; at or below it, it may be (or may be an
        # op of another leader this replica has not received).
        if version < head and await self._store.run(MetadataDB.has_op, version):
            return True
        return await self._wait(version)

    def applied(self, ops: Iterable[Op]) -> None:
        """Ops just applied here (durably): wake the reads waiting for them."""
        if not self._waiting:
            return
        for op in ops:
            for waiter, timer in self._waiting.pop(op.version, {}).items():
                timer.cancel()
                waiter.callback(True)

    def _wait(self, version: Version) -> Deferred[bool]:
        if self._read_wait <= 0:
            self.behind += 1
            return succeed(False)
        self.waited += 1
        waiters = self._waiting.setdefault(version, {})

        def drop(d: Deferred[bool]) -> IDelayedCall | None:
            timer = waiters.pop(d, None)
            if not waiters and self._waiting.get(version) is waiters:
                del self._waiting[version]
            return timer

        def forget(d: Deferred[bool]) -> None:  # the read went away
            timer = drop(d)
            if timer is not None and timer.active():
                timer.cancel()

        def expire() -> None:
            self.behind += 1
            drop(waiter)
            waiter.callback(False)

        waiter: Deferred[bool] = Deferred(forget)
        waiters[waiter] = self._clock.callLater(self._read_wait, expire)
        return waiter

    def status(self) -> dict[str, int]:
        return {"asked": self.asked, "waited": self.waited, "behind": self.behind,
                "waiting": sum(len(w) for w in self._waiting.values())}
