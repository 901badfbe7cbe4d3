"""The proxy under test: in memory against scripted fake replicas, or as a real process.

In memory (unit tests): ``ProxyHarness`` runs the real Site, root and ProxyResource on a
``StringTransport`` with a ``Clock``; ``FakeReplica`` answers ``/status`` and serves bytes with
ETag/Range/If-Range, and can refuse, drop, hang, answer a fixed status (with extra headers,
or as a bare page without X-Served-By, as something in front of a replica would), answer
before it has read the request body, cut or stall a body, ignore Range, or send another
ETag; ``three_replicas`` makes followers 1 and 2 and leader 3 of them. Real processes
(integration tests): ``ProxyProcess`` runs ``twistd distpotify-proxy`` like ``ReplicaProcess``
runs a replica; ``seed_data_dir`` makes a replica data dir holding songs, to copy into several
replicas so they hold the same ids.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from distpotify.auth.ratelimit import LoginLimiter
from distpotify.cli import processes
from distpotify.cli.processes import ProxyCommand
from proxy.auth import AdminCheck, LoginLimit
from proxy.backends import BackendView
from proxy.config import ProxyConfig
from proxy.limits import ConnectionLimits
from proxy.resource import Counters, ProxyResource
from proxy.site import ProxyRoot, ProxySite
from tests.helpers.replica import (
    ReplicaProcess,
    Response,
    free_port,
    kernel_switches,
    request,
    wait_until,
)

CLIENT_IP = "192.0.2.7"


# ---------------------------------------------------------------- fake replicas


@attrs.define
class Sent:
    """One request as a fake replica received it."""

    method: bytes
    path: bytes
    headers: Headers
    body: bytes | None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode())
        return values[-1].decode() if values else None


@attrs.define(eq=False)
class FakeReplica:
    """A scripted replica. ``content`` is served (with Range) on every GET path by default."""

    node_id: int
    role: str = "follower"
    state: str = "ACTIVE"
    epoch: int = 1
    leader_id: int | None = None
    leader_http: str | None = None
    peers: list[dict[str, Any]] = attrs.Factory(list)
    content: bytes = b""
    etag: str = '"e1"'
    down: bool = False
    drop: bool = False
    hang: bool = False
    status_code: int | None = None
    status_body: bytes = b""
    headers: dict[str, str] = attrs.Factory(dict)
    bare: bool = False
    cut_after: int | None = None
    stall_after: int | None = None
    ignore_range: bool = False
    block: int = 4096
    # Answer once this many request body bytes arrived, as a replica refusing a body it cannot
    # store (413, 507) does: the Agent then leaves the body's producer running. ``body_read``
    # counts what it wrote, ``body_failures`` how it failed (the Agent logs them as critical).
    answer_after: int | None = None
    body_read: int = 0
    body_failures: list[Failure] = attrs.Factory(list)
    received: list[Sent] = attrs.Factory(list)
    responses: list[FakeResponse] = attrs.Factory(list)
    pending: list[Deferred[IResponse]] = attrs.Factory(list)
    cancelled: int = 0
    # path -> (status, headers, JSON body): fixed answers for some paths (/auth/me, ...)
    paths: dict[str, tuple[int, dict[str, str], Any]] = attrs.Factory(dict)

    @property
    def url(self) -> str:
        return f"http://10.0.0.{self.node_id}:800{self.node_id}"

    def status(self) -> Deferred[dict[str, Any]]:
        if self.down:
            return fail(ConnectionRefusedError())
        return succeed({
            "node_id": self.node_id, "role": self.role, "state": self.state,
            "epoch": self.epoch, "leader_id": self.leader_id, "leader_http": self.leader_http,
            "peers": self.peers, "http": self.url,
        })

    def handle(self, sent: Sent) -> Deferred[IResponse]:
        self.received.append(sent)
        if self.down:
            return fail(ConnectionRefusedError())
        if self.drop:  # a pooled connection to a process that died: lost, the request sent
            return fail(ResponseNeverReceived([Failure(ConnectionLost())]))
        if self.hang:
            d: Deferred[IResponse] = Deferred(self._cancelled)
            self.pending.append(d)
            return d
        fixed = self.paths.get(sent.path.decode().partition("?")[0])
        if fixed is not None:
            code, extra, value = fixed
            response = FakeResponse(self, code, {"Content-Type": "application/json",
                                                 **extra},
                                    json.dumps(value).encode())
            self.responses.append(response)
            return succeed(response)
        if self.status_code is not None:
            headers = {"Content-Type": "text/html" if self.bare else "application/json",
                       **self.headers}
            response = FakeResponse(self, self.status_code, headers, self.status_body)
        else:
            response = self._serve(sent)
        self.responses.append(response)
        return succeed(response)

    def _cancelled(self, d: Deferred[IResponse]) -> None:
        # As the Agent does: the connection is aborted and the cancellation arrives wrapped.
        self.cancelled += 1
        d.errback(ResponseNeverReceived([Failure(CancelledError())]))

    def _serve(self, sent: Sent) -> FakeResponse:
        size = len(self.content)
        headers = {"ETag": self.etag, "Accept-Ranges": "bytes", "Content-Type": "audio/mpeg"}
        wanted = sent.header("Range")
        if_range = sent.header("If-Range")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted or "")
        if match is None or self.ignore_range or (if_range and if_range != self.etag):
            return FakeResponse(self, 200, headers, self.content)
        first_text, last_text = match.groups()
        if not first_text:
            first, last = max(0, size - int(last_text)), size - 1
        else:
            first = int(first_text)
            last = min(int(last_text), size - 1) if last_text else size - 1
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return FakeResponse(self, 206, headers, self.content[first:last + 1])


def three_replicas(content: bytes = b"", /, **leader: Any) -> list[FakeReplica]:
    """Followers 1 and 2 and leader 3, all serving ``content`` and naming 3 their leader;
    ``leader``: the leader's attributes that differ (its ``content`` too)."""
    nodes = [FakeReplica(1, content=content), FakeReplica(2, content=content),
             FakeReplica(3, **{"role": "leader", "content": content, **leader})]
    for node in nodes:
        node.leader_id, node.leader_http = 3, nodes[2].url
    return nodes


