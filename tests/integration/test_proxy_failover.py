"""The proxy in front of a real elected cluster: writes land on the leader, reads on followers,
and a write sent while the leader dies (SIGKILL or SIGSTOP) succeeds once a new one is elected."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.helpers.audio import make_wav
from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import Cluster, ReplicaProcess, request, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WRITE_HOLD = 5.0


@attrs.define
class Fronted:
    cluster: Cluster
    proxy: ProxyProcess
    leader: int

    def send_json(self, method: str, path: str, value: object) -> tuple[float, object]:
        started = time.monotonic()
        answer = request(self.proxy.port, method, path, json.dumps(value).encode(),
                         {"Content-Type": "application/json"}, timeout=30)
        return time.monotonic() - started, answer


@pytest.fixture
def fronted(tmp_path: Path, replicas: list[ReplicaProcess]) -> Iterator[Fronted]:
    cluster = Cluster(tmp_path, replicas)
    for node_id in (1, 2, 3):
        cluster.add(node_id)
    # Bully settles on the highest id; an earlier agreement (on 2) may still be overturned.
    leader = wait_until(lambda: (s := cluster.agreed_leader()) and s["node_id"] == 3 and s,
                        timeout=20, what="three replicas to agree on node 3")
    proxy = ProxyProcess(tmp_path, list(cluster.nodes.values())).start()
    try:
        proxy.wait_view(lambda s: (s["leader"] or {}).get("node_id") == leader["node_id"]
                        and len(s["readers"]) == 2, what="the proxy to see the cluster")
        yield Fronted(cluster, proxy, leader["node_id"])
    finally:
        proxy.kill()
        for node in cluster.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.signal(signal.SIGCONT)


def test_writes_land_on_the_leader_and_reads_on_the_followers(fronted: Fronted) -> None:
    writes = [fronted.send_json("POST", "/playlists", {"name": f"list {i}"})[1]
              for i in range(3)]
    reads = [fronted.proxy.get("/playlists") for _ in range(10)]

    assert [w.status for w in writes] == [201] * 3  # type: ignore[attr-defined]
    assert {w.headers["x-served-by"] for w in writes} == {str(fronted.leader)}  # type: ignore[attr-defined]
    assert {r.status for r in reads} == {200}
    assert str(fronted.leader) not in {r.headers["x-served-by"] for r in reads}


def test_a_write_sent_as_the_leader_is_killed_lands_on_the_new_leader(fronted: Fronted) -> None:
    old = fronted.cluster.nodes[fronted.leader]
    playlist = {"id": str(uuid.uuid4()), "name": "written during the failover"}

    old.kill()
    took, answer = fronted.send_json("POST", "/playlists", playlist)

    assert answer.status == 201, answer.body  # type: ignore[attr-defined]
    assert answer.headers["x-served-by"] != str(fronted.leader)  # type: ignore[attr-defined]
    assert took < WRITE_HOLD
    status = fronted.proxy.status()
    assert status["leader"]["node_id"] != fronted.leader
    assert status["leader"]["epoch"] > 1


def test_an_upload_sent_as_the_leader_is_killed_is_stored_by_the_new_leader(
    fronted: Fronted, tmp_path: Path
) -> None:
    audio = make_wav(tmp_path / "during.wav", 1024 * 1024, seed=5).read_bytes()

    fronted.cluster.nodes[fronted.leader].kill()
    answer = fronted.proxy.post("/songs?title=During", audio, "audio/wav")

    assert answer.status == 201, answer.body
    assert answer.headers["x-served-by"] != str(fronted.leader)


def test_a_write_sent_as_the_leader_is_paused_moves_to_the_new_leader(fronted: Fronted) -> None:
    playlist = {"id": str(uuid.uuid4()), "name": "written while the leader is paused"}

    fronted.cluster.nodes[fronted.leader].signal(signal.SIGSTOP)
    took, answer = fronted.send_json("POST", "/playlists", playlist)

    assert answer.status == 201, answer.body  # type: ignore[attr-defined]
    assert answer.headers["x-served-by"] != str(fronted.leader)  # type: ignore[attr-defined]
    assert took < WRITE_HOLD


def test_a_proxy_told_of_one_replica_learns_the_others_from_its_peers(
    fronted: Fronted, tmp_path: Path
) -> None:
    (tmp_path / "second").mkdir()
    proxy = ProxyProcess(tmp_path / "second", [fronted.cluster.nodes[1]]).start()
    try:
        view = proxy.wait_view(lambda s: len(s["readers"]) == 2 and s["leader"] is not None,
                               what="the other replicas to be discovered")
    finally:
        proxy.kill()

    assert view["leader"]["node_id"] == fronted.leader
    assert sorted(b["node_id"] for b in view["backends"]) == [1, 2, 3]
    assert [b["configured"] for b in view["backends"]].count(True) == 1
