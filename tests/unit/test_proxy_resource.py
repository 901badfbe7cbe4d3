"""The proxy resource in memory against fake replicas, with a Clock: routing, retries, resume,
backpressure, and what a client sees when replicas fail."""

from __future__ import annotations

import gc
import json
import re
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.web.proxy import ReverseProxyResource

from proxy import resource
from tests.helpers.proxy import FakeReplica, ProxyHarness, three_replicas

pytestmark = pytest.mark.timeout(30)

CONTENT = bytes(range(256)) * 1000  # 256,000 bytes, every offset distinguishable mod 256
SONG = "/songs/0b0c8a4e-0000-4000-8000-000000000001/stream"


def cluster(**leader: object) -> list[FakeReplica]:
    """Followers 1 and 2 and leader 3, all serving CONTENT under ETag "e1"."""
    return three_replicas(CONTENT, **leader)


@pytest.fixture
def nodes() -> list[FakeReplica]:
    return cluster()


@pytest.fixture
def proxy(nodes: list[FakeReplica]) -> ProxyHarness:
    return ProxyHarness(nodes)


def test_the_proxy_is_a_leaf_reverse_proxy_resource_on_the_injected_reactor(
    proxy: ProxyHarness,
) -> None:
    resource = proxy.resource

    assert isinstance(resource, ReverseProxyResource) and resource.isLeaf
    assert resource.getChild(b"songs", None) is resource
    assert resource.reactor is proxy.clock


# reads


def test_a_read_goes_to_a_follower_and_comes_back_whole_with_x_served_by(
    proxy: ProxyHarness,
) -> None:
    answer = proxy.get(SONG).answer()

    assert answer.status == 200 and answer.complete
    assert answer.body == CONTENT
    assert answer.headers["x-served-by"] in ("1", "2")
    assert answer.headers["content-length"] == str(len(CONTENT))
    assert answer.headers["etag"] == '"e1"'


