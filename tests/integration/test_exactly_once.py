"""Writes through the proxy take effect exactly once: sent as the leader dies (SIGKILL) or
stops (SIGSTOP), each gets its real 2xx, and once the old leader is back and anti-entropy has
run, each write's effect exists once on every replica; the same for Subsonic apps' writes
(real clients, sent as GETs and as form POSTs). Keys replay and refuse as the IETF draft
says."""

from __future__ import annotations

import functools
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import libopensonic
import libsonic
import pytest

from tests.helpers.audio import make_wav
from tests.helpers.fronted import ADMIN_NAME, ADMIN_PASSWORD, Client, Fronted
from tests.helpers.replica import ReplicaProcess, Response, send_json, wait_until

pytestmark = [pytest.mark.integration]

# The issue asks for 50 rounds per signal; DISTPOTIFY_FAILOVER_ROUNDS shortens a local try.
ROUNDS = int(os.environ.get("DISTPOTIFY_FAILOVER_ROUNDS", "50"))
KINDS = ("create", "add", "rename", "delete", "upload")
EXPECTED = {"create": 201, "add": 201, "rename": 200, "delete": 204, "upload": 201}
WRITE_HOLD = 5.0


@pytest.fixture
def fronted(tmp_path: Path, replicas: list[ReplicaProcess]) -> Iterator[Fronted]:
    # A short anti-entropy interval: the check waits for convergence after the last round.
    with Fronted(tmp_path, replicas, "--chunk-size", "16K",
                 "--anti-entropy-interval", "2") as running:
        yield running


@attrs.define
class Round:
    kind: str
    number: int
    target: str | None = None  # the playlist a write is about
    answer: Response | None = None
    took: float = 0.0


def replicated(fronted: Fronted, path: str) -> None:
    """Wait until every replica serves ``path`` (the write it shows is everywhere)."""
    wait_until(lambda: all(n.get(path, timeout=2).status == 200 for n in fronted.nodes),
               timeout=15, what=f"{path} on every replica")


def prepare(client: Client, fronted: Fronted, one: Round) -> None:
    """What the round's write needs, written through the proxy to the leader, which also
    leaves a warm pooled connection from the proxy to the leader about to fail."""
    created = client.send_json("POST", "/playlists", {"name": f"target {one.number}"})
    assert created.status == 201, created.body
    one.target = created.json()["playlist"]["id"]
    replicated(fronted, f"/playlists/{one.target}")


def write(client: Client, one: Round, song: dict[str, Any], audio: Callable[[int], bytes]
          ) -> Response:
    if one.kind == "create":
        return client.send_json("POST", "/playlists", {"name": f"created {one.number}"})
    if one.kind == "add":
        return client.send_json("POST", f"/playlists/{one.target}/items",
                                {"song_id": song["id"]})
    if one.kind == "rename":
        return client.send_json("PATCH", f"/playlists/{one.target}",
                                {"name": f"renamed {one.number}"})
    if one.kind == "delete":
        return client.call("DELETE", f"/playlists/{one.target}")
    return client.call("POST", f"/songs?title=once%20{one.number}", audio(one.number),
                       {"Content-Type": "audio/wav"})


def as_the_leader_fails(leader: ReplicaProcess, how: signal.Signals, rng: random.Random,
                        send: Callable[[], Any]) -> tuple[Any, float]:
    """``send()``'s answer, sent 0-50 ms after ``how`` (SIGKILL or SIGSTOP) reached the
    leader, and the seconds it took."""
    if how == signal.SIGKILL:
        leader.kill()
    else:
        leader.signal(signal.SIGSTOP)
    time.sleep(rng.uniform(0, 0.05))  # the write leaves 0-50 ms after the signal
    started = time.monotonic()
    answer = send()
    return answer, time.monotonic() - started


def check_exactly_once(node: ReplicaProcess, rounds: list[Round], song: dict[str, Any]) -> None:
    playlists = node.get("/playlists").json()["playlists"]
    names = [p["name"] for p in playlists]
    by_id = {p["id"]: p for p in playlists}
    for one in rounds:
        where = f"node {node.node_id}, round {one.number} ({one.kind})"
        if one.kind == "create":
            assert names.count(f"created {one.number}") == 1, where
        elif one.kind == "add":
            items = node.get(f"/playlists/{one.target}").json()["playlist"]["items"]
            assert [i["song_id"] for i in items] == [song["id"]], where
        elif one.kind == "rename":
            assert by_id[one.target]["name"] == f"renamed {one.number}", where
            assert names.count(f"renamed {one.number}") == 1, where
        elif one.kind == "delete":
            assert one.target not in by_id, where
        else:
            found = node.get(f"/songs?q=once%20{one.number}&limit=500").json()["songs"]
            assert [s["title"] for s in found].count(f"once {one.number}") == 1, where


