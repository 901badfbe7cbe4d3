"""Semi-synchronous acknowledgement: the leader answers a write once followers hold it too.

The Pusher reports every batch a follower has applied durably; a write waits, woken by those
reports (never by polling), until --sync-replicas followers cover its version, or answers
after --sync-timeout anyway and counts a degraded acknowledgement, as MySQL's semi-sync does.
"""
# test-case-name: tests.unit.test_semisync

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from distpotify.cluster.membership import Membership, PeerDown, PeerEvent
from distpotify.model import Version
from distpotify.replication.push import pushable

log = Logger()


@attrs.define
class AckCounters:
    """How writes were acknowledged: held by enough followers (replicated), or degraded
    because they did not confirm in time (timeout) or too few were up to wait for (alone)."""

    replicated: int = 0
    timeout: int = 0
    alone: int = 0


@attrs.define(eq=False)
class _Waiter:
    version: Version
    done: Deferred[None]
    timer: IDelayedCall | None = None
    holders: set[int] = attrs.field(factory=set)


class SemiSync:
    """The writes waiting for their followers' acknowledgements, on the leader.

    ``acknowledged()`` is what the library awaits after each durable write: it covers every
    version written so far (the head), fires once ``replicas`` distinct followers have
    acknowledged a batch reaching it (``follower_acked``, from the Pusher), and never fails:
    after ``timeout`` seconds, or at once when fewer followers are up than it would wait for
    (a lone survivor), it fires anyway and the write counts as degraded. With ``replicas``
    0 it fires at once: asynchronous replication.
    """

    def __init__(
        self,
        *,
        replicas: int,
        timeout: float,
        clock: IReactorTime,
        head: Callable[[], Version],
        membership: Membership,
    ) -> None:
        self.replicas = replicas
        self.timeout = timeout
        self._clock = clock
        self._head = head
        self._membership = membership
        self.counters = AckCounters()
        self._waiters: list[_Waiter] = []
        # The newest version each follower has acknowledged since it was last seen up.
        self._acked: dict[int, Version] = {}
        self._unsubscribe = membership.subscribe(self._peer_event)

    def acknowledged(self) -> Deferred[None]:
        """Fires once every write made so far is held by ``replicas`` followers, or when
        waiting for them is over (degraded)."""
        if self.replicas == 0:
            return succeed(None)
        version = self._head()
        up = sum(pushable(peer) for peer in self._membership.live_peers())
        if up < self.replicas:
            self.counters.alone += 1
            if self.counters.alone == 1 or self.counters.alone % 100 == 0:
                log.warn("write {version} acknowledged with {up} of {needed} followers up:"
                         " answered at once (degraded acknowledgements, too few followers:"
                         " {count})", version=version.encode(), up=up, needed=self.replicas,
                         count=self.counters.alone)
            return succeed(None)
        waiter = _Waiter(version, Deferred(lambda _: self._forget(waiter)))
        waiter.holders = {node for node, acked in self._acked.items() if acked >= version}
        if self._satisfied(waiter):
            return waiter.done
        waiter.timer = self._clock.callLater(self.timeout, self._timed_out, waiter)
        self._waiters.append(waiter)
        return waiter.done

    def follower_acked(self, node_id: int, version: Version) -> None:
        """``node_id`` applied, durably, a batch whose newest op is ``version``."""
        previous = self._acked.get(node_id)
        if previous is not None and version <= previous:
            return  # nothing it had not acknowledged already
        self._acked[node_id] = version
        for waiter in list(self._waiters):
            if version >= waiter.version:
                waiter.holders.add(node_id)
                self._satisfied(waiter)

    def stop(self) -> None:
        self._unsubscribe()
        for waiter in list(self._waiters):
            self._forget(waiter)
            waiter.done.callback(None)

    def status(self) -> dict[str, Any]:
        """``replication.semi_sync`` in /status."""
        return {"sync_replicas": self.replicas, "timeout_s": self.timeout,
                "waiting": len(self._waiters), **attrs.asdict(self.counters)}

    def _satisfied(self, waiter: _Waiter) -> bool:
        if len(waiter.holders) < self.replicas:
            return False
        self._forget(waiter)
        self.counters.replicated += 1
        waiter.done.callback(None)
        return True

    def _timed_out(self, waiter: _Waiter) -> None:
        waiter.timer = None
        self._forget(waiter)
        self.counters.timeout += 1
        if self.counters.timeout == 1 or self.counters.timeout % 100 == 0:
            log.warn("write {version} acknowledged by {held} of {needed} followers within"
                     " {timeout}s: answered anyway (degraded acknowledgements: {count})",
                     version=waiter.version.encode(), held=len(waiter.holders),
                     needed=self.replicas, timeout=self.timeout, count=self.counters.timeout)
        waiter.done.callback(None)

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None

    def _peer_event(self, event: PeerEvent) -> None:
        # A follower that went away may come back with less (a wiped disk): what it
        # acknowledged before counts no more.
        if isinstance(event, PeerDown):
            self._acked.pop(event.peer.node_id, None)
