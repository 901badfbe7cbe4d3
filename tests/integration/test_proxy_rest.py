"""The Subsonic API through the real proxy in front of three real replicas (accounts on): a
method that writes reaches the leader although clients send it as a GET (a follower would
refuse it, 421), the others are spread over the followers, and no process logs the
password a Subsonic client sends in every query string. With every replica gone, what the
proxy answers a Subsonic client itself is the spec's error, in XML or JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.helpers.fronted import ADMIN_NAME, ADMIN_PASSWORD, Client, Fronted
from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import ReplicaProcess, request
from tests.helpers.subsonic import NS, json_of, path, valid_xml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROUNDS = 10


@pytest.fixture
def fronted(tmp_path: Path, replicas: list[ReplicaProcess]) -> Iterator[Fronted]:
    with Fronted(tmp_path, replicas, auth=True, proxy_args=("--check-timeout", "3")) as running:
        yield running


def rest(method: str, **params: str) -> str:
    auth = {"u": ADMIN_NAME, "p": ADMIN_PASSWORD, "v": "1.16.1", "c": "test", "f": "json"}
    return f"/rest/{method}.view?{urlencode({**auth, **params})}"


def test_subsonic_writes_sent_as_gets_reach_the_leader_and_reads_the_followers(
        fronted: Fronted) -> None:
    fronted.admin()  # the first admin exists (the leader makes it a moment after it leads)
    leader = fronted.proxy_follows()
    follower = next(node for node in fronted.nodes if node.node_id != leader)
    client = Client(fronted.proxy)

    writes = [client.get(rest("createPlaylist", name=f"Road {n}")) for n in range(ROUNDS)]
    reads = [client.get(rest("getAlbumList2", type="newest")) for _ in range(ROUNDS)]
    refused = request(follower.http_port, "GET", rest("createPlaylist", name="Elsewhere"))

    assert [w.status for w in writes] == [200] * ROUNDS, writes[0].body
    assert {w.headers["x-served-by"] for w in writes} == {str(leader)}
    assert [r.status for r in reads] == [200] * ROUNDS, reads[0].body
    assert str(leader) not in {r.headers["x-served-by"] for r in reads}
    assert refused.status == 421  # why the proxy must send it to the leader


def test_no_process_logs_a_subsonic_clients_password(fronted: Fronted) -> None:
    fronted.admin()
    client = Client(fronted.proxy)
    # Answers that make log lines: a refused write on a follower (421), an unknown method.
    follower = next(node for node in fronted.nodes if node.node_id != fronted.proxy_follows())
    request(follower.http_port, "GET", rest("star", id="x"))
    for method in ("ping", "getAlbumList2", "star", "noSuchMethod"):
        client.get(rest(method, type="newest"))
    fronted.proxy.stop()

    logs = [path.read_text() for path in (fronted.proxy.log_path,
                                          *(n.log_path for n in fronted.nodes))]
    assert "/rest/star.view?<hidden> -> 421" in logs[follower.node_id]
    assert all(ADMIN_PASSWORD not in text for text in logs)


@pytest.fixture
def orphaned(tmp_path: Path, replicas: list[ReplicaProcess]) -> Iterator[ProxyProcess]:
    """A proxy whose one replica was SIGKILLed once the proxy had seen it lead."""
    node = ReplicaProcess(1, tmp_path)
    replicas.append(node)
    node.start()
    proxy = ProxyProcess(tmp_path, [node], "--write-hold", "1").start()
    try:
        proxy.wait_view(lambda s: s["leader"] is not None, timeout=30, what="a leader")
        node.kill()
        yield proxy
    finally:
        proxy.kill()


CLIENT = {"u": "alice", "p": "secret", "v": "1.16.1", "c": "test"}


def test_with_every_replica_gone_a_subsonic_read_gets_error_0_in_xml(
        orphaned: ProxyProcess) -> None:
    answer = orphaned.get(path("getAlbumList2", type="newest", **CLIENT))

    root = valid_xml(answer)  # a 200 the schema accepts
    error = root.find(f"{NS}error")
    assert root.get("status") == "failed" and error is not None
    assert error.get("code") == "0"
    assert (error.get("message") or "").startswith("no replica could answer")
    assert answer.headers["retry-after"] == "1"


def test_with_every_replica_gone_a_subsonic_write_gets_error_0_in_json(
        orphaned: ProxyProcess) -> None:
    answer = orphaned.get(path("star", id="x", f="json", **CLIENT))

    envelope = json_of(answer)
    assert envelope["status"] == "failed" and envelope["error"]["code"] == 0
    assert envelope["error"]["message"].startswith("no leader")
    assert envelope["type"] == "distpotify" and envelope["openSubsonic"] is True
    assert answer.headers["retry-after"] == "1"
