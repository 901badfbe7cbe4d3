"""The proxy and a replica facing clients that stall, as real processes on 127.0.0.1: 2,000
half-requests closed within the header timeout while a listener streams and new requests are
answered, a body that stalls cut, an idle keep-alive connection closed, a slow reader never
cut; the per-client and total connection caps; bounded request lines and headers.

The proxy under test runs with short timeouts (header 8 s, body 2 s, idle 3 s) so the rules
show in seconds, the header one long enough for all 2,000 to be open on a loaded machine
before the first times out; the caps are tested on proxies with the defaults. Client sockets
bind distinct loopback addresses (127.0.0.2, ...), which Linux routes to lo, to be distinct
clients.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.helpers.audio import make_wav
from tests.helpers.proxy import ProxyProcess
from tests.helpers.replica import STARTUP, ReplicaProcess, request, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MIB = 1024 * 1024
HEADER, BODY, IDLE = 8.0, 2.0, 3.0
TIMEOUTS = ("--header-timeout", str(HEADER), "--body-timeout", str(BODY),
            "--idle-timeout", str(IDLE))
SLACK = 1.0  # "within the timeout plus a second"
STALLED = 2000
PER_ADDRESS = 50  # stalled connections per source address: under the per-client cap of 64
HALF_REQUEST = b"GET /songs HTTP/1.1\r\nHost: music.example\r\nAccept: appl"
# Linux stamps each received segment with its arrival time (wall clock) when a socket asks
# with this option; Python's socket module names no constant for it.
SO_TIMESTAMPNS = 35


@attrs.frozen
class Stack:
    replica: ReplicaProcess
    proxy: ProxyProcess
    song: dict[str, Any]
    audio: bytes
    root: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One replica (leading itself) holding a 24 MiB song, and a proxy in front, both with
    the short timeouts."""
    root = tmp_path_factory.mktemp("timeouts")
    audio = make_wav(root / "long.wav", 24 * MIB, seed=21).read_bytes()
    replica = ReplicaProcess(1, root, *TIMEOUTS)
    proxy = ProxyProcess(root, [replica], *TIMEOUTS)
    try:
        replica.start()
        answer = request(replica.http_port, "POST", "/songs", audio,
                         {"Content-Type": "audio/wav"}, timeout=120)
        assert answer.status == 201, answer.body
        proxy.start()
        proxy.wait_view(lambda s: (s["leader"] or {}).get("node_id") == 1, timeout=STARTUP)
        yield Stack(replica, proxy, answer.json()["song"], audio, root)
    finally:
        proxy.kill()
        replica.kill()


