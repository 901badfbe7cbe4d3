"""Accounts across three real replicas with --auth on: the first admin made by setup on the
leader, a session from one replica accepted by the other two, and logout-all ending it on
all three once the new generation replicates."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from distpotify.accounts import SETUP_CODE_FILE
from tests.helpers.audio import make_wav
from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import (
    STARTUP,
    Cluster,
    ReplicaProcess,
    Response,
    request,
    send_json,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

METRICS_TOKEN = "integration-metrics-token"
PASSWORD = "integration-password"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def me(node: ReplicaProcess, token: str) -> Response:
    return node.get("/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=5)


def test_a_session_made_on_one_replica_works_on_all_until_logout_all(
        tmp_path: Path, replicas: list[ReplicaProcess]) -> None:
    cluster = Cluster(tmp_path, replicas, "--auth", "on", "--metrics-token", METRICS_TOKEN)
    cluster.status_headers.update({"Authorization": f"Bearer {METRICS_TOKEN}"})
    for node_id in (1, 2, 3):
        cluster.add(node_id)
    status = wait_until(cluster.agreed_leader, timeout=STARTUP, what="agreement")
    leader = cluster.nodes[status["node_id"]]
    followers = [n for n in cluster.nodes.values() if n is not leader]
    code = (leader.data_dir / SETUP_CODE_FILE).read_text().strip()

    assert leader.get("/songs").status == 401
    made = send_json(leader.http_port, "POST", "/auth/setup",
                     {"username": "root", "password": PASSWORD, "setup_code": code})
    assert made.status == 201, made.body
    wait_until(lambda: all(knows_one_account(n) for n in followers), timeout=10,
               what="the account on every follower")
    login = send_json(followers[0].http_port, "POST", "/auth/login",
                      {"username": "root", "password": PASSWORD})
    assert login.status == 200, login.body
    token = login.json()["token"]

    for node in cluster.nodes.values():
        assert me(node, token).status == 200
        assert node.get("/songs", headers={"Authorization": f"Bearer {token}"}).status == 200

    ended = request(leader.http_port, "POST", "/auth/logout-all",
                    headers={"Authorization": f"Bearer {token}"})
    assert ended.status == 204, ended.body
    wait_until(lambda: all(me(n, token).status == 401 for n in cluster.nodes.values()),
               timeout=10, what="the session ended on every replica")
    for node in cluster.nodes.values():
        assert PASSWORD not in node.log()
        assert PASSWORD not in json.dumps(node.get("/status", cluster.status_headers).json())


def knows_one_account(node: ReplicaProcess) -> bool:
    """Whether ``node`` knows the account: its /status counts one user."""
    answer = node.get("/status", node.status_headers, timeout=5)
    return answer.status == 200 and answer.json()["accounts"]["users"] == 1


def test_replicas_and_a_proxy_given_no_auth_option_refuse_anonymous_and_take_a_session(
        tmp_path: Path, replicas: list[ReplicaProcess]) -> None:
    cluster = Cluster(tmp_path, replicas, "--metrics-token", METRICS_TOKEN)
    cluster.status_headers.update(bearer(METRICS_TOKEN))
    for node_id in (1, 2, 3):
        node = cluster.add(node_id, start=False)
        node.auth = ()  # no --auth option: the default
        node.env = {**node.env, "DISTPOTIFY_ADMIN_PASSWORD": PASSWORD}
        node.start(wait=False)
    nodes = list(cluster.nodes.values())
    wait_until(cluster.agreed_leader, timeout=STARTUP, what="agreement")
    wait_until(lambda: all(knows_one_account(n) for n in nodes), timeout=STARTUP,
               what="the first admin on every replica")
    proxy = ProxyProcess(tmp_path, nodes, "--cluster-key-file", str(cluster.key_file),
                         "--metrics-token", METRICS_TOKEN)
    proxy.auth = ()
    proxy.status_headers = bearer(METRICS_TOKEN)
    try:
        proxy.start()
        # Its /status polls are signed, or it would find no replica to send anything to.
        proxy.wait_view(lambda view: view["leader"] is not None and len(view["readers"]) == 2,
                        timeout=STARTUP, what="the proxy to see the leader and two readers")
        wav = make_wav(tmp_path / "a.wav", 8192).read_bytes()
        ports = [proxy.port, *(n.http_port for n in nodes)]

        refused = [
            answer for port in ports for answer in (
                request(port, "GET", "/songs"),
                request(port, "POST", "/songs", wav, {"Content-Type": "audio/wav"}),
                send_json(port, "POST", "/playlists", {"name": "Mine"}),
            )]
        token = send_json(proxy.port, "POST", "/auth/login",
                          {"username": "admin", "password": PASSWORD}).json()["token"]
        session = bearer(token)
        libraries = [request(port, "GET", "/songs", headers=session) for port in ports]
        playlists = [request(port, "GET", "/playlists", headers=session) for port in ports]
        uploaded = request(proxy.port, "POST", "/songs", wav,
                           {"Content-Type": "audio/wav", **session})
    finally:
        proxy.kill()

    assert all("--auth" not in " ".join(n.command()) for n in nodes)
    assert "--auth" not in " ".join(proxy.command())
    assert [answer.status for answer in refused] == [401] * len(refused)
    assert all(answer.json()["error"] == "unauthorized" and "www-authenticate" in answer.headers
               for answer in refused)
    # nothing was stored, on the leader or anywhere else
    assert [(a.status, a.json()["total"]) for a in libraries] == [(200, 0)] * len(ports)
    assert [(a.status, a.json()["playlists"]) for a in playlists] == [(200, [])] * len(ports)
    assert uploaded.status == 201, uploaded.body
    for node in nodes:
        assert wait_until(lambda node=node: node.get("/songs", headers=session).json()["total"]
                          == 1, timeout=10, what=f"the song on replica {node.node_id}")


def test_a_replica_joining_after_losing_its_disk_never_refuses_a_valid_session(
        tmp_path: Path, replicas: list[ReplicaProcess]) -> None:
    """Found by the random lab run under --auth on: a replica whose disk was lost answered a
    valid session 401 while it joined (it held no account yet), and once more just after it
    turned ACTIVE (its accounts were read again only then). A 401 sends the client to log
    in again; the replica need only say it cannot serve yet. While it joins it answers 503
    joining, and from the moment it is ACTIVE it knows the session."""
    cluster = Cluster(tmp_path, replicas, "--auth", "on", "--metrics-token", METRICS_TOKEN)
    cluster.status_headers.update(bearer(METRICS_TOKEN))
    for node_id in (1, 2, 3):
        node = cluster.add(node_id, start=False)
        node.env = {**node.env, "DISTPOTIFY_ADMIN_PASSWORD": PASSWORD}
        node.start(wait=False)
    nodes = list(cluster.nodes.values())
    leader = cluster.nodes[wait_until(cluster.agreed_leader, timeout=STARTUP,
                                      what="agreement")["node_id"]]
    wait_until(lambda: all(knows_one_account(n) for n in nodes), timeout=STARTUP,
               what="the first admin on every replica")
    session = bearer(send_json(leader.http_port, "POST", "/auth/login",
                               {"username": "admin", "password": PASSWORD}).json()["token"])
    for number in range(12):  # a library, so that the join takes a moment
        wav = make_wav(tmp_path / f"{number}.wav", 64 * 1024, seed=number).read_bytes()
        stored = request(leader.http_port, "POST", "/songs", wav,
                         {"Content-Type": "audio/wav", **session})
        assert stored.status == 201, stored.body
    lost = next(node for node in nodes if node is not leader)
    wait_until(lambda: lost.get("/songs?limit=1", session).json().get("total") == 12,
               timeout=20, what="the library on the follower")
    lost.kill()
    shutil.rmtree(lost.data_dir)

    lost.start(wait=False)
    statuses: list[int] = []
    deadline = time.monotonic() + STARTUP
    while statuses[-20:] != [200] * 20:
        assert time.monotonic() < deadline, f"no steady 200 yet: {statuses[-40:]}"
        try:
            answer = request(lost.http_port, "GET", "/songs?limit=1", headers=session,
                             timeout=5)
        except OSError:  # not listening yet
            time.sleep(0.02)
            continue
        statuses.append(answer.status)
        if answer.status != 200:
            assert answer.json()["error"] == "joining", answer.body
        time.sleep(0.01)

    assert 503 in statuses, "the replica was never seen joining: the test proves nothing"
    first_served = statuses.index(200)
    assert set(statuses[:first_served]) == {503} and set(statuses[first_served:]) == {200}, (
        statuses)
