"""The Bully election machine driven by a Clock with fake peers, and its AMP adapter over
in-memory connections (twisted.test.iosim)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient

from distpotify.cluster.ampauth import Handshake
from distpotify.cluster.bully import (
    AmpPeers,
    BullyElection,
    BullyProtocol,
    Coordinator,
    Election,
    ElectionStatus,
    Join,
    PeerConnection,
    follow_membership,
)
from distpotify.cluster.heartbeat import Heartbeat
from distpotify.cluster.membership import Membership
from distpotify.cluster.trust import AuthFailures
from distpotify.keys import ClusterKeys
from distpotify.model import Version

ANSWER_TIMEOUT = 0.2
COORDINATOR_TIMEOUT = 1.0
FAILURE_TIMEOUT = 0.75
LATENCY = 0.01


def http(node_id: int) -> str:
    return f"http://127.0.0.1:800{node_id}"


def amp_address(node_id: int) -> str:
    return f"127.0.0.1:900{node_id}"


def heartbeat(node: int, **changes: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "cluster": "test", "node": node, "epoch": 0, "role": "follower", "state": "ACTIVE",
        "http": http(node), "amp": amp_address(node), "head": Version(0, 0, 0),
    }
    fields.update(changes)
    return Heartbeat(**fields)


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: Deferred[Any]) -> Failure:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), f"expected a failure, got {results}"
    return results[0]


KEYS = ClusterKeys.generate()


def handshake(clock: Clock | None = None) -> Handshake:
    """Our side of the AMP proofs, with the cluster key every node of these tests holds."""
    return Handshake(KEYS, AuthFailures(), clock or Clock(), COORDINATOR_TIMEOUT)


def transport_of(connection: PeerConnection) -> Any:
    """The iosim FakeTransport under a connection (typed ITransport | None)."""
    return connection.transport


class FakeNetwork:
    """Records Election and Coordinator sends; the test answers Elections by hand."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []
        self.pending: dict[int, Deferred[bool]] = {}
        self.announced: list[int] = []

    def ask_alive(self, node_id: int, epoch: int) -> Deferred[bool]:
        self.asked.append((node_id, epoch))
        self.pending[node_id] = Deferred()
        return self.pending[node_id]

    def answer(self, node_id: int, alive: bool = True) -> None:
        d = self.pending.pop(node_id)
        d.callback(alive)
        result_of(d)  # an answer the election failed to take would end here, unseen

    def announce_coordinator(self, epoch: int) -> None:
        self.announced.append(epoch)


class Node:
    """One election with a Clock, a FakeNetwork and recorded side effects."""

    def __init__(
        self,
        node_id: int = 2,
        higher: tuple[int, ...] = (3,),
        electable: bool = True,
        epoch: int = 0,
        hold_persist: bool = False,
    ) -> None:
        self.clock = Clock()
        self.network = FakeNetwork()
        self.higher = list(higher)
        self.electable = electable
        self.hold_persist = hold_persist
        self.persisted: list[int] = []
        self.persisting: list[Deferred[None]] = []
        self.changes: list[ElectionStatus] = []
        self.election = BullyElection(
            node_id=node_id,
            http=http(node_id),
            clock=self.clock,
            network=self.network,
            higher_peers=lambda: self.higher,
            persist_epoch=self.persist,
            is_electable=lambda: self.electable,
            on_change=self.changes.append,
            answer_timeout=ANSWER_TIMEOUT,
            coordinator_timeout=COORDINATOR_TIMEOUT,
            epoch=epoch,
        )

    def persist(self, epoch: int) -> Deferred[None]:
        self.persisted.append(epoch)
        if not self.hold_persist:
            return succeed(None)
        self.persisting.append(Deferred())
        return self.persisting[-1]

    @property
    def status(self) -> ElectionStatus:
        return self.election.status

    def become_leader(self) -> None:
        """No higher peer alive: an election won at once."""
        self.higher = []
        self.election.start(0)
        self.clock.advance(0)
        assert self.status.role == "leader"


# -- start-up and leader loss


def test_startup_follows_a_leader_heard_within_failure_timeout_without_election() -> None:
    node = Node()
    node.election.start(FAILURE_TIMEOUT)
    node.clock.advance(0.1)
    node.election.leader_seen(3, 2, http(3))
    node.clock.advance(5)
    assert node.status == ElectionStatus("follower", 3, http(3), 2)
    assert node.network.asked == []


def test_startup_holds_an_election_when_no_leader_is_heard() -> None:
    node = Node(epoch=4)
    node.election.start(FAILURE_TIMEOUT)
    node.clock.advance(FAILURE_TIMEOUT)
    assert node.status.role == "candidate"
    assert node.network.asked == [(3, 4)]


def test_losing_the_leader_starts_an_election() -> None:
    node = Node()
    node.election.leader_seen(3, 1, http(3))
    node.higher = [4]
    node.election.leader_lost(3)
    assert node.status == ElectionStatus("candidate", None, None, 1)
    assert node.network.asked == [(4, 1)]