def client_socket(port: int, source: str = "127.0.0.1", timeout: float = 10.0
                  ) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 30.0) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock``, and what it sent before."""
    started = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            received += data
    return time.monotonic() - started, received


def received_at(sock: socket.socket) -> tuple[bytes, float | None]:
    """What ``sock`` has received, and when the kernel saw it arrive (SO_TIMESTAMPNS on)."""
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(16))
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", raw[:16])
            return data, seconds + nanoseconds / 1e9
    return data, None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def ensure_open_files(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Accepts(threading.Thread):
    """When a server took connections from its accept queue, as far as its descriptor count
    shows, looked at every 10 ms until it holds ``count`` more than at the start (give or
    take the few descriptors of its pooled upstream connections) or ``stop``."""

    def __init__(self, pid: int, count: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.count = count
        self.base = open_files(pid)
        self.looks: list[tuple[float, int]] = []  # (when, connections held then)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            looked = time.time()
            with contextlib.suppress(OSError):  # the server gone: the test's asserts say so
                held = open_files(self.pid) - self.base
                self.looks.append((looked, held))
                if held >= self.count - 4:
                    return

    def stop(self) -> None:
        self.done.set()
        self.join(10)

    def not_before(self, index: int) -> float:
        """The last moment the connection opened ``index``-th (from 0) was seen not yet
        accepted (the queue is first in, first out), or 0."""
        return max((looked for looked, held in self.looks if held <= index), default=0.0)


class Peak(threading.Thread):
    """The most descriptors and resident memory a process was seen holding, sampled every
    200 ms from start to ``stop``: on a loaded machine the first stalled connections may time
    out before the test opening the last of them could look."""

    def __init__(self, proxy: ProxyProcess) -> None:
        super().__init__(daemon=True)
        assert proxy.process is not None
        self.pid = proxy.process.pid
        self.proxy = proxy
        self.descriptors = 0
        self.memory = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            with contextlib.suppress(OSError):  # the proxy gone: the test's asserts say so
                self.descriptors = max(self.descriptors, open_files(self.pid))
                self.memory = max(self.memory, self.proxy.rss())

    def stop(self) -> None:
        self.done.set()
        self.join(10)


class Listener(threading.Thread):
    """A GET of the song through the proxy, read at a listener's pace (64 KiB every 20 ms)
    until ``hurry`` is set, then as fast as it comes; records the longest wait for data."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.sock = client_socket(port, timeout=30)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        self.hurry = threading.Event()
        self.received = bytearray()
        self.longest_wait = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                waited = time.monotonic()
                data = self.sock.recv(64 * 1024)
                self.longest_wait = max(self.longest_wait, time.monotonic() - waited)
                if not data:
                    return
                self.received += data
                if not self.hurry.is_set():
                    time.sleep(0.02)
        except BaseException as e:
            self.error = e
        finally:
            self.sock.close()

    def body(self) -> bytes:
        head, _, body = bytes(self.received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        return body


# slowloris


def test_2000_stalled_half_requests_are_closed_within_the_header_timeout(stack: Stack) -> None:
    ensure_open_files(STALLED + 1000)
    proxy = stack.proxy
    assert proxy.process is not None
    listener = Listener(proxy.port, f"/songs/{stack.song['id']}/stream")
    listener.start()
    wait_until(lambda: len(listener.received) > MIB, timeout=20, what="the listener to start")
    descriptors_before = open_files(proxy.process.pid)
    accepts = Accepts(proxy.process.pid, STALLED)

    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    peak = Peak(proxy)
    peak.start()
    accepts.start()
    try:
        for n in range(STALLED):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((f"127.0.0.{2 + n // PER_ADDRESS}", 0))
            sock.connect(("127.0.0.1", proxy.port))
            opened[sock] = time.time()
            sock.sendall(HALF_REQUEST)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            if (n + 1) % PER_ADDRESS == 0:
                # About 2,000 a second: a faster burst only waits longer in the kernel's
                # accept queue, before the proxy (and any timer of it) knows of it.
                time.sleep(0.02)
        connecting = time.time() - min(opened.values())

        # The proxy holds them all (this request waits behind them in the accept queue),
        # and still answers.
        asked = time.monotonic()
        answer = proxy.get("/proxy/status", timeout=5)
        answered_in = time.monotonic() - asked
        assert answer.status == 200
        connections = answer.json()["connections"]

        # Each counted from when the proxy had it: on a loaded machine the kernel can queue
        # a connection for seconds before the proxy, short of CPU, accepts it, and no
        # server's timer runs before that.
        accepts.join(HEADER)
        for index, sock in enumerate(opened):
            opened[sock] = max(opened[sock], accepts.not_before(index))

        # A connection is closed when its 408 arrived, as the kernel stamped it (the close
        # follows it at once): this process, itself short of CPU on a loaded machine, may
        # read it late. One closed without an answer counts when this process sees it.
        closed: dict[socket.socket, float] = {}
        answers: dict[socket.socket, bytes] = {}
        arrived: dict[socket.socket, float] = {}
        deadline = time.monotonic() + HEADER + 30
        while len(closed) < STALLED and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data, stamp = received_at(sock)
                except ConnectionResetError:
                    data, stamp = b"", None
                if data:
                    answers[sock] = answers.get(sock, b"") + data
                    arrived[sock] = stamp or time.time()
                    continue
                closed[sock] = arrived.get(sock, time.time()) - opened[sock]
                selector.unregister(sock)
    finally:
        accepts.stop()
        peak.stop()
        selector.close()
        for sock in opened:
            sock.close()
    listener.hurry.set()
    listener.join(60)

    assert connections["open"] >= STALLED, f"connecting took {connecting:.2f} s"
    assert peak.descriptors >= descriptors_before + STALLED
    assert len(closed) == STALLED, f"{STALLED - len(closed)} stalled connections still open"
    slowest = max(closed.values())
    assert slowest <= HEADER + SLACK, (f"the slowest was closed after {slowest:.2f} s"
                                       f" (load average {os.getloadavg()[0]:.1f})")
    assert len(answers) == STALLED
    assert all(answer.startswith(b"HTTP/1.1 408 Request Timeout") for answer in answers.values())
    assert answered_in < HEADER
    assert listener.error is None and sha256(listener.body()) == sha256(stack.audio)
    assert listener.longest_wait < HEADER
    after = proxy.get("/proxy/status").json()["connections"]
    assert after["timed_out"]["header"] >= STALLED
    print(f"\n{STALLED} stalled (connected in {connecting:.2f} s): proxy held"
          f" {peak.descriptors} descriptors ({descriptors_before} before),"
          f" {peak.memory / MIB:.1f} MiB resident;"
          f" slowest close {slowest:.2f} s; /proxy/status in {answered_in * 1000:.0f} ms;"
          f" listener's longest wait {listener.longest_wait * 1000:.0f} ms")


# bodies, idle connections, slow readers


def test_a_body_that_stalls_longer_than_the_body_timeout_is_cut(stack: Stack) -> None:
    sock = client_socket(stack.proxy.port)
    sock.sendall(b"POST /playlists HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n{")  # then one byte every 2 x BODY: too slow

    elapsed, answer = read_until_closed(sock, timeout=4 * BODY)

    assert BODY - 0.1 <= elapsed <= BODY + SLACK
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    playlists = stack.proxy.get("/playlists").json()["playlists"]
    assert playlists == []


def test_a_body_that_trickles_but_keeps_coming_is_accepted(stack: Stack) -> None:
    body = b'{"name": "slow but steady"}'
    sock = client_socket(stack.proxy.port, timeout=30)
    sock.sendall(b"POST /playlists HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    started = time.monotonic()
    for byte in body:
        sock.sendall(bytes([byte]))
        time.sleep(BODY / 8)

    _, answer = read_until_closed(sock)

    assert time.monotonic() - started > 2 * BODY  # longer in all than the body timeout
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert b"slow but steady" in answer


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(stack: Stack) -> None:
    sock = client_socket(stack.proxy.port)
    sock.sendall(b"GET /proxy/status HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    rest = head.partition(b"\r\n\r\n")[2]
    while len(rest) < length:
        rest += sock.recv(65536)

    elapsed, more = read_until_closed(sock)

    assert more == b""  # closed silently: no 408 to a connection with no request
    assert IDLE - 0.1 <= elapsed <= IDLE + SLACK


def test_a_slow_reader_of_a_long_song_is_not_cut(stack: Stack) -> None:
    sock = client_socket(stack.proxy.port, timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET /songs/{stack.song['id']}/stream HTTP/1.1\r\nHost: x\r\n"
                 "Connection: close\r\n\r\n".encode())
    received = sock.recv(MIB)
    for _ in range(2):  # a paused listener: longer each time than every timeout
        time.sleep(HEADER + BODY + IDLE)
        received += sock.recv(MIB)

    _, rest = read_until_closed(sock)

    body = (received + rest).partition(b"\r\n\r\n")[2]
    assert sha256(body) == sha256(stack.audio)


def test_the_replica_times_out_a_stalled_request_too(stack: Stack) -> None:
    stalled = client_socket(stack.replica.http_port)
    stalled.sendall(HALF_REQUEST)
    silent = client_socket(stack.replica.http_port)

    for sock, answer in ((stalled, b"HTTP/1.1 408"), (silent, b"")):
        elapsed, received = read_until_closed(sock)
        assert elapsed <= HEADER + SLACK and received.startswith(answer)
    metrics = stack.replica.get("/metrics").body
    assert b'distpotify_http_timeouts_total{phase="header"}' in metrics


# request line and header sizes


def raw(port: int, data: bytes) -> bytes:
    sock = client_socket(port)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)
    return read_until_closed(sock)[1]


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /" + b"a" * 17_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    (b"GET /songs HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 17_000 + b"\r\n\r\n", b"431"),
    (b"GET /songs HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-%d: %s\r\n" % (n, b"a" * 1000) for n in range(17)) + b"\r\n", b"400"),
    (b"GET /songs HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-%d: a\r\n" % n for n in range(501)) + b"\r\n", b"400"),
])
def test_request_lines_and_headers_are_bounded(stack: Stack, head: bytes, status: bytes
                                               ) -> None:
    for port in (stack.proxy.port, stack.replica.http_port):
        assert raw(port, head).startswith(b"HTTP/1.1 " + status), port


