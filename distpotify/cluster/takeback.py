"""Bully after any return: a higher ACTIVE replica that follows a lower leader takes over.

It waits to be caught up first (its head at the head the lower leader announced when first
followed), or --catch-up-timeout at most, then starts an election, as Bully prescribes.
"""
# test-case-name: tests.unit.test_takeback

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from distpotify.cluster.bully import BullyElection
from distpotify.cluster.membership import Membership
from distpotify.model import Version
from distpotify.periodic import Periodic
from distpotify.wire import FOLLOWER

log = Logger()


class TakeBack:
    """Checks every ``interval`` (a heartbeat), and as soon as the leader it follows changes
    (``leader_changed``), whether this replica follows a lower id.

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
        self.claims = 0
        # (epoch, node_id) of the lower leader followed, our target head, and since when.
        self._following: tuple[int, int] | None = None
        self._target = Version(0, 0, 0)
        self._since = 0.0

    def leader_changed(self) -> None:
        """The election changed role or leader: check on the next turn of the reactor (not
        now: the election machine is still in its transition)."""
        if self.loop.running:
            self._clock.callLater(0, self.check)

    def check(self) -> None:
        status = self._election.status
        leader = self._membership.get(status.leader_id) if status.leader_id is not None else None
        if (status.role != FOLLOWER or leader is None or not leader.up
                or leader.node_id > self._node_id or not self._electable()):
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
