"""A new leader's catch-up with a Clock: it pulls what peers hold beyond its head before its
first write, holds the writes meanwhile, and gives up waiting after the catch-up timeout."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger

from distpotify.cluster.heartbeat import Heartbeat
from distpotify.cluster.membership import Membership, Peer
from distpotify.errors import InsufficientStorage, NotLeader
from distpotify.model import ZERO, Op, Version
from distpotify.replication import takeover as takeover_module
from distpotify.replication.client import BelowFloor
from distpotify.replication.takeover import (
    CATCHING_UP,
    COMPLETE,
    IDLE,
    RECONCILING,
    Takeover,
)
from tests.helpers.api import result_of
from tests.helpers.sqlite import full_database

TIMEOUT = 2.0


def op(version: Version) -> Op:
    return Op(version, "playlists", f"{version.seq:08x}-0000-4000-8000-000000000000",
              {"name": f"p{version.seq}"})


def old_ops(n: int) -> list[Op]:
    """Ops of the old leader (node 2, epoch 4)."""
    return [op(Version(4, 2, seq)) for seq in range(1, n + 1)]


class Replica:
    """This replica's head and what it applies, the leadership, and its peers' oplogs."""

    def __init__(self) -> None:
        self.head = Version(3, 3, 7)
        self.applied: list[tuple[str | None, list[Op]]] = []
        self.oplogs: dict[str, list[Op]] = {}
        self.asked: list[tuple[str, Version]] = []
        self.silent: set[str] = set()  # peers whose answer never comes
        self.floors: dict[str, Version] = {}  # peers' oplog floors (compacted below)
        self.leading = True
        self.epoch = 5
        self.disk_full: Exception | None = None  # apply_ops refuses every batch with it
        self.ops_held: set[Version] = set()  # versions of the ops applied here (has_op)

    # the client
    def ops_after(self, base: str, after: Version, limit: int) -> Deferred[tuple[list[Op],
                                                                                Version]]:
        self.asked.append((base, after))
        if base in self.silent:
            return Deferred()
        floor = self.floors.get(base, ZERO)
        if after < floor:
            return fail(BelowFloor(f"ops of {base}: below its floor", floor))
        oplog = self.oplogs.get(base, [])
        newer = [o for o in oplog if o.version > after][:limit]
        return succeed((newer, max((o.version for o in oplog), default=ZERO)))

    # the receiver
    async def apply_ops(self, ops: Sequence[Op], source: str | None) -> Version:
        if self.disk_full is not None:
            raise self.disk_full
        self.applied.append((source, list(ops)))
        self.head = max([self.head, *(o.version for o in ops)])
        return self.head

    # the leadership
    @property
    def is_leader(self) -> bool:
        return self.leading

    def require_leader(self) -> None:
        if not self.leading:
            raise NotLeader("this replica is not the leader", leader_id=2,
                            leader_http="http://n2")


def heartbeat(node: int, head: Version, role: str = "follower", state: str = "ACTIVE",
              epoch: int = 5) -> Heartbeat:
    return Heartbeat(cluster="c", node=node, epoch=epoch, role=role, state=state,
                     http=f"http://n{node}", amp=f"n{node}:9000", head=head)


class Rounds(list[list[Peer]]):
    """The reconcile: the peers of each call, whose rounds end at once unless ``held``,
    failing for the peers in ``failing``."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.failing: set[int] = set()
        self.pending: list[Deferred[list[str]]] = []

    def __call__(self, peers: list[Peer]) -> Deferred[list[str]]:
        self.append(peers)
        if not self.held:
            return succeed([p.http for p in peers if p.node_id in self.failing])
        rounds: Deferred[list[str]] = Deferred()
        self.pending.append(rounds)
        return rounds

    def ids(self) -> list[int]:
        [peers] = self
        return [peer.node_id for peer in peers]