def test_reads_alternate_between_followers_and_never_reach_the_leader(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    served = [proxy.get("/songs").answer().headers["x-served-by"] for _ in range(6)]

    assert sorted(served) == ["1", "1", "1", "2", "2", "2"]
    assert served[0] != served[1]
    assert nodes[2].received == []


def test_reads_use_the_leader_only_when_no_follower_is_healthy(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    nodes[0].down = nodes[1].down = True
    proxy.poll()

    answer = proxy.get("/songs").answer()

    assert answer.headers["x-served-by"] == "3"


def test_headers_are_forwarded_end_to_end_only(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    conn = proxy.get("/songs?q=x", {
        "Connection": "keep-alive, X-Secret", "X-Secret": "hop", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Authorization": "Basic eA==", "Accept": "application/json",
        "X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https",
        "Forwarded": "for=198.51.100.1",
    })
    sent = next(s for node in nodes for s in node.received)
    answer = conn.answer()

    assert sent.path == b"/songs?q=x"
    assert sent.header("Accept") == "application/json"
    for hop in ("X-Secret", "Keep-Alive", "TE", "Proxy-Authorization", "Connection", "Host"):
        assert sent.header(hop) is None, hop
    # The client is no trusted proxy: its claims about who it is are not passed on.
    assert sent.header("X-Forwarded-For") == "192.0.2.7"
    assert sent.header("X-Forwarded-Proto") == "http"
    assert sent.header("Forwarded") is None
    assert sent.header("X-Forwarded-Host") == "proxy.example"
    assert "keep-alive" not in answer.headers
    assert answer.headers.get("connection") != "keep-alive"


# failures before the response starts


def test_a_refused_replica_is_skipped_and_avoided_until_it_answers_status(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    nodes[0].down = True  # dies after the last poll: the view still thinks it healthy

    answers = [proxy.get("/songs").answer() for _ in range(4)]

    assert [a.status for a in answers] == [200] * 4
    assert {a.headers["x-served-by"] for a in answers} == {"2"}
    assert len(nodes[0].received) == 1
    assert proxy.counters.retries == 1


def test_a_5xx_before_the_body_goes_to_the_next_replica(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    nodes[0].status_code, nodes[1].status_code = 503, 503

    answer = proxy.get(SONG).answer()

    assert answer.status == 200 and answer.body == CONTENT
    assert answer.headers["x-served-by"] == "3"


def test_a_replica_that_does_not_answer_in_time_is_replaced(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    nodes[0].hang = nodes[1].hang = True

    conn = proxy.get(SONG)
    for _ in range(2):
        proxy.clock.advance(proxy.config.response_timeout)
        proxy.settle()

    assert conn.answer().body == CONTENT
    assert all(d.called for node in nodes[:2] for d in node.pending)


def test_three_replicas_failing_before_any_byte_give_503_json(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    for node in nodes:
        node.down = True

    answer = proxy.get(SONG).answer()

    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"] == "unavailable"
    assert "node 1" in answer.json()["message"] and "node 3" in answer.json()["message"]
    assert proxy.counters.unavailable == 1


def test_no_healthy_replica_at_all_gives_503_without_trying(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    for node in nodes:
        node.down = True
    proxy.poll()

    answer = proxy.get("/songs").answer()

    assert answer.status == 503
    assert all(node.received == [] for node in nodes)


# failures mid-body: resume


def test_a_cut_body_resumes_on_the_next_replica_at_the_exact_byte(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    cut = nodes[0]  # the first follower in turn
    cut.cut_after = 10_000

    answer = proxy.get(SONG).answer()

    assert answer.status == 200 and answer.complete
    assert answer.body == CONTENT
    assert answer.headers["x-served-by"] == str(cut.node_id)  # the first replica's headers
    resumed = [s for node in nodes if node is not cut for s in node.received
               if s.path == SONG.encode()]
    assert len(resumed) == 1
    assert resumed[0].header("Range") == f"bytes=10000-{len(CONTENT) - 1}"
    assert resumed[0].header("If-Range") == '"e1"'
    assert proxy.counters.resumes == 1


def test_a_resume_offsets_the_clients_own_range(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    for node in nodes:
        node.cut_after = 5_000
    nodes[2].cut_after = None

    answer = proxy.get(SONG, {"Range": "bytes=1000-50000"}).answer()

    assert answer.status == 206 and answer.complete
    assert answer.headers["content-range"] == f"bytes 1000-50000/{len(CONTENT)}"
    assert answer.body == CONTENT[1000:50001]
    ranges = [s.header("Range") for node in nodes for s in node.received]
    assert sorted(ranges) == ["bytes=1000-50000", "bytes=11000-50000", "bytes=6000-50000"]


def test_a_resume_offsets_a_suffix_range(proxy: ProxyHarness, nodes: list[FakeReplica]) -> None:
    nodes[0].cut_after = nodes[1].cut_after = 3_000

    answer = proxy.get(SONG, {"Range": "bytes=-20000"}).answer()

    start = len(CONTENT) - 20000
    assert answer.status == 206 and answer.body == CONTENT[start:]
    assert {s.header("Range") for s in nodes[2].received} == {
        f"bytes={start + 6000}-{len(CONTENT) - 1}"}


def test_a_different_etag_is_never_spliced_in(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    nodes[0].cut_after = nodes[1].cut_after = 10_000
    nodes[1].etag = '"e2"'  # a different version: answers 200 to the If-Range
    nodes[1].content = b"x" * len(CONTENT)

    answer = proxy.get(SONG).answer()

    assert answer.body == CONTENT and answer.complete
    assert [(r.code, r.sent) for r in nodes[1].responses] == [(200, 0)]  # refused unread
    assert nodes[2].received[0].header("Range") == f"bytes=10000-{len(CONTENT) - 1}"


def test_a_200_to_a_resume_is_refused(proxy: ProxyHarness, nodes: list[FakeReplica]) -> None:
    nodes[0].cut_after = nodes[1].cut_after = 10_000
    nodes[1].ignore_range = True
    nodes[0].ignore_range = True

    answer = proxy.get(SONG).answer()

    assert answer.body == CONTENT and answer.complete
    assert len(nodes[2].received) == 1


def test_a_content_range_that_does_not_continue_the_response_is_refused(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    nodes[0].cut_after = nodes[1].cut_after = 10_000
    nodes[1].content = CONTENT + b"more"  # same ETag, another length: not the same bytes

    answer = proxy.get(SONG).answer()

    assert answer.body == CONTENT and answer.complete
    assert [(r.code, r.closed) for r in nodes[1].responses] == [(206, True)]
    assert len(nodes[2].received) == 1


def test_three_replicas_failing_mid_body_tear_the_connection(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    for node in nodes:
        node.cut_after = 8_000

    conn = proxy.get(SONG)
    answer = conn.answer()

    assert conn.aborted
    assert answer.status == 200 and not answer.complete
    assert len(answer.body) == 8_000 * 3 and answer.body == CONTENT[:24_000]
    assert proxy.counters.aborted == 1


def test_a_body_without_etag_cannot_be_resumed_and_tears_the_connection(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    for node in nodes:
        node.etag = ""
        node.cut_after = 8_000

    conn = proxy.get(SONG)

    assert conn.aborted
    assert sum(len(node.received) for node in nodes) == 1


# backpressure, stalls, clients that leave


def test_a_slow_client_pauses_the_replica_instead_of_filling_memory(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    conn = proxy.get(SONG, limit=16_384)
    response = next(r for node in nodes for r in node.responses)

    assert response.paused
    assert response.sent <= 16_384 + 2 * 4096

    answer = conn.read_all()
    assert answer.body == CONTENT and answer.complete
    assert conn.transport.pauses > 10


def test_a_stalled_replica_is_replaced_while_the_client_reads(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    for node in nodes:
        node.stall_after = 8_000
    nodes[2].stall_after = None

    conn = proxy.get(SONG)
    proxy.clock.advance(proxy.config.stall_timeout)
    proxy.settle()
    proxy.clock.advance(proxy.config.stall_timeout)
    proxy.settle()

    assert conn.answer().body == CONTENT
    assert proxy.counters.resumes == 2


def test_a_slow_client_is_not_mistaken_for_a_stalled_replica(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    conn = proxy.get(SONG, limit=16_384)
    proxy.clock.advance(60)
    proxy.settle()

    assert proxy.counters.resumes == 0
    assert conn.read_all().body == CONTENT


def test_a_client_that_goes_away_stops_the_replica_at_once(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    conn = proxy.get(SONG, limit=16_384)
    response = next(r for node in nodes for r in node.responses)

    conn.go_away()

    assert response.closed and response.sent < len(CONTENT)
    assert proxy.counters.client_gone == 1
    assert sum(len(node.received) for node in nodes) == 1


def test_a_client_that_goes_away_cancels_a_request_waiting_for_headers(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    nodes[0].hang = nodes[1].hang = True
    conn = proxy.get(SONG)
    pending = next(d for node in nodes for d in node.pending)

    conn.go_away()

    assert pending.called
    assert sum(node.cancelled for node in nodes) == 1
    proxy.clock.advance(10)
    assert sum(len(node.received) for node in nodes) == 1
    assert proxy.counters.retries == 0
    assert all(b.healthy for b in proxy.view.backends.values())  # the client left, not them


def test_a_404_from_a_follower_is_asked_again_of_the_leader(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    nodes[0].status_code = nodes[1].status_code = 404
    nodes[0].status_body = nodes[1].status_body = b'{"error": "not_found"}'

    answer = proxy.get(SONG).answer()

    assert answer.status == 200 and answer.headers["x-served-by"] == "3"


def test_a_404_for_a_path_that_names_no_record_stays_on_the_follower(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    nodes[0].status_code = nodes[1].status_code = 404

    answer = proxy.get("/nothing-here").answer()

    assert answer.status == 404 and nodes[2].received == []


# writes


def test_a_write_goes_to_the_leader_with_its_body() -> None:
    nodes = cluster(status_code=201, status_body=b'{"song": {}}')
    proxy = ProxyHarness(nodes)
    body = bytes(range(256)) * 800  # over twisted.web's in-memory limit: spooled to a file

    answer = proxy.post("/songs?title=x", body, "audio/mpeg").answer()

    assert answer.status == 201 and answer.headers["x-served-by"] == "3"
    assert [s.body for s in nodes[2].received] == [body]
    assert nodes[2].received[0].path == b"/songs?title=x"
    assert nodes[0].received == nodes[1].received == []


def test_an_answer_before_the_whole_upload_was_sent_stops_sending_the_rest() -> None:
    """A leader whose disk is full answers 507 after a few bytes of an upload; the proxy
    relays it and stops sending the body, before the request's end closes the spooled body
    (read on, it failed with "read of closed file", logged as critical by the Agent)."""
    nodes = cluster(status_code=507, answer_after=64 * 1024,
                    status_body=b'{"error": "insufficient_storage", "message": "m"}')
    proxy = ProxyHarness(nodes)
    body = bytes(4 << 20)

    answer = proxy.post("/songs", body, "audio/mpeg").answer()
    proxy.settle()

    assert answer.status == 507 and answer.headers["x-served-by"] == "3"
    assert nodes[2].body_failures == []
    assert nodes[2].body_read < len(body)


def test_a_write_without_a_leader_waits_then_answers_503_with_retry_after() -> None:
    nodes = cluster(role="follower")
    proxy = ProxyHarness(nodes, write_hold=2.0)

    conn = proxy.post("/playlists", b'{"name": "x"}')
    proxy.clock.advance(1.9)
    proxy.settle()
    assert conn.transport.value() == b""
    for _ in range(3):
        proxy.clock.advance(0.25)
        proxy.settle()

    answer = conn.answer()
    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"] == "no_leader"
    assert all(node.received == [] for node in nodes)


def test_a_write_during_an_election_goes_to_the_leader_that_wins() -> None:
    nodes = cluster(role="candidate")
    for node in nodes:
        node.status_code = 201
    proxy = ProxyHarness(nodes)

    conn = proxy.post("/playlists", b'{"name": "x"}')
    proxy.clock.advance(0.3)
    nodes[1].role, nodes[1].epoch = "leader", 2
    proxy.poll()

    assert conn.answer().status == 201
    assert conn.answer().headers["x-served-by"] == "2"
    assert proxy.counters.held_writes == 1


def test_a_421_refreshes_the_view_and_retries_once_on_the_named_leader() -> None:
    nodes = cluster()
    nodes[2].status_code = 421
    nodes[2].status_body = json.dumps(
        {"error": "not_leader", "leader_id": 2, "leader_http": nodes[1].url}).encode()
    nodes[1].status_code = 201
    proxy = ProxyHarness(nodes)

    answer = proxy.post("/playlists", b'{"name": "x"}').answer()

    assert answer.status == 201 and answer.headers["x-served-by"] == "2"
    assert len(nodes[2].received) == 1 and len(nodes[1].received) == 1


def test_a_421_naming_the_leader_by_another_address_goes_to_the_replica_the_view_knows(
) -> None:
    # The replicas advertise a name (--advertise-host) where the proxy was given addresses:
    # the 421 names node 2 by its leader_id, which the view knows at its own URL. Taken as a
    # replica of its own, that URL would be a second node 2 in the view: a "follower" that
    # reads go to while node 2 leads, and a replica other than the leader, whose in-flight
    # writes the next poll cancels.
    nodes = cluster()
    proxy = ProxyHarness(nodes)
    alias = "http://replica2.example:8002"
    proxy.agent.replicas[alias] = nodes[1]
    by_url = {**{node.url: node for node in nodes}, alias: nodes[1]}
    proxy.view._fetch = lambda url: by_url[url].status()
    nodes[2].role, nodes[1].role, nodes[1].epoch = "follower", "leader", 2
    for node in nodes:
        node.leader_id, node.leader_http = 2, alias
    nodes[2].paths["/playlists"] = (421, {}, {"error": "not_leader", "leader_id": 2,
                                              "leader_http": alias})
    nodes[1].paths["/playlists"] = (201, {}, {"playlist": {}})

    answer = proxy.post("/playlists", b'{"name": "x"}').answer()
    proxy.poll()
    served = [proxy.get("/songs").answer().headers["x-served-by"] for _ in range(6)]

    assert answer.status == 201 and answer.headers["x-served-by"] == "2"
    assert sorted(proxy.view.backends) == sorted(node.url for node in nodes)
    assert "2" not in served


def test_an_upload_is_sent_again_to_the_new_leader_after_the_old_one_died() -> None:
    nodes = cluster()
    for node in nodes:
        node.status_code = 201
    proxy = ProxyHarness(nodes)
    nodes[2].down = True
    body = b"ID3" + bytes(200_000)

    conn = proxy.post("/songs", body, "audio/mpeg")
    assert conn.transport.value() == b""  # held: no leader known any more
    nodes[1].role, nodes[1].epoch = "leader", 2
    proxy.poll()

    assert conn.answer().status == 201 and conn.answer().headers["x-served-by"] == "2"
    assert [s.body for s in nodes[1].received] == [body]


def test_every_write_carries_an_idempotency_key_and_a_clients_own_is_kept() -> None:
    nodes = cluster(status_code=201)
    proxy = ProxyHarness(nodes)

    proxy.post("/playlists", b'{"name": "a"}').answer()
    proxy.post("/playlists", b'{"name": "b"}').answer()
    proxy.post("/playlists", b'{"name": "c"}', headers={"Idempotency-Key": '"mine"'}).answer()

    keys = [sent.header("Idempotency-Key") for sent in nodes[2].received]
    assert keys[2] == '"mine"'
    # The proxy's own are UUIDv7 (their rows are stored in time order: idempotency.py).
    v7 = r'"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"'
    assert keys[0] != keys[1] and all(re.fullmatch(v7, k) for k in keys[:2])


def test_a_write_whose_leader_times_out_is_sent_again_under_the_same_key() -> None:
    nodes = cluster(hang=True, status_code=201)
    proxy = ProxyHarness(nodes, write_timeout=1.0)

    conn = proxy.post("/playlists/0b0c8a4e-0000-4000-8000-000000000001/items",
                      b'{"song_id": "x"}')
    nodes[2].hang = False  # it answers the next time
    proxy.clock.advance(1.0)
    proxy.settle()
    proxy.poll()  # its /status answers again: the view names it leader again

    answer = conn.answer()
    assert answer.status == 201 and answer.headers["x-served-by"] == "3"
    keys = {sent.header("Idempotency-Key") for sent in nodes[2].received}
    assert len(nodes[2].received) == 2 and len(keys) == 1
    assert proxy.counters.write_retries == 1


def test_a_write_held_by_a_replaced_leader_goes_to_the_new_one_under_the_same_key() -> None:
    nodes = cluster(hang=True)
    nodes[1].status_code = 201
    proxy = ProxyHarness(nodes)

    conn = proxy.post("/playlists", b'{"name": "no id: the key makes the retry safe"}')
    nodes[1].role, nodes[1].epoch = "leader", 2
    proxy.poll()

    assert conn.answer().status == 201 and conn.answer().headers["x-served-by"] == "2"
    assert nodes[2].cancelled == 1
    assert nodes[1].received[0].header("Idempotency-Key") == nodes[2].received[0].header(
        "Idempotency-Key")


def test_a_write_lost_with_its_leader_gets_the_new_leaders_answer() -> None:
    nodes = cluster(drop=True)
    nodes[1].status_code = 201
    nodes[1].status_body = b'{"playlist": {"name": "x"}}'
    proxy = ProxyHarness(nodes)

    conn = proxy.post("/playlists", b'{"name": "x"}')
    assert conn.transport.value() == b""  # held: the leader is down, none elected yet
    nodes[1].role, nodes[1].epoch = "leader", 2
    proxy.poll()

    answer = conn.answer()
    assert answer.status == 201 and answer.json() == {"playlist": {"name": "x"}}


ANSWER = json.dumps({"playlist": {"name": "x" * 20_000, "items": []}}).encode()


@pytest.mark.parametrize("broken", ["cut_after", "stall_after"])
def test_a_write_answer_broken_midway_is_sent_again_and_the_client_gets_it_whole(
        broken: str) -> None:
    """A write's answer is held whole before the client gets any of it: cut (the leader
    died) or stalled (SIGSTOP) midway, nothing went to the client yet, so the write goes
    again under its key (the stored outcome answers) instead of a torn connection."""
    nodes = cluster(status_code=201, status_body=ANSWER, **{broken: 4096})
    proxy = ProxyHarness(nodes)

    conn = proxy.post("/playlists", b'{"name": "x"}')
    proxy.clock.advance(proxy.config.stall_timeout)
    proxy.settle()
    assert conn.transport.value() == b"" and not conn.aborted
    setattr(nodes[2], broken, None)  # it answers whole the next time
    for _ in range(3):
        proxy.poll()

    answer = conn.answer()
    assert answer.status == 201 and answer.body == ANSWER
    assert answer.headers["content-length"] == str(len(ANSWER))
    assert not conn.aborted
    keys = {sent.header("Idempotency-Key") for sent in nodes[2].received}
    assert len(nodes[2].received) == 2 and len(keys) == 1
    assert proxy.counters.write_retries == 1 and proxy.counters.aborted == 0


def test_a_write_answer_longer_than_what_is_held_is_relayed_as_it_comes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_HELD_ANSWER the answer goes to the client as it arrives; cut midway, the
    client's connection is torn, as for any answer that cannot be resumed."""
    monkeypatch.setattr(resource, "MAX_HELD_ANSWER", 8192)
    nodes = cluster(status_code=201, status_body=ANSWER, cut_after=12_288)
    proxy = ProxyHarness(nodes)

    conn = proxy.post("/playlists", b'{"name": "x"}')
    proxy.settle()

    assert conn.aborted and b"201" in conn.transport.value().split(b"\r\n")[0]
    assert len(nodes[2].received) == 1


def test_a_5xx_that_is_not_the_replicas_own_answer_is_sent_again() -> None:
    nodes = cluster(status_code=502, bare=True, status_body=b"<html>bad gateway</html>")
    proxy = ProxyHarness(nodes)

    conn = proxy.post("/playlists", b'{"name": "x"}')
    nodes[2].bare, nodes[2].status_code = False, 201
    proxy.clock.advance(proxy.config.poll_interval)
    proxy.settle()

    assert conn.answer().status == 201
    assert len(nodes[2].received) == 2


def test_a_5xx_that_is_the_replicas_own_answer_is_the_outcome() -> None:
    nodes = cluster(status_code=500, status_body=b'{"error": "internal", "message": "m"}')
    proxy = ProxyHarness(nodes)

    answer = proxy.post("/playlists", b'{"name": "x"}').answer()

    assert answer.status == 500 and answer.json()["error"] == "internal"
    assert len(nodes[2].received) == 1


def test_a_write_no_leader_confirms_within_the_hold_is_503_never_502() -> None:
    nodes = cluster(status_code=502, bare=True)
    proxy = ProxyHarness(nodes, write_hold=1.0)

    conn = proxy.post("/playlists", b'{"name": "x"}')
    for _ in range(8):
        proxy.clock.advance(proxy.config.poll_interval)
        proxy.settle()

    answer = conn.answer()
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["error"] == "unavailable"
    assert "no leader confirmed this write within 1 s" in answer.json()["message"]
    assert 2 <= len(nodes[2].received) <= 5  # paced by the poll interval, not a busy loop


def test_a_404_from_a_new_leader_for_a_write_that_may_have_been_applied_is_not_final() -> None:
    """The old leader may have applied the write and the ones before it; the new leader,
    which has not received them, cannot know better than 'not found'."""
    nodes = cluster(drop=True)
    nodes[1].status_code, nodes[1].status_body = 404, b'{"error": "not_found", "message": "m"}'
    proxy = ProxyHarness(nodes, write_hold=2.0)

    conn = proxy.connect().send("DELETE", "/playlists/0b0c8a4e-0000-4000-8000-000000000001")
    nodes[1].role, nodes[1].epoch = "leader", 2
    proxy.poll()
    assert conn.transport.value() == b""  # not answered 404: asked again after a pause
    nodes[1].status_code, nodes[1].status_body = 204, b""  # the old leader's ops arrived
    proxy.clock.advance(proxy.config.poll_interval)
    proxy.settle()

    assert conn.answer().status == 204


def test_a_404_from_the_same_leader_is_the_answer() -> None:
    nodes = cluster(status_code=404, status_body=b'{"error": "not_found", "message": "m"}')
    proxy = ProxyHarness(nodes)

    answer = proxy.connect().send("DELETE", "/playlists/0b0c8a4e-0000-4000-8000-000000000001"
                                  ).answer()

    assert answer.status == 404 and len(nodes[2].received) == 1


def test_a_second_421_waits_for_the_view_to_name_the_leader() -> None:
    nodes = cluster(status_code=421, status_body=b'{"error": "not_leader", "leader_id": null}')
    proxy = ProxyHarness(nodes)

    conn = proxy.post("/playlists", b'{"name": "x"}')
    assert conn.transport.value() == b""
    nodes[2].role = "follower"
    nodes[1].role, nodes[1].epoch, nodes[1].status_code = "leader", 2, 201
    proxy.poll()
    proxy.clock.advance(proxy.config.poll_interval)
    proxy.settle()

    assert conn.answer().status == 201 and conn.answer().headers["x-served-by"] == "2"


@pytest.mark.parametrize("leader", [{"status_code": 201}, {"drop": True}, {"hang": True}],
                         ids=["answered", "connection-lost", "replaced"])
def test_a_write_leaves_no_unhandled_error_in_a_deferred(leader: dict[str, object]) -> None:
    nodes = cluster(**leader)
    nodes[1].status_code = 201
    proxy = ProxyHarness(nodes)

    with capturedLogs() as events:
        conn = proxy.post("/playlists", b'{"name": "x"}')
        nodes[1].role, nodes[1].epoch = "leader", 2  # ends the "replaced" case's wait
        proxy.poll()
        assert conn.answer().status == 201
        gc.collect()  # an unhandled failure is reported when its Deferred is collected

    assert [e["log_format"] for e in events if e.get("isError")] == []


def test_a_client_gone_while_a_421_refreshes_the_view_leaves_no_unhandled_error() -> None:
    nodes = cluster(status_code=421, status_body=b'{"error": "not_leader", "leader_id": null}')
    proxy = ProxyHarness(nodes)
    hung: list[Deferred[dict[str, object]]] = []
    proxy.view._fetch = lambda url: hung.append(Deferred()) or hung[-1]  # type: ignore[func-returns-value]

    with capturedLogs() as events:
        conn = proxy.post("/playlists", b'{"name": "x"}')
        assert hung  # the 421 made the view ask every replica's /status
        conn.go_away()
        proxy.clock.advance(proxy.config.check_timeout)
        proxy.settle()
        del conn, hung[:]
        gc.collect()

    assert [e["log_format"] for e in events if e.get("isError")] == []


def test_a_client_gone_while_a_421s_body_is_read_closes_that_answer() -> None:
    """The 421's body was read by a Deferred without a canceller: the connection stayed
    open until the replica sent the rest, if it ever did."""
    nodes = cluster(status_code=421, stall_after=0,
                    status_body=b'{"error": "not_leader", "leader_id": null}')
    proxy = ProxyHarness(nodes)

    conn = proxy.post("/playlists", b'{"name": "x"}')
    answer = nodes[2].responses[-1]
    conn.go_away()

    assert answer.closed and proxy.counters.client_gone == 1


# read your writes


VERSION = "0000000002-00003-000000000007"


def written(**leader: object) -> tuple[ProxyHarness, list[FakeReplica], Any]:
    """A cluster whose leader answers writes 201 with X-Distpotify-Version, and a client's
    first write through it."""
    nodes = cluster(status_code=201, headers={"X-Distpotify-Version": VERSION}, **leader)
    proxy = ProxyHarness(nodes)
    return proxy, nodes, proxy.post("/playlists", b'{"name": "x"}').answer()


def test_a_write_sets_the_session_cookie_and_that_clients_reads_wait_for_its_version() -> None:
    proxy, nodes, answer = written()
    cookie = answer.headers["set-cookie"]
    value = cookie.split(";")[0]

    mine = proxy.get("/songs", {"Cookie": value}).answer()
    theirs = proxy.get("/songs").answer()

    assert value.startswith("distpotify_client=")
    assert {part.strip().lower() for part in cookie.split(";")[1:]} >= {
        "httponly", "samesite=lax", "path=/"}
    assert answer.headers["x-distpotify-version"] == VERSION
    reads = {(s.header("Cookie") is not None, s.header("X-Distpotify-Min-Version"))
             for node in nodes[:2] for s in node.received}
    assert reads == {(True, VERSION), (False, None)}
    assert mine.status == theirs.status == 200
    assert nodes[2].received[0].header("X-Distpotify-Min-Version") is None  # not on writes


def test_a_client_with_a_token_is_known_by_its_token_and_gets_no_cookie() -> None:
    nodes = cluster(status_code=201, headers={"X-Distpotify-Version": VERSION})
    proxy = ProxyHarness(nodes)

    answer = proxy.post("/playlists", b"{}", headers={"Authorization": "Bearer t0ken"}).answer()
    proxy.get("/songs", {"Authorization": "Bearer t0ken"}).answer()
    proxy.get("/songs", {"Authorization": "Bearer other"}).answer()

    assert "set-cookie" not in answer.headers
    sent = sorted((s.header("Authorization"), s.header("X-Distpotify-Min-Version"))
                  for node in nodes[:2] for s in node.received)
    assert sent == [("Bearer other", None), ("Bearer t0ken", VERSION)]
    assert not any("t0ken" in key for key in proxy.resource.sessions._last)


def test_a_clients_own_min_version_passes_through() -> None:
    proxy, nodes, answer = written()
    cookie = answer.headers["set-cookie"].split(";")[0]

    proxy.get("/songs", {"Cookie": cookie, "X-Distpotify-Min-Version": "0000000001-00001-"
                         "000000000001"}).answer()

    read = next(s for node in nodes[:2] for s in node.received)
    assert read.header("X-Distpotify-Min-Version") == "0000000001-00001-000000000001"


def test_a_write_is_remembered_only_for_the_session_memory() -> None:
    proxy, nodes, answer = written()
    cookie = answer.headers["set-cookie"].split(";")[0]

    proxy.clock.advance(proxy.config.session_memory + 0.1)
    proxy.poll()
    proxy.get("/songs", {"Cookie": cookie}).answer()

    read = next(s for node in nodes[:2] for s in node.received)
    assert read.header("X-Distpotify-Min-Version") is None


def test_a_follower_behind_the_clients_write_hands_the_read_to_the_leader() -> None:
    proxy, nodes, answer = written()
    cookie = answer.headers["set-cookie"].split(";")[0]
    for node in nodes[:2]:
        node.status_code, node.status_body = 409, b'{"error": "behind", "message": "m"}'
    nodes[2].status_code, nodes[2].status_body = None, b""

    read = proxy.get(SONG, {"Cookie": cookie}).answer()

    assert read.status == 200 and read.headers["x-served-by"] == "3"
    assert nodes[2].received[-1].header("X-Distpotify-Min-Version") == VERSION
    assert proxy.counters.behind == 1


def test_a_follower_behind_with_no_leader_known_hands_the_read_to_the_writes_replica() -> None:
    proxy, nodes, answer = written()
    cookie = answer.headers["set-cookie"].split(";")[0]
    for node in nodes[:2]:
        node.status_code, node.status_body = 409, b'{"error": "behind", "message": "m"}'
    nodes[2].status_code, nodes[2].status_body = None, b""
    nodes[2].role = "candidate"  # an election, or the leader's /status late: no leader known
    proxy.poll()

    read = proxy.get(SONG, {"Cookie": cookie}).answer()

    assert read.status == 200 and read.headers["x-served-by"] == "3"  # VERSION's node
    assert len([s for node in nodes[:2] for s in node.received]) == 1
    assert proxy.counters.behind == 1


def test_a_follower_behind_the_sessions_account_hands_the_read_to_the_leader() -> None:
    nodes = cluster()
    for node in nodes[:2]:  # a genuine session they cannot check yet (the gate's 409)
        node.status_code, node.status_body = 409, b'{"error": "behind", "message": "m"}'
    proxy = ProxyHarness(nodes)

    read = proxy.get(SONG, {"Authorization": "Bearer t"}).answer()

    assert read.status == 200 and read.headers["x-served-by"] == "3"
    assert len([s for node in nodes[:2] for s in node.received]) == 1
    assert proxy.counters.behind == 1


def test_followers_behind_while_the_leader_fails_give_503_not_their_409() -> None:
    proxy, nodes, answer = written()
    cookie = answer.headers["set-cookie"].split(";")[0]
    for node in nodes[:2]:
        node.status_code, node.status_body = 409, b'{"error": "behind", "message": "m"}'
    nodes[2].down = True  # the leader the read falls back to is gone before the view knows

    read = proxy.get(SONG, {"Cookie": cookie}).answer()

    assert read.status == 503 and read.headers["retry-after"] == "1"
    assert read.json()["error"] == "unavailable"
    assert "answered 409 behind" in read.json()["message"]
    assert len([s for node in nodes[:2] for s in node.received]) == 2  # each follower once
    # behind is not failing: /proxy/status counts the refused leader alone
    assert sorted(b.failures for b in proxy.view.backends.values()) == [0, 0, 1]


def test_a_409_from_the_leader_itself_is_the_answer() -> None:
    nodes = cluster()
    for node in nodes:
        node.status_code, node.status_body = 409, b'{"error": "behind", "message": "m"}'
    proxy = ProxyHarness(nodes)

    read = proxy.get(SONG).answer()

    assert read.status == 409 and read.headers["x-served-by"] == "3"
    assert len(nodes[2].received) == 1  # asked once, not again


# the proxy's own paths


def test_sync_paths_are_404_and_never_forwarded(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    answers = [proxy.get(path).answer() for path in ("/sync/snapshot", "/sync", "/sync/ops")]

    assert {a.status for a in answers} == {404}
    assert answers[0].json()["error"] == "not_found"
    assert all(node.received == [] for node in nodes)


def test_proxy_status_shows_the_leader_the_readers_and_every_backend(
    proxy: ProxyHarness, nodes: list[FakeReplica]
) -> None:
    status = proxy.get("/proxy/status").answer().json()

    assert status["leader"] == {"node_id": 3, "http": nodes[2].url, "epoch": 1}
    assert status["readers"] == [nodes[0].url, nodes[1].url]
    assert [b["node_id"] for b in status["backends"]] == [1, 2, 3]
    assert all(b["healthy"] for b in status["backends"])