def test_losing_a_peer_that_is_not_the_leader_changes_nothing() -> None:
    node = Node()
    node.election.leader_seen(3, 1, http(3))
    node.election.leader_lost(1)
    assert node.status.role == "follower"
    assert node.network.asked == []


# -- Bully: higher alive, higher dead


def test_candidate_with_a_live_higher_peer_waits_for_its_coordinator() -> None:
    node = Node()
    node.election.start(0)
    node.clock.advance(0)
    node.network.answer(3)
    node.clock.advance(ANSWER_TIMEOUT * 2)
    assert node.status.role == "candidate"
    assert node.persisted == []
    node.election.coordinator_received(3, 1, http(3))
    assert node.status == ElectionStatus("follower", 3, http(3), 1)


def test_candidate_wins_after_answer_timeout_when_the_higher_peer_is_dead() -> None:
    node = Node(epoch=5)
    node.election.start(0)
    node.clock.advance(0)
    node.clock.advance(ANSWER_TIMEOUT - 0.01)
    assert node.status.role == "candidate"
    node.clock.advance(0.01)
    assert node.status == ElectionStatus("leader", 2, http(2), 6)
    assert node.persisted == [6]
    assert node.network.announced == [6]


def test_new_epoch_is_persisted_before_the_coordinator_is_sent() -> None:
    node = Node(epoch=5, higher=(), hold_persist=True)
    node.election.observe_epoch(7)
    node.election.start(0)
    node.clock.advance(0)
    assert node.persisted == [8]
    assert node.network.announced == []
    assert node.status.role == "candidate"
    node.persisting[0].callback(None)
    assert node.network.announced == [8]
    assert node.status == ElectionStatus("leader", 2, http(2), 8)


def test_failed_epoch_persist_never_leads_and_retries_later() -> None:
    node = Node(higher=(), hold_persist=True)
    node.election.start(0)
    node.clock.advance(0)
    node.persisting[0].errback(OSError("disk full"))
    assert node.status.role == "candidate"
    assert node.network.announced == []
    node.clock.advance(COORDINATOR_TIMEOUT)
    node.clock.advance(0)
    assert node.persisted == [1, 2]


def test_a_dead_higher_answer_that_fails_counts_as_no_answer() -> None:
    node = Node()
    node.election.start(0)
    node.clock.advance(0)
    node.network.pending.pop(3).errback(defer.TimeoutError())
    node.clock.advance(ANSWER_TIMEOUT)
    assert node.status.role == "leader"


def test_alive_false_from_a_non_electable_higher_peer_is_not_an_answer() -> None:
    node = Node()
    node.election.start(0)
    node.clock.advance(0)
    node.network.answer(3, alive=False)
    node.clock.advance(ANSWER_TIMEOUT)
    assert node.status.role == "leader"


# -- coordinator timeout, stale coordinators


def test_coordinator_timeout_restarts_the_election() -> None:
    node = Node()
    node.election.start(0)
    node.clock.advance(0)
    node.network.answer(3)
    node.clock.advance(COORDINATOR_TIMEOUT)
    assert node.network.asked == [(3, 0), (3, 0)]
    assert node.status.role == "candidate"
    node.clock.advance(ANSWER_TIMEOUT)
    assert node.status.role == "leader"


def test_stale_coordinator_with_a_lower_epoch_is_rejected() -> None:
    node = Node(node_id=1)
    node.election.coordinator_received(3, 5, http(3))
    node.election.coordinator_received(2, 4, http(2))
    assert node.status == ElectionStatus("follower", 3, http(3), 5)


def test_stale_leader_heartbeat_with_a_lower_epoch_is_ignored() -> None:
    node = Node(node_id=1)
    node.election.leader_seen(2, 5, http(2))
    node.election.leader_seen(3, 4, http(3))
    assert node.status.leader_id == 2


def test_coordinator_with_a_higher_epoch_replaces_the_leader_even_from_a_lower_id() -> None:
    node = Node(node_id=1)
    node.election.coordinator_received(3, 5, http(3))
    node.election.coordinator_received(2, 6, http(2))
    assert node.status == ElectionStatus("follower", 2, http(2), 6)


def test_lost_leader_heard_again_is_followed_again() -> None:
    node = Node(electable=False)
    node.election.leader_seen(3, 5, http(3))
    node.election.leader_lost(3)
    assert node.status.leader_id is None
    node.election.leader_seen(3, 5, http(3))
    assert node.status.leader_id == 3


# -- two leaders


def test_leader_steps_down_on_higher_epoch() -> None:
    node = Node(node_id=3)
    node.become_leader()
    node.election.leader_seen(2, 5, http(2))
    assert node.status == ElectionStatus("follower", 2, http(2), 5)
    assert [change.role for change in node.changes] == ["candidate", "leader", "follower"]


