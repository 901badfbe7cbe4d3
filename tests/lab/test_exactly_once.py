"""A write applied by a leader that is cut off before it can replicate or answer, sent again
by the proxy to the new leader under the same Idempotency-Key: after the partition heals,
both leaders' copies are one record on every replica."""

from __future__ import annotations

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
