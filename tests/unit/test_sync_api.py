"""The cluster-internal /sync/ API through the real resource, in memory: its path segments and
its failures, answered in the same JSON shape as the public API's."""

from __future__ import annotations

import gc
import json
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred

from distpotify.model import Op, Version
from distpotify.replication.client import MAX_BATCH_BYTES, BelowFloor, PeerClient, batch_body
from distpotify.replication.push import fit_batch
from distpotify.store.metadata import BUCKETS, Change, MetadataDB
from tests.helpers.api import Answer, InMemoryReplica, result_of

MISSING = "00000000-0000-4000-8000-000000000000"
LETTERED = "5a5e1c8e-3c3b-4e6a-9d7e-2f0b8e1d4c11"


@pytest.fixture
def api(tmp_path: Path) -> InMemoryReplica:
    return InMemoryReplica(tmp_path)


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["error"] == code and body["message"]


@pytest.mark.parametrize("bucket", ["0", "7", str(BUCKETS - 1), "%30"])
def test_every_bucket_answers_its_rows(api: InMemoryReplica, bucket: str) -> None:
    answer = api.get(f"/sync/digest/{bucket}")

    assert answer.status == 200, answer.body
    assert answer.json() == {"rows": []}


def test_a_bucket_answers_the_rows_it_holds(api: InMemoryReplica) -> None:
    playlist = api.send_json("POST", "/playlists", {"name": "p"}).json()["playlist"]["id"]
    bucket = next(b for b in range(BUCKETS) if api.db.bucket_rows(b))

    rows = api.get(f"/sync/digest/{bucket}").json()["rows"]

    assert [row[:2] for row in rows] == [["playlists", playlist]]


@pytest.mark.parametrize("bucket", [
    pytest.param(str(BUCKETS), id="BUCKETS"),
    pytest.param("007", id="leading zeros"),
    pytest.param("00", id="two zeros"),
    pytest.param("+1", id="plus"),
    pytest.param("-1", id="minus"),
    pytest.param("%201", id="leading space"),
    pytest.param("1.0", id="decimal point"),
    pytest.param("0x1", id="hex"),
    pytest.param("\u00b2", id="superscript two"),  # "²".isdigit(), and int("²") raised: a 500
    pytest.param("%C2%B2", id="encoded superscript two"),
    pytest.param("\u0663", id="arabic-indic three"),  # int() took it: bucket 3 by another name
    pytest.param("\uff13", id="fullwidth three"),
    pytest.param("9" * 30, id="huge"),
    pytest.param("0" * 5000, id="thousands of zeros"),
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dots"),
    pytest.param("%2E%2E", id="encoded dots"),
    pytest.param("1%2F2", id="encoded slash"),
    pytest.param("%00", id="nul"),
])
def test_a_hostile_bucket_is_404(api: InMemoryReplica, bucket: str) -> None:
    assert_error(api.get(f"/sync/digest/{bucket}"), 404, "not_found")


def test_a_path_that_is_not_utf8_is_400(api: InMemoryReplica) -> None:
    assert_error(api.get("/sync/digest/%FF"), 400, "bad_request")


def test_an_unknown_sync_path_is_a_json_404(api: InMemoryReplica) -> None:
    assert_error(api.get("/sync/nowhere"), 404, "not_found")