@implementer(IResponse)
class FakeResponse:
    """A response whose body flows block by block, only while its reader is not paused."""

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, replica: FakeReplica, code: int, headers: dict[str, str], body: bytes
                 ) -> None:
        self.replica = replica
        self.code = code
        self.phrase = {200: b"OK", 206: b"Partial Content"}.get(code, b"Status")
        all_headers = {"Connection": "keep-alive", "Keep-Alive": "timeout=5", **headers}
        if not replica.bare:
            all_headers["X-Served-By"] = str(replica.node_id)
        self.headers = Headers({k.encode(): [v.encode()] for k, v in all_headers.items()})
        self.length = len(body)
        self.body = body
        self.sent = 0
        self.paused = False
        self.closed = False
        self.protocol: Any = None

    def setPreviousResponse(self, response: IResponse) -> None:
        raise NotImplementedError

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(FakeBodyTransport(self))
        self.pump()

    def pump(self) -> None:
        replica = self.replica
        while not self.paused and not self.closed:
            if replica.cut_after is not None and self.sent >= replica.cut_after:
                self.end(Failure(ResponseFailed([Failure(ConnectionLost())])))
                return
            if replica.stall_after is not None and self.sent >= replica.stall_after:
                return
            if self.sent >= len(self.body):
                self.end(Failure(ResponseDone()))
                return
            limit = len(self.body)
            for bound in (replica.cut_after, replica.stall_after):
                if bound is not None:
                    limit = min(limit, bound)
            block = self.body[self.sent:min(self.sent + replica.block, limit)]
            self.sent += len(block)
            self.protocol.dataReceived(block)

    def end(self, reason: Failure) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(reason)


class FakeBodyTransport:
    """What the Agent gives a body protocol: a pausable producer over the connection."""

    def __init__(self, response: FakeResponse) -> None:
        self.response = response
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.pauses += 1
        self.response.paused = True

    def resumeProducing(self) -> None:
        self.response.paused = False
        self.response.pump()

    def stopProducing(self) -> None:
        self.response.end(Failure(ResponseFailed([Failure(ConnectionDone())])))

    def loseConnection(self) -> None:
        self.stopProducing()


@implementer(IAgent)
class FakeAgent:
    """Routes each request to the FakeReplica whose URL it starts with; reads request bodies."""

    def __init__(self, replicas: list[FakeReplica], clock: Clock) -> None:
        self.replicas = {replica.url: replica for replica in replicas}
        self.clock = clock

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        match = re.match(rb"^(http://[^/]+)(/.*)$", uri)
        assert match is not None, uri
        replica = self.replicas[match.group(1).decode()]
        body = self._read(bodyProducer, replica)
        return replica.handle(Sent(method, match.group(2), headers or Headers(), body))

    def _read(self, producer: IBodyProducer | None, replica: FakeReplica) -> bytes | None:
        """The request body, whole; or its first ``answer_after`` bytes, the producer then
        left running (it reads on at the next turns of the clock), as the Agent leaves it
        after an early answer."""
        if producer is None:
            return None
        consumer = _Collector(replica, producer)
        done = producer.startProducing(consumer)
        done.addErrback(replica.body_failures.append)
        for _ in range(10_000):
            if done.called or consumer.paused:
                break
            self.clock.advance(0)
        assert done.called or consumer.paused, "the request body producer never finished"
        if consumer.paused:
            producer.resumeProducing()
        return b"".join(consumer.parts)


