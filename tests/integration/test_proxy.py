"""The real proxy in front of three real replicas on 127.0.0.1: streaming, resume after SIGKILL,
backpressure, round-robin, its own paths, and what it answers when every replica is gone.

The replicas start from copies of one data dir, so they hold the same songs under the same ids
(as replication would make them) while each runs as a cluster of its own: the proxy takes the
highest (epoch, node id), node 3, for the leader and reads from nodes 1 and 2.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from distpotify.leanclient import HEAD_READ
from distpotify.options import parse_switch
from tests.helpers.audio import make_wav
from tests.helpers.fronted import Fronted
from tests.helpers.proxy import ProxyProcess, clone_data_dir, seed_data_dir
from tests.helpers.replica import (
    TWISTD,
    ReplicaProcess,
    peak_memory,
    raw_exchange,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MIB = 1024 * 1024
BIG = 64 * MIB  # far more than every socket buffer between a replica and the client
BLOCK = 64 * 1024
# The proxies here splice GET bodies unless the run says otherwise (tests/helpers/proxy.py).
SPLICING = parse_switch(os.environ.get("DISTPOTIFY_TEST_SPLICE", "on"))


@attrs.frozen
class Library:
    seed: Path
    audio: bytes
    song: dict


@attrs.define
class Cluster:
    nodes: dict[int, ReplicaProcess]
    proxy: ProxyProcess


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    root = tmp_path_factory.mktemp("seed")
    audio = make_wav(root / "long.wav", BIG, seed=7).read_bytes()
    seed, songs = seed_data_dir(root, [(audio, "audio/wav")])
    return Library(seed, audio, songs[0])


@pytest.fixture
def cluster(tmp_path: Path, replicas: list[ReplicaProcess], library: Library
            ) -> Iterator[Cluster]:
    nodes = {i: clone_data_dir(library.seed, ReplicaProcess(i, tmp_path)) for i in (1, 2, 3)}
    for node in nodes.values():
        replicas.append(node)
        node.start(wait=False)
    for node in nodes.values():
        node.wait_ready(timeout=60)
    proxy = ProxyProcess(tmp_path, list(nodes.values())).start()
    try:
        # Each lone replica elects itself, all in the same epoch: node 3 ranks highest.
        proxy.wait_view(lambda s: (s["leader"] or {}).get("node_id") == 3
                        and len(s["readers"]) == 2, timeout=30, what="node 3 to lead")
        yield Cluster(nodes, proxy)
    finally:
        proxy.kill()


class Download:
    """A GET through the proxy read at the test's pace, with a small receive buffer."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.sock = sock
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        self.body = bytearray()
        self.max_gap = 0.0
        self._last = time.monotonic()

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def read(self, size: int) -> int:
        """Read up to ``size`` bytes; record the longest wait for a block."""
        got = 0
        while got < size:
            block = self.response.read(min(BLOCK, size - got))
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - self._last)
            self._last = now
            if not block:
                break
            self.body += block
            got += len(block)
        return got

    def read_rest(self) -> bytes:
        while self.read(MIB):
            pass
        self.conn.close()
        return bytes(self.body)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def served_by(download: Download, cluster: Cluster) -> ReplicaProcess:
    return cluster.nodes[int(download.header("X-Served-By") or 0)]


def assert_bytes_by_path(proxy: ProxyProcess, total: int, answers: int) -> None:
    """/proxy/status and /metrics count ``total`` body bytes, each by the path that moved it:
    spliced but for what came with each of ``answers`` answers' headers, or (splicing off)
    all through Python."""
    counters = proxy.status()["counters"]
    relayed, spliced = counters["relayed_bytes"], counters["spliced_bytes"]
    assert relayed + spliced == total
    if SPLICING:
        assert relayed < answers * HEAD_READ, counters
    else:
        assert spliced == 0, counters
    metrics = {sample.name: sample.value
               for family in text_string_to_metric_families(proxy.get("/metrics").body.decode())
               for sample in family.samples}
    assert metrics["distpotify_proxy_relayed_bytes_total"] == relayed
    assert metrics["distpotify_proxy_spliced_bytes_total"] == spliced


