"""The peer table and failure detector, driven by a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from distpotify.cluster.heartbeat import Heartbeat
from distpotify.cluster.membership import Membership, PeerChanged, PeerDown, PeerEvent, PeerUp
from distpotify.model import Version

FAILURE_TIMEOUT = 0.75


def heartbeat(node: int, **changes: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "cluster": "test",
        "node": node,
        "epoch": 1,
        "role": "follower",
        "state": "ACTIVE",
        "http": f"http://127.0.0.1:800{node}",
        "amp": f"127.0.0.1:900{node}",
        "head": Version(1, 3, 0),
    }
    fields.update(changes)
    return Heartbeat(**fields)


class Table:
    """Node 2's membership on a Clock, recording every event."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.membership = Membership(node_id=2, clock=self.clock, failure_timeout=FAILURE_TIMEOUT)
        self.events: list[PeerEvent] = []
        self.membership.subscribe(self.events.append)

    def hear(self, node: int, **changes: Any) -> None:
        self.membership.heartbeat_received(heartbeat(node, **changes))

    def kinds(self) -> list[tuple[str, int]]:
        return [(type(event).__name__, event.peer.node_id) for event in self.events]


def test_first_heartbeat_brings_a_peer_up() -> None:
    table = Table()
    table.hear(3)
    assert table.kinds() == [("PeerUp", 3)]
    peer = table.membership.get(3)
    assert peer is not None and peer.up and peer.http == "http://127.0.0.1:8003"


def test_peer_silent_for_failure_timeout_goes_down() -> None:
    table = Table()
    table.hear(3)
    table.clock.advance(FAILURE_TIMEOUT - 0.01)
    assert table.membership.live_peers() != []
    table.clock.advance(0.01)
    assert table.kinds() == [("PeerUp", 3), ("PeerDown", 3)]
    assert table.membership.live_peers() == []
    assert isinstance(table.events[-1], PeerDown)


def test_regular_heartbeats_keep_a_peer_up() -> None:
    table = Table()
    for _ in range(30):
        table.hear(3)
        table.clock.advance(0.1)
    assert table.kinds() == [("PeerUp", 3)]


def test_failure_timeout_counts_from_the_last_heartbeat() -> None:
    table = Table()
    table.hear(3)
    table.clock.advance(0.5)
    table.hear(3)
    table.clock.advance(0.5)
    assert table.kinds() == [("PeerUp", 3)]
    table.clock.advance(0.25)
    assert table.kinds()[-1] == ("PeerDown", 3)


def test_peer_heard_again_after_going_down_is_up_again() -> None:
    table = Table()
    table.hear(3)
    table.clock.advance(1)
    table.hear(3)
    assert table.kinds() == [("PeerUp", 3), ("PeerDown", 3), ("PeerUp", 3)]


def test_role_and_epoch_changes_are_events() -> None:
    table = Table()
    table.hear(3)
    table.hear(3, role="leader", epoch=2)
    change = table.events[-1]
    assert isinstance(change, PeerChanged)
    assert (change.previous.role, change.peer.role) == ("follower", "leader")
    assert (change.previous.epoch, change.peer.epoch) == (1, 2)


def test_head_changes_update_the_table_without_an_event() -> None:
    table = Table()
    table.hear(3)
    table.hear(3, head=Version(1, 3, 9))
    assert table.kinds() == [("PeerUp", 3)]
    peer = table.membership.get(3)
    assert peer is not None and peer.head == Version(1, 3, 9)


def test_own_node_id_never_enters_the_table() -> None:
    table = Table()
    table.hear(2)
    assert table.membership.peers() == []
    assert table.events == []


def test_current_leader_is_the_highest_epoch_then_id_among_live_leaders() -> None:
    table = Table()
    table.hear(1, role="leader", epoch=5)
    table.hear(3, role="leader", epoch=4)
    table.hear(4, role="follower", epoch=9)
    leader = table.membership.current_leader()
    assert leader is not None and leader.node_id == 1
    table.clock.advance(0.5)
    table.hear(3, role="leader", epoch=4)
    table.clock.advance(0.5)
    leader = table.membership.current_leader()
    assert leader is not None and leader.node_id == 3


def test_no_current_leader_when_none_is_live() -> None:
    table = Table()
    table.hear(3, role="leader")
    table.clock.advance(1)
    assert table.membership.current_leader() is None


def test_electable_above_lists_live_active_higher_ids_only() -> None:
    table = Table()
    table.hear(1)
    table.hear(3, state="JOINING")
    table.hear(4)
    table.hear(5)
    table.clock.advance(0.5)
    table.hear(1)
    table.hear(3, state="JOINING")
    table.hear(4)
    table.clock.advance(0.5)
    assert table.membership.electable_above(2) == [4]


def test_highest_epoch_remembers_peers_that_went_down() -> None:
    table = Table()
    table.hear(3, epoch=7)
    table.hear(4, epoch=3)
    table.clock.advance(1)
    assert table.membership.highest_epoch() == 7


def test_snapshot_reports_each_peer_with_its_last_seen_age() -> None:
    table = Table()
    table.hear(3, role="leader", epoch=2)
    table.clock.advance(0.25)
    table.hear(1)
    table.clock.advance(0.1)
    assert table.membership.snapshot() == [
        {
            "node_id": 1, "role": "follower", "state": "ACTIVE", "up": True,
            "http": "http://127.0.0.1:8001", "amp": "127.0.0.1:9001", "epoch": 1,
            "head": Version(1, 3, 0).encode(), "last_seen_ms": 100,
        },
        {
            "node_id": 3, "role": "leader", "state": "ACTIVE", "up": True,
            "http": "http://127.0.0.1:8003", "amp": "127.0.0.1:9003", "epoch": 2,
            "head": Version(1, 3, 0).encode(), "last_seen_ms": 350,
        },
    ]


def test_a_failing_observer_does_not_stop_the_others() -> None:
    table = Table()
    seen: list[PeerEvent] = []
    table.membership.subscribe(lambda event: 1 / 0)
    table.membership.subscribe(seen.append)
    table.hear(3)
    assert [type(event) for event in seen] == [PeerUp]


def test_unsubscribed_observer_gets_no_more_events() -> None:
    table = Table()
    seen: list[PeerEvent] = []
    unsubscribe = table.membership.subscribe(seen.append)
    table.hear(3)
    unsubscribe()
    table.clock.advance(1)
    assert len(seen) == 1


def test_stop_cancels_the_failure_timers() -> None:
    table = Table()
    table.hear(3)
    table.hear(4)
    table.membership.stop()
    assert table.clock.getDelayedCalls() == []