@implementer(IConsumer)
class _Collector:
    """Takes a request body for ``replica``; pauses its producer once ``answer_after`` bytes
    arrived, as a full socket buffer would, so that the answer comes before the rest."""

    def __init__(self, replica: FakeReplica, producer: IBodyProducer) -> None:
        self.replica = replica
        self.producer = producer
        self.parts: list[bytes] = []
        self.size = 0
        self.paused = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.replica.body_read += len(data)
        self.parts.append(data)
        self.size += len(data)
        limit = self.replica.answer_after
        if limit is not None and self.size >= limit and not self.paused:
            self.paused = True
            self.producer.pauseProducing()


# ---------------------------------------------------------------- the proxy in memory


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool

    def json(self) -> Any:
        return json.loads(self.body)


class ClientTransport(StringTransport):
    """A client socket with a buffer of ``limit`` bytes: past it, the proxy is paused (as a
    real transport pauses its producer) until the client reads."""

    def __init__(self, limit: int | None) -> None:
        super().__init__(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
                         peerAddress=IPv4Address("TCP", CLIENT_IP, 40000))
        self.limit = limit
        self.received = b""
        self.full = False
        self.pauses = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.limit is not None and not self.full and len(self.io.getvalue()) > self.limit:
            self.full = True
            self.pauses += 1
            self.producer.pauseProducing()

    def read(self) -> int:
        """The client takes everything buffered; a paused proxy is resumed."""
        data = self.io.getvalue()
        self.received += data
        self.clear()
        if self.full:
            self.full = False
            self.producer.resumeProducing()
        return len(data)

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class ClientConnection:
    """One client connection to the in-memory proxy; ``answer()`` parses what it received."""

    def __init__(self, harness: ProxyHarness, limit: int | None = None) -> None:
        self.harness = harness
        self.transport = ClientTransport(limit)
        self.channel = harness.site.buildProtocol(IPv4Address("TCP", CLIENT_IP, 40000))
        assert self.channel is not None
        self.channel.makeConnection(self.transport)

    def send(self, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes = b"") -> ClientConnection:
        lines = [f"{method} {path} HTTP/1.1", "Host: proxy.example"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        self.channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        self.harness.settle()
        return self

    @property
    def aborted(self) -> bool:
        return self.transport.aborted

    def read(self) -> int:
        """Take what the proxy has written so far (resuming it if it was paused)."""
        taken = self.transport.read()
        self.harness.settle()
        return taken

    def read_all(self, rounds: int = 100_000) -> Answer:
        for _ in range(rounds):
            if not self.read() and not self.transport.full:
                break
        return self.answer()

    def go_away(self) -> None:
        self.channel.connectionLost(Failure(ConnectionLost()))
        self.harness.settle()

    def answer(self) -> Answer:
        return parse_response(self.transport.received + self.transport.value())


def parse_response(raw: bytes) -> Answer:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body, complete = b"", False
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                complete = True
                break
            body, rest = body + rest[:size], rest[size + 2:]
        return Answer(status, headers, body, complete)
    length = int(headers.get("content-length", "0"))
    return Answer(status, headers, rest, len(rest) == length)


class ProxyHarness:
    """The proxy's Site, root and resource over fake replicas, driven by a Clock."""

    def __init__(self, replicas: list[FakeReplica], *, auth: bool = False, **options: Any
                 ) -> None:
        self.clock = Clock()
        self.replicas = replicas
        self.agent = FakeAgent(replicas, self.clock)
        urls = tuple(replica.url for replica in replicas)
        # --auth off unless a test of accounts says on (it then gives cluster_keys too)
        self.config = ProxyConfig(backends=urls, auth=auth, **options)
        by_url = {replica.url: replica for replica in replicas}
        self.view = BackendView(
            urls, lambda url: by_url[url].status(), self.clock,
            poll_interval=self.config.poll_interval,
            health_max_age=self.config.health_max_age,
            check_timeout=self.config.check_timeout,
        )
        self.counters = Counters()
        cooperator = Cooperator(scheduler=lambda f: self.clock.callLater(0, f))
        self.resource = ProxyResource(self.view, self.agent, self.clock, self.config,
                                      self.counters, cooperator=cooperator)
        self.limits = ConnectionLimits(self.config.max_connections_per_client, None,
                                       self.config.trusted_proxies)
        admin_check = None
        if self.config.auth:
            assert self.config.cluster_keys is not None
            admin_check = AdminCheck(self.view, self.agent, self.clock, self.config.cluster_keys,
                                     self.config.metrics_token)
        self.logins = LoginLimiter(self.clock)
        login = LoginLimit(self.resource, self.logins, self.counters.count)
        root = ProxyRoot(self.resource, self.report, self.config.web_dir,
                         admin_check=admin_check, login=login)
        self.site = ProxySite(root,
                              max_body=self.config.max_upload, clock=self.clock,
                              timeouts=self.config.timeouts, limits=self.limits,
                              trusted_proxies=self.config.trusted_proxies, reactor=self.clock)
        self.poll()

    def report(self) -> dict[str, Any]:
        """What ProxyService.report gives /proxy/status and /metrics, less its config."""
        return {**self.view.snapshot(), "counters": attrs.asdict(self.counters),
                "connections": {**self.limits.snapshot(),
                                "timed_out": dict(self.site.timeouts_expired)}}

    def poll(self) -> None:
        self.view.poll_all()
        self.settle()

    def settle(self) -> None:
        for _ in range(20):
            self.clock.advance(0)

    def connect(self, limit: int | None = None) -> ClientConnection:
        return ClientConnection(self, limit)

    def get(self, path: str, headers: dict[str, str] | None = None, limit: int | None = None
            ) -> ClientConnection:
        return self.connect(limit).send("GET", path, headers)

    def post(self, path: str, body: bytes, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> ClientConnection:
        return self.connect().send("POST", path, {"Content-Type": content_type, **(headers or {})},
                                   body)


# ---------------------------------------------------------------- real processes


class ProxyProcess:
    """One ``twistd -n distpotify-proxy`` process in front of the given replicas."""

    def __init__(self, root: Path, replicas: list[ReplicaProcess], *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.log_path = root / "proxy.log"
        self.backends = ",".join(f"127.0.0.1:{replica.http_port}" for replica in replicas)
        self.extra = extra
        # --auth off unless EXTRA says --auth, as ReplicaProcess (processes.AUTH_OFF); ()
        # leaves the option out (the proxy's default)
        self.auth = processes.auth_off_unless_given(extra)
        self.env = {**kernel_switches("splice"), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        # Sent with every /proxy/status the helpers read: a --metrics-token under --auth on.
        self.status_headers: dict[str, str] = {}

    def command(self) -> list[str]:
        return ProxyCommand(backends=self.backends.split(","), port=self.port,
                            extra=(*self.auth, *self.extra)).argv(logfile=self.log_path)

    def start(self) -> ProxyProcess:
        # In the test run's own session, as ReplicaProcess: an interrupted run takes it along.
        self.process = processes.spawn(self.command(), output=subprocess.PIPE, env=self.env,
                                       own_session=False)
        return self

    def wait_view(self, predicate: Callable[[dict[str, Any]], bool],
                  timeout: float = 20.0, what: str = "the proxy's view") -> dict[str, Any]:
        """Poll /proxy/status until ``predicate`` holds for it."""

        def ready() -> dict[str, Any] | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"proxy exited {self.process.returncode}: {self.log()}")
            answer = self.get("/proxy/status", self.status_headers, timeout=2.0)
            status = answer.json() if answer.status == 200 else None
            return status if status is not None and predicate(status) else None

        return wait_until(ready, timeout, what=what)

    def status(self) -> dict[str, Any]:
        return self.get("/proxy/status", self.status_headers,  # type: ignore[no-any-return]
                        timeout=5.0).json()

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 30.0
            ) -> Response:
        return request(self.port, "GET", path, headers=headers, timeout=timeout)

    def post(self, path: str, body: bytes, content_type: str, timeout: float = 60.0
             ) -> Response:
        return request(self.port, "POST", path, body, {"Content-Type": content_type},
                       timeout=timeout)

    def rss(self) -> int:
        """Resident memory of the proxy process, in bytes (Linux /proc)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/<pid>/status")

    def stop(self, timeout: float = 15.0) -> int | None:
        assert self.process is not None
        return processes.stop(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None:
            processes.kill(self.process, 10)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if self.process is not None and self.process.stdout and self.process.poll() is not None:
            text += self.process.stdout.read().decode(errors="replace")
        return text[-4000:]


def seed_data_dir(root: Path, uploads: list[tuple[bytes, str]], *extra: str
                  ) -> tuple[Path, list[dict[str, Any]]]:
    """A replica data dir holding ``uploads`` (bytes, content type): (its path, the songs).

    Copied into several replicas' data dirs before they start, it makes them hold the same
    songs under the same ids, as replication would.
    """
    seed = ReplicaProcess(1, root, *extra)
    try:
        seed.start(wait=False)
        seed.wait_ready(timeout=60)
        songs = []
        for data, content_type in uploads:
            answer = request(seed.http_port, "POST", "/songs", data,
                             {"Content-Type": content_type}, timeout=180)
            assert answer.status == 201, answer.body
            songs.append(answer.json()["song"])
        seed.stop()
    finally:
        seed.kill()
    return seed.data_dir, songs


def clone_data_dir(seed: Path, replica: ReplicaProcess) -> ReplicaProcess:
    shutil.copytree(seed, replica.data_dir)
    return replica
