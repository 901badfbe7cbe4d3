"""The Subsonic API through the real proxy in front of three real replicas (accounts on): a
method that writes reaches the leader although clients send it as a GET (a follower would
refuse it, 421), the others are spread over the followers, and no process logs the
password a Subsonic client sends in every query string."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.helpers.fronted import ADMIN_NAME, ADMIN_PASSWORD, Client, Fronted
from tests.helpers.replica import ReplicaProcess, request

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
