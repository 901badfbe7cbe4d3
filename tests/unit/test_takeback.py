"""Bully after any return, with a Clock: a higher ACTIVE replica following a lower leader
holds an election once caught up, or after its patience runs out, and never otherwise."""

from __future__ import annotations

from twisted.internet.task import Clock

from distpotify.cluster.membership import Membership
from distpotify.cluster.takeback import TakeBack
from distpotify.model import Version
from tests.unit.test_bully import Node, heartbeat

INTERVAL = 0.1
PATIENCE = 2.0
LEADER_HEAD = Version(6, 2, 20)
OWN_HEAD = Version(5, 3, 50)  # its own last writes, from before the pause


class Returned:
    """Node 3, back from a pause, following node 2 (epoch 6); node 1 follows it too."""

    def __init__(self, head: Version = OWN_HEAD, electable: bool = True) -> None:
        self.node = Node(node_id=3, higher=())
        self.clock: Clock = self.node.clock
        self.membership = Membership(node_id=3, clock=self.clock, failure_timeout=0.75)
        self.head = head
        self.electable = electable
        self.takeback = TakeBack(
            node_id=3, election=self.node.election, membership=self.membership,
            head=lambda: self.head, electable=lambda: self.electable, clock=self.clock,
            interval=INTERVAL, patience=PATIENCE,
        )
        self.hear_leader()
        self.membership.heartbeat_received(heartbeat(1, epoch=6))
        self.node.election.leader_seen(2, 6, "http://127.0.0.1:8002")
        self.takeback.start()

    def hear_leader(self, head: Version = LEADER_HEAD) -> None:
        self.membership.heartbeat_received(heartbeat(2, epoch=6, role="leader", head=head))

    def tick(self, seconds: float) -> None:
        """Time passes with heartbeats from both peers (the first check comes one interval
        after the start, so it sees the head the leader announced when followed)."""
        for _ in range(round(seconds / INTERVAL)):
            self.clock.advance(INTERVAL)
            self.hear_leader(Version(6, 2, 99))  # the leader keeps writing meanwhile
            self.membership.heartbeat_received(heartbeat(1, epoch=6))

    @property
    def role(self) -> str:
        return self.node.election.status.role


def test_a_caught_up_higher_replica_takes_leadership_from_a_lower_leader() -> None:
    returned = Returned()
    returned.tick(0.3)
    assert returned.role == "follower"

    returned.head = LEADER_HEAD  # push brought the tail the leader announced when followed
    returned.tick(0.1)

    assert returned.role in ("candidate", "leader")
    returned.tick(0.1)
    assert returned.role == "leader" and returned.node.election.status.epoch == 7
    assert returned.takeback.claims == 1


def test_the_target_is_the_head_announced_when_first_followed_not_a_moving_one() -> None:
    returned = Returned(head=LEADER_HEAD)

    returned.tick(0.1)  # the leader has written on (99) since: not waited for

    assert returned.takeback.claims == 1


def test_one_not_caught_up_takes_over_once_its_patience_runs_out() -> None:
    returned = Returned()

    returned.tick(PATIENCE - INTERVAL)
    assert returned.takeback.claims == 0 and returned.role == "follower"
    returned.tick(2 * INTERVAL)

    assert returned.takeback.claims == 1


def test_a_replica_following_a_higher_leader_stays_a_follower() -> None:
    node = Node(node_id=1, higher=(2,))
    membership = Membership(node_id=1, clock=node.clock, failure_timeout=0.75)
    membership.heartbeat_received(heartbeat(2, epoch=6, role="leader", head=LEADER_HEAD))
    node.election.leader_seen(2, 6, "http://127.0.0.1:8002")
    takeback = TakeBack(node_id=1, election=node.election, membership=membership,
                        head=lambda: LEADER_HEAD, electable=lambda: True, clock=node.clock,
                        interval=INTERVAL, patience=PATIENCE)

    takeback.check()
    node.clock.advance(PATIENCE * 2)
    takeback.check()

    assert takeback.claims == 0 and node.election.status.role == "follower"


def test_a_replica_that_is_not_electable_waits() -> None:
    returned = Returned(head=LEADER_HEAD, electable=False)

    returned.tick(PATIENCE + 1)

    assert returned.takeback.claims == 0 and returned.role == "follower"


def test_a_leader_gone_silent_is_no_leader_to_take_over_from() -> None:
    returned = Returned(head=LEADER_HEAD)
    returned.takeback.stop()
    returned.clock.advance(1.0)  # node 2 silent: down (the election's own timers handle it)

    returned.takeback.check()

    assert returned.takeback.claims == 0


