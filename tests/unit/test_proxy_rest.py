"""The proxy and the Subsonic API (/rest), in memory against fake replicas with a Clock: the
methods that write go to the leader whatever their HTTP method, with the guarantees of any
write (a key, sent again while the outcome is unknown, an answer without a leader); the
others go to followers; what the proxy answers itself is the spec's error 0 in the format
the client asked for; a client known by its Subsonic credentials reads its writes; and no log
line ever shows a /rest query string, where those credentials travel."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from distpotify.wire import loggable_uri
from proxy.decision import Again, Context, NextReplica, Unanswered, classify, is_write
from proxy.resource import ProxyResource
from proxy.sessions import Sessions
from tests.helpers.proxy import Answer, FakeReplica, ProxyHarness, three_replicas
from tests.helpers.subsonic import NS, json_of, valid_xml

pytestmark = pytest.mark.timeout(30)

VERSION = "0000000001-00003-000000000007"
SECRET = "hunter2-secret"
CREATE = f"/rest/createPlaylist.view?u=alice&p={SECRET}&v=1.16.1&c=test&name=Road"


def cluster(**leader: object) -> list[FakeReplica]:
    """Followers 1 and 2 and leader 3; the leader answers every request 200 with a version."""
    answers = {"content": b"", "status_code": 200, "status_body": b"{}",
               "headers": {"X-Distpotify-Version": VERSION}}
    return three_replicas(b"<subsonic-response/>", **{**answers, **leader})


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line emitted meanwhile, formatted as an operator reads it."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event) or "")
        lines.append(repr(event))  # the fields too: a metrics or JSON log writes them

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# the rule


@pytest.mark.parametrize(("method", "uri", "writes"), [
    (b"GET", b"/rest/createPlaylist.view?u=a&p=b", True),
    (b"GET", b"/rest/createPlaylist?u=a&p=b", True),
    (b"GET", b"/rest/STAR.view", True),
    (b"HEAD", b"/rest/scrobble", True),
    (b"GET", b"/rest/%73tar.view?id=1", True),  # the replica unquotes the path
    (b"POST", b"/rest/star.view", True),
    (b"GET", b"/rest/savePlayQueueByIndex.view?id=1&currentIndex=0", True),
    (b"POST", b"/rest/getAlbum.view", False),  # formPost: reads sent as POSTs
    (b"POST", b"/rest/", True),  # no Subsonic method: the HTTP method decides
    (b"GET", b"/rest/getAlbum.view?id=1", False),
    (b"GET", b"/rest/search3?query=star", False),
    (b"GET", b"/rest/ping.view", False),
    (b"OPTIONS", b"/rest/star.view", False),
    (b"GET", b"/songs?q=createPlaylist", False),
    (b"GET", b"/restart/star.view", False),
])
def test_subsonic_methods_that_write_are_writes_whatever_their_http_method(
        method: bytes, uri: bytes, writes: bool) -> None:
    assert is_write(method, uri) is writes
    assert Context(method, uri).write is writes


def test_a_subsonic_get_write_whose_outcome_is_unknown_is_sent_again() -> None:
    context = Context(b"GET", b"/rest/star.view?id=1", replica="replica 3")
    read = Context(b"GET", b"/rest/getStarred2.view", replica="replica 1")

    assert classify(Unanswered("lost"), context) == Again("lost", unknown=True)
    assert classify(Unanswered("lost"), read) == NextReplica("lost")


# routing


def test_a_subsonic_write_sent_as_a_get_goes_to_the_leader_with_a_key() -> None:
    nodes = cluster()
    proxy = ProxyHarness(nodes)

    answer = proxy.get(CREATE).answer()

    assert answer.status == 200 and answer.headers["x-served-by"] == "3"
    (sent,) = nodes[2].received
    assert sent.method == b"GET" and sent.path == CREATE.encode() and sent.body is None
    assert sent.header("Idempotency-Key")
    assert nodes[0].received == nodes[1].received == []


def test_subsonic_reads_go_to_the_followers() -> None:
    nodes = cluster()
    proxy = ProxyHarness(nodes)

    served = [proxy.get(f"/rest/getAlbumList2.view?u=alice&p={SECRET}&type=newest")
              .answer().headers["x-served-by"] for _ in range(4)]

    assert sorted(served) == ["1", "1", "2", "2"]
    assert nodes[2].received == []


def test_a_subsonic_read_sent_as_a_form_post_goes_to_a_follower_with_its_body() -> None:
    nodes = cluster()
    proxy = ProxyHarness(nodes)
    form = f"u=alice&p={SECRET}&id=al-1&f=json".encode()

    answer = proxy.post("/rest/getAlbum.view", form, "application/x-www-form-urlencoded").answer()

    assert answer.status == 200 and answer.headers["x-served-by"] in ("1", "2")
    (sent,) = [s for node in nodes[:2] for s in node.received]
    assert sent.method == b"POST" and sent.body == form
    assert sent.header("Idempotency-Key") is None
    assert nodes[2].received == []


def test_a_subsonic_write_whose_leader_times_out_is_sent_again_under_the_same_key() -> None:
    nodes = cluster(hang=True)
    proxy = ProxyHarness(nodes, write_timeout=1.0)

    conn = proxy.get("/rest/star.view?u=alice&p=x&id=al-1")
    nodes[2].hang = False
    proxy.clock.advance(1.0)
    proxy.settle()
    proxy.poll()

    answer = conn.answer()
    assert answer.status == 200 and answer.headers["x-served-by"] == "3"
    keys = {sent.header("Idempotency-Key") for sent in nodes[2].received}
    assert len(nodes[2].received) == 2 and len(keys) == 1
    assert proxy.counters.write_retries == 1


def test_a_subsonic_write_without_a_leader_waits_then_answers_error_0_with_retry_after(
) -> None:
    nodes = cluster(role="follower", status_code=None)
    proxy = ProxyHarness(nodes, write_hold=2.0)

    conn = proxy.get("/rest/scrobble.view?u=alice&p=x&id=1&f=json")
    for _ in range(10):
        proxy.clock.advance(0.25)
        proxy.settle()

    answer = conn.answer()
    error = json_of(answer)["error"]
    assert error["code"] == 0 and error["message"].startswith("no leader elected within 2 s")
    assert answer.headers["retry-after"] == "1"
    assert all(node.received == [] for node in nodes)


# the proxy's own answers


def everyone_down() -> ProxyHarness:
    """A proxy whose replicas have all stopped answering."""
    nodes = cluster()
    proxy = ProxyHarness(nodes)
    for node in nodes:
        node.down = True
    proxy.poll()
    return proxy


def failed_xml(answer: Answer) -> dict[str, str]:
    """The error element of a failed answer in XML, checked against the schema."""
    root = valid_xml(answer)
    error = root.find(f"{NS}error")
    assert root.get("status") == "failed" and error is not None, answer.body
    return dict(error.attrib)


def test_with_no_replica_a_subsonic_client_gets_error_0_in_xml_in_a_200() -> None:
    answer = everyone_down().get("/rest/getAlbumList2.view?u=alice&p=x&type=newest").answer()

    assert failed_xml(answer) == {
        "code": "0", "message": "no replica could answer: no healthy replica"}
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["cache-control"] == "no-store"


def test_with_no_replica_a_subsonic_client_gets_the_replicas_json_envelope() -> None:
    answer = everyone_down().get("/rest/getAlbumList2.view?u=alice&p=x&f=json").answer()

    envelope = json_of(answer)
    assert envelope["status"] == "failed"
    assert envelope["error"] == {"code": 0,
                                 "message": "no replica could answer: no healthy replica"}
    assert envelope["type"] == "distpotify" and envelope["openSubsonic"] is True
    assert envelope["version"] == "1.16.1"
    assert answer.headers["retry-after"] == "1"


def test_with_no_replica_a_jsonp_client_gets_its_callback() -> None:
    answer = everyone_down().get("/rest/ping.view?f=jsonp&callback=app.done").answer()

    assert answer.status == 200
    assert answer.headers["content-type"].startswith("application/javascript")
    assert answer.body.startswith(b'app.done({"subsonic-response":{"status":"failed"')


@pytest.mark.parametrize("query", ["f=yaml", "f=jsonp", "f=jsonp&callback=alert(1)"])
def test_a_format_the_replica_would_not_render_is_answered_in_xml(query: str) -> None:
    answer = everyone_down().get(f"/rest/ping.view?{query}").answer()

    assert failed_xml(answer)["code"] == "0"


def test_a_form_post_asks_for_its_format_in_its_body() -> None:
    answer = everyone_down().post("/rest/getAlbum.view", b"u=alice&p=x&id=1&f=json",
                                  "application/x-www-form-urlencoded").answer()

    assert json_of(answer)["error"]["code"] == 0


def test_outside_rest_the_proxy_still_answers_its_json_error() -> None:
    answer = everyone_down().get("/restart/ping.view?f=xml").answer()

    assert answer.status == 503 and answer.json()["error"] == "unavailable"


# read your writes


def reads_min_versions(nodes: list[FakeReplica]) -> dict[str, str | None]:
    """For each read the followers received, by its user: the version it waited for."""
    found = {}
    for node in nodes[:2]:
        for sent in node.received:
            user = sent.path.decode().partition("u=")[2].partition("&")[0] or "-"
            found[user] = sent.header("X-Distpotify-Min-Version")
    return found


def test_a_subsonic_client_reads_its_write_known_by_user_and_password() -> None:
    nodes = cluster()
    proxy = ProxyHarness(nodes)

    answer = proxy.get(CREATE).answer()
    proxy.get(f"/rest/getPlaylists.view?u=alice&p={SECRET}&v=1.16.1&c=test").answer()
    proxy.get("/rest/getPlaylists.view?u=bob&p=other&v=1.16.1&c=test").answer()
    proxy.get("/rest/getPlaylists.view?u=alice&p=wrong&v=1.16.1&c=test").answer()

    assert "set-cookie" not in answer.headers  # its credentials name it: no cookie needed
    found = {}
    for node in nodes[:2]:
        for sent in node.received:
            found[sent.path.decode().split("p=")[1].split("&")[0]] = sent.header(
                "X-Distpotify-Min-Version")
    assert found == {SECRET: VERSION, "other": None, "wrong": None}
    keys = " ".join(proxy.resource.sessions._last)
    assert SECRET not in keys and "alice" not in keys


def test_a_token_client_with_a_new_salt_each_call_reads_its_write() -> None:
    nodes = cluster()
    proxy = ProxyHarness(nodes)

    proxy.get("/rest/star.view?u=carol&t=0a1b&s=salt1&id=1").answer()
    proxy.get("/rest/getStarred2.view?u=carol&t=9f8e&s=salt2").answer()
    proxy.get("/rest/getStarred2.view?u=dave&t=9f8e&s=salt2").answer()

    assert reads_min_versions(nodes) == {"carol": VERSION, "dave": None}


def test_an_api_key_client_reads_its_write_and_a_form_post_counts_as_its_credentials() -> None:
    nodes = cluster()
    proxy = ProxyHarness(nodes)

    proxy.post("/rest/setRating.view", b"apiKey=k-123&id=1&rating=5",
               "application/x-www-form-urlencoded").answer()
    proxy.get("/rest/getSong.view?apiKey=k-123&id=1").answer()
    proxy.get("/rest/getSong.view?apiKey=k-999&id=1").answer()

    sent = sorted((s.path.decode(), s.header("X-Distpotify-Min-Version"))
                  for node in nodes[:2] for s in node.received)
    assert sent == [("/rest/getSong.view?apiKey=k-123&id=1", VERSION),
                    ("/rest/getSong.view?apiKey=k-999&id=1", None)]
    assert not any("k-123" in key for key in proxy.resource.sessions._last)


def test_a_play_queue_of_10000_songs_saved_as_a_form_is_a_write_its_client_reads() -> None:
    """A 400 KB form (over the 64 KiB the proxy once read): its credentials are still found,
    so the client's next read waits for its write, and a failure keeps its format."""
    nodes = cluster()
    proxy = ProxyHarness(nodes)
    ids = "&".join(f"id={uuid.UUID(int=n)}" for n in range(10_000))
    form = f"{ids}&currentIndex=0&u=erin&p=%C3%A4+1&f=json".encode()
    assert len(form) > 64 * 1024

    saving = proxy.post("/rest/savePlayQueueByIndex.view", form,
                        "application/x-www-form-urlencoded")
    for _ in range(300):  # the body goes out in pieces, one a cooperator's turn
        proxy.clock.advance(0.01)
    assert saving.answer().status == 200
    proxy.get("/rest/getPlayQueue.view?u=erin&p=%C3%A4%201").answer()  # the same password
    proxy.get("/rest/getPlayQueue.view?u=erin&p=other").answer()

    sent = sorted((s.path.decode(), s.header("X-Distpotify-Min-Version"))
                  for node in nodes[:2] for s in node.received)
    assert sent == [("/rest/getPlayQueue.view?u=erin&p=%C3%A4%201", VERSION),
                    ("/rest/getPlayQueue.view?u=erin&p=other", None)]
    down = everyone_down()
    failing = down.post("/rest/getAlbum.view", form, "application/x-www-form-urlencoded")
    for _ in range(300):
        down.clock.advance(0.01)
    assert json_of(failing.answer())["error"]["code"] == 0  # JSON, as its body asked