def test_a_leader_holding_data_of_a_later_claim_leads_on_in_an_epoch_above_it() -> None:
    """Pulled from a replica that was away (anti-entropy, a takeover's catch-up): numbered
    in its own epoch, the leader's next writes would be older than those rows."""
    node = Node(node_id=2, epoch=1)
    node.become_leader()
    assert node.status.epoch == 2

    node.election.data_seen(3, 3)

    assert node.status == ElectionStatus("leader", 2, http(2), 4)
    assert node.persisted == [2, 4]
    assert [change.role for change in node.changes] == ["candidate", "leader", "candidate",
                                                        "leader"]


@pytest.mark.parametrize(("epoch", "leader_id"), [(2, 2), (2, 1), (1, 3)])
def test_a_leader_holding_data_of_its_own_claim_or_older_ones_goes_on(
        epoch: int, leader_id: int) -> None:
    node = Node(node_id=2, epoch=1)
    node.become_leader()

    node.election.data_seen(epoch, leader_id)

    assert node.status == ElectionStatus("leader", 2, http(2), 2)
    assert node.persisted == [2]


def test_the_same_epoch_of_a_higher_id_is_above_a_leaders_own() -> None:
    node = Node(node_id=2, epoch=1)
    node.become_leader()

    node.election.data_seen(2, 3)  # two leaders claimed epoch 2 on two sides of a partition

    assert node.status == ElectionStatus("leader", 2, http(2), 3)


def test_a_follower_holding_data_of_a_later_epoch_claims_above_it_next_time() -> None:
    node = Node(node_id=2)
    node.election.leader_seen(3, 1, http(3))

    node.election.data_seen(7, 1)

    assert node.status.role == "follower" and node.persisted == []
    node.election.leader_lost(3)
    node.higher = []
    node.clock.advance(ANSWER_TIMEOUT)
    assert node.status == ElectionStatus("leader", 2, http(2), 8)


def test_leader_ignores_a_leader_with_a_lower_epoch() -> None:
    node = Node(node_id=2, epoch=4)
    node.become_leader()
    node.election.leader_seen(3, 4, http(3))
    node.election.coordinator_received(3, 4, http(3))
    assert node.status == ElectionStatus("leader", 2, http(2), 5)


def test_two_leaders_meeting_leave_the_higher_epoch_leading() -> None:
    low_id_new_epoch = Node(node_id=2, epoch=4)
    high_id_old_epoch = Node(node_id=3, epoch=3)
    low_id_new_epoch.become_leader()
    high_id_old_epoch.become_leader()
    low_id_new_epoch.election.leader_seen(3, 4, http(3))
    high_id_old_epoch.election.leader_seen(2, 5, http(2))
    assert low_id_new_epoch.status.role == "leader"
    assert high_id_old_epoch.status == ElectionStatus("follower", 2, http(2), 5)


def test_equal_epochs_are_decided_by_the_node_id() -> None:
    node = Node(node_id=2)
    node.become_leader()
    node.election.leader_seen(3, 1, http(3))
    assert node.status == ElectionStatus("follower", 3, http(3), 1)


# -- election requests


def test_election_request_from_a_lower_id_is_answered_and_starts_our_own() -> None:
    node = Node()
    assert node.election.election_requested(1, 0) is True
    assert node.status.role == "candidate"
    assert node.network.asked == [(3, 0)]


def test_election_request_while_already_candidate_does_not_restart() -> None:
    node = Node()
    node.election.start(0)
    node.clock.advance(0)
    assert node.election.election_requested(1, 0) is True
    assert node.network.asked == [(3, 0)]


def test_election_request_from_a_higher_id_is_not_answered() -> None:
    node = Node()
    assert node.election.election_requested(3, 0) is False
    assert node.status.role == "follower"


def test_leader_answers_an_election_request_and_announces_itself_again() -> None:
    node = Node()
    node.become_leader()
    assert node.election.election_requested(1, 1) is True
    assert node.network.announced == [1, 1]
    assert node.status.role == "leader"


def test_leader_behind_the_requesters_epoch_claims_a_newer_one() -> None:
    node = Node()
    node.become_leader()
    assert node.election.election_requested(1, 7) is True
    assert node.persisted == [1, 8]
    assert node.status == ElectionStatus("leader", 2, http(2), 8)
    assert node.network.announced == [1, 8]


def test_late_persist_result_of_an_abandoned_claim_is_ignored() -> None:
    node = Node(higher=(), hold_persist=True)
    node.election.start(0)
    node.clock.advance(0)
    node.election.coordinator_received(3, 1, http(3))
    node.persisting[0].callback(None)
    assert node.status == ElectionStatus("follower", 3, http(3), 1)
    assert node.network.announced == []


# -- electability