@pytest.mark.timeout(300 + ROUNDS * 20)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_writes_sent_as_the_leader_fails_take_effect_exactly_once(
    fronted: Fronted, tmp_path: Path, how: signal.Signals
) -> None:
    client = Client(fronted.proxy)
    song = client.call("POST", "/songs?title=shared", make_wav(
        tmp_path / "shared.wav", 48 * 1024, seed=1).read_bytes(),
        {"Content-Type": "audio/wav"}).json()["song"]
    replicated(fronted, f"/songs/{song['id']}")
    rng = random.Random(13)

    def audio(number: int) -> bytes:
        return make_wav(tmp_path / f"{number}.wav", 40 * 1024, seed=100 + number).read_bytes()

    rounds = []
    for number in range(ROUNDS):
        one = Round(KINDS[number % len(KINDS)], number)
        leader = fronted.cluster.nodes[fronted.proxy_follows()]
        prepare(client, fronted, one)
        one.answer, one.took = as_the_leader_fails(
            leader, how, rng, functools.partial(write, client, one, song, audio))
        fronted.restore(leader, how)
        assert one.answer.status == EXPECTED[one.kind], (one, one.answer.body)
        assert one.answer.headers["x-served-by"] != str(leader.node_id), one
        rounds.append(one)

    fronted.proxy_follows(timeout=60)
    fronted.converged()
    for node in fronted.nodes:
        check_exactly_once(node, rounds, song)
    assert max(one.took for one in rounds) < WRITE_HOLD
    assert fronted.proxy.status()["counters"]["write_retries"] > 0  # the retries were tried
    log = fronted.proxy.log_path.read_text(errors="replace")
    assert "Unhandled error in Deferred" not in log
    assert "may or may not have been applied" not in log


def test_a_key_sent_again_gets_the_stored_answer_and_with_another_body_422(
    fronted: Fronted,
) -> None:
    client = Client(fronted.proxy)
    key = {"Idempotency-Key": '"create-once"'}

    first = client.send_json("POST", "/playlists", {"name": "once"}, key)
    again = client.send_json("POST", "/playlists", {"name": "once"}, key)
    other = client.send_json("POST", "/playlists", {"name": "twice"}, key)
    leader = fronted.cluster.nodes[fronted.proxy_follows()]
    direct = send_json(leader.http_port, "POST", "/playlists", {"name": "twice"})

    assert first.status == again.status == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-distpotify-version"] == first.headers["x-distpotify-version"]
    assert other.status == 422 and other.json()["error"] == "key_reused"
    assert direct.status == 201  # without a key, a write is a new write
    names = [p["name"] for p in leader.get("/playlists").json()["playlists"]]
    assert sorted(names) == ["once", "twice"]


# Subsonic apps write with GETs (py-opensonic's use_get) or form POSTs (py-sonic), as real
# clients send them. The 50 rounds are the REST ones above; these go through the
# same retry path (the proxy keys a Subsonic write and sends it again), 10 per signal.
SUBSONIC_ROUNDS = int(os.environ.get("DISTPOTIFY_SUBSONIC_FAILOVER_ROUNDS", "10"))


@pytest.fixture
def with_accounts(tmp_path: Path, replicas: list[ReplicaProcess]) -> Iterator[Fronted]:
    with Fronted(tmp_path, replicas, "--anti-entropy-interval", "2", auth=True) as running:
        yield running


@pytest.fixture
def subsonic_clients(with_accounts: Fronted) -> Iterator[list[Any]]:
    """The admin as two real Subsonic clients: one writing by GET, one by form POST."""
    port = with_accounts.proxy.port
    by_get = libopensonic.Connection("http://127.0.0.1", ADMIN_NAME, ADMIN_PASSWORD,
                                     port=port, legacy_auth=True, use_get=True)
    by_form = libsonic.Connection("http://127.0.0.1", ADMIN_NAME, ADMIN_PASSWORD, port=port,
                                  legacyAuth=True)
    try:
        yield [by_get, by_form]
    finally:
        by_get.cleanup()  # its connection, event loop and thread


def create_playlist(client: Any, name: str) -> None:
    """createPlaylist by either library; each raises on an error answer."""
    if isinstance(client, libopensonic.Connection):
        assert client.create_playlist(name=name)
    else:
        assert client.createPlaylist(name=name)["status"] == "ok"


@pytest.mark.timeout(300 + SUBSONIC_ROUNDS * 40)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_subsonic_writes_sent_as_the_leader_fails_take_effect_exactly_once(
    with_accounts: Fronted, subsonic_clients: list[Any], how: signal.Signals
) -> None:
    fronted, clients = with_accounts, subsonic_clients
    admin = fronted.admin()
    rng = random.Random(17)
    took = []
    for number in range(SUBSONIC_ROUNDS):
        client = clients[number % len(clients)]
        leader = fronted.cluster.nodes[fronted.proxy_follows()]
        # A write just before: the proxy's pooled connection to the leader is warm.
        create_playlist(client, f"before {number}")
        _, seconds = as_the_leader_fails(
            leader, how, rng, functools.partial(create_playlist, client, f"during {number}"))
        took.append(seconds)
        fronted.restore(leader, how)

    fronted.proxy_follows(timeout=60)
    fronted.converged()
    for node in fronted.nodes:
        listed = node.get("/playlists", headers=admin.headers)
        assert listed.status == 200, listed.body
        names = [p["name"] for p in listed.json()["playlists"]]
        for number in range(SUBSONIC_ROUNDS):
            assert names.count(f"during {number}") == 1, (node.node_id, number, names)
            assert names.count(f"before {number}") == 1, (node.node_id, number, names)
    assert max(took) < WRITE_HOLD, took
    assert fronted.proxy.status()["counters"]["write_retries"] > 0  # the retries were tried
    assert "Unhandled error in Deferred" not in fronted.proxy.log_path.read_text(
        errors="replace")
