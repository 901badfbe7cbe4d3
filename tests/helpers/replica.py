"""Real replica processes for integration tests: start ``twistd distpotify``, talk HTTP, kill.

Everything binds to 127.0.0.1 on free ports; waits poll with a deadline, never sleep blindly.
The command line, the start, the wait and the stop come from distpotify.cli.processes,
shared with every other place that runs replicas.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs

from distpotify.cli import processes
from distpotify.cli.keygen import key_file_text
from distpotify.cli.processes import ReplicaCommand
from distpotify.keys import ClusterKeys
from distpotify.signing import body_sha256, sign

# The twistd script, for tests that run it by hand (with bad options, say).
TWISTD = Path(processes.twistd()[0])
T = TypeVar("T")

# Waits that include starting processes: a replica imports Twisted, Klein and treq in about
# a second on an idle machine, but up to ten times that when the CPUs are busy (CI runs
# beside other jobs). A longer deadline costs nothing when things work and still fails a hang.
STARTUP = 45.0


def _ephemeral_low() -> int:
    """The first port the kernel hands out for outgoing connections and bind(0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports for test processes to listen on come from below the kernel's ephemeral range. A port
# bind(0) returned and that was closed again is also the kernel's next pick for an outgoing
# connection: between free_port() and the replica's listen, another process's connect took
# one once in a full run ("Address already in use"). Below the range, only listeners compete,
# and this process never hands out a port twice.
_LISTEN_FLOOR = 10000
_handed_out: set[int] = set()


def _free(kind: socket.SocketKind) -> int:
    ceiling = _ephemeral_low()
    if ceiling - _LISTEN_FLOOR >= 1000:
        for _ in range(200):
            port = _LISTEN_FLOOR + int.from_bytes(os.urandom(4), "big") % (
                ceiling - _LISTEN_FLOOR)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, kind) as s:  # no room below the range: the kernel's
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port() -> int:
    return _free(socket.SOCK_STREAM)


def free_udp_port() -> int:
    return _free(socket.SOCK_DGRAM)


