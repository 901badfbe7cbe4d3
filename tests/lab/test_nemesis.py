"""Nemesis operations on replica processes: each does what it says and is logged in order."""

from __future__ import annotations

import time

import pytest

from lab.lab import HTTP_PORT, Lab
from lab.nemesis import Nemesis
from lab.workload import make_wav

pytestmark = [pytest.mark.lab]


def _song_status(lab: Lab, node_id: int, song_id: str) -> int:
    host = lab.replicas[node_id].host
    return lab.client(node_id).request("GET", host.address, HTTP_PORT, f"/songs/{song_id}").status


def _await_status(lab: Lab, node_id: int, answering: bool, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (lab.status(node_id, timeout=0.3) is not None) != answering:
        assert time.monotonic() < deadline, f"node {node_id} answering is not {answering}"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_process_faults_act_on_the_replica_and_keep_or_lose_its_disk(lone: Lab) -> None:
    lab = lone
    nemesis = Nemesis(lab)
    host = lab.replicas[1].host
    answer = lab.client(1).request("POST", host.address, HTTP_PORT, "/songs",
                                   make_wav("nemesis", 20_000), {"Content-Type": "audio/wav"})
    assert answer.status == 201
    song_id = answer.json()["song"]["id"]

    nemesis.kill(1)
    assert not lab.replicas[1].running
    nemesis.restart(1)
    assert _song_status(lab, 1, song_id) == 200

    nemesis.pause(1)
    _await_status(lab, 1, answering=False)
    nemesis.resume(1)
    _await_status(lab, 1, answering=True)

    nemesis.wipe(1)
    assert not lab.replicas[1].data_dir.exists()
    nemesis.restart(1)
    # Started empty, it answers 503 "joining" until it finds it has no peer to copy from.
    deadline = time.monotonic() + 20
    while (status := _song_status(lab, 1, song_id)) == 503:
        assert time.monotonic() < deadline, "the wiped replica is still joining"
        time.sleep(0.05)
    assert status == 404

    assert [e.op for e in nemesis.events] == [
        "kill", "restart", "pause", "resume", "wipe", "restart"]
    times = [e.at for e in nemesis.events]
    assert times == sorted(times) and all(e.wall for e in nemesis.events)


@pytest.mark.timeout(60)
def test_fault_windows_pair_each_fault_with_what_ended_it(lab: Lab) -> None:
    nemesis = Nemesis(lab)
    nemesis.pause(2)
    nemesis.partition([[1], [2, 3]])
    nemesis.resume(2)
    nemesis.heal()
    nemesis.kill(3)

    windows = nemesis.fault_windows(until=1000.0)

    events = {e.op: e for e in nemesis.events}
    assert windows == [
        (events["pause"].at, events["resume"].done, "pause 2"),
        (events["partition"].at, events["heal"].done, "partition [[1], [2, 3]]"),
        (events["kill"].at, 1000.0, "kill 3"),
    ]
