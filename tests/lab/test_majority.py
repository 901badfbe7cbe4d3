"""The proxy follows the majority (issue 14): one replica cut off from the other two elects
itself with a higher epoch, yet the proxy, which still reaches all three, sends every write
to the majority's leader, and no edit of a record acknowledged before the cut fails."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from lab.client import Answer
from lab.lab import PROXY_PORT, Lab
from lab.nemesis import Nemesis
from tests.helpers.lab import poll

pytestmark = [pytest.mark.lab]
# The proxy learns who leads by polling /status every 0.25 s: a write sent within two polls
# of the majority's election may still go to the leader it knew.
PROXY_LAG = 0.5


@pytest.fixture
def fronted(tmp_path: Path) -> Iterator[Lab]:
    """Three replicas and the proxy, each in its own namespace."""
    with Lab(3, base_dir=tmp_path, keep_files=True, echo=print, proxy=True) as lab:
        if lab.replica_kind != "twistd":
            pytest.skip("needs `twistd distpotify` (the replica foundation)")
        yield lab




def leader_of(lab: Lab, nodes: list[int]) -> int | None:
    """The leader every one of NODES names, once it says it leads and all are ACTIVE."""
    statuses = {n: lab.status(n, 0.5) for n in nodes}
    if any(s is None or s.get("state") != "ACTIVE" for s in statuses.values()):
        return None
    named = {s.get("leader_id") for s in statuses.values() if s is not None}
    if len(named) != 1:
        return None
    (leader,) = named
    status = statuses.get(leader) if isinstance(leader, int) else None
    return leader if status is not None and status.get("role") == "leader" else None


def through_proxy(lab: Lab, method: str, path: str, value: Any) -> Answer:
    proxy = lab.proxy
    assert proxy is not None
    return lab.client(proxy, timeout=10).request(
        method, proxy.address, PROXY_PORT, path, json.dumps(value).encode(),
        {"Content-Type": "application/json"})


@attrs.define
class Editor:
    """Renames the given playlists through the proxy, round after round, until stopped;
    keeps (when sent, status, served by) of each."""

    lab: Lab
    ids: list[str]
    answers: list[tuple[float, int, str | None]] = attrs.Factory(list)
    _stop: threading.Event = attrs.Factory(threading.Event)

    def run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            playlist_id = self.ids[turn % len(self.ids)]
            sent = time.monotonic()
            try:
                answer = through_proxy(self.lab, "PATCH", f"/playlists/{playlist_id}",
                                       {"name": f"edit {turn}"})
                self.answers.append((sent, answer.status, answer.served_by))
            except OSError:
                self.answers.append((sent, 0, None))
            turn += 1

    def stop(self) -> None:
        self._stop.set()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("isolated", ["a follower", "the leader"])
def test_writes_follow_the_majority_while_one_replica_is_cut_off(fronted: Lab,
                                                                 isolated: str) -> None:
    lab = fronted
    leader = poll("node 3 to lead all three", lambda: leader_of(lab, [1, 2, 3]) == 3 and 3)
    proxy_host = lab.proxy
    assert proxy_host is not None

    def proxy_leader() -> int | None:
        view = lab.client(proxy_host).get_json(proxy_host.address, PROXY_PORT, "/proxy/status")
        return (view.get("leader") or {}).get("node_id")

    poll("the proxy to follow node 3", lambda: proxy_leader() == leader)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for n, playlist_id in enumerate(ids):
        created = through_proxy(lab, "POST", "/playlists", {"id": playlist_id, "name": str(n)})
        assert created.status == 201, created.body
    cut = 1 if isolated == "a follower" else leader
    majority = [n for n in (1, 2, 3) if n != cut]
    editor = Editor(lab, ids)
    editing = threading.Thread(target=editor.run, daemon=True)
    editing.start()
    try:
        Nemesis(lab).cut(cut, majority)
        # Both sides lead: the cut-off replica (alone, it elects itself or stays leader) and
        # the majority's leader.
        poll(f"node {cut} to lead its side alone",
             lambda: (lab.status(cut, 0.5) or {}).get("role") == "leader")
        ruling = poll("the majority to agree on a leader", lambda: leader_of(lab, majority))
        split = time.monotonic()
        time.sleep(3.0)  # the partition lasts: writes keep coming through the proxy
        healed_at = time.monotonic()
        Nemesis(lab).heal()
        poll("one leader for all three", lambda: leader_of(lab, [1, 2, 3]), timeout=30)
        time.sleep(2.0)  # and writes go on after the heal
    finally:
        editor.stop()
        editing.join(15)

    failed = [a for a in editor.answers if a[1] != 200]
    assert failed == [], f"{len(failed)} of {len(editor.answers)} edits failed: {failed[:5]}"
    during = [served for at, _, served in editor.answers
              if split + PROXY_LAG <= at < healed_at]
    assert during and set(during) == {str(ruling)}, during
