"""Read your writes through the proxy: a client that uploads or edits and reads at once sees
its write, every time, while the reads of a client that did not write keep going to the
followers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.audio import make_wav
from tests.helpers.fronted import Client, Fronted
from tests.helpers.replica import ReplicaProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROUNDS = 200


@pytest.fixture
def fronted(tmp_path: Path, replicas: list[ReplicaProcess]) -> Iterator[Fronted]:
    # A fresh /status check may take seconds when the machine is loaded (CI beside other
    # jobs): with the default 0.5 s the proxy could find no healthy replica for a read,
    # which is not what this test is about.
    with Fronted(tmp_path, replicas, "--chunk-size", "16K",
                 proxy_args=("--check-timeout", "3")) as running:
        yield running


def test_a_client_reads_its_own_writes_while_others_read_from_followers(
    fronted: Fronted, tmp_path: Path
) -> None:
    me, other = Client(fronted.proxy), Client(fronted.proxy)
    playlist = me.send_json("POST", "/playlists", {"name": "first"}).json()["playlist"]["id"]
    leader = str(fronted.proxy_follows())
    missed, mine, theirs = [], [], []

    for number in range(ROUNDS):
        if number % 2 == 0:
            audio = make_wav(tmp_path / "song.wav", 48 * 1024, seed=number).read_bytes()
            wrote = me.call("POST", f"/songs?title=mine%20{number}", audio,
                            {"Content-Type": "audio/wav"})
            read = me.get(f"/songs?q=mine%20{number}")
            assert read.status == 200, (number, read.status, read.headers, read.body)
            seen = [s["title"] for s in read.json()["songs"]] == [f"mine {number}"]
        else:
            wrote = me.send_json("PATCH", f"/playlists/{playlist}", {"name": f"name {number}"})
            read = me.get(f"/playlists/{playlist}")
            assert read.status == 200, (number, read.status, read.headers, read.body)
            seen = read.json()["playlist"]["name"] == f"name {number}"
        assert wrote.status in (200, 201), wrote.body
        if not seen:
            missed.append(number)
        mine.append(read.headers["x-served-by"])
        theirs.append(other.get("/songs?limit=1").headers["x-served-by"])

    assert missed == []
    # Only followers (which of the two depends on how the round-robin interleaves the two
    # clients' reads).
    assert set(theirs) <= {str(n.node_id) for n in fronted.nodes} - {leader}
    assert set(mine) - {leader}  # the writer's reads are served by followers too
    assert "distpotify_client" in me.cookies and other.cookies == {}
    # Every read of the writer named its write's version (whether a follower had it yet
    # depends on timing), and no read of the other client did: the replicas counted one
    # such read per round, plus the leader's read after each 409.
    asked = sum(n.get("/status").json()["replication"]["read_wait"]["asked"]
                for n in fronted.nodes)
    assert asked == ROUNDS + fronted.proxy.status()["counters"]["behind"]
