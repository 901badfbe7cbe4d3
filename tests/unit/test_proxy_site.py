"""The proxy's own URL space, in memory: its answers in the JSON shape the replicas use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request

from proxy.openapi import description_json
from proxy.site import ProxyRoot, ProxySite
from tests.helpers.api import Answer, result_of


class Forwarded(Resource):
    """Stands in for ProxyResource: says which path it was asked to forward."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return b"forwarded " + request.path


REPORT: dict[str, Any] = {"leader": None, "readers": [], "backends": []}


@pytest.fixture
def treq(tmp_path: Path) -> StubTreq:
    return StubTreq(ProxyRoot(Forwarded(), lambda: REPORT, tmp_path / "no-web-dir"))


def get(treq: StubTreq, path: str) -> Answer:
    d = treq.get("http://proxy" + path)
    treq.flush()
    response = result_of(d)
    body = treq.content(response)
    treq.flush()
    headers = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
    return Answer(response.code, headers, result_of(body))


def test_the_proxy_status_is_readable_json_never_cached(treq: StubTreq) -> None:
    answer = get(treq, "/proxy/status")

    assert answer.status == 200 and answer.json() == REPORT
    assert answer.body.endswith(b"}\n") and b'\n "leader": null' in answer.body
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"


def test_health_is_the_proxys_own_answer_saying_only_up(treq: StubTreq) -> None:
    answer = get(treq, "/health")

    assert (answer.status, answer.json()) == (200, {"status": "up"})
    assert answer.headers["cache-control"] == "no-store"
    assert "x-served-by" not in answer.headers


@pytest.mark.parametrize("path", ["/sync", "/sync/digest/0", "/sync/snapshot"])
def test_sync_paths_are_a_json_404_never_cached(treq: StubTreq, path: str) -> None:
    answer = get(treq, path)

    assert answer.status == 404 and answer.json()["error"] == "not_found"
    assert "internal to the cluster" in answer.json()["message"]
    assert answer.headers["cache-control"] == "no-store"


def test_the_music_api_is_forwarded(treq: StubTreq) -> None:
    assert get(treq, "/songs/x").body == b"forwarded /songs/x"


def test_the_api_description_is_served_as_json(tmp_path: Path) -> None:
    description = description_json()
    treq = StubTreq(ProxyRoot(Forwarded(), lambda: REPORT, tmp_path / "no-web-dir",
                              description))

    answer = get(treq, "/openapi.json")

    assert answer.status == 200 and answer.body == description
    assert answer.json()["openapi"].startswith("3.1.") and "/songs" in answer.json()["paths"]
    assert answer.headers["content-type"] == "application/json"
    assert "x-served-by" not in answer.headers


def test_without_a_description_the_path_is_forwarded(treq: StubTreq) -> None:
    assert get(treq, "/openapi.json").body == b"forwarded /openapi.json"


def send(method: str, path: str, tmp_path: Path, forward: Resource | None = None) -> Answer:
    """``method`` on ``path`` of a real ProxySite (its request renders the proxy's own
    answers), in memory; ``forward`` stands in for ProxyResource (Forwarded)."""
    site = ProxySite(ProxyRoot(forward or Forwarded(), lambda: REPORT,
                               tmp_path / "no-web-dir", b"{}"), max_body=1024, clock=Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 1234))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
    head, _, body = transport.value().partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = [line.split(": ", 1) for line in lines[1:]]
    headers = {name.lower(): value for name, value in fields}
    channel.connectionLost(None)
    return Answer(int(lines[0].split()[1]), headers, body)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "TRACE", "OPTIONS"])
@pytest.mark.parametrize("path", ["/proxy/status", "/metrics", "/openapi.json", "/health"])
def test_a_method_the_proxy_does_not_take_is_a_json_405(
        method: str, path: str, tmp_path: Path) -> None:
    answer = send(method, path, tmp_path)

    assert answer.status == 405, answer
    assert answer.json()["error"] == "method_not_allowed"
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.headers["allow"].split(", ")) >= {"GET", "HEAD"}


def test_a_head_of_the_proxys_own_answer_is_the_gets_without_a_body(tmp_path: Path) -> None:
    answer = send("HEAD", "/proxy/status", tmp_path)

    assert answer.status == 200 and answer.body == b""
    assert answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize("path", ["/%2Fetc%2Fpasswd", "/..%2F..%2Fetc%2Fhostname",
                                  "/%5Cetc", "/.hidden"])
def test_a_segment_reaching_outside_the_web_dir_is_forwarded_like_any_unknown_path(
    tmp_path: Path, path: str
) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<p>player</p>")
    (web / ".hidden").write_text("secret")
    treq = StubTreq(ProxyRoot(Forwarded(), lambda: REPORT, web))

    answer = get(treq, path)

    assert answer.body.startswith(b"forwarded ")


class Counting(Forwarded):
    """Forwarded, counting what reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.seen.append(request.uri)
        return super().render(request)


# ("*" never reaches a resource: twisted.web answers OPTIONS * itself, 405 to the others.)
@pytest.mark.parametrize("target", ["@evil.example/", "00/admin", "songs", "ftp://host/songs",
                                    "http:/songs"])
@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS"])
def test_a_request_target_that_is_not_a_path_is_a_400_and_never_forwarded(
        target: str, method: str, tmp_path: Path) -> None:
    """Appended to a replica's URL, ``@evil.example/`` would name another host (and the
    failure to reach it would mark the replica down for every client)."""
    forward = Counting()

    answer = send(method, target, tmp_path, forward)

    assert answer.status == 400, answer
    assert answer.json()["error"] == "bad_request"
    assert forward.seen == []


@pytest.mark.parametrize(("target", "forwarded"), [
    ("http://proxy.example/songs?q=a", b"/songs?q=a"), ("HTTPS://proxy.example/", b"/"),
    ("http://proxy.example", b"/"), ("http://proxy.example?q=a", b"/?q=a"),
    ("http://user@evil.example:81/songs/x", b"/songs/x"),
])
def test_an_absolute_form_target_is_forwarded_as_its_path(
        target: str, forwarded: bytes, tmp_path: Path) -> None:
    """RFC 9112 3.2.2: a server accepts the absolute form; the proxy forwards its path and
    query, never its authority."""
    forward = Counting()

    send("GET", target, tmp_path, forward)

    assert forward.seen == [forwarded]
