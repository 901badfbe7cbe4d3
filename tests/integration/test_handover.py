"""Clean handovers with real processes (issue 14): a leader back from SIGSTOP takes over
complete, two leaders never last longer than one failure timeout, and with --sync-replicas 1
an acknowledged write survives its leader's SIGKILL and wiped disk."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest

from distpotify.model import Version
from tests.helpers.leaders import LeaderWatch
from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import Cluster, ReplicaProcess, send_json, wait_until

pytestmark = [pytest.mark.integration]

FAILURE_TIMEOUT = 0.75


def settled(cluster: Cluster, leader_id: int | None = None) -> dict[str, Any] | None:
    """The leader's /status once every running replica is ACTIVE, agrees on it, and it has
    caught up (its takeover COMPLETE): the state Bully ends in."""
    leader = cluster.agreed_leader()
    if leader is None or (leader_id is not None and leader["node_id"] != leader_id):
        return None
    statuses = cluster.statuses()
    if any(s["state"] != "ACTIVE" for s in statuses.values()):
        return None
    # ... and the leader knows it from their heartbeats: until then it would answer a write
    # with --sync-replicas as if alone (no follower up it could wait for).
    seen = {p["node_id"] for p in leader["peers"] if p["up"] and p["state"] == "ACTIVE"}
    if seen != {node.node_id for node in cluster.running()} - {leader["node_id"]}:
        return None
    return leader if leader["takeover"]["phase"] == "COMPLETE" else None


def start_cluster(cluster: Cluster) -> dict[str, Any]:
    for node_id in (1, 2, 3):
        cluster.add(node_id)
    return wait_until(lambda: settled(cluster, 3), timeout=60, what="settling on node 3")


def playlist(node: ReplicaProcess, playlist_id: str) -> int:
    return node.get(f"/playlists/{playlist_id}", timeout=5).status


# -- 1. a resumed leader takes over complete


@attrs.define
class Edits:
    """PATCHes of given playlists, each retried until it gets a definite answer."""

    port: int
    answers: list[tuple[str, int, str | None]] = attrs.Factory(list)

    def edit(self, playlist_id: str, name: str, deadline: float) -> None:
        """One edit, retried while the answer says "not now" (421, 503, a refused or reset
        connection): a 404 or any other answer is kept as the outcome."""
        while True:
            try:
                answer = send_json(self.port, "PATCH", f"/playlists/{playlist_id}",
                                   {"name": name})
            except (OSError, http.client.HTTPException):
                answer = None
            if answer is not None and answer.status not in (421, 503):
                self.answers.append((playlist_id, answer.status,
                                     answer.headers.get("x-served-by")))
                return
            if time.monotonic() > deadline:
                self.answers.append((playlist_id, 0, None))
                return
            time.sleep(0.01)


def oplog_applied_at(node: ReplicaProcess) -> dict[Version, float]:
    """When each op was applied on ``node`` (its oplog's local time), read from its database
    once it has stopped."""
    conn = sqlite3.connect(node.data_dir / "metadata.sqlite3")
    try:
        return {Version.decode(v): at for v, at in conn.execute("SELECT version, at FROM oplog")}
    finally:
        conn.close()


@pytest.mark.timeout(180)
def test_a_leader_back_from_sigstop_takes_over_with_every_write_made_meanwhile(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    cluster = Cluster(tmp_path, replicas)
    start_cluster(cluster)
    old, others = cluster.nodes[3], [cluster.nodes[1], cluster.nodes[2]]
    proxy = ProxyProcess(tmp_path, list(cluster.nodes.values())).start()
    try:
        proxy.wait_view(lambda s: (s["leader"] or {}).get("node_id") == 3,
                        what="the proxy to follow node 3")
        old.signal(signal.SIGSTOP)
        try:
            new = wait_until(lambda: cluster.agreed_leader(others), timeout=15,
                             what="a new leader while node 3 is paused")
            ids = [str(uuid.uuid4()) for _ in range(20)]
            for n, playlist_id in enumerate(ids):
                created = send_json(cluster.nodes[new["node_id"]].http_port, "POST",
                                    "/playlists", {"id": playlist_id, "name": f"made {n}"})
                assert created.status == 201, created.body
        finally:
            old.signal(signal.SIGCONT)
        resumed, resumed_at = time.monotonic(), time.time()

        # During the handover each record is edited through the proxy, and straight on node 3
        # as soon as it leads again (held there while it catches up). Not before: node 3,
        # resumed, believes for a moment that it still leads epoch it led before the pause.
        direct, proxied = Edits(old.http_port), Edits(proxy.port)
        deadline = resumed + 10
        with ThreadPoolExecutor(max_workers=40) as pool:
            for n, playlist_id in enumerate(ids):
                pool.submit(proxied.edit, playlist_id, f"proxied {n}", deadline)
            led = wait_until(lambda: (s := old.status()) and s["role"] == "leader"
                             and s["epoch"] > new["epoch"] and s,
                             timeout=10, interval=0.005, what="node 3 to lead again")
            for n, playlist_id in enumerate(ids):
                pool.submit(direct.edit, playlist_id, f"direct {n}", deadline)
        final = wait_until(lambda: settled(cluster, 3), timeout=15, what="settling on node 3")
    finally:
        proxy.kill()

    # When node 3 became leader by its own clock (the host's), not when a poll of its
    # /status, slow while it catches up, came back.
    took_over = led["takeover"]["started_at"] - resumed_at
    assert took_over < 2 * FAILURE_TIMEOUT, f"node 3 led {took_over:.2f} s after SIGCONT"
    assert sorted(direct.answers) == sorted((i, 200, "3") for i in ids), direct.answers
    assert [status for _, status, _ in proxied.answers] == [200] * 20, proxied.answers
    assert final["takeover"]["timed_out"] is False
    # Before node 3 wrote anything as leader, every one of the 20 was applied there.
    old.stop()
    applied = oplog_applied_at(old)
    own = [at for version, at in applied.items() if version.leader_id == 3
           and version.epoch == led["epoch"]]
    made = [at for version, at in applied.items() if version.epoch == new["epoch"]
            and version.leader_id == new["node_id"]]
    assert len(own) >= 20 and len(made) >= 20
    assert max(made) <= min(own)


# -- 2. two leaders at once never last longer than one failure timeout


@pytest.mark.timeout(420)
def test_two_leaders_never_last_longer_than_one_failure_timeout_over_20_pauses(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    cluster = Cluster(tmp_path, replicas)
    start_cluster(cluster)
    nodes = list(cluster.nodes.values())
    windows = []
    for _ in range(20):
        wait_until(lambda: settled(cluster, 3), timeout=20, what="settling on node 3")
        with LeaderWatch(nodes) as watch:
            nodes[2].signal(signal.SIGSTOP)
            try:
                wait_until(lambda: cluster.agreed_leader(nodes[:2]), timeout=15,
                           what="a new leader while node 3 is paused")
            finally:
                nodes[2].signal(signal.SIGCONT)
            wait_until(lambda: settled(cluster, 3), timeout=20, what="node 3 to lead again")
        windows.append(watch.longest_two_leader_window())

    assert max(windows) < FAILURE_TIMEOUT, windows


# -- 3. an acknowledged write survives the loss of its leader's disk


BURST = 10  # writes sent at once in each round
KILL_AFTER = 5  # acknowledgements received when the leader is killed


def burst_then_kill(node: ReplicaProcess, playlist_ids: list[str]) -> list[str]:
    """Send one POST per playlist straight to ``node``, all at once on connections of their
    own (clients writing concurrently), and SIGKILL it the moment KILL_AFTER of them have
    been answered 201, wiping its data dir; the playlists whose 201 had arrived by then.

    Concurrent writes are what asynchronous replication loses: the leader answers each as
    soon as it is durable there, while the push of the later ones waits behind the batch in
    flight."""
    assert node.process is not None
    opened: list[socket.socket] = []
    pending: dict[socket.socket, str] = {}
    received: dict[str, bytes] = {}
    try:
        for playlist_id in playlist_ids:
            body = json.dumps({"id": playlist_id, "name": "acknowledged, then lost?"}).encode()
            sock = socket.create_connection(("127.0.0.1", node.http_port), timeout=10)
            opened.append(sock)
            sock.sendall((f"POST /playlists HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                          f"Connection: close\r\n\r\n").encode() + body)
            pending[sock] = playlist_id
            received[playlist_id] = b""
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            acked = [i for i, data in received.items() if data.startswith(b"HTTP/1.1 201")]
            if len(acked) >= KILL_AFTER:
                break
            readable, _, _ = select.select(list(pending), [], [], 0.5)
            for sock in readable:
                data = sock.recv(65536)
                received[pending[sock]] += data
                if not data or b"\r\n\r\n" in received[pending[sock]]:
                    del pending[sock]
        os.kill(node.process.pid, signal.SIGKILL)
        # What arrived before the kill is in our sockets' buffers: read it too.
        for sock, playlist_id in pending.items():
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                received[playlist_id] += sock.recv(65536)
    finally:
        for sock in opened:
            sock.close()
    node.process.wait(10)
    shutil.rmtree(node.data_dir)
    return [i for i, data in received.items() if data.startswith(b"HTTP/1.1 201")]


def kill_and_wipe_round(cluster: Cluster) -> tuple[int, int]:
    """Writes acknowledged, then their leader SIGKILLed and its disk wiped at once: how many
    were acknowledged, and how many of those no survivor holds."""
    leader = cluster.nodes[wait_until(lambda: settled(cluster), timeout=30,
                                      what="a settled cluster")["node_id"]]
    survivors = [n for n in cluster.nodes.values() if n is not leader]
    try:
        acked = burst_then_kill(leader, [str(uuid.uuid4()) for _ in range(BURST)])
        wait_until(lambda: (s := cluster.agreed_leader(survivors))
                   and s["takeover"]["phase"] == "COMPLETE", timeout=15, what="a new leader")
        # The new leader has them once caught up, and pushes them to the other survivor.
        deadline = time.monotonic() + 5
        missing = set(acked)
        while missing and time.monotonic() < deadline:
            missing = {i for i in missing if any(playlist(n, i) != 200 for n in survivors)}
            time.sleep(0.05)
        return len(acked), len(missing)
    finally:
        leader.start(wait=False)  # empty: it joins again by snapshot


@attrs.define
class Rounds:
    acknowledged: int = 0
    lost: int = 0


def kill_and_wipe_rounds(cluster: Cluster, rounds: int, stop_at_first_loss: bool = False
                         ) -> Rounds:
    result = Rounds()
    for _ in range(rounds):
        acknowledged, lost = kill_and_wipe_round(cluster)
        result.acknowledged += acknowledged
        result.lost += lost
        if result.lost and stop_at_first_loss:
            break
    return result


@pytest.mark.timeout(1800)
def test_with_one_sync_replica_no_write_dies_with_its_leaders_disk_in_50_rounds(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    # The promise holds for writes a follower confirmed; one it did not confirm within
    # --sync-timeout is answered anyway (degraded) and may die with the leader's disk. On a
    # loaded test host a healthy follower's durable apply can take longer than the default
    # 0.25 s (at load 40 on 2 cores, 3 of 335 writes were lost, in rounds whose leader
    # logged degraded acknowledgements), so the followers here get 5 s to confirm. A
    # follower that never confirms still fails the test: its writes are answered after 5 s,
    # degraded, and lost with the leader.
    cluster = Cluster(tmp_path, replicas, "--sync-replicas", "1", "--sync-timeout", "5")
    start_cluster(cluster)

    rounds = kill_and_wipe_rounds(cluster, 50)

    assert rounds.lost == 0 and rounds.acknowledged >= 50 * KILL_AFTER, rounds


@pytest.mark.timeout(1800)
def test_asynchronous_replication_loses_writes_with_their_leaders_disk(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    """The check that the test above can fail: with --sync-replicas 0 the same rounds lose a
    write the leader acknowledged before any follower had it."""
    cluster = Cluster(tmp_path, replicas, "--sync-replicas", "0")
    start_cluster(cluster)

    assert kill_and_wipe_rounds(cluster, 50, stop_at_first_loss=True).lost > 0


@pytest.fixture(autouse=True)
def _resume_paused(replicas: list[ReplicaProcess]) -> Iterator[None]:
    """A test that fails while a replica is paused leaves it resumed, so it can be killed."""
    yield
    for node in replicas:
        if node.process is not None and node.process.poll() is None:
            node.signal(signal.SIGCONT)