def setup() -> tuple[Takeover, Replica, Membership, Clock, Rounds]:
    clock = Clock()
    membership = Membership(node_id=3, clock=clock, failure_timeout=0.75)
    replica = Replica()
    completed = Rounds()
    takeover = Takeover(
        node_id=3, membership=membership, head=lambda: replica.head,
        client=replica, receiver=replica, leadership=replica, clock=clock,  # type: ignore[arg-type]
        timeout=TIMEOUT, recheck=0.1, reconcile=completed,
        holds_op=lambda version: succeed(version in replica.ops_held),
    )
    return takeover, replica, membership, clock, completed


def test_a_leader_nobody_is_ahead_of_is_complete_at_once() -> None:
    takeover, replica, membership, _, completed = setup()
    membership.heartbeat_received(heartbeat(1, Version(3, 3, 7)))

    takeover.role_changed("leader")

    assert takeover.phase == COMPLETE
    assert result_of(takeover.writable()) is None
    # No peer is ahead, yet node 1 may hold writes below our head: a round with it.
    assert replica.asked == [] and completed.ids() == [1]
    assert takeover.status()["timed_out"] is False
    assert takeover.status()["reconciled_with"] == [1]
    assert takeover.status()["reconciled"] is True


def test_it_pulls_from_the_peer_with_the_highest_head_before_the_first_write() -> None:
    takeover, replica, membership, clock, completed = setup()
    clock.advance(100)
    tail = old_ops(20)
    replica.oplogs["http://n2"] = tail
    replica.oplogs["http://n1"] = tail[:12]
    membership.heartbeat_received(heartbeat(1, tail[11].version))
    membership.heartbeat_received(heartbeat(2, tail[-1].version))

    takeover.role_changed("leader")

    assert replica.asked == [("http://n2", Version(3, 3, 7))]
    assert replica.applied == [("http://n2", tail)]
    assert takeover.phase == COMPLETE and replica.head == tail[-1].version
    status = takeover.status()
    assert (status["ops_pulled"], status["sources"], status["epoch"]) == (20, [2], 5)
    assert status["started_at"] == 100
    assert completed.ids() == [2, 1]


def test_writes_wait_while_the_old_leader_still_claims_and_then_see_its_last_writes() -> None:
    takeover, replica, membership, clock, completed = setup()
    tail = old_ops(3)
    replica.oplogs["http://n2"] = tail[:2]
    membership.heartbeat_received(heartbeat(2, tail[1].version, role="leader", epoch=4))

    takeover.role_changed("leader")
    write = takeover.writable()
    # The old leader acknowledges one more write before it hears our Coordinator.
    replica.oplogs["http://n2"] = tail
    clock.advance(0.1)
    assert takeover.phase == CATCHING_UP and not write.called

    membership.heartbeat_received(heartbeat(2, tail[2].version, role="follower"))
    clock.advance(0.1)

    assert takeover.phase == COMPLETE and result_of(write) is None
    assert replica.head == tail[2].version
    assert takeover.status()["held_writes"] == 1
    assert completed.ids() == [2]


def test_a_peer_heard_last_before_the_epoch_ahead_of_ours_is_waited_for_as_if_it_led() -> None:
    """Ours is epoch 5, claimed above 4, which node 2 led. Node 2 was last heard as a
    follower of epoch 3, from before it led (heartbeats queued while this replica was
    paused): what it wrote meanwhile is pulled before our first write."""
    takeover, replica, membership, clock, completed = setup()
    tail = old_ops(20)
    replica.oplogs["http://n1"] = tail[:12]
    replica.oplogs["http://n2"] = tail
    membership.heartbeat_received(heartbeat(1, tail[11].version, epoch=4))
    membership.heartbeat_received(heartbeat(2, Version(3, 3, 7), epoch=3))

    takeover.role_changed("leader")
    write = takeover.writable()
    clock.advance(0.5)
    assert replica.applied == [("http://n1", tail[:12])]
    assert takeover.phase == CATCHING_UP and not write.called

    # Node 2 hears our Coordinator and says so at once: a follower of ours, head 20.
    membership.heartbeat_received(heartbeat(2, tail[-1].version, epoch=5))
    clock.advance(0.1)

    assert takeover.phase == COMPLETE and result_of(write) is None
    assert replica.applied[1:] == [("http://n2", tail[12:])]
    assert takeover.status()["sources"] == [1, 2]
    assert completed.ids() == [2, 1]