def test_non_electable_node_never_becomes_leader() -> None:
    node = Node(electable=False, higher=())
    node.election.start(FAILURE_TIMEOUT)
    node.clock.advance(FAILURE_TIMEOUT)
    node.election.leader_seen(3, 1, http(3))
    node.election.leader_lost(3)
    assert node.election.election_requested(1, 1) is False
    node.election.claim_if_higher()
    node.clock.advance(10)
    assert node.status == ElectionStatus("follower", None, None, 1)
    assert node.persisted == []
    assert node.network.asked == []


def test_returning_higher_id_bullies_a_lower_leader_once_electable() -> None:
    node = Node(node_id=3, higher=(), electable=False)
    node.election.leader_seen(2, 4, http(2))
    node.electable = True
    node.election.claim_if_higher()
    node.clock.advance(0)
    assert node.status == ElectionStatus("leader", 3, http(3), 5)


def test_claim_if_higher_leaves_a_higher_leader_alone() -> None:
    node = Node(node_id=2)
    node.election.leader_seen(3, 4, http(3))
    node.election.claim_if_higher()
    assert node.status.role == "follower"
    assert node.network.asked == []


def test_each_role_change_is_one_notification() -> None:
    node = Node(epoch=2)
    node.election.start(0)
    node.clock.advance(0)
    node.clock.advance(ANSWER_TIMEOUT)
    node.election.leader_seen(3, 9, http(3))
    assert node.changes == [
        ElectionStatus("candidate", None, None, 2),
        ElectionStatus("leader", 2, http(2), 3),
        ElectionStatus("follower", 3, http(3), 9),
    ]


def test_a_leader_stepping_up_to_a_newer_epoch_publishes_candidate_then_leader() -> None:
    node = Node()
    node.become_leader()
    node.election.election_requested(1, 7)
    assert node.changes == [
        ElectionStatus("candidate", None, None, 0),
        ElectionStatus("leader", 2, http(2), 1),
        ElectionStatus("candidate", None, None, 8),
        ElectionStatus("leader", 2, http(2), 8),
    ]


# -- each state: the role it publishes, and the events that may still reach it and must
# change nothing (the machine's ignored rows, and the ones the guards keep out)
#
# Every setup leaves node 2 with what a real replica may have outstanding: an answer still
# due from a higher id, and the persist of epoch 1, a claim it gave up when another replica
# announced itself.


def follower() -> Node:
    """Following 3 (epoch 1); 3 and 4 have not answered, epoch 1 is still persisting."""
    node = Node(higher=(3, 4), hold_persist=True)
    node.election.start(0)
    node.clock.advance(0)
    node.clock.advance(ANSWER_TIMEOUT)
    node.election.coordinator_received(3, 1, http(3))
    return node


def candidate_still_following() -> Node:
    """Node 1 asked for an election: asking 3 and 4, still following 3."""
    node = follower()
    node.election.election_requested(1, 1)
    return node


def candidate_without_leader() -> Node:
    """Its leader 3 was lost: asking 3 and 4, following nobody."""
    node = follower()
    node.election.leader_lost(3)
    return node


def waiting_still_following() -> Node:
    """3 answered; waiting for its Coordinator, 4's answer still due."""
    node = candidate_still_following()
    node.network.answer(3)
    return node


def waiting_without_leader() -> Node:
    """3 answered; waiting for its Coordinator, following nobody."""
    node = candidate_without_leader()
    node.network.answer(3)
    return node


def claiming_still_following() -> Node:
    """Nobody answered in time: persisting epoch 2, answers still due."""
    node = candidate_still_following()
    node.clock.advance(ANSWER_TIMEOUT)
    return node


def claiming_without_leader() -> Node:
    """Nobody answered in time: persisting epoch 2, following nobody."""
    node = candidate_without_leader()
    node.clock.advance(ANSWER_TIMEOUT)
    return node


def leader() -> Node:
    """Leading epoch 2 (it bullied lower leader 1 away); 3's answer and the persist of
    the epoch 1 it gave up are still due."""
    node = Node(higher=(3,), hold_persist=True)
    node.election.start(0)
    node.clock.advance(0)
    node.clock.advance(ANSWER_TIMEOUT)
    node.election.coordinator_received(1, 1, http(1))
    node.clock.advance(0)
    node.clock.advance(ANSWER_TIMEOUT)
    node.persisting[1].callback(None)
    return node


def pending_timers(node: Node) -> list[float]:
    now = node.clock.seconds()
    return [call.getTime() - now for call in node.clock.getDelayedCalls()]


@pytest.mark.parametrize(
    ("setup", "role", "timers"),
    [
        (follower, "follower", []),
        (candidate_still_following, "candidate", [ANSWER_TIMEOUT]),
        (waiting_still_following, "candidate", [COORDINATOR_TIMEOUT]),
        (claiming_still_following, "candidate", []),
        (leader, "leader", []),
    ],
)
def test_each_state_publishes_its_role_and_runs_its_timer(
    setup: Callable[[], Node], role: str, timers: list[float]
) -> None:
    node = setup()
    assert node.status.role == role
    assert node.changes[-1].role == role
    assert node.election.is_leader is (role == "leader")
    assert pending_timers(node) == pytest.approx(timers)