def make_key_file(path: Path) -> Path:
    """A new cluster key file at PATH (owner-only), unless there is one already."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key_file_text())
        path.chmod(0o600)
    return path


def key_lines(path: Path) -> list[str]:
    """The keys of a key file, without its comments: to build another one (a rotation)."""
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def wait_until(
    predicate: Callable[[], T | Literal[False] | None], timeout: float = 10.0,
    interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy (which is returned: never the
    None or False it returned meanwhile); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except (OSError, http.client.HTTPException):
            result = None  # type: ignore[assignment]
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return Response(
            answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        )
    finally:
        conn.close()


def peak_memory(pid: int) -> int:
    """The most resident memory process ``pid`` has ever had, in bytes (Linux VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def raw_exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send a request by hand; the answer up to its JSON body (or the connection's end)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        with contextlib.suppress(OSError):  # it may close once it has answered: read below
            sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def signed_request(port: int, key_file: Path, method: str, path: str, body: bytes = b"",
                   headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response:
    """``request``, signed with the cluster key in KEY_FILE as a replica signs (now)."""
    signature = sign(ClusterKeys.load(key_file), method.encode(), path.encode(),
                     body_sha256(body), time.time())
    signed = {**(headers or {}), **{k.decode(): v.decode() for k, v in signature.items()}}
    return request(port, method, path, body or None, signed, timeout)


def send_json(port: int, method: str, path: str, value: Any) -> Response:
    return request(port, method, path, json.dumps(value).encode(),
                   {"Content-Type": "application/json"})


def kernel_switches(*names: str) -> dict[str, str]:
    """``DISTPOTIFY_TEST_<NAME>`` of this test run as the children's ``DISTPOTIFY_<NAME>``:
    ``DISTPOTIFY_TEST_SPLICE=off make test`` runs every proxy without splicing, and
    ``DISTPOTIFY_TEST_SENDFILE=off`` every replica without sendfile (children get no other
    ``DISTPOTIFY_*`` of the run's environment)."""
    return {f"DISTPOTIFY_{name.upper()}": os.environ[f"DISTPOTIFY_TEST_{name.upper()}"]
            for name in names if f"DISTPOTIFY_TEST_{name.upper()}" in os.environ}


class ReplicaProcess:
    """One ``twistd -n distpotify`` process with its own data dir and log file.

    Its cluster key is ``key_file``; by default the file of its cluster name under ROOT, made
    on first use, so replicas of one cluster name under one root share a key. Setting the
    attribute to None before ``start`` leaves the option out (bench/keyless.py runs a tree
    from before the key so).
    """

    def __init__(
        self,
        node_id: int,
        root: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        cluster: str | None = None,
        heartbeat_port: int | None = None,
        key_file: Path | None = None,
    ):
        self.node_id = node_id
        self.data_dir = root / f"node{node_id}"
        self.log_path = root / f"node{node_id}.log"
        self.http_port = free_port()
        self.amp_port = free_port()
        # A lone replica gets a cluster (and heartbeat port) of its own.
        self.cluster = cluster or f"test-{os.getpid()}-{self.http_port}"
        self.heartbeat_port = heartbeat_port or free_udp_port()
        self.key_file: Path | None = key_file or make_key_file(root / f"{self.cluster}.key")
        self.extra = extra
        # --auth off unless EXTRA says --auth (processes.AUTH_OFF: most tests are not about
        # accounts); () leaves the option out (the replica's default; bench/keyless.py's
        # tree from before accounts).
        self.auth = processes.auth_off_unless_given(extra)
        self.env = {**kernel_switches("sendfile"), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        # Sent with every /status the helpers read: a --metrics-token bearer under --auth on.
        self.status_headers: dict[str, str] = {}

    def command(self) -> list[str]:
        return ReplicaCommand(
            node_id=self.node_id, data_dir=self.data_dir, http_port=self.http_port,
            amp_port=self.amp_port, cluster=self.cluster, multicast_port=self.heartbeat_port,
            cluster_key_file=self.key_file, extra=(*self.auth, *self.extra),
        ).argv(logfile=self.log_path)

    def start(self, wait: bool = True) -> ReplicaProcess:
        # In the test run's own session: an interrupted run takes its replicas with it.
        self.process = processes.spawn(self.command(), output=subprocess.PIPE, env=self.env,
                                       own_session=False)
        if wait:
            self.wait_ready()
        return self

    def status(self) -> dict[str, Any] | None:
        """/status, or None while the replica does not answer."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"replica exited {self.process.returncode}: {self.log()}")
        try:
            answer = self.get("/status", headers=self.status_headers, timeout=1.0)
        except (OSError, http.client.HTTPException):
            return None
        return answer.json() if answer.status == 200 else None  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float = STARTUP) -> dict[str, Any]:
        """Wait until the replica is ACTIVE (serves reads) and knows a leader (itself, when
        alone)."""

        def ready() -> dict[str, Any] | None:
            status = self.status()
            if status and status["state"] == "ACTIVE" and status["leader_id"] is not None:
                return status
            return None

        assert self.process is not None
        return processes.wait_ready(ready, what=f"replica {self.node_id} (ACTIVE, a leader known)",
                                    timeout=timeout, child=self.process, logs=[self.log_path],
                                    interval=0.02)

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 30.0
            ) -> Response:
        return request(self.http_port, "GET", path, headers=headers, timeout=timeout)

    def post(self, path: str, body: bytes, content_type: str) -> Response:
        return request(self.http_port, "POST", path, body, {"Content-Type": content_type})

    def signed(self, method: str, path: str, body: bytes = b"",
               headers: dict[str, str] | None = None) -> Response:
        """A request signed with this replica's cluster key, as another replica sends it."""
        assert self.key_file is not None
        return signed_request(self.http_port, self.key_file, method, path, body, headers)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def arm(self, *points: str) -> None:
        """Start next time with these failpoints armed to crash (none: disarmed)."""
        armed = ",".join(f"{point}:crash" for point in points)
        self.env = {**(self.env or {}), "DISTPOTIFY_FAILPOINTS": armed}

    def wait_crashed(self, timeout: float = 30.0) -> None:
        """Wait until an armed failpoint has killed the process (SIGKILL)."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"replica {self.node_id} did not crash: {self.log()}") from None
        assert code == -9, f"replica {self.node_id} exited {code}, not by a failpoint"

    def kill(self) -> None:
        """SIGKILL, the crash no code can intercept."""
        if self.process is not None:
            processes.kill(self.process, 10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait: a clean shutdown (SIGKILL if it takes longer than TIMEOUT)."""
        assert self.process is not None
        return processes.stop(self.process, timeout)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if self.process is not None and self.process.stdout and self.process.poll() is not None:
            text += self.process.stdout.read().decode(errors="replace")
        return text[-4000:]


@contextlib.contextmanager
def killed_at_end() -> Iterator[list[ReplicaProcess]]:
    """A list to put started replicas in; each is SIGKILLed when the block ends, whatever
    happened (the ``replicas`` fixture's, for fixtures of a wider scope)."""
    started: list[ReplicaProcess] = []
    try:
        yield started
    finally:
        for replica in started:
            replica.kill()


class Cluster:
    """Replicas of one cluster on 127.0.0.1: one cluster name, one heartbeat port, one key
    file (``key_file``), unless a replica is given another."""

    def __init__(self, root: Path, started: list[ReplicaProcess], *extra: str) -> None:
        self.root = root
        self.name = f"test-{os.getpid()}-{free_port()}"
        self.heartbeat_port = free_udp_port()
        self.extra = extra
        self._started = started
        self.nodes: dict[int, ReplicaProcess] = {}
        self.status_headers: dict[str, str] = {}  # given to every replica added

    @functools.cached_property
    def key_file(self) -> Path:
        # Made when first needed: a Cluster built only to read statuses leaves no file.
        return make_key_file(self.root / f"{self.name}.key")

    def add(self, node_id: int, *extra: str, start: bool = True, key_file: Path | None = None
            ) -> ReplicaProcess:
        """Replica NODE_ID of this cluster, with the cluster's key file unless KEY_FILE (a
        wrong key, two keys) is given."""
        node = ReplicaProcess(node_id, self.root, *self.extra, *extra, cluster=self.name,
                              heartbeat_port=self.heartbeat_port,
                              key_file=key_file or self.key_file)
        node.status_headers = self.status_headers
        self.nodes[node_id] = node
        self._started.append(node)
        if start:
            node.start(wait=False)
        return node

    def running(self) -> list[ReplicaProcess]:
        return [n for n in self.nodes.values() if n.process and n.process.poll() is None]

    def leader(self, timeout: float = STARTUP) -> ReplicaProcess:
        """The replica the running ones agree leads (``agreed_leader``), once they do."""
        status = wait_until(self.agreed_leader, timeout=timeout, what="a leader")
        return self.nodes[status["node_id"]]

    def statuses(self, nodes: list[ReplicaProcess] | None = None) -> dict[int, dict[str, Any]]:
        """/status of every answering replica (a stopped or paused one is left out)."""
        found = {}
        for node in nodes if nodes is not None else self.running():
            try:
                answer = node.get("/status", headers=node.status_headers, timeout=0.5)
            except (OSError, http.client.HTTPException):
                continue
            if answer.status == 200:
                found[node.node_id] = answer.json()
        return found

    def agreed_leader(self, nodes: list[ReplicaProcess] | None = None) -> dict[str, Any] | None:
        """The leader's /status once every given replica answers and names it, and the
        agreement is one Bully will keep; else None.

        Bully overturns an agreement while a replica holds an election (role candidate) or
        while a replica with a higher id than the leader is still JOINING: once ACTIVE it
        takes leadership over. Writes sent in between would get 421."""
        nodes = nodes if nodes is not None else self.running()
        statuses = self.statuses(nodes)
        if len(statuses) != len(nodes):
            return None
        leaders = {s["leader_id"] for s in statuses.values()}
        if len(leaders) != 1 or None in leaders:
            return None
        leader_id = leaders.pop()
        leader = statuses.get(leader_id)
        if not leader or leader["role"] != "leader":
            return None
        for node_id, status in statuses.items():
            if status["role"] == "candidate":
                return None
            if node_id > leader_id and status["state"] != "ACTIVE":
                return None
        return leader


def agreed_cluster(root: Path, started: list[ReplicaProcess], *extra: str) -> Cluster:
    """Replicas 1, 2 and 3 of one cluster, given EXTRA, started and agreed on a leader."""
    cluster = Cluster(root, started, *extra)
    for node_id in (1, 2, 3):
        cluster.add(node_id)
    cluster.leader()
    return cluster
