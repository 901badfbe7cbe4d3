"""A write applied by a leader that is cut off before it can replicate or answer, sent again
by the proxy to the new leader under the same Idempotency-Key: after the partition heals,
both leaders' copies are one record on every replica."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from distpotify.keys import ClusterKeys
from lab.client import Answer
from lab.lab import HTTP_PORT, PROXY_PORT, Lab
from lab.nemesis import PROXY, Nemesis

pytestmark = [pytest.mark.lab]

T = TypeVar("T")
NAME = "written across the partition"


def within(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = probe()
        except OSError:
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def warm_pool(lab: Lab, headers: dict[str, str] | None = None, writes: int = 6) -> None:
    """``writes`` playlist creates through the proxy at once, each answered by node 3 (the
    leader): the proxy's pool then holds that many idle connections to node 3. Once node
    3's frames leave 10 s late, its /status polls tie up one of them at a time; a write that
    found none idle would open a connection whose SYN-ACK waits out the delay, and never
    reach node 3 before node 2 is elected (seen once in a loaded run)."""
    proxy = lab.proxy
    assert proxy is not None
    answers: list[Answer] = []
    threads = [threading.Thread(target=lambda n=n: answers.append(lab.client(proxy, 30).request(
        "POST", proxy.address, PROXY_PORT, "/playlists",
        json.dumps({"name": f"warm-up {n}"}).encode(),
        {"Content-Type": "application/json", **(headers or {})}))) for n in range(writes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted((a.status, a.served_by) for a in answers) == [(201, "3")] * writes, answers


@pytest.fixture
def fronted(tmp_path: Path) -> Iterator[Lab]:
    with Lab(3, base_dir=tmp_path, keep_files=True, echo=print, proxy=True,
             replica_args=("--anti-entropy-interval", "2")) as running:
        if running.replica_kind != "twistd":
            pytest.skip("needs `twistd distpotify` (the replica foundation)")
        yield running


def proxy_view(lab: Lab) -> dict[str, Any]:
    assert lab.proxy is not None
    answer = lab.client(lab.proxy).get_json(lab.proxy.address, PROXY_PORT, "/proxy/status")
    assert isinstance(answer, dict)
    return answer


def playlists_named(lab: Lab, node: int) -> list[dict[str, Any]]:
    """The playlists called NAME on ``node``, asked from its own host (a cut-off replica
    answers its own host)."""
    address = lab.replicas[node].host.address
    found = lab.client(node).get_json(address, HTTP_PORT, "/playlists")["playlists"]
    return [p for p in found if p["name"] == NAME]


@pytest.mark.timeout(180)
def test_a_write_applied_by_a_leader_cut_off_before_replicating_merges_into_one(
    fronted: Lab,
) -> None:
    lab, nemesis = fronted, Nemesis(fronted)
    proxy = lab.proxy
    assert proxy is not None
    within("the proxy to write to node 3 and read from 1 and 2",
           lambda: (view := proxy_view(lab))["leader"] and view["leader"]["node_id"] == 3
           and len(view["readers"]) == 2)
    warm_pool(lab)
    answers: list[Answer] = []

    # Node 3's frames (answers, pushes, heartbeats) leave 10 s late: it applies the write
    # but neither answers nor replicates it before it is cut off.
    nemesis.slow(3, 10.0)
    writer = threading.Thread(target=lambda: answers.append(lab.client(proxy, 30).request(
        "POST", proxy.address, PROXY_PORT, "/playlists", b'{"name": "%s"}' % NAME.encode(),
        {"Content-Type": "application/json"})))
    writer.start()
    on_old = within("node 3 to apply the write", lambda: playlists_named(lab, 3), timeout=10)
    nemesis.partition([[3], [1, 2, PROXY]])
    nemesis.fast(3)
    writer.join(timeout=30)

    assert answers and answers[0].status == 201, answers
    assert answers[0].served_by in ("1", "2")  # the new leader's answer
    assert answers[0].json()["playlist"]["id"] == on_old[0]["id"]  # the key's record id
    assert playlists_named(lab, 3) == on_old  # still only on its side

    nemesis.heal()

    def one_record_everywhere() -> bool:
        return all(len(playlists_named(lab, n)) == 1 for n in (1, 2, 3))

    within("one record on every replica after the heal", one_record_everywhere, timeout=60)
    assert {playlists_named(lab, n)[0]["id"] for n in (1, 2, 3)} == {on_old[0]["id"]}
    keys = ClusterKeys.load(lab.key_file)  # /sync/* answers signed requests only
    digests = within("equal digests", lambda: (
        found := [lab.client(n).get_json(lab.replicas[n].host.address, HTTP_PORT,
                                         "/sync/digest", keys=keys)["buckets"]
                  for n in (1, 2, 3)]
    ) and found[0] == found[1] == found[2] and found, timeout=60)
    assert digests


# An OpenSubsonic API key: the write whose answer holds a secret


ADMIN_PASSWORD = "a long lab passphrase"
KEY_NAME = "made across the partition"


def keys_named(lab: Lab, node: int, bearer: dict[str, str]) -> list[dict[str, Any]]:
    """The admin's API keys called KEY_NAME on ``node``, asked from its own host."""
    address = lab.replicas[node].host.address
    answer = lab.client(node).request("GET", address, HTTP_PORT, "/auth/apikeys",
                                      headers=bearer)
    if answer.status != 200:
        return []
    return [k for k in answer.json()["keys"] if k["name"] == KEY_NAME]