def effects(node: Node) -> tuple[Any, ...]:
    """All an election shows and does: its status, messages, persists, changes, timers."""
    return (
        node.status, list(node.network.asked), list(node.network.announced),
        list(node.persisted), list(node.changes), pending_timers(node),
    )


def late_answer(node_id: int) -> Callable[[Node], object]:
    return lambda node: node.network.answer(node_id)


def election_from_1(epoch: int) -> Callable[[Node], object]:
    return lambda node: node.election.election_requested(1, epoch)


def bully_claim(node: Node) -> object:
    return node.election.claim_if_higher()


def given_up_claim_persisted(node: Node) -> object:
    node.persisting[0].callback(None)
    return result_of(node.persisting[0])


def given_up_claim_failed(node: Node) -> object:
    node.persisting[0].errback(OSError("disk full"))
    return result_of(node.persisting[0])


def leader_lost(node_id: int) -> Callable[[Node], object]:
    return lambda node: node.election.leader_lost(node_id)


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        pytest.param(follower, late_answer(3), id="follower-late-answer"),
        pytest.param(follower, given_up_claim_persisted, id="follower-claim-persisted"),
        pytest.param(follower, given_up_claim_failed, id="follower-claim-failed"),
        pytest.param(candidate_without_leader, bully_claim, id="candidate-start"),
        pytest.param(candidate_still_following, election_from_1(1), id="candidate-challenged"),
        pytest.param(candidate_still_following, election_from_1(5), id="candidate-outdated"),
        pytest.param(candidate_still_following, given_up_claim_persisted,
                     id="candidate-claim-persisted"),
        pytest.param(candidate_still_following, given_up_claim_failed,
                     id="candidate-claim-failed"),
        pytest.param(waiting_without_leader, bully_claim, id="waiting-start"),
        pytest.param(waiting_still_following, election_from_1(1), id="waiting-challenged"),
        pytest.param(waiting_still_following, election_from_1(5), id="waiting-outdated"),
        pytest.param(waiting_still_following, late_answer(4), id="waiting-second-answer"),
        pytest.param(waiting_still_following, given_up_claim_persisted,
                     id="waiting-claim-persisted"),
        pytest.param(waiting_still_following, given_up_claim_failed, id="waiting-claim-failed"),
        pytest.param(claiming_without_leader, bully_claim, id="claiming-start"),
        pytest.param(claiming_still_following, election_from_1(1), id="claiming-challenged"),
        pytest.param(claiming_still_following, election_from_1(5), id="claiming-outdated"),
        pytest.param(claiming_still_following, late_answer(3), id="claiming-late-answer"),
        pytest.param(leader, late_answer(3), id="leader-late-answer"),
        # The guards keep these from the machine, which has no row for them in leader.
        pytest.param(leader, bully_claim, id="leader-start"),
        pytest.param(leader, leader_lost(1), id="leader-lost-other"),
        pytest.param(leader, leader_lost(2), id="leader-lost-itself"),
        pytest.param(leader, given_up_claim_persisted, id="leader-claim-persisted"),
        pytest.param(leader, given_up_claim_failed, id="leader-claim-failed"),
    ],
)
def test_an_event_that_may_still_arrive_in_a_state_changes_nothing(
    setup: Callable[[], Node], event: Callable[[Node], object]
) -> None:
    node = setup()
    before = effects(node)
    event(node)
    node.clock.advance(0)
    assert effects(node) == before


# -- several elections on one clock


class ClusterNetwork:
    """Delivers messages between the elections of a Cluster after LATENCY; a dead node
    never answers."""

    def __init__(self, cluster: Cluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id

    def ask_alive(self, node_id: int, epoch: int) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        if node_id in self.cluster.alive:
            target = self.cluster.elections[node_id]
            self.cluster.clock.callLater(
                LATENCY, lambda: d.callback(target.election_requested(self.node_id, epoch))
            )
        return d

    def announce_coordinator(self, epoch: int) -> None:
        for node_id in self.cluster.alive - {self.node_id}:
            self.cluster.clock.callLater(
                LATENCY,
                self.cluster.elections[node_id].coordinator_received,
                self.node_id,
                epoch,
                http(self.node_id),
            )


class Cluster:
    def __init__(self, ids: tuple[int, ...], alive: tuple[int, ...] | None = None) -> None:
        self.clock = Clock()
        self.alive = set(ids if alive is None else alive)
        self.persisted: dict[int, list[int]] = {node_id: [] for node_id in ids}
        self.elections = {
            node_id: BullyElection(
                node_id=node_id,
                http=http(node_id),
                clock=self.clock,
                network=ClusterNetwork(self, node_id),
                higher_peers=partial(self.alive_above, node_id),
                persist_epoch=partial(self.persist, node_id),
                is_electable=lambda: True,
                on_change=lambda status: None,
                answer_timeout=ANSWER_TIMEOUT,
                coordinator_timeout=COORDINATOR_TIMEOUT,
            )
            for node_id in ids
        }

    def alive_above(self, node_id: int) -> list[int]:
        return [other for other in self.alive if other > node_id]

    def persist(self, node_id: int, epoch: int) -> Deferred[None]:
        self.persisted[node_id].append(epoch)
        return succeed(None)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / LATENCY)):
            self.clock.advance(LATENCY)

    def roles(self) -> dict[int, tuple[str, int | None, int]]:
        return {
            node_id: (e.status.role, e.status.leader_id, e.status.epoch)
            for node_id, e in self.elections.items()
            if node_id in self.alive
        }


