"""Cluster trust with real replicas: only holders of the cluster key take part.

A replica with another key, forged and replayed heartbeats, AMP commands without proof and
unsigned or wrongly signed /sync/* requests change nothing; a rolling key rotation keeps
the cluster elected and replicating.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.protocols import amp

from distpotify.cluster.ampauth import CONNECTOR, NONCE_BYTES, proof
from distpotify.cluster.seal import HEADER, TAG_BYTES, Sealer
from distpotify.keys import ClusterKeys
from tests.helpers.replica import (
    STARTUP,
    Cluster,
    ReplicaProcess,
    key_lines,
    make_key_file,
    send_json,
    signed_request,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

GROUP = "239.255.77.77"
MISMATCH = "cluster key mismatch with 127.0.0.1"


@pytest.fixture
def cluster(tmp_path: Path, replicas: list[ReplicaProcess]) -> Cluster:
    return Cluster(tmp_path, replicas)


def settled(cluster: Cluster, leader_id: int, nodes: list[ReplicaProcess] | None = None
            ) -> dict[str, Any] | None:
    """LEADER_ID leads NODES (default: all running), and it sees every other one up and
    ACTIVE."""
    nodes = nodes if nodes is not None else cluster.running()
    leader = cluster.agreed_leader(nodes)
    if not leader or leader["node_id"] != leader_id:
        return None
    up = {p["node_id"] for p in leader["peers"] if p["up"] and p["state"] == "ACTIVE"}
    return leader if up >= {n.node_id for n in nodes} - {leader_id} else None


def start(cluster: Cluster, *node_ids: int) -> dict[str, Any]:
    for node_id in node_ids:
        cluster.add(node_id)
    return wait_until(lambda: settled(cluster, max(node_ids)), timeout=STARTUP,
                      what=f"node {max(node_ids)} to lead {node_ids}")


def failures(status: dict[str, Any], kind: str) -> int:
    return sum(kinds.get(kind, 0) for kinds in status["trust"]["failures"].values())


def mismatch_lines(node: ReplicaProcess) -> int:
    return node.log_path.read_text(errors="replace").count(MISMATCH)


def test_a_replica_with_another_key_joins_nothing_and_disturbs_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    before = start(cluster, 1, 2)
    pair = [cluster.nodes[1], cluster.nodes[2]]
    other_key = make_key_file(tmp_path / "other.key")

    # Node 3 would lead the others (the highest id) if it could talk to them.
    stranger = cluster.add(3, key_file=other_key)
    alone = stranger.wait_ready()

    # Two seconds of each side's heartbeats (one every 0.1 s) refused by the other.
    def refused_both_ways() -> bool:
        statuses = cluster.statuses()
        return len(statuses) == 3 and all(
            failures(s, "heartbeat_forged") >= 20 for s in statuses.values())

    wait_until(refused_both_ways, timeout=STARTUP, what="heartbeats refused both ways")

    after = cluster.agreed_leader(pair)
    assert after is not None
    assert (after["node_id"], after["epoch"]) == (before["node_id"], before["epoch"])
    assert {p["node_id"] for p in after["peers"]} == {1}
    stranger_status = stranger.status()
    assert stranger_status is not None
    assert (alone["leader_id"], stranger_status["leader_id"]) == (3, 3)
    assert stranger_status["peers"] == []
    # One line per peer address, not one per datagram (all three share 127.0.0.1 here).
    assert [mismatch_lines(n) for n in (*pair, stranger)] == [1, 1, 1]


def capture_heartbeat(port: int, node_id: int) -> bytes:
    """The next heartbeat datagram NODE_ID multicasts on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("", port))
        membership = socket.inet_aton(GROUP) + socket.inet_aton("127.0.0.1")
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.settimeout(10)
        while True:
            datagram = sock.recv(65536)
            body = json.loads(datagram[HEADER.size:-TAG_BYTES])
            if body["node"] == node_id:
                return datagram