def test_the_resource_remembers_in_the_sessions_it_is_given_which_the_report_counts() -> None:
    harness = ProxyHarness(cluster())
    sessions = Sessions(harness.clock, 5.0)
    resource = ProxyResource(harness.view, harness.agent, harness.clock, harness.config,
                             sessions=sessions)

    assert resource.sessions is sessions  # though empty, and so falsy


@pytest.mark.parametrize("query", [
    "query=%C3%84my", "query=%FF%FE", "u=%C3%A4nn&p=%C3%A4", "u=a&p", "&&=&u=", "%"])
def test_a_subsonic_read_with_any_query_is_relayed(query: str) -> None:
    nodes = cluster()
    proxy = ProxyHarness(nodes)
    proxy.get(CREATE).answer()  # something remembered: the read's client is looked up

    answer = proxy.get(f"/rest/search3.view?{query}").answer()

    assert answer.status == 200 and answer.headers["x-served-by"] in ("1", "2")


def test_a_subsonic_error_without_a_version_is_not_remembered() -> None:
    nodes = cluster(headers={})  # error 40 (wrong password): a 200 without a version
    proxy = ProxyHarness(nodes)

    proxy.get(CREATE).answer()

    assert len(proxy.resource.sessions) == 0


# logs


def test_no_log_line_shows_a_rest_query_string(logged: list[str]) -> None:
    # Every logged path of an exchange: a read that fails over, a write sent again, a 503.
    nodes = cluster(hang=True)
    nodes[0].drop = nodes[1].drop = True
    proxy = ProxyHarness(nodes, write_timeout=1.0, write_hold=1.5, response_timeout=1.0)

    read = proxy.get(f"/rest/getAlbum.view?u=alice&p={SECRET}&id=1")
    write = proxy.get(f"/rest/star.view?u=alice&t={SECRET}&s=salt&id=1")
    form = proxy.post("/rest/star.view", f"u=alice&p={SECRET}".encode(),
                      "application/x-www-form-urlencoded")
    for _ in range(12):
        proxy.clock.advance(0.25)
        proxy.settle()

    assert [failed_xml(conn.answer())["code"] for conn in (read, write, form)] == ["0"] * 3
    text = "\n".join(logged)
    assert "/rest/star.view?<hidden>" in text  # the lines are there, without their query
    assert "/rest/getAlbum.view?<hidden>" in text
    assert SECRET not in text


@pytest.mark.parametrize(("uri", "shown"), [
    (b"/rest/ping.view?u=a&p=secret", "/rest/ping.view?<hidden>"),
    (b"//REST/ping?p=secret", "//REST/ping?<hidden>"),
    (b"/%72est/ping?p=secret", "/%72est/ping?<hidden>"),
    (b"/rest/ping.view", "/rest/ping.view"),
    (b"/songs?q=rest", "/songs?q=rest"),
    (b"http://host/rest/ping.view?u=a&p=secret", "http://host/rest/ping.view?<hidden>"),
    (b"/./rest/ping?p=secret", "/./rest/ping?<hidden>"),
    (b"/x/..%2frest/ping?p=secret", "/x/..%2frest/ping?<hidden>"),
])
def test_a_loggable_uri_keeps_everything_but_a_rest_query(uri: bytes, shown: str) -> None:
    assert loggable_uri(uri) == shown