def test_simultaneous_candidates_settle_on_the_highest_id() -> None:
    cluster = Cluster((1, 2, 3))
    for election in cluster.elections.values():
        election.start(FAILURE_TIMEOUT)
    cluster.run(2)
    assert cluster.roles() == {
        1: ("follower", 3, 1), 2: ("follower", 3, 1), 3: ("leader", 3, 1),
    }
    assert cluster.persisted == {1: [], 2: [], 3: [1]}


def test_simultaneous_candidates_with_the_highest_dead_settle_on_the_next() -> None:
    cluster = Cluster((1, 2, 3), alive=(1, 2))
    for node_id in (1, 2):
        cluster.elections[node_id].start(FAILURE_TIMEOUT)
    cluster.run(2)
    assert cluster.roles() == {1: ("follower", 2, 1), 2: ("leader", 2, 1)}


def test_cluster_elects_a_new_leader_with_a_higher_epoch_when_the_leader_dies() -> None:
    cluster = Cluster((1, 2, 3))
    for election in cluster.elections.values():
        election.start(FAILURE_TIMEOUT)
    cluster.run(2)
    cluster.alive.discard(3)
    for node_id in (1, 2):
        cluster.elections[node_id].leader_lost(3)
    cluster.run(2)
    assert cluster.roles() == {1: ("follower", 2, 2), 2: ("leader", 2, 2)}


# -- wired to membership


class Replica:
    """Node 2's election fed by a real Membership on a Clock."""

    def __init__(self) -> None:
        self.node = Node(node_id=2)
        self.membership = Membership(
            node_id=2, clock=self.node.clock, failure_timeout=FAILURE_TIMEOUT
        )
        self.node.election._higher_peers = lambda: self.membership.electable_above(2)
        follow_membership(self.node.election, self.membership)

    def hear(self, node: int, **changes: Any) -> None:
        self.membership.heartbeat_received(heartbeat(node, **changes))


def test_leader_heartbeat_makes_a_follower() -> None:
    replica = Replica()
    replica.hear(3, role="leader", epoch=4)
    assert replica.node.status == ElectionStatus("follower", 3, http(3), 4)


def test_silent_leader_is_replaced_by_an_election_with_a_higher_epoch() -> None:
    replica = Replica()
    replica.hear(1, epoch=4)
    replica.hear(3, role="leader", epoch=4)
    for _ in range(5):
        replica.node.clock.advance(0.1)
        replica.hear(1, epoch=4)
    replica.node.clock.advance(FAILURE_TIMEOUT)
    replica.node.clock.advance(0)
    assert replica.node.status == ElectionStatus("leader", 2, http(2), 5)


def test_leader_that_stops_announcing_leadership_is_treated_as_lost() -> None:
    replica = Replica()
    replica.hear(3, role="leader", epoch=4)
    replica.hear(3, role="follower", epoch=4)
    assert replica.node.status.role == "candidate"
    assert replica.node.network.asked == [(3, 4)]


def test_another_live_leader_is_followed_directly_when_ours_goes_silent() -> None:
    replica = Replica()
    replica.hear(3, role="leader", epoch=4)
    replica.node.clock.advance(0.5)
    replica.hear(1, role="leader", epoch=5)
    assert replica.node.status.leader_id == 1
    replica.node.clock.advance(0.5)
    assert replica.node.status == ElectionStatus("follower", 1, http(1), 5)
    assert replica.node.network.asked == []


def test_epochs_announced_by_followers_count_for_the_next_epoch() -> None:
    replica = Replica()
    replica.hear(1, epoch=9)
    replica.node.election.start(0)
    replica.node.clock.advance(0)
    assert replica.node.status == ElectionStatus("leader", 2, http(2), 10)


# -- AMP commands over in-memory connections


class FakeResponder:
    def __init__(self, alive: bool = True) -> None:
        self.alive = alive
        self.calls: list[tuple[Any, ...]] = []

    def election_requested(self, node_id: int, epoch: int) -> bool:
        self.calls.append(("election", node_id, epoch))
        return self.alive

    def coordinator_received(self, node_id: int, epoch: int, http: str) -> None:
        self.calls.append(("coordinator", node_id, epoch, http))


