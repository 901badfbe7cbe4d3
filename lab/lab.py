"""The network-namespace lab: replicas as real processes on hosts of their own, on one bridge.

A ``Lab`` builds a namespace per replica (``n1``, ``n2``, ...; ``px`` for the proxy) on the
private 10.77.0.0/24 of ``network.py`` (node N is 10.77.0.N, the proxy 10.77.0.200), starts
``twistd distpotify`` in each with the same ports as in containers (HTTP 8000, AMP 9000,
heartbeats 7946, TTL 1) and one cluster key (``cluster.key`` in its dir), and removes
everything it made when closed, even after a failure or a signal; ``clean_stale_labs`` (run
by every new lab) removes what a SIGKILLed run left.
The root namespace gets no interface, address or route: a client reaches a replica from
inside some host's namespace (``Lab.client``; by hand ``ip netns exec <namespace> curl
http://10.77.0.2:8000/status``). Faults are in ``nemesis.py``, scenarios in ``scenarios.py``,
the command line (``python -m lab``, ``make lab``) in ``__main__.py``.
"""
# test-case-name: tests.lab.test_lab

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from distpotify.accounts import FIRST_ADMIN as ADMIN_NAME
from distpotify.cli import processes
from distpotify.cli.cluster import ADMIN_PASSWORD, ensure_key_file
from distpotify.cli.processes import (
    AUTH_OFF,
    ProxyCommand,
    ReplicaCommand,
    auth_off_unless_given,
)
from distpotify.keys import ClusterKeys
from lab.client import Answer, LabClient
from lab.disk import Disk, unmount_under
from lab.netns import LabError, list_netns, netns_exec
from lab.network import Host, LabNetwork, remove_namespaces

LAB_BASE = Path("/tmp/distpotify-lab")
HTTP_PORT = 8000
AMP_PORT = 9000
PROXY_PORT = 8080
PROXY_INDEX = 200
MAX_NODES = 9
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
REPLICA_KINDS = ("auto", "twistd", "standin")
LISTENER_NAME = "lab-listener"  # the account the lab makes beside the first admin
_NAME = re.compile(r"^(dpl[0-9a-f]{4})-(\d+)-([a-z0-9]+)$")
_DIR_NAME = re.compile(r"^(dpl[0-9a-f]{4})-(\d+)$")

Echo = Callable[[str], None]


def echo_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@attrs.define
class Replica:
    """A replica's host, files and current process (None while it is down)."""

    node_id: int
    host: Host
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    disk: Disk | None = None  # the replica's own small tmpfs, when the lab gives it one

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@functools.cache
def twistd_plugins() -> frozenset[str]:
    """The ``twistd`` subcommands this environment offers (``distpotify``, ...)."""
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    try:
        return frozenset(maker.tapname for maker in getPlugins(IServiceMaker))
    except Exception:  # a half-written plugin must not break the lab's other work
        return frozenset()


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def clean_stale_labs(echo: Echo = echo_stderr, base: Path = LAB_BASE) -> list[str]:
    """Remove the namespaces, processes and files of labs whose owner process is gone."""
    stale: dict[str, list[str]] = {}
    for name in list_netns():
        match = _NAME.match(name)
        if match and not _pid_alive(int(match.group(2))):
            stale.setdefault(f"{match.group(1)}-{match.group(2)}", []).append(name)
    for lab, names in sorted(stale.items()):
        echo(f"removing stale lab {lab}: {' '.join(names)}")
        remove_namespaces(names)
    if base.is_dir():
        for entry in base.iterdir():
            match = _DIR_NAME.match(entry.name)
            if match and not _pid_alive(int(match.group(2))):
                unmount_under(entry)
                shutil.rmtree(entry, ignore_errors=True)
    return sorted(stale)


