"""What a side wrote while cut off is there for the first write after the partition heals.

Node 3, restarted alone on its side, leads the epoch number node 2 leads on the other: the
heal keeps node 3 leading (its claim is the higher), though what node 2's side wrote has
versions below node 3's head, so no push or catch-up after that head brings it. Before the
fix, node 3 answered a write to such a record 404 (or, for a listener's own playlist whose
row had come partial, 403) until an anti-entropy round pulled it seconds later (the random
lab run, seed 20). The leader now holds its writes for a round with a peer heard again whose
last write came from another leadership (``Takeover.peer_returned``), and a new leadership
for a round with every live peer after its catch-up (the heal may make node 3 claim anew)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from lab.client import Answer
from lab.lab import HTTP_PORT, Lab
from lab.nemesis import Nemesis
from tests.helpers.lab import poll

pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]




def status(lab: Lab, node: int) -> dict[str, Any]:
    return lab.status(node, 0.5) or {}


def leads(lab: Lab, node: int, followers: list[int]) -> bool:
    """NODE leads, COMPLETE, and every one of FOLLOWERS is ACTIVE and follows it."""
    mine = status(lab, node)
    return (mine.get("role") == "leader" and mine.get("state") == "ACTIVE"
            and (mine.get("takeover") or {}).get("phase") == "COMPLETE"
            and all(status(lab, n).get("leader_id") == node
                    and status(lab, n).get("state") == "ACTIVE" for n in followers))


def hears(lab: Lab, node: int, peer: int) -> bool:
    return any(p.get("node_id") == peer and p.get("up")
               for p in status(lab, node).get("peers") or [])


def send(lab: Lab, node: int, method: str, path: str, value: Any) -> Answer:
    """A request to NODE from its own host (so it arrives whatever the partition)."""
    host = lab.replicas[node].host
    return lab.client(host, timeout=10).request(
        method, host.address, HTTP_PORT, path, json.dumps(value).encode(),
        {"Content-Type": "application/json"})


def test_after_a_heal_the_leader_takes_no_write_before_the_other_sides_records(
        tmp_path: Path) -> None:
    with Lab(3, base_dir=tmp_path, keep_files=True, echo=print) as lab:
        if lab.replica_kind != "twistd":
            pytest.skip("needs `twistd distpotify` (the replica foundation)")
        nemesis = Nemesis(lab)
        poll("node 3 leading the three", lambda: leads(lab, 3, [1, 2]), 60)
        first = send(lab, 3, "POST", "/playlists", {"name": "made by the three"})
        assert first.status == 201, first.body  # node 3 restarts on data, not empty
        poll("the first playlist on nodes 1 and 2", lambda: all(
            send(lab, n, "GET", f"/playlists/{first.json()['playlist']['id']}", None).status
            == 200 for n in (1, 2)))
        nemesis.kill(3)
        poll("node 2 leading nodes 1 and 2", lambda: leads(lab, 2, [1]))
        epoch = status(lab, 2)["epoch"]
        nemesis.partition([[3], [1, 2]])
        nemesis.restart(3)  # alone, it claims the epoch after the last one it knew: node 2's
        poll("node 3 leading alone", lambda: leads(lab, 3, []))
        assert status(lab, 3)["epoch"] == epoch, (status(lab, 3), epoch)

        made = send(lab, 2, "POST", "/playlists", {"name": "made by nodes 1 and 2"})
        assert made.status == 201, made.body
        playlist = made.json()["playlist"]["id"]
        poll("the playlist on node 1",
             lambda: send(lab, 1, "GET", f"/playlists/{playlist}", None).status == 200)
        alone = send(lab, 3, "POST", "/playlists", {"name": "made by node 3 alone"})
        assert alone.status == 201, alone.body

        nemesis.heal()
        poll("node 3 hearing node 1 or 2", lambda: hears(lab, 3, 1) or hears(lab, 3, 2))
        # The heal may also make node 3 claim a new epoch (node 2 asks with one above the
        # epoch they share): meanwhile it answers 421, and a client sends the write again.
        def rename() -> Answer | None:
            answer = send(lab, 3, "PATCH", f"/playlists/{playlist}", {"name": "renamed"})
            return None if answer.status == 421 else answer

        renamed = poll("an answer other than 421", rename, 15)

        assert renamed.status == 200, renamed.body
        assert status(lab, 3)["role"] == "leader"  # the heal kept it leading
        for node in (1, 2):
            poll(f"the rename on node {node}", functools.partial(renamed_on, lab, node, playlist))


def renamed_on(lab: Lab, node: int, playlist: str) -> bool:
    answer = send(lab, node, "GET", f"/playlists/{playlist}", None)
    return answer.status == 200 and answer.json()["playlist"]["name"] == "renamed"