def amp_pair(responder: Any, proven: bool = True) -> tuple[PeerConnection, IOPump]:
    """A client connected to a BullyProtocol for ``responder``; proven unless told not to."""
    client, _, pump = connectedServerAndClient(
        lambda: BullyProtocol(responder, handshake=handshake()), PeerConnection)
    if proven:
        d = Deferred.fromCoroutine(handshake().prove(client, "127.0.0.1"))
        pump.flush()
        result_of(d)
    return client, pump


def test_election_command_returns_the_alive_answer() -> None:
    responder = FakeResponder(alive=True)
    client, pump = amp_pair(responder)
    d = client.callRemote(Election, node_id=1, epoch=3)
    pump.flush()
    assert result_of(d) == {"alive": True}
    assert responder.calls == [("election", 1, 3)]


def test_coordinator_command_reaches_the_election() -> None:
    responder = FakeResponder()
    client, pump = amp_pair(responder)
    d = client.callRemote(Coordinator, node_id=3, epoch=7, http=http(3))
    pump.flush()
    assert result_of(d) == {}
    assert responder.calls == [("coordinator", 3, 7, http(3))]


def test_join_command_carries_its_typed_fields() -> None:
    class JoinAnsweringProtocol(BullyProtocol):
        @Join.responder
        def join(self, node_id: int, http: str, amp: str, head: str) -> dict[str, Any]:
            return {"leader_id": 3, "epoch": 7, "snapshot_path": f"/sync/snapshot?for={node_id}"}

    client, _, pump = connectedServerAndClient(
        lambda: JoinAnsweringProtocol(FakeResponder(), handshake=handshake()), PeerConnection
    )
    proven = Deferred.fromCoroutine(handshake().prove(client, "127.0.0.1"))
    pump.flush()
    result_of(proven)
    d = client.callRemote(
        Join, node_id=4, http=http(4), amp=amp_address(4), head=Version(7, 3, 1).encode()
    )
    pump.flush()
    assert result_of(d) == {"leader_id": 3, "epoch": 7, "snapshot_path": "/sync/snapshot?for=4"}


class Pool:
    """AmpPeers for node 1 whose connections are iosim pairs to FakeResponders."""

    def __init__(self, live: tuple[int, ...] = (3,), timeout: float = 1.0) -> None:
        self.clock = Clock()
        self.membership = Membership(node_id=1, clock=self.clock, failure_timeout=1000)
        for node_id in live:
            self.membership.heartbeat_received(heartbeat(node_id))
        self.responders = {amp_address(node_id): FakeResponder() for node_id in live}
        self.connects: list[tuple[str, int]] = []
        self.pumps: list[IOPump] = []
        self.clients: list[PeerConnection] = []
        self.hold: Deferred[None] | None = None
        self.peers = AmpPeers(
            node_id=1, http=http(1), membership=self.membership, clock=self.clock,
            connect=self.connect, timeout=timeout, handshake=handshake(self.clock),
        )

    def connect(self, host: str, port: int) -> Deferred[PeerConnection]:
        self.connects.append((host, port))
        # Unproven: AmpPeers proves every connection it opens.
        client, pump = amp_pair(self.responders[f"{host}:{port}"], proven=False)
        self.pumps.append(pump)
        self.clients.append(client)
        if self.hold is not None:
            return self.hold.addCallback(lambda _: client)
        return succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


def test_ask_alive_sends_election_over_amp_and_reads_the_answer() -> None:
    pool = Pool()
    d = pool.peers.ask_alive(3, 7)
    pool.flush()
    assert result_of(d) is True
    assert pool.responders[amp_address(3)].calls == [("election", 1, 7)]


def test_ask_alive_of_an_unknown_or_down_peer_is_false_without_connecting() -> None:
    pool = Pool()
    assert result_of(pool.peers.ask_alive(5, 1)) is False
    pool.clock.advance(1000)
    assert result_of(pool.peers.ask_alive(3, 1)) is False
    assert pool.connects == []


def test_calls_to_one_peer_reuse_one_connection() -> None:
    pool = Pool()
    first = pool.peers.ask_alive(3, 1)
    pool.flush()
    second = pool.peers.ask_alive(3, 1)
    pool.flush()
    assert result_of(first) is True and result_of(second) is True
    assert pool.connects == [("127.0.0.1", 9003)]


def test_concurrent_calls_share_one_connection_attempt() -> None:
    pool = Pool()
    pool.hold = Deferred()
    first = pool.peers.ask_alive(3, 1)
    second = pool.peers.ask_alive(3, 1)
    pool.hold.callback(None)
    pool.flush()
    assert result_of(first) is True and result_of(second) is True
    assert len(pool.connects) == 1


def test_lost_connection_is_reopened_by_the_next_call() -> None:
    pool = Pool()
    pool.peers.ask_alive(3, 1)
    pool.flush()
    transport_of(pool.clients[0]).loseConnection()
    pool.flush()
    d = pool.peers.ask_alive(3, 1)
    pool.flush()
    assert result_of(d) is True
    assert len(pool.connects) == 2