class Lab:
    """A lab of NODES replicas (and optionally the proxy); use it as a context manager."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        base_dir: Path | None = None,
        replica: str = "auto",
        shaper: str = "auto",
        proxy: bool = False,
        replica_args: Iterable[str] = (),
        keep_files: bool = False,
        echo: Echo = echo_stderr,
        ready_timeout: float = READY_TIMEOUT,
        disk_size: int | None = None,
        auth: bool = False,
        admin_password: str | None = None,
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise LabError(f"a lab has 1 to {MAX_NODES} replicas, not {nodes}")
        if replica not in REPLICA_KINDS:
            raise LabError(f"unknown replica kind {replica!r}; use one of {REPLICA_KINDS}")
        self.node_count = nodes
        self.base_dir = base_dir or LAB_BASE
        self.replica_kind = replica
        self.shaper = shaper
        self.want_proxy = proxy
        self.replica_args = tuple(replica_args)
        self.keep_files = keep_files
        self.echo = echo
        self.ready_timeout = ready_timeout
        self.disk_size = disk_size  # bytes of tmpfs per replica (the disk-full fault); None: none
        self.auth = auth  # --auth on for the replicas and the proxy (accounts enforced)
        # Given, the leader makes the first admin with it (DISTPOTIFY_ADMIN_PASSWORD, as the
        # Compose file does), the lab logs in as that admin once started, and every client
        # it makes sends that session (``credentials``).
        self.admin_password = admin_password
        self.credentials: dict[str, str] = {}
        # With an admin, the lab also makes a listener account (LISTENER_NAME, a random
        # password) and logs in as it: one writer of the random run works as that account.
        self.listener_credentials: dict[str, str] = {}
        self.prefix = ""
        self.dir = Path()
        self.network: LabNetwork | None = None
        self.replicas: dict[int, Replica] = {}
        self.proxy: Host | None = None
        self.proxy_process: subprocess.Popen[bytes] | None = None
        self._started = time.monotonic()
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self if self.network is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> Lab:
        """Build the network, start every replica and wait until each answers /status."""
        if self.network is not None or self._closed:
            raise LabError("a Lab starts once; make a new one")
        clean_stale_labs(self.echo)
        taken = {name.split("-")[0] for name in list_netns()}
        self.prefix = next(p for p in iter(lambda: f"dpl{secrets.token_hex(2)}", None)
                           if p not in taken)
        self.dir = self.base_dir / f"{self.prefix}-{os.getpid()}"
        self.dir.mkdir(parents=True)
        ensure_key_file(self.key_file)
        atexit.register(self.close)
        try:
            self.network = LabNetwork(self.prefix, self.dir, shaper=self.shaper)
            self.network.create()
            if self.replica_kind == "auto":
                self.replica_kind = "twistd" if "distpotify" in twistd_plugins() else "standin"
            for node_id in range(1, self.node_count + 1):
                host = self.network.add_host(f"n{node_id}", node_id)
                disk = None
                if self.disk_size is not None:
                    disk = Disk(self.dir / f"node{node_id}.disk", self.disk_size)
                    disk.create()
                self.replicas[node_id] = Replica(
                    node_id, host, disk.data_dir if disk else self.dir / f"node{node_id}",
                    self.dir / f"node{node_id}.log", disk=disk,
                )
            if self.want_proxy:
                self.proxy = self.network.add_host("px", PROXY_INDEX)
            self.echo(
                f"lab {self.prefix}: {self.node_count} x {self.replica_kind} replica on "
                f"{self.network.subnet}, slow via {self.network.shaper}, files in {self.dir}"
            )
            self._started = time.monotonic()
            for node_id in self.replicas:
                self.start_replica(node_id, wait=False)
            self.wait_ready(self.replicas)
            if self.want_proxy:
                self.start_proxy()
            if self.admin_password is not None:
                self.credentials = self._sign_in(ADMIN_NAME, self.admin_password)
                password = secrets.token_urlsafe(18)
                self._make_listener(password)
                self.listener_credentials = self._sign_in(LISTENER_NAME, password)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every process, delete every namespace and (unless kept) the lab's files."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for replica in self.replicas.values():
            _kill(replica.process)
        _kill(self.proxy_process)
        if self.network is not None:
            self.network.destroy()
        for replica in self.replicas.values():
            if replica.disk is not None:
                replica.disk.destroy()
        if not self.keep_files and self.dir != Path():
            shutil.rmtree(self.dir, ignore_errors=True)
        self.echo(f"lab {self.prefix}: removed")

    def clock(self) -> float:
        """Seconds since the replicas were first started: the time line of every report."""
        return time.monotonic() - self._started

    # -- replicas -------------------------------------------------------------------------

    @property
    def key_file(self) -> Path:
        """The cluster key every replica of the lab holds."""
        return self.dir / "cluster.key"

    def replica_command(self, replica: Replica) -> list[str]:
        command = ReplicaCommand(
            node_id=replica.node_id, data_dir=replica.data_dir, host="0.0.0.0",
            advertise_host=replica.host.address, http_port=HTTP_PORT, amp_port=AMP_PORT,
            cluster=self.prefix, cluster_size=self.node_count,
            multicast_interface=replica.host.address, multicast_ttl=1,
            cluster_key_file=self.key_file,
            extra=(*(("--auth", "on") if self.auth else auth_off_unless_given(self.replica_args)),
                   *self.replica_args),
        )
        if self.replica_kind == "standin":
            return [sys.executable, "-m", "lab.standin", *command.options()]
        return command.argv(logfile=replica.log)

    def start_replica(self, node_id: int, wait: bool = True) -> None:
        replica = self.replicas[node_id]
        if replica.running:
            raise LabError(f"node {node_id} is already running")
        _kill(replica.process)
        replica.data_dir.mkdir(parents=True, exist_ok=True)
        replica.process = self._spawn(
            replica.host, self.replica_command(replica), self.dir / f"node{node_id}.out",
            {} if self.admin_password is None else {ADMIN_PASSWORD: self.admin_password})
        replica.paused = False
        if wait:
            self.wait_ready([node_id])

    def stop_replica(self, node_id: int, graceful: bool = True) -> None:
        """SIGTERM (then SIGKILL after a deadline) or straight SIGKILL; reaps the process."""
        replica = self.replicas[node_id]
        if replica.process is not None:
            if graceful:
                processes.stop(replica.process, STOP_TIMEOUT)
            else:
                processes.kill(replica.process, STOP_TIMEOUT)
        replica.process = None
        replica.paused = False

    def signal_replica(self, node_id: int, signum: int) -> None:
        replica = self.replicas[node_id]
        if not replica.running:
            raise LabError(f"node {node_id} is not running")
        assert replica.process is not None
        replica.process.send_signal(signum)
        if signum in (signal.SIGSTOP, signal.SIGCONT):
            replica.paused = signum == signal.SIGSTOP

    def wait_ready(self, node_ids: Iterable[int], timeout: float | None = None) -> None:
        """Poll each replica's /status from its own host until it answers 200."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        for node_id in sorted(node_ids):
            replica = self.replicas[node_id]
            if replica.process is None:
                raise LabError(f"node {node_id} is not running")
            self._wait(
                functools.partial(self.status, node_id, 1.0), f"node {node_id}",
                deadline - time.monotonic(), replica.process,
                [self.dir / f"node{node_id}.out", replica.log],
            )

    def status(self, node_id: int, timeout: float = 1.0) -> dict[str, Any] | None:
        """The replica's /status, asked from its own host; None when it does not answer."""
        host = self.replicas[node_id].host
        # With --auth on only a cluster-signed request may read /status.
        keys = ClusterKeys.load(self.key_file) if self.auth else None
        try:
            answer = self.client(host).get_json(host.address, HTTP_PORT, "/status", timeout,
                                                keys=keys)
        except (OSError, ValueError):
            return None
        return answer if isinstance(answer, dict) else None

    def client(self, host: Host | int, timeout: float = 5.0) -> LabClient:
        """An HTTP client on HOST (a Host or a node id): as if running on that machine."""
        if isinstance(host, int):
            host = self.replicas[host].host
        return LabClient(host.netns, timeout, self.credentials)

    def _entries(self) -> list[tuple[Host, int]]:
        """Where the lab's own requests go: the proxy when there is one, else each replica in
        turn, the highest id first (the leader, once the cluster has settled)."""
        if self.proxy is not None:
            return [(self.proxy, PROXY_PORT)]
        return [(self.replicas[n].host, HTTP_PORT) for n in sorted(self.replicas, reverse=True)]

    def _until(self, what: str, attempt: Callable[[Host, int], Answer]) -> Answer:
        """``attempt`` at each entry in turn until one answers 2xx (a login refused until the
        account is made and replicated, a write a follower sends to the leader with 421),
        for up to ``ready_timeout``."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            for host, port in self._entries():
                try:
                    answer = attempt(host, port)
                except OSError as exc:
                    refused = f"{type(exc).__name__}: {exc}"
                    continue
                if 200 <= answer.status < 300:
                    return answer
                refused = f"HTTP {answer.status}"
            if time.monotonic() > deadline:
                raise LabError(f"{what} not done within {self.ready_timeout:.0f} s: {refused}")
            time.sleep(0.2)

    def _sign_in(self, username: str, password: str) -> dict[str, str]:
        """Log in as USERNAME once the replica asked holds the account (any replica that
        holds it takes a login): the ``Authorization`` header of that session."""
        body = json.dumps({"username": username, "password": password}).encode()
        answer = self._until(f"a login as {username}", lambda host, port: self.client(
            host).request("POST", host.address, port, "/auth/login", body,
                          {"Content-Type": "application/json"}, timeout=2.0))
        self.echo(f"lab {self.prefix}: logged in as {username}")
        return {"Authorization": f"Bearer {answer.json()['token']}"}

    def _make_listener(self, password: str) -> None:
        """The admin makes the listener account, under one Idempotency-Key however often it
        is sent."""
        body = json.dumps({"username": LISTENER_NAME, "password": password,
                           "role": "listener"}).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
        self._until(f"the account {LISTENER_NAME}", lambda host, port: self.client(
            host).request("POST", host.address, port, "/users", body, headers, timeout=5.0))

    # -- proxy ----------------------------------------------------------------------------

    def start_proxy(self) -> None:
        if self.proxy is None:
            raise LabError("this lab was built without a proxy host (Lab(proxy=True))")
        proxy = self.proxy
        backends = [f"{r.host.address}:{HTTP_PORT}" for r in self.replicas.values()]
        command = ProxyCommand(backends=backends, host="0.0.0.0", port=PROXY_PORT,
                               extra=("--auth", "on", "--cluster-key-file", str(self.key_file))
                               if self.auth else AUTH_OFF)
        self.proxy_process = self._spawn(proxy, command.argv(logfile=self.dir / "proxy.log"),
                                         self.dir / "proxy.out")
        client = self.client(proxy)

        def answers() -> bool:
            client.request("GET", proxy.address, PROXY_PORT, "/proxy/status", timeout=1.0)
            return True

        self._wait(answers, "the proxy", self.ready_timeout, self.proxy_process,
                   [self.dir / "proxy.out", self.dir / "proxy.log"])

    def _spawn(self, host: Host, command: list[str], out: Path,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return processes.spawn(netns_exec(host.netns, *command), output=out,
                               env={"PYTHONUNBUFFERED": "1", **(env or {})}, cwd=self.dir)

    def _wait(self, probe: Callable[[], object], what: str, timeout: float,
              process: subprocess.Popen[bytes], logs: list[Path]) -> None:
        try:
            processes.wait_ready(probe, what=what, timeout=max(0.0, timeout), child=process,
                                 logs=logs, interval=0.1)
        except processes.ChildError as exc:
            raise LabError(str(exc)) from None


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        processes.kill(process, STOP_TIMEOUT)