def test_a_follower_of_the_epoch_before_ours_holds_nothing() -> None:
    takeover, replica, membership, _, _ = setup()
    membership.heartbeat_received(heartbeat(1, Version(3, 3, 7), epoch=4))

    takeover.role_changed("leader")

    assert takeover.phase == COMPLETE and replica.asked == []


def test_a_long_tail_is_pulled_batch_after_batch() -> None:
    takeover, replica, membership, _, _ = setup()
    tail = old_ops(2500)
    replica.oplogs["http://n2"] = tail
    membership.heartbeat_received(heartbeat(2, tail[-1].version))

    takeover.role_changed("leader")

    assert [len(ops) for _, ops in replica.applied] == [1000, 1000, 500]
    assert takeover.phase == COMPLETE and replica.head == tail[-1].version


def test_past_the_catch_up_timeout_writes_go_through_anyway() -> None:
    takeover, replica, membership, clock, completed = setup()
    replica.silent.add("http://n2")
    membership.heartbeat_received(heartbeat(2, old_ops(1)[0].version))
    takeover.role_changed("leader")
    write = takeover.writable()

    for _ in range(19):  # the peer stays up (heartbeats) but never answers
        clock.advance(0.1)
        membership.heartbeat_received(heartbeat(2, old_ops(1)[0].version))
    assert not write.called
    clock.advance(0.1)

    assert result_of(write) is None
    status = takeover.status()
    assert (status["phase"], status["timed_out"], status["timeouts"]) == (COMPLETE, True, 1)
    assert completed.ids() == [2]


@pytest.mark.parametrize("full", [
    InsufficientStorage("the disk is full: 3 of 3 chunks could not be fetched and stored;"
                        " nothing applied"),
    full_database(),
], ids=["the chunks", "the database"])
def test_a_pull_this_replica_had_no_room_to_apply_is_tried_again_after_a_pause(
        full: Exception) -> None:
    """Each pull of a catch-up on a full disk fetched the batch's chunks again (every 0.1 s,
    a recheck): the next waits DISK_FULL_PAUSE, and once there is room the ops are applied
    and the catch-up completes."""
    takeover, replica, membership, clock, _ = setup()
    replica.oplogs["http://n2"] = old_ops(3)
    replica.disk_full = full
    membership.heartbeat_received(heartbeat(2, old_ops(3)[-1].version))
    takeover.role_changed("leader")
    write = takeover.writable()
    assert len(replica.asked) == 1

    pause = round(takeover_module.DISK_FULL_PAUSE / 0.1)
    for _ in range(pause - 1):  # the peer heartbeats on; each recheck would have pulled again
        clock.advance(0.1)
        membership.heartbeat_received(heartbeat(2, old_ops(3)[-1].version))
    assert len(replica.asked) == 1
    replica.disk_full = None  # room again
    for _ in range(3):  # the pause ends, then a recheck
        clock.advance(0.1)
        membership.heartbeat_received(heartbeat(2, old_ops(3)[-1].version))

    assert len(replica.asked) == 2 and replica.applied == [("http://n2", old_ops(3))]
    assert result_of(write) is None
    assert takeover.status()["phase"] == COMPLETE and not takeover.status()["timed_out"]


def test_held_writes_fail_with_not_leader_when_leadership_ends_first() -> None:
    takeover, replica, membership, _, completed = setup()
    membership.heartbeat_received(heartbeat(2, ZERO, role="leader", epoch=4))
    takeover.role_changed("leader")
    write = takeover.writable()

    replica.leading = False
    takeover.role_changed("follower")

    with pytest.raises(NotLeader):
        result_of(write)
    assert takeover.phase == IDLE and completed == []
    with pytest.raises(NotLeader):
        takeover.writable()


