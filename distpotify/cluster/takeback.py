"""Bully after any return: a higher ACTIVE replica that follows a lower leader takes over.

It waits to be caught up first (its head at the head the lower leader announced when first
followed), or --catch-up-timeout at most, then starts an election, as Bully prescribes.
"""
# test-case-name: tests.unit.test_takeback

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from distpotify.cluster.bully import BullyElection
from distpotify.cluster.membership import Membership
from distpotify.model import Version
from distpotify.periodic import Periodic
from distpotify.wire import FOLLOWER

log = Logger()


class TakeBack:
    """Checks, as soon as the leader it follows changes (``leader_changed``) or a peer comes,
    goes or changes, whether this replica follows a lower id, and then every ``interval``
    (a heartbeat) while it does.

    Bully makes the highest live id lead, but a higher replica may find itself following a
    lower leader: it was paused (SIGSTOP) or cut off while the others elected one, or it
    heard the lower leader's higher epoch as a partition healed. The election's
    ``claim_if_higher`` covers a restart (on becoming ACTIVE) and a Coordinator from a lower
    id; this covers every other return. The first check that sees a lower leader notes the
    head that leader announces (the target, which does not move with its later writes);
    once our head reaches it, or ``patience`` seconds later whatever push brought, we hold
    an election. The new leader's catch-up (replication/takeover.py) pulls the rest. A
    leader that steps down to a lower id's higher epoch (a minority's, as a partition heals)
    is caught up already: it claims back at once, before the proxy sends that id a write.

    Following a higher leader (the usual case) there is nothing to watch, and the checks
    pause: only a change of role or leader, or a peer's coming, going or change, can make
    this replica follow a lower one, and each of those brings a check. An idle replica is
    not woken ten times a second for nothing.
    """

    def __init__(
        self,
        *,
        node_id: int,
        election: BullyElection,
        membership: Membership,
        head: Callable[[], Version],
        electable: Callable[[], bool],
        clock: IReactorTime,
        interval: float,
        patience: float,
    ) -> None:
        self._node_id = node_id
        self._election = election
        self._membership = membership
        self._head = head
        self._electable = electable
        self._clock = clock
        self._patience = patience
        self.loop = Periodic(self.check, interval, clock, name="bully take-back")
        self._started = False
        self._unsubscribe: Callable[[], None] | None = None
        self._soon: IDelayedCall | None = None  # the check an event asked for
        self.claims = 0
        # (epoch, node_id) of the lower leader followed, our target head, and since when.
        self._following: tuple[int, int] | None = None
        self._target = Version(0, 0, 0)
        self._since = 0.0

    def start(self) -> None:
        """Check from now on: first one interval from now, then as described above."""
        self._started = True
        if self._unsubscribe is None:
            self._unsubscribe = self._membership.subscribe(lambda _: self.leader_changed())
        if not self.loop.running:
            self.loop.startService()

    def stop(self) -> None:
        self._started = False
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.loop.running:
            self.loop.stopService()

    def leader_changed(self) -> None:
        """The election changed role or leader (or a peer changed): check on the next turn
        of the reactor (not now: the election machine is still in its transition), once
        for all the changes of this turn."""
        if self._started and (self._soon is None or not self._soon.active()):
            self._soon = self._clock.callLater(0, self.check)

    def check(self) -> None:
        status = self._election.status
        leader = self._membership.get(status.leader_id) if status.leader_id is not None else None
        if (status.role != FOLLOWER or leader is None or not leader.up
                or leader.node_id > self._node_id):
            self._following = None
            if self.loop.running:
                self.loop.stopService()  # nothing to watch until an event brings a check
            return
        if self._started and not self.loop.running:
            self.loop.startService()
        if not self._electable():
            self._following = None
            return
        now = self._clock.seconds()
        claim = (status.epoch, leader.node_id)
        if claim != self._following:
            self._following, self._target, self._since = claim, leader.head, now
            log.info("following lower leader {leader_id} (epoch {epoch}): taking over once at"
                     " its head {target}, from {head}", leader_id=leader.node_id,
                     epoch=status.epoch, target=self._target.encode(),
                     head=self._head().encode())
        caught_up = self._head() >= self._target
        if caught_up or now - self._since >= self._patience:
            log.info("taking leadership back from lower leader {leader_id} ({why})",
                     leader_id=leader.node_id,
                     why="caught up" if caught_up else f"not caught up after {self._patience}s")
            self._following = None
            self.claims += 1
            self._election.claim_if_higher()