def multicast(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        for datagram in datagrams:
            sock.sendto(datagram, (GROUP, port))


def test_forged_altered_and_replayed_heartbeats_change_nothing(cluster: Cluster) -> None:
    leader = start(cluster, 1, 2)
    # Each replica has accepted these already: sent again, they are replays to the other.
    recorded = [capture_heartbeat(cluster.heartbeat_port, node_id) for node_id in (1, 2)]
    real = recorded[1]
    body = json.loads(real[HEADER.size:-TAG_BYTES])
    # Node 9, leader of a far higher epoch: Bully would follow it if it were believed.
    usurper = json.dumps({**body, "node": 9, "epoch": body["epoch"] + 1000}).encode()
    now = Clock()
    now.advance(time.time())  # the replicas' wall-clock time, or it would be stale
    forged = Sealer(ClusterKeys.generate(), now).seal(usurper)
    altered = real[:HEADER.size] + usurper + real[-TAG_BYTES:]

    for _ in range(20):
        multicast(cluster.heartbeat_port, forged, altered, *recorded)

    def counted() -> dict[int, dict[str, Any]] | None:
        statuses = cluster.statuses()
        return statuses if all(
            s["heartbeats"]["forged"] > 0 and s["heartbeats"]["replayed"] > 0
            for s in statuses.values()) and len(statuses) == 2 else None

    statuses = wait_until(counted, timeout=10, what="forged and replayed to be counted")
    after = wait_until(cluster.agreed_leader, timeout=5, what="agreement")
    assert (after["node_id"], after["epoch"]) == (leader["node_id"], leader["epoch"])
    for status in statuses.values():
        assert 9 not in {p["node_id"] for p in status["peers"]}
        assert failures(status, "heartbeat_forged") == status["heartbeats"]["forged"]


def amp_ask(port: int, box: amp.AmpBox) -> tuple[list[amp.AmpBox], bool]:
    """Send BOX on a new connection: the answers, and whether the replica then closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(box.serialize())
        received = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return amp.parseString(received), True
            received += data
            if amp.parseString(received):
                try:
                    return amp.parseString(received), sock.recv(65536) == b""
                except TimeoutError:
                    return amp.parseString(received), False


def test_amp_commands_without_proof_or_with_a_wrong_key_change_nothing(
    cluster: Cluster,
) -> None:
    leader = start(cluster, 1, 2)
    follower = cluster.nodes[1]
    coordinator = amp.AmpBox(_ask=b"1", _command=b"Coordinator", node_id=b"9",
                             epoch=str(leader["epoch"] + 1000).encode(),
                             http=b"http://127.0.0.1:9")

    unproven, closed = amp_ask(follower.amp_port, coordinator)

    assert closed
    assert [a[b"_error_code"] for a in unproven] == [b"UNPROVEN"]

    # A handshake whose Prove is made with another key.
    nonce = b"n" * NONCE_BYTES
    challenge = amp.AmpBox(_ask=b"1", _command=b"Challenge", nonce=nonce)
    with socket.create_connection(("127.0.0.1", follower.amp_port), timeout=10) as sock:
        sock.sendall(challenge.serialize())
        received = b""
        while not amp.parseString(received):
            received += sock.recv(65536)
        theirs = amp.parseString(received)[0][b"nonce"]
        wrong = proof(ClusterKeys.generate(), CONNECTOR, nonce, theirs)
        sock.sendall(amp.AmpBox(_ask=b"2", _command=b"Prove", proof=wrong).serialize()
                     + coordinator.serialize())
        while len(amp.parseString(received)) < 2:
            data = sock.recv(65536)
            assert data, "closed before answering Prove"
            received += data
        refused = amp.parseString(received)[1]
        assert sock.recv(65536) == b""  # closed after the error

    assert refused[b"_error_code"] == b"KEY_MISMATCH"
    status = follower.status()
    assert status is not None
    assert failures(status, "amp_unproven") >= 1 and failures(status, "amp_mismatch") == 1
    after = wait_until(cluster.agreed_leader, timeout=5, what="agreement")
    assert (after["node_id"], after["epoch"]) == (leader["node_id"], leader["epoch"])


def test_unsigned_or_wrongly_signed_sync_requests_are_401_and_change_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    leader_status = start(cluster, 1, 2)
    follower = cluster.nodes[1]
    before = follower.status()
    assert before is not None
    batch = {"epoch": leader_status["epoch"], "leader_id": 2, "ops": [{
        "version": [leader_status["epoch"], 2, 10**6], "kind": "playlist_upsert",
        "entity_id": "p1", "data": {"name": "planted"}}]}
    other_key = make_key_file(tmp_path / "other.key")

    answers = [
        send_json(follower.http_port, "POST", "/sync/ops", batch),
        signed_request(follower.http_port, other_key, "POST", "/sync/ops",
                       json.dumps(batch).encode(), {"Content-Type": "application/json"}),
        follower.get("/sync/snapshot"),
        signed_request(follower.http_port, other_key, "GET", "/sync/snapshot"),
        follower.get("/sync/digest"),
    ]

    for answer in answers:
        assert (answer.status, answer.json()["error"]) == (401, "unauthorized")
    after = follower.status()
    assert after is not None
    assert after["head"] == before["head"]
    assert follower.get("/playlists").json() == cluster.nodes[2].get("/playlists").json()
    assert failures(after, "http_unsigned") == 3 and failures(after, "http_forged") == 2
    # A replica's own signed request is still served.
    assert follower.signed("GET", "/sync/digest").status == 200


def test_a_rolling_key_rotation_keeps_the_cluster_elected_and_replicating(
    cluster: Cluster, tmp_path: Path
) -> None:
    start(cluster, 1, 2, 3)
    old = key_lines(cluster.key_file)
    new = key_lines(make_key_file(tmp_path / "new.key"))
    rounds = {"add": old + new, "swap": new + old, "drop": new}
    written = []

    for name, lines in rounds.items():
        key_file = tmp_path / f"{name}.key"
        key_file.write_text("\n".join(lines) + "\n")
        for node in cluster.nodes.values():
            node.stop()
            node.key_file = key_file
            node.start(wait=False)
            leader = wait_until(lambda: settled(cluster, 3), timeout=STARTUP,
                                what=f"node 3 to lead after restarting {node.node_id} ({name})")
            made = send_json(cluster.nodes[leader["node_id"]].http_port, "POST", "/playlists",
                             {"name": f"{name}-{node.node_id}"})
            assert made.status == 201, made.body
            written.append(made.json()["playlist"]["id"])

            def replicated() -> bool:
                return all(n.get(f"/playlists/{pid}").status == 200
                           for n in cluster.nodes.values() for pid in written)

            wait_until(replicated, timeout=STARTUP, what=f"replication after {name}")
            for status in cluster.statuses().values():
                assert status["trust"]["failures"] == {}, (name, node.node_id, status["trust"])

    new_id = ClusterKeys.parse("\n".join(new)).key_ids
    assert [s["trust"]["key_ids"] for s in cluster.statuses().values()] == [list(new_id)] * 3
