"""The peer table fed by heartbeats, and the failure detector that marks silent peers DOWN.

Subscribers (the election, later replication) get PeerUp, PeerDown and PeerChanged events.
"""
# test-case-name: tests.unit.test_membership

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from distpotify.cluster.heartbeat import Heartbeat
from distpotify.model import Version
from distpotify.wire import ACTIVE, LEADER


@attrs.frozen
class Peer:
    """What we last heard from one other replica, and whether it is still heard."""

    node_id: int
    role: str
    state: str
    http: str
    amp: str
    epoch: int
    head: Version
    last_seen: float
    up: bool

    @property
    def claim(self) -> tuple[int, int]:
        """The ``(epoch, node_id)`` that orders competing leaders."""
        return (self.epoch, self.node_id)


@attrs.frozen
class PeerUp:
    """A peer was heard for the first time, or again after being DOWN."""

    peer: Peer


@attrs.frozen
class PeerDown:
    """A peer has been silent for failure_timeout."""

    peer: Peer


@attrs.frozen
class PeerChanged:
    """A live peer announced a different role, state, epoch or address (head changes are
    too frequent to be events: read them from the table)."""

    peer: Peer
    previous: Peer


PeerEvent = PeerUp | PeerDown | PeerChanged

_WATCHED = ("role", "state", "epoch", "http", "amp")


class Membership:
    """The peer table: one row per node id ever heard, other than our own."""

    log = Logger()

    def __init__(self, *, node_id: int, clock: IReactorTime, failure_timeout: float) -> None:
        self._node_id = node_id
        self._clock = clock
        self._failure_timeout = failure_timeout
        self._peers: dict[int, Peer] = {}
        self._timers: dict[int, IDelayedCall] = {}
        self._observers: list[Callable[[PeerEvent], object]] = []

    def subscribe(self, observer: Callable[[PeerEvent], object]) -> Callable[[], None]:
        """Call ``observer`` with every event from now on; returns the unsubscribe function."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def heartbeat_received(self, heartbeat: Heartbeat) -> None:
        if heartbeat.node == self._node_id:
            return
        previous = self._peers.get(heartbeat.node)
        peer = Peer(
            node_id=heartbeat.node,
            role=heartbeat.role,
            state=heartbeat.state,
            http=heartbeat.http,
            amp=heartbeat.amp,
            epoch=heartbeat.epoch,
            head=heartbeat.head,
            last_seen=self._clock.seconds(),
            up=True,
        )
        self._peers[peer.node_id] = peer
        timer = self._timers.get(peer.node_id)
        if timer is not None and timer.active():
            timer.reset(self._failure_timeout)
        else:
            self._timers[peer.node_id] = self._clock.callLater(
                self._failure_timeout, self._silent, peer.node_id
            )
        if previous is None or not previous.up:
            self.log.info(
                "peer {node_id} up: {role} {state} epoch={epoch} http={http}",
                node_id=peer.node_id,
                role=peer.role,
                state=peer.state,
                epoch=peer.epoch,
                http=peer.http,
            )
            self._emit(PeerUp(peer))
        elif any(getattr(previous, name) != getattr(peer, name) for name in _WATCHED):
            self._emit(PeerChanged(peer, previous))

    def _silent(self, node_id: int) -> None:
        del self._timers[node_id]
        peer = attrs.evolve(self._peers[node_id], up=False)
        self._peers[node_id] = peer
        self.log.info(
            "peer {node_id} down: silent for {timeout}s", node_id=node_id,
            timeout=self._failure_timeout,
        )
        self._emit(PeerDown(peer))

    def _emit(self, event: PeerEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:
                self.log.failure("membership observer {observer} failed", observer=observer)

    def stop(self) -> None:
        """Cancel the failure timers (the table is kept)."""
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def get(self, node_id: int) -> Peer | None:
        return self._peers.get(node_id)

    def peers(self) -> list[Peer]:
        """Every peer ever heard, live or not, by node id."""
        return [self._peers[node_id] for node_id in sorted(self._peers)]

    def live_peers(self) -> list[Peer]:
        return [peer for peer in self.peers() if peer.up]

    def electable_above(self, node_id: int) -> list[int]:
        """Live ACTIVE peers with a higher id: the ones a Bully candidate must ask."""
        return [
            peer.node_id
            for peer in self.live_peers()
            if peer.node_id > node_id and peer.state == ACTIVE
        ]

    def current_leader(self) -> Peer | None:
        """The live peer announcing leadership with the highest ``(epoch, node_id)``."""
        leaders = [peer for peer in self.live_peers() if peer.role == LEADER]
        return max(leaders, key=lambda peer: peer.claim, default=None)

    def highest_epoch(self) -> int:
        """The highest epoch any peer has announced, live or not (0 if none)."""
        return max((peer.epoch for peer in self._peers.values()), default=0)

    def snapshot(self) -> list[dict[str, Any]]:
        """The peer table for /status, with last-seen ages in milliseconds."""
        now = self._clock.seconds()
        return [
            {
                "node_id": peer.node_id,
                "role": peer.role,
                "state": peer.state,
                "up": peer.up,
                "http": peer.http,
                "amp": peer.amp,
                "epoch": peer.epoch,
                "head": peer.head.encode(),
                "last_seen_ms": max(0, round((now - peer.last_seen) * 1000)),
            }
            for peer in self.peers()
        ]