def pings_with(lab: Lab, node: int, secret: str) -> bool:
    address = lab.replicas[node].host.address
    answer = lab.client(node).request(
        "GET", address, HTTP_PORT, f"/rest/ping?apiKey={secret}&v=1.16.1&c=lab&f=json")
    return answer.status == 200 and answer.json()["subsonic-response"]["status"] == "ok"


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[tuple[Lab, dict[str, str]]]:
    """The fronted lab with --auth on, its first admin made by setup; the admin's bearer."""
    with Lab(3, base_dir=tmp_path, keep_files=True, echo=print, proxy=True, auth=True,
             replica_args=("--anti-entropy-interval", "2")) as running:
        if running.replica_kind != "twistd":
            pytest.skip("needs `twistd distpotify` (the replica foundation)")
        leader = within("node 3 to lead", lambda: (status := running.status(3))
                        and status["role"] == "leader" and status)
        assert leader
        code_file = running.replicas[3].data_dir / "setup-code"
        code = within("node 3's setup code", lambda: code_file.is_file()
                      and code_file.read_text().strip())
        address = running.replicas[3].host.address
        setup = running.client(3).request("POST", address, HTTP_PORT, "/auth/setup", json.dumps(
            {"username": "admin", "password": ADMIN_PASSWORD, "setup_code": code}).encode(),
            {"Content-Type": "application/json"})
        assert setup.status == 201, setup.body
        proxy = running.proxy
        assert proxy is not None
        login = within("a login through the proxy", lambda: (answer := running.client(
            proxy).request("POST", proxy.address, PROXY_PORT, "/auth/login", json.dumps(
                {"username": "admin", "password": ADMIN_PASSWORD}).encode(),
            {"Content-Type": "application/json"})).status == 200 and answer)
        yield running, {"Authorization": f"Bearer {login.json()['token']}"}


@pytest.mark.timeout(240)
def test_an_api_key_made_by_a_leader_cut_off_and_again_by_the_next_is_one_key(
    accounts: tuple[Lab, dict[str, str]],
) -> None:
    """Its secret derives from its id, and its id from the proxy's Idempotency-Key: both
    leaders make the same key and secret, so the one the client got works everywhere after
    the heal, and the admin holds one key, not two."""
    lab, bearer = accounts
    nemesis = Nemesis(lab)
    proxy = lab.proxy
    assert proxy is not None

    def view() -> dict[str, Any]:
        answer = lab.client(proxy).request("GET", proxy.address, PROXY_PORT, "/proxy/status",
                                           headers=bearer)
        assert answer.status == 200, answer.body
        found: dict[str, Any] = answer.json()
        return found

    within("the proxy to write to node 3 and read from 1 and 2",
           lambda: (found := view())["leader"] and found["leader"]["node_id"] == 3
           and len(found["readers"]) == 2)
    within("the admin's account on every replica",
           lambda: all(lab.client(n).request("GET", lab.replicas[n].host.address, HTTP_PORT,
                                             "/auth/me", headers=bearer).status == 200
                       for n in (1, 2, 3)))
    warm_pool(lab, bearer)
    answers: list[Answer] = []

    nemesis.slow(3, 10.0)  # node 3 applies the create but neither answers nor replicates it
    writer = threading.Thread(target=lambda: answers.append(lab.client(proxy, 30).request(
        "POST", proxy.address, PROXY_PORT, "/auth/apikeys",
        json.dumps({"name": KEY_NAME}).encode(),
        {"Content-Type": "application/json", **bearer})))
    writer.start()
    on_old = within("node 3 to make the key", lambda: keys_named(lab, 3, bearer), timeout=10)
    nemesis.partition([[3], [1, 2, PROXY]])
    nemesis.fast(3)
    writer.join(timeout=30)

    assert answers and answers[0].status == 201, answers
    assert answers[0].served_by in ("1", "2")  # the new leader's answer
    made = answers[0].json()
    assert made["key"]["id"] == on_old[0]["id"]  # the key's id derives from the request's key
    secret = made["apiKey"]
    within("the key to work on node 3 too, before the heal", lambda: pings_with(lab, 3, secret))

    nemesis.heal()

    within("one key on every replica after the heal",
           lambda: all(len(keys_named(lab, n, bearer)) == 1 for n in (1, 2, 3)), timeout=60)
    assert {keys_named(lab, n, bearer)[0]["id"] for n in (1, 2, 3)} == {made["key"]["id"]}
    for node in (1, 2, 3):
        within(f"the client's secret to work on node {node}", lambda n=node: pings_with(
            lab, n, secret))