def test_reads_take_turns_over_the_followers_and_never_reach_the_leader(
    cluster: Cluster, library: Library
) -> None:
    song_id = library.song["id"]

    served = [cluster.proxy.get(f"/songs/{song_id}").headers["x-served-by"] for _ in range(20)]

    assert sorted(set(served)) == ["1", "2"]
    assert served.count("1") == served.count("2") == 10


def test_a_song_streams_through_the_proxy_whole_and_by_range(
    cluster: Cluster, library: Library
) -> None:
    path = f"/songs/{library.song['id']}/stream"

    whole = Download(cluster.proxy.port, path)
    part = cluster.proxy.get(path, {"Range": "bytes=1000000-1999999"})

    assert whole.response.status == 200
    assert int(whole.header("Content-Length") or 0) == len(library.audio)
    assert sha256(whole.read_rest()) == library.song["sha256"]
    assert part.status == 206
    assert part.headers["content-range"] == f"bytes 1000000-1999999/{len(library.audio)}"
    assert part.body == library.audio[1000000:2000000]
    assert_bytes_by_path(cluster.proxy, len(library.audio) + 1000000, answers=2)


def test_a_download_survives_sigkill_of_the_replica_serving_it(
    cluster: Cluster, library: Library
) -> None:
    download = Download(cluster.proxy.port, f"/songs/{library.song['id']}/stream")
    download.read(4 * MIB)
    victim = served_by(download, cluster)

    victim.kill()
    body = download.read_rest()

    assert download.response.status == 200
    assert len(body) == len(library.audio)
    assert sha256(body) == library.song["sha256"]
    counters = cluster.proxy.status()["counters"]
    assert counters["resumes"] == 1 and counters["aborted"] == 0
    assert download.max_gap < 1.0, f"the listener waited {download.max_gap:.3f} s for bytes"
    metrics = cluster.proxy.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b"distpotify_proxy_resumes_total 1.0" in metrics.body
    assert b"distpotify_proxy_leader_epoch" in metrics.body
    # The resumed body took the same path as the first: spliced, with splicing on.
    assert_bytes_by_path(cluster.proxy, len(library.audio), answers=2)


def test_a_resumed_download_keeps_the_clients_own_range(
    cluster: Cluster, library: Library
) -> None:
    start = 3 * MIB + 17
    download = Download(cluster.proxy.port, f"/songs/{library.song['id']}/stream",
                        {"Range": f"bytes={start}-"})
    download.read(2 * MIB)

    served_by(download, cluster).kill()
    body = download.read_rest()

    assert download.response.status == 206
    assert download.header("Content-Range") == (
        f"bytes {start}-{len(library.audio) - 1}/{len(library.audio)}")
    assert body == library.audio[start:]
    assert cluster.proxy.status()["counters"]["resumes"] == 1
    assert_bytes_by_path(cluster.proxy, len(library.audio) - start, answers=2)