def test_headers_within_the_bounds_reach_the_replica(stack: Stack) -> None:
    answer = stack.proxy.get("/songs", headers={"Cookie": "a" * 12_000})

    assert answer.status == 200 and answer.headers["x-served-by"] == "1"


# connection caps


def connect_unless_refused(port: int, source: str) -> socket.socket | None:
    """A connection from ``source``, or None if the proxy refused it before connect()
    returned: on a loaded machine its reset can come before this process wakes up."""
    try:
        return client_socket(port, source)
    except ConnectionResetError:
        return None


def raw_from(port: int, source: str) -> bytes:
    sock = client_socket(port, source)
    sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return read_until_closed(sock)[1]


def test_the_65th_connection_from_one_address_is_refused_while_another_is_served(
    stack: Stack, tmp_path: Path
) -> None:
    proxy = ProxyProcess(tmp_path, [stack.replica]).start()  # the defaults: 64 per client
    held: list[socket.socket] = []
    try:
        proxy.wait_view(lambda s: s["leader"] is not None, timeout=STARTUP)
        held = [client_socket(proxy.port, "127.0.0.2") for _ in range(64)]

        refused = connect_unless_refused(proxy.port, "127.0.0.2")
        elapsed, answer = 0.0, b""
        if refused is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                refused.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            elapsed, answer = read_until_closed(refused, timeout=10)
        other = raw_from(proxy.port, "127.0.0.3")

        assert answer == b"" and elapsed < 2  # closed at once, unanswered
        assert other.startswith(b"HTTP/1.1 200 OK")
        assert proxy.status()["connections"]["open"] == 64 + 1  # and this request's own
        metrics = proxy.get("/metrics").body
        assert b'distpotify_proxy_connections_refused_total{cap="per_client"} 1.0' in metrics

        held.pop().close()  # a slot comes free
        wait_until(lambda: proxy.status()["connections"]["open"] == 63 + 1, timeout=10,
                   what="the proxy to see the connection go")
        assert raw_from(proxy.port, "127.0.0.2").startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in held:
            sock.close()
        proxy.kill()


