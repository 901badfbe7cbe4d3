"""ClusterNode, wired with a MemoryReactorClock: a change of state or role is heard at once."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock

from distpotify.cluster.heartbeat import Heartbeat, decode
from distpotify.cluster.node import ClusterNode
from distpotify.cluster.seal import Sealer
from distpotify.config import ReplicaConfig
from distpotify.model import ZERO
from tests.helpers.api import CLUSTER_KEYS
from tests.unit.test_heartbeat import FakeDatagramTransport


class Node:
    def __init__(self, tmp_path: Path) -> None:
        self.reactor = MemoryReactorClock()
        self.node = ClusterNode(
            ReplicaConfig(node_id=1, data_dir=tmp_path, cluster_keys=CLUSTER_KEYS,
                          heartbeat_interval=0.1),
            self.reactor, store=None,  # type: ignore[arg-type]
            head=lambda: ZERO, epoch=0,
        )
        self.transport = FakeDatagramTransport()
        self.node.heartbeats.makeConnection(self.transport)  # type: ignore[arg-type]

    def sent(self) -> list[Heartbeat]:
        opener = Sealer(CLUSTER_KEYS, self.reactor)
        return [decode(opener.open(data).body) for data, _ in self.transport.written]


def test_becoming_active_is_announced_at_once_not_at_the_next_heartbeat(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path)
    node.node.startService()
    assert [beat.state for beat in node.sent()] == ["JOINING"]

    node.node.activate()  # no time passes

    # ACTIVE, then (alone, the highest id it knows) a candidate: each said when it happens.
    assert [(beat.state, beat.role) for beat in node.sent()] == [
        ("JOINING", "follower"), ("ACTIVE", "follower"), ("ACTIVE", "candidate")]
    node.node.deactivate()
    assert node.sent()[-1].state == "JOINING"
    node.node.stopService()


def test_a_node_not_started_sends_nothing_when_it_changes(tmp_path: Path) -> None:
    node = Node(tmp_path)

    node.node.activate()

    assert node.transport.written == []
