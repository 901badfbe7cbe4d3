"""Unicast heartbeats between real replicas on 127.0.0.1, with peers given by host name.

Names resolve through the replica's reactor: ``localhost`` through the system resolver, and
``*.distpotify.test`` through a hosts file that the test edits (installed as the reactor's
resolver by a two-line bootstrap), so a name can be missing when a replica starts and appear
later, as a container's does, without touching /etc or sending a DNS query anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.replica import (
    Cluster,
    ReplicaProcess,
    free_udp_port,
    send_json,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# twistd with twisted.names' hosts-file resolver installed first; argv[1] is the hosts file.
WITH_HOSTS_FILE = (
    "import sys\n"
    "from twisted.internet import reactor\n"
    "from twisted.names.hosts import Resolver\n"
    "reactor.installResolver(Resolver(file=sys.argv.pop(1)))\n"
    "from twisted.scripts.twistd import run\n"
    "run()\n"
)


class HostsFileReplica(ReplicaProcess):
    """A replica whose reactor resolves names from ``hosts`` (re-read at every lookup)."""

    def __init__(self, *args: Any, hosts: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hosts = hosts

    def command(self) -> list[str]:
        return [sys.executable, "-c", WITH_HOSTS_FILE, str(self.hosts), *super().command()[1:]]


def unicast_nodes(
    root: Path, name: Callable[[int], str], make: type[ReplicaProcess] = ReplicaProcess,
    **kwargs: Any,
) -> dict[int, ReplicaProcess]:
    """Replicas 1-3 (not started), each on its own heartbeat port, peers named ``name(id)``."""
    ports = {node_id: free_udp_port() for node_id in (1, 2, 3)}
    peers = ",".join(f"{name(node_id)}:{port}" for node_id, port in ports.items())
    return {
        node_id: make(node_id, root, "--heartbeat", "unicast", "--peers", peers,
                      cluster=f"unicast-{ports[1]}", heartbeat_port=port, **kwargs)
        for node_id, port in ports.items()
    }


def settled_on_3(nodes: dict[int, ReplicaProcess]) -> dict[str, Any] | None:
    """Node 3 leads, all three say so, and the leader sees the other two up and ACTIVE."""
    leader = Cluster(Path(), []).agreed_leader(list(nodes.values()))
    if not leader or leader["node_id"] != 3:
        return None
    up = {p["node_id"]: p["state"] for p in leader["peers"] if p["up"]}
    return leader if up == {1: "ACTIVE", 2: "ACTIVE"} else None


def test_replicas_find_each_other_by_host_name(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    nodes = unicast_nodes(tmp_path, lambda node_id: "localhost")
    for node in nodes.values():
        replicas.append(node.start(wait=False))

    leader = wait_until(lambda: settled_on_3(nodes), timeout=20, what="node 3 to lead")

    statuses = {n: node.status() for n, node in nodes.items()}
    assert leader["epoch"] >= 1
    for status in statuses.values():
        assert status is not None
        assert status["heartbeats"]["accepted"] > 0
        # Its own entry in --peers comes back to it and is recognised, not a duplicate.
        assert status["heartbeats"]["own"] > 0
        assert status["heartbeats"]["duplicate_node"] == 0
    assert "heartbeat peer localhost resolves to 127.0.0.1" in nodes[1].log()


def test_a_replica_started_before_its_peers_resolve_finds_them_when_they_do(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    nodes = unicast_nodes(tmp_path, lambda node_id: f"backend{node_id}.distpotify.test",
                          make=HostsFileReplica, hosts=hosts)
    first = nodes[1]
    replicas.append(first.start(wait=False))

    alone = first.wait_ready()
    wait_until(lambda: "cannot resolve heartbeat peer backend2.distpotify.test" in first.log(),
               timeout=10, what="the failed lookup to be logged")
    hosts.write_text("127.0.0.1 localhost\n" + "".join(
        f"127.0.0.1 backend{node_id}.distpotify.test\n" for node_id in (1, 2, 3)))
    for node_id in (2, 3):
        replicas.append(nodes[node_id].start(wait=False))
    leader = wait_until(lambda: settled_on_3(nodes), timeout=30, what="node 3 to lead")

    log = first.log()
    assert (alone["leader_id"], alone["peers"]) == (1, [])
    assert leader["epoch"] > alone["epoch"]
    # Retried every second while missing, but logged once, and once more when found.
    assert log.count("cannot resolve heartbeat peer backend2.distpotify.test") == 1
    assert "heartbeat peer backend2.distpotify.test resolves to 127.0.0.1" in log
    assert "heartbeat peer backend3.distpotify.test resolves to 127.0.0.1" in log


def test_a_replaced_replica_with_an_empty_disk_rejoins_under_its_name(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    nodes = unicast_nodes(tmp_path, lambda node_id: "localhost")
    for node in nodes.values():
        replicas.append(node.start(wait=False))
    wait_until(lambda: settled_on_3(nodes), timeout=20, what="node 3 to lead")
    created = send_json(nodes[3].http_port, "POST", "/playlists", {"name": "before"})
    old = nodes[2]
    old.kill()

    # The same name and ports, a new process and a new, empty data dir: a new host.
    new = ReplicaProcess(2, tmp_path / "new-host", *old.extra, cluster=old.cluster,
                         heartbeat_port=old.heartbeat_port, key_file=old.key_file)
    new.http_port, new.amp_port = old.http_port, old.amp_port
    nodes[2] = new
    replicas.append(new.start(wait=False))
    leader = wait_until(lambda: settled_on_3(nodes), timeout=30, what="node 2 to rejoin")

    status = new.status()
    playlists = new.get("/playlists").json()["playlists"]
    assert status is not None and status["state"] == "ACTIVE"
    assert status["leader_id"] == leader["node_id"] == 3
    # An empty disk joins like a new replica: it copies the library before it is ACTIVE.
    assert created.status == 201
    assert [p["id"] for p in playlists] == [created.json()["playlist"]["id"]]