def test_a_slow_listener_leaves_the_proxy_memory_flat(
    cluster: Cluster, library: Library
) -> None:
    rate, seconds = 100 * 1024, 10.0
    download = Download(cluster.proxy.port, f"/songs/{library.song['id']}/stream")
    download.read(rate // 10)
    before = cluster.proxy.rss()
    started = time.monotonic()

    for tick in range(1, int(seconds * 10) + 1):
        download.read(rate // 10)
        # pacing the reader is the test itself, not a wait for a condition
        time.sleep(max(0.0, started + tick / 10 - time.monotonic()))
    grown = cluster.proxy.rss() - before
    download.conn.close()

    assert len(download.body) == rate // 10 * (int(seconds * 10) + 1)
    assert grown < 20 * MIB, f"the proxy grew by {grown / MIB:.1f} MiB for one slow listener"


def test_every_replica_gone_answers_503_json(cluster: Cluster, library: Library) -> None:
    for node in cluster.nodes.values():
        node.kill()

    answer = cluster.proxy.get(f"/songs/{library.song['id']}/stream")

    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"] == "unavailable"
    assert "x-served-by" not in answer.headers


def test_sync_paths_are_404_and_never_reach_a_replica(cluster: Cluster) -> None:
    answers = [cluster.proxy.get("/sync/snapshot"), cluster.proxy.get("/sync/digest")]
    posted = cluster.proxy.post("/sync/ops", b"[]", "application/json")

    for answer in [*answers, posted]:
        assert answer.status == 404
        assert answer.json()["error"] == "not_found"
        assert "x-served-by" not in answer.headers


def test_the_proxy_serves_its_status_and_the_web_player(cluster: Cluster) -> None:
    status = cluster.proxy.status()
    page = cluster.proxy.get("/")

    assert status["leader"]["node_id"] == 3
    assert [b["node_id"] for b in status["backends"]] == [1, 2, 3]
    assert all(b["healthy"] for b in status["backends"])
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"Distpotify" in page.body


def test_an_upload_through_the_proxy_is_answered_by_the_leader(
    cluster: Cluster, tmp_path: Path
) -> None:
    audio = make_wav(tmp_path / "new.wav", 2 * MIB, seed=99).read_bytes()

    answer = cluster.proxy.post("/songs?title=Proxied", audio, "audio/wav")

    assert answer.status == 201, answer.body
    assert answer.headers["x-served-by"] == "3"
    assert answer.json()["song"]["sha256"] == sha256(audio)


def test_a_multipart_upload_is_never_parsed_into_memory(
    cluster: Cluster, tmp_path: Path
) -> None:
    audio = make_wav(tmp_path / "form.wav", 48 * MIB, seed=11).read_bytes()
    boundary = "distpotify-form-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\";"
            f" filename=\"form.wav\"\r\nContent-Type: audio/wav\r\n\r\n").encode()
    body += audio + f"\r\n--{boundary}--\r\n".encode()
    leader = cluster.nodes[3]
    assert cluster.proxy.process is not None and leader.process is not None
    before = {"proxy": peak_memory(cluster.proxy.process.pid),
              "leader": peak_memory(leader.process.pid)}

    answer = cluster.proxy.post("/songs", body, f"multipart/form-data; boundary={boundary}",
                                timeout=120)

    assert answer.status == 201, answer.body
    assert answer.json()["song"]["sha256"] == sha256(audio)
    growth = {"proxy": peak_memory(cluster.proxy.process.pid) - before["proxy"],
              "leader": peak_memory(leader.process.pid) - before["leader"]}
    # twisted.web's form parsing peaked at about 14 times the body (630 MiB for this one)
    assert all(grown < 24 * MIB for grown in growth.values()), growth


def test_an_oversized_upload_is_refused_by_the_proxy_before_it_is_stored(
    cluster: Cluster, tmp_path: Path
) -> None:
    (tmp_path / "small").mkdir()
    proxy = ProxyProcess(tmp_path / "small", list(cluster.nodes.values()),
                         "--max-upload", "1M").start()
    try:
        proxy.wait_view(lambda s: s["leader"] is not None, timeout=30, what="a leader")
        declared = raw_exchange(proxy.port, (
            "POST /songs HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
            f"Content-Length: {64 * MIB}\r\nExpect: 100-continue\r\n\r\n").encode())
        streamed = raw_exchange(proxy.port, (
            b"POST /songs HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"),
            b"%x\r\n%s\r\n" % (MIB // 2, b"\0" * (MIB // 2)) * 6)
        small = make_wav(tmp_path / "small.wav", MIB // 2, seed=5).read_bytes()
        accepted = proxy.post("/songs", small, "audio/wav")
    finally:
        proxy.kill()

    for answer in (declared, streamed):
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"x-served-by" not in answer.lower()  # the proxy's own answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "too_large"
    assert b"100 Continue" not in declared
    assert accepted.status == 201, accepted.body  # a body under the limit goes through
    songs = cluster.nodes[3].get("/songs").json()
    assert songs["total"] == 2  # the seeded song and the small one: nothing else arrived


def test_an_upload_the_leader_refuses_unread_is_relayed_and_its_sending_stopped(
    tmp_path: Path, replicas: list[ReplicaProcess]
) -> None:
    """The leader refuses a body over its --max-upload (413) as soon as it reads the length,
    as it refuses one its full disk cannot hold (507), while the proxy is still sending it:
    the client gets the refusal, and the proxy stops sending before the request's end closes
    the spooled body (it read on, and logged "read of closed file" as critical)."""
    leader = ReplicaProcess(1, tmp_path, "--max-upload", "1M")
    replicas.append(leader)
    leader.start()
    proxy = ProxyProcess(tmp_path, [leader]).start()
    try:
        proxy.wait_view(lambda s: s["leader"] is not None, timeout=30, what="a leader")
        answer = proxy.post("/songs", bytes(32 * MIB), "audio/wav")
        # Another request: the reactor turns the sending of the first one would have failed at.
        assert proxy.status()["counters"]["requests"] == 1
        assert proxy.stop() in (0, -15)  # the whole log written
    finally:
        proxy.kill()

    assert answer.status == 413 and answer.headers["x-served-by"] == "1", answer.body
    assert answer.json()["error"] == "too_large"
    log = proxy.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "critical" not in log, log[-3000:]


@pytest.fixture
def guarded(tmp_path: Path, replicas: list[ReplicaProcess]) -> Iterator[Fronted]:
    with Fronted(tmp_path, replicas, auth=True, proxy_args=("--check-timeout", "3")) as running:
        yield running


def test_with_auth_on_the_proxy_follows_the_leader_by_signed_polls(guarded: Fronted) -> None:
    view = guarded.proxy.status()  # Fronted.start waited for it to follow the leader

    assert view["config"]["auth"] and view["config"]["signed_polls"]
    assert all(b["healthy"] and b["poll_failures"] == 0 for b in view["backends"])


def test_with_auth_on_the_proxy_views_answer_admins_only(guarded: Fronted) -> None:
    admin = guarded.admin()
    made = admin.send_json("POST", "/users", {"username": "lee", "password": "listener-pw-1",
                                              "role": "listener"})
    assert made.status == 201, made.body
    listener = guarded.log_in("lee", "listener-pw-1")

    assert guarded.proxy.get("/proxy/status").status == 401
    assert guarded.proxy.get("/metrics").status == 401
    assert listener.get("/proxy/status").status == 403
    assert admin.get("/proxy/status").json()["leader"] is not None
    assert admin.get("/metrics").status == 200
    assert listener.get("/songs").status == 200  # the replicas decide the rest


def test_a_bad_option_stops_the_proxy_with_one_clear_line() -> None:
    done = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "distpotify-proxy", "--backends", "127.0.0.1:1",
         "--write-hold", "soon"],
        capture_output=True, text=True, timeout=60, check=False,
    )

    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert output.strip().splitlines()[-1].endswith("bad value for --write-hold: got 'soon'")
    assert "Traceback" not in output


def test_a_busy_port_stops_the_proxy_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(TWISTD), "-n", "--pidfile=", f"--logfile={tmp_path / 'p.log'}",
             "distpotify-proxy", "--backends", "127.0.0.1:1", "--port", str(port),
             "--auth", "off"],
            capture_output=True, text=True, timeout=60, check=False,
        )

    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in (tmp_path / "p.log").read_text()
    assert "Traceback" not in (tmp_path / "p.log").read_text()


@pytest.mark.parametrize("auth", [[], ["--auth", "on"]], ids=["default", "auth-on"])
def test_auth_on_without_the_cluster_key_stops_the_proxy_with_one_clear_line(
        auth: list[str]) -> None:
    done = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "distpotify-proxy", "--backends", "127.0.0.1:1",
         *auth],
        capture_output=True, text=True, timeout=60, check=False,
    )

    output = done.stdout + done.stderr
    last = output.strip().splitlines()[-1]
    assert done.returncode != 0
    assert "--cluster-key-file is required (or DISTPOTIFY_CLUSTER_KEY_FILE)" in last
    assert "--auth off" in last
    assert "Traceback" not in output


def test_sigterm_stops_the_proxy_cleanly(cluster: Cluster) -> None:
    wait_until(lambda: cluster.proxy.get("/proxy/status").status == 200, what="the proxy")

    assert cluster.proxy.stop() in (0, -15)