def test_a_peer_that_has_nothing_after_our_head_is_not_asked_again() -> None:
    takeover, replica, membership, clock, _ = setup()
    # Its heartbeat shows a head its oplog no longer holds (it was wiped and restarted).
    membership.heartbeat_received(heartbeat(2, Version(4, 2, 1)))

    takeover.role_changed("leader")
    clock.advance(0.5)

    assert replica.asked == [("http://n2", Version(3, 3, 7))]
    assert takeover.phase == COMPLETE


def test_a_joining_peer_is_not_pulled_from() -> None:
    takeover, replica, membership, _, _ = setup()
    replica.oplogs["http://n1"] = old_ops(2)
    membership.heartbeat_received(heartbeat(1, old_ops(2)[1].version, state="JOINING"))

    takeover.role_changed("leader")

    assert replica.asked == [] and takeover.phase == COMPLETE


def test_each_leadership_has_its_own_catch_up() -> None:
    takeover, replica, membership, _, _ = setup()
    takeover.role_changed("leader")
    takeover.role_changed("candidate")
    replica.oplogs["http://n2"] = old_ops(1)
    membership.heartbeat_received(heartbeat(2, old_ops(1)[0].version))

    takeover.role_changed("leader")

    assert takeover.status()["takeovers"] == 2
    assert takeover.status()["ops_pulled"] == 1


def test_a_peer_whose_oplog_floor_is_above_our_head_is_left_to_anti_entropy_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[dict[str, object]] = []
    monkeypatch.setattr(takeover_module, "log", Logger(observer=events.append))
    takeover, replica, membership, clock, completed = setup()
    tail = old_ops(20)
    replica.oplogs["http://n2"] = tail
    replica.floors["http://n2"] = tail[9].version  # it compacted the first ten away
    membership.heartbeat_received(heartbeat(2, tail[-1].version))

    takeover.role_changed("leader")

    assert takeover.phase == COMPLETE and result_of(takeover.writable()) is None
    assert replica.asked == [("http://n2", Version(3, 3, 7))] and replica.applied == []
    status = takeover.status()
    assert status["timed_out"] is False and status["ops_pulled"] == 0
    assert status["below_floor"] == [{"node_id": 2, "after": Version(3, 3, 7).encode(),
                                      "floor": tail[9].version.encode()}]
    assert completed.ids() == [2]
    [line] = [e for e in events if "oplog floor" in e["log_format"]]  # type: ignore[operator]
    assert (line["node_id"], line["head"], line["floor"]) == (
        2, Version(3, 3, 7).encode(), tail[9].version.encode())
    clock.advance(1)
    assert len(replica.asked) == 1


def test_a_peer_below_whose_floor_we_were_is_pulled_from_once_another_brings_us_there() -> None:
    takeover, replica, membership, _, completed = setup()
    tail = old_ops(20)
    replica.oplogs["http://n2"] = tail
    replica.floors["http://n2"] = tail[9].version
    replica.oplogs["http://n1"] = tail[:12]
    membership.heartbeat_received(heartbeat(1, tail[11].version))
    membership.heartbeat_received(heartbeat(2, tail[-1].version))

    takeover.role_changed("leader")

    assert replica.asked == [("http://n2", Version(3, 3, 7)), ("http://n1", Version(3, 3, 7)),
                             ("http://n2", tail[11].version)]
    assert replica.applied == [("http://n1", tail[:12]), ("http://n2", tail[12:])]
    assert takeover.phase == COMPLETE and replica.head == tail[-1].version
    assert takeover.status()["sources"] == [1, 2]
    assert completed.ids() == [2, 1]


def test_the_old_leader_and_a_peer_below_whose_floor_we_are_are_both_reconciled() -> None:
    takeover, replica, membership, clock, completed = setup()
    tail = old_ops(20)
    replica.oplogs["http://n1"] = tail
    replica.floors["http://n1"] = tail[9].version
    membership.heartbeat_received(heartbeat(1, tail[-1].version))
    membership.heartbeat_received(heartbeat(2, Version(4, 2, 0), role="leader", epoch=4))

    takeover.role_changed("leader")
    membership.heartbeat_received(heartbeat(2, Version(4, 2, 0)))
    clock.advance(0.1)

    assert takeover.phase == COMPLETE and takeover.status()["timed_out"] is False
    assert completed.ids() == [2, 1]