@contextlib.contextmanager
def open_files_limit(soft: int) -> Iterator[None]:
    """Children started inside get ``soft`` as their open-files limit."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def is_closed(sock: socket.socket | None) -> bool:
    """Whether the server has closed ``sock`` (None: refused as it connected), without
    waiting."""
    if sock is None:
        return True
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_the_total_cap_follows_the_open_files_limit(stack: Stack, tmp_path: Path) -> None:
    with open_files_limit(200):
        proxy = ProxyProcess(tmp_path, [stack.replica]).start()
    sockets: list[socket.socket | None] = []
    try:
        proxy.wait_view(lambda s: s["leader"] is not None, timeout=STARTUP)
        cap = proxy.status()["connections"]["max_total"]
        assert cap == (200 - 64) // 2
        assert f"at most {cap} in all (open-files limit 200)" in proxy.log()

        # Ten more than the cap, 20 per address (no per-client cap in the way).
        sockets = [connect_unless_refused(proxy.port, f"127.0.0.{2 + n // 20}")
                   for n in range(cap + 10)]
        wait_until(lambda: sum(map(is_closed, sockets[cap - 1:])) >= 10, timeout=10,
                   what="the connections over the cap to be closed")
        refused = [n for n, sock in enumerate(sockets) if is_closed(sock)]

        # The last ones, in the order they came; one more if a /status connection of a
        # moment ago was still counted.
        assert refused == list(range(len(sockets) - len(refused), len(sockets)))
        assert len(refused) in (10, 11)
        for sock in sockets[:5]:
            assert sock is not None
            sock.close()
        metrics = wait_until(lambda: metrics_if_answered(proxy), timeout=10,
                             what="/metrics once below the cap")
        assert metrics is not None
        assert f"distpotify_proxy_connections_max {cap}.0".encode() in metrics
        assert (b'distpotify_proxy_connections_refused_total{cap="total"} %d.0' % len(refused)
                in metrics)
    finally:
        for sock in sockets:
            if sock is not None:
                sock.close()
        proxy.kill()


def metrics_if_answered(proxy: ProxyProcess) -> bytes | None:
    try:
        answer = proxy.get("/metrics", timeout=2)
    except OSError:
        return None
    return answer.body if answer.status == 200 else None
