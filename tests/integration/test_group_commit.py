"""Group commit on a real replica: concurrent writers share commits, and every write it
answered survives a SIGKILL in the middle of them."""

from __future__ import annotations

import http.client
import json
import threading
import uuid

import pytest

from tests.helpers.replica import ReplicaProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WRITERS = 8


def write_until_refused(port: int, acknowledged: list[str], lock: threading.Lock) -> None:
    """Create playlists one after another on one connection until the replica is gone;
    record the id of each one answered 201."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        while True:
            playlist_id = str(uuid.uuid4())
            conn.request("POST", "/playlists", json.dumps({"id": playlist_id, "name": "x"}),
                         {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 201, answer.status
            with lock:
                acknowledged.append(playlist_id)
    except (OSError, http.client.HTTPException):
        return  # killed: whatever was not answered may or may not be there
    finally:
        conn.close()


def test_concurrent_writes_share_commits_and_every_acknowledged_one_survives_sigkill(
    replica: ReplicaProcess,
) -> None:
    acknowledged: list[str] = []
    lock = threading.Lock()
    writers = [threading.Thread(target=write_until_refused,
                                args=(replica.http_port, acknowledged, lock))
               for _ in range(WRITERS)]
    for writer in writers:
        writer.start()
    wait_until(lambda: len(acknowledged) >= 300, timeout=60, interval=0.01,
               what="300 acknowledged writes")
    status = replica.get("/status").json()

    replica.kill()
    for writer in writers:
        writer.join(timeout=30)
    replica.start()

    assert status["writes"]["committed"] > status["writes"]["commits"]  # shared commits
    stored = {p["id"] for p in replica.get("/playlists").json()["playlists"]}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged writes lost"