def test_writes_wait_for_the_rounds_with_the_peers_that_may_hold_writes_below_our_head() -> None:
    """Node 1 followed a leader of our epoch number in another partition: its head is below
    ours, so nothing is pulled, but a record it holds may be missing here. The first write
    waits for the round with it (the random lab run: an item add refused 403 by a new
    leader whose row of the playlist had no owner yet)."""
    takeover, replica, membership, clock, rounds = setup()
    rounds.held = True
    membership.heartbeat_received(heartbeat(1, Version(3, 1, 40)))
    takeover.role_changed("leader")
    write = takeover.writable()

    clock.advance(1.0)
    assert takeover.phase == RECONCILING and not write.called
    assert rounds.ids() == [1] and replica.asked == []
    assert takeover.status()["reconciled"] is None
    rounds.pending[0].callback([])

    assert takeover.phase == COMPLETE and result_of(write) is None
    status = takeover.status()
    assert (status["reconciled_with"], status["reconciled"]) == ([1], True)
    assert (status["timed_out"], status["held_writes"], status["seconds"]) == (False, 1, 1.0)


def test_rounds_that_outlast_the_catch_up_timeout_go_on_without_the_writes() -> None:
    takeover, replica, membership, clock, rounds = setup()
    rounds.held = True
    tail = old_ops(5)
    replica.oplogs["http://n2"] = tail
    membership.heartbeat_received(heartbeat(2, tail[-1].version))
    takeover.role_changed("leader")
    write = takeover.writable()
    assert replica.head == tail[-1].version and takeover.phase == RECONCILING

    clock.advance(TIMEOUT - 0.01)
    membership.heartbeat_received(heartbeat(2, tail[-1].version))
    assert not write.called
    clock.advance(0.01)  # the timeout counts from the start of the catch-up

    assert result_of(write) is None
    status = takeover.status()
    assert (status["phase"], status["timed_out"], status["timeouts"]) == (COMPLETE, True, 1)
    assert status["reconciled"] is False
    [rounds_under_way] = rounds.pending
    assert not rounds_under_way.called  # not cancelled: they mend what they can, later
    rounds_under_way.callback([])
    assert takeover.status()["reconciled"] is False and takeover.phase == COMPLETE


def test_a_catch_up_that_timed_out_starts_the_rounds_without_waiting_for_them() -> None:
    takeover, replica, membership, clock, rounds = setup()
    rounds.held = True
    replica.silent.add("http://n2")
    membership.heartbeat_received(heartbeat(2, old_ops(1)[0].version))
    takeover.role_changed("leader")
    write = takeover.writable()
    for _ in range(20):
        clock.advance(0.1)
        membership.heartbeat_received(heartbeat(2, old_ops(1)[0].version))

    assert result_of(write) is None and takeover.phase == COMPLETE
    assert rounds.ids() == [2] and not rounds.pending[0].called


def test_a_peer_no_longer_heard_is_not_reconciled_with() -> None:
    """The old leader, paused: a round with it would hold the writes until the timeout."""
    takeover, _, membership, clock, rounds = setup()
    membership.heartbeat_received(heartbeat(1, Version(3, 3, 7)))
    membership.heartbeat_received(heartbeat(2, Version(3, 3, 7), role="leader", epoch=4))
    takeover.role_changed("leader")
    write = takeover.writable()
    for _ in range(10):  # node 2 falls silent; node 1 beats on
        clock.advance(0.1)
        membership.heartbeat_received(heartbeat(1, Version(3, 3, 7)))

    assert result_of(write) is None and rounds.ids() == [1]


