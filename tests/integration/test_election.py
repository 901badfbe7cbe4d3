"""Three real replicas on 127.0.0.1 (multicast on 127.0.0.1, TTL 0): Bully with epochs."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.helpers.replica import (
    STARTUP,
    Cluster,
    ReplicaProcess,
    free_udp_port,
    send_json,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

FAILURE_TIMEOUT = 0.75


@pytest.fixture
def cluster(tmp_path: Path, replicas: list[ReplicaProcess]) -> Cluster:
    return Cluster(tmp_path, replicas)


def settled_on_3(cluster: Cluster) -> dict | None:
    """Node 3 leads, every replica says so, and every one is ACTIVE: the state Bully ends in
    (a replica that starts late may lead for a moment before node 3 takes over)."""
    leader = cluster.agreed_leader()
    if not leader or leader["node_id"] != 3:
        return None
    states = [p["state"] for p in leader["peers"] if p["up"]]
    return leader if len(states) == 2 and set(states) == {"ACTIVE"} else None


def start_three(cluster: Cluster) -> dict:
    for node_id in (1, 2, 3):
        cluster.add(node_id)
    return wait_until(lambda: settled_on_3(cluster), timeout=STARTUP, what="settling on node 3")


def test_three_replicas_started_together_settle_on_node_3_within_2s(cluster: Cluster) -> None:
    for node_id in (1, 2, 3):
        cluster.add(node_id)
    for node in cluster.nodes.values():
        wait_until(lambda n=node: n.get("/status", timeout=0.5).status == 200, timeout=STARTUP,
                   what=f"replica {node.node_id} to serve")
    serving = time.monotonic()

    leader = wait_until(lambda: settled_on_3(cluster), timeout=5, what="agreement")

    # Each replica listens one failure timeout before serving HTTP, so agreement is measured
    # from the moment all three serve, plus that listening time.
    assert time.monotonic() - serving < 2.0 - FAILURE_TIMEOUT
    assert leader["node_id"] == 3 and leader["epoch"] >= 1
    assert {p["node_id"] for p in leader["peers"]} == {1, 2}


def test_write_to_a_follower_is_421_naming_the_leader(cluster: Cluster) -> None:
    leader = start_three(cluster)

    answer = send_json(cluster.nodes[1].http_port, "POST", "/playlists", {"name": "x"})

    assert answer.status == 421
    assert answer.json() == {"error": "not_leader", "message": "this replica is not the leader",
                             "leader_id": 3, "leader_http": leader["http"]}
    assert send_json(cluster.nodes[3].http_port, "POST", "/playlists", {"name": "x"}).status == 201


def test_killed_leader_is_replaced_with_a_higher_epoch(cluster: Cluster) -> None:
    first = start_three(cluster)

    cluster.nodes[3].kill()
    killed = time.monotonic()
    second = wait_until(cluster.agreed_leader, timeout=10, what="a new leader")
    written = send_json(cluster.nodes[2].http_port, "POST", "/playlists", {"name": "after"})

    assert time.monotonic() - killed < 3.0
    assert second["node_id"] == 2 and second["epoch"] > first["epoch"]
    assert written.status == 201
    assert written.json()["playlist"]["version"].startswith(f"{second['epoch']:010d}-00002-")


def test_restarted_old_leader_takes_leadership_back(cluster: Cluster) -> None:
    start_three(cluster)
    cluster.nodes[3].kill()
    second = wait_until(lambda: (s := cluster.agreed_leader()) and s["node_id"] == 2 and s,
                        timeout=10, what="node 2 to lead")

    cluster.nodes[3].start(wait=False)
    third = wait_until(lambda: (s := cluster.agreed_leader()) and s["node_id"] == 3 and s,
                       timeout=STARTUP, what="node 3 to bully its way back")

    assert third["epoch"] > second["epoch"]


def test_paused_leader_steps_down_when_it_hears_the_higher_epoch(cluster: Cluster) -> None:
    start_three(cluster)
    old = cluster.nodes[3]
    others = [cluster.nodes[1], cluster.nodes[2]]

    old.signal(signal.SIGSTOP)
    try:
        new = wait_until(lambda: cluster.agreed_leader(others), timeout=10, what="a new leader")
    finally:
        old.signal(signal.SIGCONT)
    resumed = time.monotonic()

    # The resumed leader may bully its way back (it is ACTIVE and has the highest id), but
    # two replicas never both claim leadership for longer than one failure timeout.
    def single_leader() -> bool:
        statuses = cluster.statuses()
        return len(statuses) == 3 and sum(s["role"] == "leader" for s in statuses.values()) == 1

    wait_until(single_leader, timeout=10, what="one leader")
    assert time.monotonic() - resumed < FAILURE_TIMEOUT + 1.0
    final = wait_until(cluster.agreed_leader, timeout=10, what="agreement")
    assert final["epoch"] >= new["epoch"]


def test_garbage_datagrams_change_nothing(cluster: Cluster) -> None:
    leader = start_three(cluster)
    garbage = [b"", b"\xff\xfe", b"{", b"[]", b"null", b"x" * 5000,
               json.dumps({"cluster": cluster.name, "node": "three", "epoch": 9}).encode(),
               json.dumps({"cluster": cluster.name, "node": 9, "epoch": 99, "role": "leader",
                           "state": "ACTIVE", "http": 5, "amp": "x", "head": "y"}).encode()]

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        for _ in range(20):
            for datagram in garbage:
                sock.sendto(datagram, ("239.255.77.77", cluster.heartbeat_port))

    # A burst may overflow a socket buffer: every replica must have counted some of each.
    def counted() -> bool:
        return all(s["heartbeats"]["malformed"] > 0 and s["heartbeats"]["oversized"] > 0
                   for s in cluster.statuses().values())

    wait_until(counted, timeout=10, what="the garbage to be counted")
    after = wait_until(cluster.agreed_leader, timeout=5, what="agreement")
    assert (after["node_id"], after["epoch"]) == (leader["node_id"], leader["epoch"])


def test_newcomer_with_a_taken_node_id_refuses_to_serve(cluster: Cluster) -> None:
    start_three(cluster)
    original = list(cluster.nodes.values())

    twin = cluster.add(2)  # the same id as a running replica, its own ports and data dir
    assert twin.process is not None
    code = twin.process.wait(15)

    assert code == 3
    assert "node id 2 is already used" in twin.log()
    assert cluster.agreed_leader(original) is not None


def test_unicast_heartbeats_elect_a_leader_without_multicast(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    ports = {node_id: free_udp_port() for node_id in (1, 2, 3)}
    peers = ",".join(f"127.0.0.1:{port}" for port in ports.values())
    nodes = []
    for node_id, port in ports.items():
        node = ReplicaProcess(node_id, tmp_path, "--heartbeat", "unicast", "--peers", peers,
                              cluster=f"unicast-{ports[1]}", heartbeat_port=port)
        replicas.append(node.start(wait=False))
        nodes.append(node)
    cluster = Cluster(tmp_path, [])

    def led_by(node_id: int, among: list[ReplicaProcess]) -> dict | None:
        leader = cluster.agreed_leader(among)
        return leader if leader and leader["node_id"] == node_id else None

    # Bully ends on node 3 (another may lead for a moment while node 3 starts).
    wait_until(lambda: led_by(3, nodes), timeout=STARTUP, what="node 3 to lead")
    nodes[2].kill()
    after = wait_until(lambda: led_by(2, nodes[:2]), timeout=10, what="failover to node 2")

    assert after["heartbeats"]["accepted"] > 0