def test_a_leader_that_steps_down_to_a_lower_ids_higher_epoch_claims_back_at_once() -> None:
    """A partition heals: node 1, cut off, led epoch 7; node 3, which led the majority in
    epoch 6, hears it, steps down, and (holding more than node 1) takes over again."""
    node = Node(node_id=3, higher=())
    clock = node.clock
    membership = Membership(node_id=3, clock=clock, failure_timeout=0.75)
    takeback = TakeBack(node_id=3, election=node.election, membership=membership,
                        head=lambda: Version(6, 3, 40), electable=lambda: True, clock=clock,
                        interval=INTERVAL, patience=PATIENCE)
    takeback.start()
    node.election.start(0)
    clock.advance(0)  # nobody else: it leads
    assert node.election.status.role == "leader"
    membership.heartbeat_received(heartbeat(1, epoch=7, role="leader", head=Version(5, 3, 9)))

    node.election.leader_seen(1, 7, "http://127.0.0.1:8001")
    takeback.leader_changed()
    clock.advance(0)

    assert takeback.claims == 1
    clock.advance(0)
    assert node.election.status.role == "leader" and node.election.status.epoch == 8


class CountingTakeBack(TakeBack):
    checks = 0

    def check(self) -> None:
        self.checks += 1
        super().check()


class Following:
    """Node 2 following node 3 (epoch 6), the takeback started: the usual, idle case."""

    def __init__(self) -> None:
        self.node = Node(node_id=2, higher=(3,))
        self.clock: Clock = self.node.clock
        self.membership = Membership(node_id=2, clock=self.clock, failure_timeout=0.75)
        self.takeback = CountingTakeBack(
            node_id=2, election=self.node.election, membership=self.membership,
            head=lambda: LEADER_HEAD, electable=lambda: True, clock=self.clock,
            interval=INTERVAL, patience=PATIENCE,
        )
        self.membership.heartbeat_received(heartbeat(3, epoch=6, role="leader"))
        self.node.election.leader_seen(3, 6, "http://127.0.0.1:8003")
        self.takeback.start()

    def tick(self, seconds: float, *nodes: int) -> None:
        for _ in range(round(seconds / INTERVAL)):
            self.clock.advance(INTERVAL)
            for node_id in nodes:
                role = "leader" if node_id == self.node.election.leader_id else "follower"
                self.membership.heartbeat_received(heartbeat(node_id, epoch=6, role=role))


def test_following_a_higher_leader_the_checks_pause() -> None:
    following = Following()

    following.tick(10.0, 3)

    assert following.takeback.checks == 1  # the first, one interval after the start
    assert not following.takeback.loop.running
    assert following.takeback.claims == 0


def test_a_lower_leader_followed_after_a_pause_is_watched_again() -> None:
    """Node 3 dies; node 1, then the only other, leads: node 2 is the higher id, and the
    election's change of leader brings a check that resumes the watch."""
    following = Following()
    following.tick(1.0, 3)
    assert not following.takeback.loop.running

    following.membership.heartbeat_received(heartbeat(1, epoch=7, role="leader",
                                                      head=LEADER_HEAD))
    following.node.election.leader_seen(1, 7, "http://127.0.0.1:8001")
    following.takeback.leader_changed()
    following.clock.advance(0)

    assert following.takeback.claims == 1  # caught up at once: its head is the target


def test_a_leader_known_before_its_first_heartbeat_is_checked_once_heard() -> None:
    """A Coordinator names the leader before its heartbeats reach the peer table: the check
    then finds no leader to compare with, and the leader's first heartbeat brings another."""
    following = Following()
    following.tick(1.0, 3)
    following.node.election.leader_seen(1, 7, "http://127.0.0.1:8001")
    following.takeback.leader_changed()
    following.clock.advance(0)
    assert following.takeback.claims == 0 and not following.takeback.loop.running

    following.membership.heartbeat_received(heartbeat(1, epoch=7, role="leader",
                                                      head=LEADER_HEAD))
    following.clock.advance(0)

    assert following.takeback.claims == 1


def test_a_stopped_takeback_checks_nothing_more() -> None:
    following = Following()
    following.takeback.stop()

    following.membership.heartbeat_received(heartbeat(1, epoch=7, role="leader"))
    following.takeback.leader_changed()
    following.tick(1.0, 1)

    assert following.takeback.checks == 0