def test_writes_held_for_the_rounds_fail_with_not_leader_when_leadership_ends() -> None:
    takeover, replica, membership, clock, rounds = setup()
    rounds.held = True
    membership.heartbeat_received(heartbeat(1, Version(3, 3, 7)))
    takeover.role_changed("leader")
    write = takeover.writable()
    assert takeover.phase == RECONCILING

    replica.leading = False
    takeover.role_changed("follower")

    with pytest.raises(NotLeader):
        result_of(write)
    assert takeover.phase == IDLE
    rounds.pending[0].callback([])
    clock.advance(TIMEOUT)
    assert takeover.phase == IDLE and takeover.status()["timeouts"] == 0


def back(node: int, head: Version, membership: Membership, role: str = "follower") -> Peer:
    membership.heartbeat_received(heartbeat(node, head, role=role))
    [peer] = [p for p in membership.live_peers() if p.node_id == node]
    return peer


def test_a_leader_holds_writes_for_a_round_with_a_peer_back_from_another_leadership() -> None:
    """A partition heals: node 2 led the other side in our epoch number (a lower id), so
    what it wrote is below our head and no push brings it; writes wait for the round."""
    takeover, _, membership, _, rounds = setup()
    takeover.role_changed("leader")
    assert takeover.phase == COMPLETE and rounds == [[]]
    rounds.held = True

    takeover.peer_returned(back(2, Version(5, 2, 30), membership, role="leader"))
    write = takeover.writable()

    assert takeover.phase == RECONCILING and not write.called
    assert [p.node_id for p in rounds[-1]] == [2]
    rounds.pending[0].callback([])
    assert takeover.phase == COMPLETE and result_of(write) is None
    status = takeover.status()
    assert (status["peer_holds"], status["timed_out"]) == (1, False)
    assert status["reconciled_with"] == []  # the catch-up's: nobody was heard then


def test_a_round_with_a_peer_back_holds_writes_for_the_catch_up_timeout_at_most() -> None:
    takeover, _, membership, clock, rounds = setup()
    takeover.role_changed("leader")
    rounds.held = True
    clock.advance(60)
    takeover.peer_returned(back(2, Version(4, 2, 30), membership))
    write = takeover.writable()
    clock.advance(TIMEOUT - 0.01)
    membership.heartbeat_received(heartbeat(2, Version(4, 2, 30)))
    assert not write.called

    clock.advance(0.01)

    assert result_of(write) is None and takeover.phase == COMPLETE
    assert not rounds.pending[0].called
    assert takeover.status()["timeouts"] == 0  # the catch-up did not time out


@pytest.mark.parametrize("head", [Version(5, 3, 12), ZERO], ids=["our own", "none"])
def test_a_peer_back_whose_last_write_is_ours_or_none_holds_nothing(head: Version) -> None:
    """A follower back from a pause or a restart: what it holds came from us."""
    takeover, _, membership, _, rounds = setup()
    takeover.role_changed("leader")

    takeover.peer_returned(back(1, head, membership))

    assert rounds == [[]] and takeover.phase == COMPLETE
    assert takeover.status()["peer_holds"] == 0


def test_a_peer_back_while_not_leading_holds_nothing() -> None:
    takeover, replica, membership, _, rounds = setup()
    replica.leading = False

    takeover.peer_returned(back(2, Version(4, 2, 1), membership))

    assert rounds == [] and takeover.phase == IDLE


def test_a_peer_back_whose_newest_write_we_hold_holds_nothing() -> None:
    """A follower paused since before this leadership resumes: its head is the previous
    leader's op, which we applied too."""
    takeover, replica, membership, _, rounds = setup()
    replica.ops_held.add(Version(4, 2, 30))
    takeover.role_changed("leader")

    takeover.peer_returned(back(1, Version(4, 2, 30), membership))

    assert rounds == [[]] and takeover.phase == COMPLETE