def test_a_wrong_method_is_a_json_405_naming_the_allowed_ones(api: InMemoryReplica) -> None:
    answer = api.call("DELETE", "/sync/digest")

    assert_error(answer, 405, "method_not_allowed")
    assert set(answer.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_an_unexpected_failure_is_a_json_500_without_details(
    api: InMemoryReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: MetadataDB) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(MetadataDB, "digest", broken)

    answer = api.get("/sync/digest")

    assert_error(answer, 500, "internal")
    assert b"secret" not in answer.body


@pytest.mark.parametrize("key", [
    pytest.param(f"chunks:{MISSING}/" + "0" * 5000, id="index of 5000 digits"),  # was a 500
    pytest.param(f"chunks:{MISSING}/\u00b2", id="superscript index"),
    pytest.param(f"chunks:{MISSING}/007", id="leading zeros"),
    pytest.param(f"chunks:{MISSING}/{2**31}", id="index 2**31"),
    pytest.param(f"songs:{LETTERED.upper()}", id="uppercase id"),
    pytest.param("songs:", id="empty id"),
    pytest.param(f"nothing:{MISSING}", id="unknown entity"),
])
def test_a_hostile_row_key_is_400(api: InMemoryReplica, key: str) -> None:
    assert_error(api.get(f"/sync/rows?key={quote(key)}"), 400, "bad_request")


def test_ops_after_a_version_are_served_oldest_first_with_the_head(api: InMemoryReplica) -> None:
    for name in ("a", "b", "c"):
        api.send_json("POST", "/playlists", {"name": name})
    ops = api.db.ops_after(Version(0, 0, 0))

    answer = api.get(f"/sync/ops?after={ops[0].version.encode()}&limit=1")

    assert answer.status == 200, answer.body
    assert answer.json() == {"ops": [ops[1].to_json()], "head": ops[-1].version.encode()}
    everything = api.get(f"/sync/ops?after={Version(0, 0, 0).encode()}").json()["ops"]
    assert [op["fields"].get("name") for op in everything] == ["a", "b", "c"]


def test_ops_after_a_version_are_answered_at_most_a_batchs_bytes_and_the_rest_after_them(
        api: InMemoryReplica) -> None:
    """Ops of 300 KB (a play queue's is up to 410 KB): an answer of 1,000 of them took longer
    than a new leader's pull waits. One answer holds what fits in a push batch, at least one
    op, and the next, asked after its last op, the rest."""
    for n in range(5):
        api.db.write([Change("playlists", str(uuid.uuid4()), {"name": f"p{n}",
                                                              "comment": "x" * 300_000})])
    ops = api.db.ops_after(Version(0, 0, 0))
    start = ops[0].version.encode()

    first = api.get(f"/sync/ops?after={Version(0, 0, 0).encode()}")

    assert first.status == 200 and len(first.body) <= MAX_BATCH_BYTES
    got = first.json()["ops"]
    assert [op["fields"]["name"] for op in got] == ["p0", "p1", "p2"]
    assert first.json()["head"] == ops[-1].version.encode()
    rest = api.get(f"/sync/ops?after={got[-1]['version']}").json()["ops"]
    assert [op["fields"]["name"] for op in rest] == ["p3", "p4"]
    assert api.get(f"/sync/ops?after={start}&limit=1").json()["ops"] == [ops[1].to_json()]


def test_an_op_larger_than_a_batch_is_answered_alone(api: InMemoryReplica) -> None:
    for n in range(2):
        api.db.write([Change("playlists", str(uuid.uuid4()), {"name": f"p{n}",
                                                              "comment": "x" * 1_200_000})])

    got = api.get(f"/sync/ops?after={Version(0, 0, 0).encode()}").json()["ops"]

    assert [op["fields"]["name"] for op in got] == ["p0"]


def test_ops_after_the_head_are_none(api: InMemoryReplica) -> None:
    api.send_json("POST", "/playlists", {"name": "a"})
    head = api.db.head().encode()

    assert api.get(f"/sync/ops?after={head}").json() == {"ops": [], "head": head}


def test_ops_after_a_version_below_the_oplog_floor_are_refused_with_the_floor(
    api: InMemoryReplica,
) -> None:
    for name in ("a", "b", "c", "d"):
        api.send_json("POST", "/playlists", {"name": name})
    ops = api.db.ops_after(Version(0, 0, 0))
    api.db.compact_oplog(ops[1].version)  # the floor: the second op, the newest dropped
    digest = api.db.digest()

    answer = api.get(f"/sync/ops?after={ops[0].version.encode()}")

    assert_error(answer, 409, "below_floor")
    assert answer.json()["floor"] == ops[1].version.encode()
    assert answer.json()["after"] == ops[0].version.encode()
    assert api.db.oplog_floor() == ops[1].version and api.db.digest() == digest
    assert api.db.ops_after(Version(0, 0, 0)) == ops[2:]


def test_ops_after_a_version_at_or_above_the_oplog_floor_are_served(
    api: InMemoryReplica,
) -> None:
    for name in ("a", "b", "c", "d"):
        api.send_json("POST", "/playlists", {"name": name})
    ops = api.db.ops_after(Version(0, 0, 0))
    api.db.compact_oplog(ops[1].version)

    at_floor = api.get(f"/sync/ops?after={ops[1].version.encode()}")
    above = api.get(f"/sync/ops?after={ops[2].version.encode()}")

    assert at_floor.status == 200, at_floor.body
    assert at_floor.json()["ops"] == [op.to_json() for op in ops[2:]]
    assert above.status == 200, above.body
    assert above.json()["ops"] == [ops[3].to_json()]


@pytest.mark.parametrize("query", [
    pytest.param("", id="no after"),
    pytest.param("after=3", id="not a version"),
    pytest.param("after=0000000001-00001-000000000001&limit=0", id="limit 0"),
    pytest.param("after=0000000001-00001-000000000001&limit=1001", id="limit too large"),
    pytest.param("after=0000000001-00001-000000000001&limit=%C2%B2", id="limit superscript"),
])
def test_a_bad_ops_query_is_400(api: InMemoryReplica, query: str) -> None:
    assert_error(api.get(f"/sync/ops?{query}"), 400, "bad_request")


def test_the_peer_client_reads_ops_after_a_version(api: InMemoryReplica) -> None:
    api.send_json("POST", "/playlists", {"name": "a"})
    agent = RequestTraversalAgent(api.root)
    client = PeerClient(agent, api.clock, api.keys)

    d = Deferred.fromCoroutine(client.ops_after("http://replica", Version(0, 0, 0), 10))
    agent.flush()

    ops, head = result_of(d)
    assert ops == api.db.ops_after(Version(0, 0, 0)) and head == api.db.head()


def test_the_peer_client_says_when_the_version_is_below_the_peers_oplog_floor(
    api: InMemoryReplica,
) -> None:
    for name in ("a", "b", "c"):
        api.send_json("POST", "/playlists", {"name": name})
    ops = api.db.ops_after(Version(0, 0, 0))
    api.db.compact_oplog(ops[1].version)
    agent = RequestTraversalAgent(api.root)
    client = PeerClient(agent, api.clock, api.keys)

    d = Deferred.fromCoroutine(client.ops_after("http://replica", ops[0].version, 10))
    agent.flush()

    with pytest.raises(BelowFloor) as refused:
        result_of(d)
    assert refused.value.floor == ops[1].version


def playlist_ops(n: int) -> list[Op]:
    return [Op(Version(4, 2, i + 1), "playlists", f"{i:08x}-0000-4000-8000-000000000000",
               {"name": f"p{i}", "deleted": 0}) for i in range(n)]


SOURCE = "http://leader:8000"


def test_a_batch_larger_than_the_limit_is_413_and_applies_nothing(api: InMemoryReplica) -> None:
    body = batch_body(SOURCE, playlist_ops(20_000))
    assert len(body) > MAX_BATCH_BYTES

    answer = api.call("POST", "/sync/ops", body, {"Content-Type": "application/json"})

    assert_error(answer, 413, "too_large")
    assert api.db.head() == Version(0, 0, 0)


def test_the_largest_batch_taken_parses_in_a_fraction_of_a_failure_timeout() -> None:
    """Why the cap is the answer to a batch stalling the reactor: parsing on a worker thread
    would not help, since CPython's JSON parser holds the GIL throughout."""
    body = batch_body(SOURCE, fit_batch(playlist_ops(20_000), SOURCE))
    assert MAX_BATCH_BYTES - 200 < len(body) <= MAX_BATCH_BYTES
    took = []
    # The best of three, without the collector: a full collection of this test process's
    # heap (thousands of tests in) landing inside the parse is not the parse's cost.
    gc.disable()
    try:
        for _ in range(3):
            started = time.process_time()
            json.loads(body)
            took.append(time.process_time() - started)
    finally:
        gc.enable()

    assert min(took) < 0.2, took