def test_call_remote_times_out_on_the_clock_and_drops_the_connection() -> None:
    pool = Pool(timeout=1.0)
    outcome: list[Any] = []
    pool.peers.ask_alive(3, 1).addBoth(outcome.append)
    # No pump: the peer never reads the request, like a SIGSTOPped process.
    pool.clock.advance(0.99)
    assert outcome == []
    pool.clock.advance(0.01)
    assert outcome[0].check(defer.TimeoutError)
    assert transport_of(pool.clients[0]).disconnecting
    pool.flush()
    retry = pool.peers.ask_alive(3, 1)
    pool.flush()
    assert result_of(retry) is True
    assert len(pool.connects) == 2


def test_refused_connection_fails_the_call() -> None:
    pool = Pool()
    pool.peers._connect = lambda host, port: fail(ConnectionRefusedError())
    assert failure_of(pool.peers.ask_alive(3, 1)).check(ConnectionRefusedError)


def test_announce_coordinator_reaches_every_live_peer() -> None:
    pool = Pool(live=(2, 3))
    pool.peers.announce_coordinator(5)
    pool.flush()
    for node_id in (2, 3):
        assert pool.responders[amp_address(node_id)].calls == [("coordinator", 1, 5, http(1))]


def test_undeliverable_coordinator_is_logged_not_raised() -> None:
    pool = Pool(live=(3,))
    pool.peers._connect = lambda host, port: fail(ConnectionRefusedError())
    pool.peers.announce_coordinator(5)


def test_disconnect_closes_every_connection() -> None:
    pool = Pool(live=(2, 3))
    pool.peers.announce_coordinator(5)
    pool.flush()
    pool.peers.disconnect()
    assert all(transport_of(client).disconnecting for client in pool.clients)


# -- the machine and the adapter together


class AmpCluster:
    """Real elections talking AMP to each other over iosim pairs on one Clock."""

    def __init__(self, ids: tuple[int, ...]) -> None:
        self.clock = Clock()
        self.pumps: list[IOPump] = []
        self.memberships: dict[int, Membership] = {}
        self.elections: dict[int, BullyElection] = {}
        for node_id in ids:
            membership = Membership(node_id=node_id, clock=self.clock, failure_timeout=1000)
            for other in ids:
                membership.heartbeat_received(heartbeat(other))
            peers = AmpPeers(
                node_id=node_id, http=http(node_id), membership=membership, clock=self.clock,
                connect=self.connect, timeout=COORDINATOR_TIMEOUT,
                handshake=handshake(self.clock),
            )
            self.memberships[node_id] = membership
            self.elections[node_id] = BullyElection(
                node_id=node_id, http=http(node_id), clock=self.clock, network=peers,
                higher_peers=partial(membership.electable_above, node_id),
                persist_epoch=lambda epoch: succeed(None), is_electable=lambda: True,
                on_change=lambda status: None, answer_timeout=ANSWER_TIMEOUT,
                coordinator_timeout=COORDINATOR_TIMEOUT,
            )

    def connect(self, host: str, port: int) -> Deferred[PeerConnection]:
        target = self.elections[port - 9000]
        client, _, pump = connectedServerAndClient(
            lambda: BullyProtocol(target, handshake=handshake(self.clock)), PeerConnection)
        self.pumps.append(pump)
        return succeed(client)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / LATENCY)):
            for pump in list(self.pumps):
                pump.flush()
            self.clock.advance(LATENCY)


@pytest.mark.parametrize("starter", [1, 2])
def test_election_over_amp_makes_the_highest_node_leader(starter: int) -> None:
    cluster = AmpCluster((1, 2, 3))
    cluster.elections[starter].start(0)
    cluster.run(1)
    assert {n: (e.status.role, e.status.leader_id) for n, e in cluster.elections.items()} == {
        1: ("follower", 3), 2: ("follower", 3), 3: ("leader", 3),
    }


def test_a_higher_node_claiming_when_a_lower_coordinator_arrives_takes_over() -> None:
    node = Node(node_id=4, higher=(), hold_persist=True)
    node.election.start(0)
    node.clock.advance(0)  # claiming epoch 1: the persist has not finished yet

    node.election.coordinator_received(3, 1, http(3))  # node 3 claimed epoch 1 at once
    node.persisting[0].callback(None)  # our abandoned claim lands late: ignored
    node.clock.advance(0)  # Bully: the higher id answers the lower coordinator
    node.persisting[-1].callback(None)

    assert node.status == ElectionStatus("leader", 4, http(4), 2)
    assert node.persisted == [1, 2]


def test_a_non_electable_higher_node_follows_a_lower_coordinator() -> None:
    node = Node(node_id=4, higher=(), electable=False)

    node.election.coordinator_received(3, 1, http(3))
    node.clock.advance(0)

    assert node.status == ElectionStatus("follower", 3, http(3), 1)