def test_a_peer_back_again_with_the_head_already_reconciled_holds_nothing_more() -> None:
    takeover, _, membership, clock, rounds = setup()
    takeover.role_changed("leader")
    takeover.peer_returned(back(2, Version(4, 2, 30), membership))
    assert len(rounds) == 2 and takeover.phase == COMPLETE
    clock.advance(1)  # it flaps: down, then heard again with the same head

    takeover.peer_returned(back(2, Version(4, 2, 30), membership))
    assert len(rounds) == 2
    takeover.peer_returned(back(2, Version(4, 2, 31), membership))
    assert len(rounds) == 3 and takeover.status()["peer_holds"] == 2


def test_peers_heard_again_during_a_round_get_one_of_their_own_before_the_writes() -> None:
    """A heal brings back both nodes of the other side, a heartbeat apart: the round with
    the first does not stand for the second (it may have lagged behind their leader)."""
    takeover, _, membership, _, rounds = setup()
    takeover.role_changed("leader")
    rounds.held = True
    takeover.peer_returned(back(2, Version(4, 2, 30), membership, role="leader"))
    write = takeover.writable()
    takeover.peer_returned(back(1, Version(4, 2, 28), membership))
    assert [[p.node_id for p in call] for call in rounds] == [[], [2]]

    rounds.pending[0].callback([])

    assert [p.node_id for p in rounds[-1]] == [1] and takeover.phase == RECONCILING
    assert not write.called
    rounds.pending[1].callback([])
    assert result_of(write) is None and takeover.status()["peer_holds"] == 2


def test_a_round_that_failed_is_tried_again_until_the_deadline() -> None:
    """A peer that refused the round (not serving yet) is asked again every recheck."""
    takeover, _, membership, clock, rounds = setup()
    rounds.failing = {1}
    membership.heartbeat_received(heartbeat(1, Version(3, 1, 40)))
    takeover.role_changed("leader")
    write = takeover.writable()
    assert takeover.phase == RECONCILING and len(rounds) == 1

    clock.advance(0.1)
    membership.heartbeat_received(heartbeat(1, Version(3, 1, 40)))
    assert len(rounds) == 2 and not write.called
    rounds.failing = set()
    clock.advance(0.1)

    assert len(rounds) == 3 and result_of(write) is None
    assert takeover.status()["reconciled"] is True


def test_rounds_failing_to_the_deadline_let_the_writes_through_as_not_reconciled() -> None:
    takeover, _, membership, clock, rounds = setup()
    rounds.failing = {1}
    membership.heartbeat_received(heartbeat(1, Version(3, 1, 40)))
    takeover.role_changed("leader")
    write = takeover.writable()
    for _ in range(19):
        clock.advance(0.1)
        membership.heartbeat_received(heartbeat(1, Version(3, 1, 40)))

    assert result_of(write) is None and takeover.phase == COMPLETE
    status = takeover.status()
    assert (status["reconciled"], status["timed_out"]) == (False, False)


def test_a_peer_that_fails_its_round_and_falls_silent_is_not_asked_again() -> None:
    takeover, _, membership, clock, rounds = setup()
    rounds.failing = {1}
    membership.heartbeat_received(heartbeat(1, Version(3, 1, 40)))
    takeover.role_changed("leader")
    write = takeover.writable()
    for _ in range(10):  # node 1 is no longer heard after 0.75 s
        clock.advance(0.1)

    assert result_of(write) is None and takeover.status()["reconciled"] is False
    assert 7 <= len(rounds) <= 9  # asked every recheck while heard, then no more
    asked = len(rounds)
    for _ in range(10):
        clock.advance(0.1)
    assert len(rounds) == asked


def test_writes_held_for_a_peer_back_fail_with_not_leader_when_leadership_ends() -> None:
    takeover, replica, membership, clock, rounds = setup()
    takeover.role_changed("leader")
    rounds.held = True
    takeover.peer_returned(back(2, Version(4, 2, 30), membership))
    write = takeover.writable()

    replica.leading = False
    takeover.role_changed("follower")

    with pytest.raises(NotLeader):
        result_of(write)
    rounds.pending[0].callback([])
    clock.advance(TIMEOUT)
    assert takeover.phase == IDLE
