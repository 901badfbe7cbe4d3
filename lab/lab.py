"""The network-namespace lab: replicas as real processes on hosts of their own, on one bridge.

A ``Lab`` builds a namespace per replica (``n1``, ``n2``, ...; ``px`` for the proxy) on the
private 10.77.0.0/24 of ``network.py`` (node N is 10.77.0.N, the proxy 10.77.0.200), starts
``twistd distpotify`` in each with the same ports as in containers (HTTP 8000, AMP 9000,
heartbeats 7946, TTL 1), and removes everything it made when closed, even after a failure or
a signal; ``clean_stale_labs`` (run by every new lab) removes what a SIGKILLed run left.
The root namespace gets no interface, address or route: a client reaches a replica from
inside some host's namespace (``Lab.client``; by hand ``ip netns exec <namespace> curl
http://10.77.0.2:8000/status``). Faults are in ``nemesis.py``, scenarios in ``scenarios.py``.

    python -m distpotify.testing.lab scenario follower-crash    # or: make lab SCENARIO=...
    python -m distpotify.testing.lab list | check | clean | up
"""
# test-case-name: tests.lab.test_lab

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from distpotify.testing.client import LabClient
from distpotify.testing.netns import LabError, list_netns, netns_exec, unavailable_reason
from distpotify.testing.network import Host, LabNetwork, remove_namespaces

LAB_BASE = Path("/tmp/distpotify-lab")
HTTP_PORT = 8000
AMP_PORT = 9000
PROXY_PORT = 8080
PROXY_INDEX = 200
MAX_NODES = 9
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
REPLICA_KINDS = ("auto", "twistd", "standin")
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


def _twistd() -> str:
    found = shutil.which("twistd", path=str(Path(sys.executable).parent)) or shutil.which(
        "twistd"
    )
    if found is None:
        raise LabError("twistd is not installed in this environment")
    return found


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
        atexit.register(self.close)
        try:
            self.network = LabNetwork(self.prefix, self.dir, shaper=self.shaper)
            self.network.create()
            if self.replica_kind == "auto":
                self.replica_kind = "twistd" if "distpotify" in twistd_plugins() else "standin"
            for node_id in range(1, self.node_count + 1):
                host = self.network.add_host(f"n{node_id}", node_id)
                self.replicas[node_id] = Replica(
                    node_id, host, self.dir / f"node{node_id}", self.dir / f"node{node_id}.log"
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
        if not self.keep_files and self.dir != Path():
            shutil.rmtree(self.dir, ignore_errors=True)
        self.echo(f"lab {self.prefix}: removed")

    def clock(self) -> float:
        """Seconds since the replicas were first started: the time line of every report."""
        return time.monotonic() - self._started

    # -- replicas -------------------------------------------------------------------------

    def replica_command(self, replica: Replica) -> list[str]:
        options = [
            "--node-id", str(replica.node_id), "--data-dir", str(replica.data_dir),
            "--host", "0.0.0.0", "--advertise-host", replica.host.address,
            "--http-port", str(HTTP_PORT), "--amp-port", str(AMP_PORT),
            "--cluster", self.prefix,
            "--multicast-interface", replica.host.address, "--multicast-ttl", "1",
            *self.replica_args,
        ]
        if self.replica_kind == "standin":
            return [sys.executable, "-m", "distpotify.testing.standin", *options]
        return [_twistd(), "-n", "--pidfile=", f"--logfile={replica.log}", "distpotify",
                *options]

    def start_replica(self, node_id: int, wait: bool = True) -> None:
        replica = self.replicas[node_id]
        if replica.running:
            raise LabError(f"node {node_id} is already running")
        _kill(replica.process)
        replica.data_dir.mkdir(parents=True, exist_ok=True)
        replica.process = self._spawn(replica.host, self.replica_command(replica),
                                      self.dir / f"node{node_id}.out")
        replica.paused = False
        if wait:
            self.wait_ready([node_id])

    def stop_replica(self, node_id: int, graceful: bool = True) -> None:
        """SIGTERM (then SIGKILL after a deadline) or straight SIGKILL; reaps the process."""
        replica = self.replicas[node_id]
        process = replica.process
        if process is not None and process.poll() is None and graceful:
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)
        _kill(process)
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
        waiting = set(node_ids)
        while waiting:
            for node_id in sorted(waiting):
                replica = self.replicas[node_id]
                if not replica.running:
                    raise LabError(f"node {node_id} exited while starting:\n{self.tail(node_id)}")
                if self.status(node_id, timeout=1.0) is not None:
                    waiting.discard(node_id)
            if waiting and time.monotonic() > deadline:
                raise LabError(f"nodes {sorted(waiting)} did not answer /status in time:\n"
                               + "\n".join(self.tail(n) for n in sorted(waiting)))
            if waiting:
                time.sleep(0.1)

    def status(self, node_id: int, timeout: float = 1.0) -> dict[str, Any] | None:
        """The replica's /status, asked from its own host; None when it does not answer."""
        host = self.replicas[node_id].host
        try:
            answer = self.client(host).get_json(host.address, HTTP_PORT, "/status", timeout)
        except (OSError, ValueError):
            return None
        return answer if isinstance(answer, dict) else None

    def client(self, host: Host | int, timeout: float = 5.0) -> LabClient:
        """An HTTP client on HOST (a Host or a node id): as if running on that machine."""
        if isinstance(host, int):
            host = self.replicas[host].host
        return LabClient(host.netns, timeout)

    def tail(self, node_id: int, lines: int = 15) -> str:
        text = []
        for path in (self.dir / f"node{node_id}.out", self.replicas[node_id].log):
            if path.exists():
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  node{node_id}| {line}" for line in text)

    # -- proxy ----------------------------------------------------------------------------

    def start_proxy(self) -> None:
        if self.proxy is None:
            raise LabError("this lab was built without a proxy host (Lab(proxy=True))")
        backends = ",".join(f"{r.host.address}:{HTTP_PORT}" for r in self.replicas.values())
        command = [_twistd(), "-n", "--pidfile=", f"--logfile={self.dir / 'proxy.log'}",
                   "distpotify-proxy", "--host", "0.0.0.0", "--port", str(PROXY_PORT),
                   "--backends", backends]
        self.proxy_process = self._spawn(self.proxy, command, self.dir / "proxy.out")
        deadline = time.monotonic() + self.ready_timeout
        client = self.client(self.proxy)
        while True:
            if self.proxy_process.poll() is not None:
                out = (self.dir / "proxy.out").read_text(errors="replace")
                raise LabError(f"the proxy exited while starting:\n{out[-2000:]}")
            try:
                client.request("GET", self.proxy.address, PROXY_PORT, "/proxy/status",
                               timeout=1.0)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise LabError("the proxy did not answer in time") from None
                time.sleep(0.1)

    def _spawn(self, host: Host, command: list[str], out: Path) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTPOTIFY_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(out, "ab") as output:
            return subprocess.Popen(
                netns_exec(host.netns, *command),
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                cwd=self.dir, env=env, start_new_session=True,
            )


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT)


# -- command line -----------------------------------------------------------------------------


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    from distpotify.testing import scenarios  # here: scenarios import this module

    parser = argparse.ArgumentParser(
        prog="python -m distpotify.testing.lab",
        description="Run Distpotify replicas in network namespaces and inject faults.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("scenario", help="run a scenario and print its report")
    run.add_argument("name", choices=sorted(scenarios.SCENARIOS))
    run.add_argument("--nodes", type=int, default=3)
    run.add_argument("--out", type=Path, help="where the report and logs go")
    run.add_argument("--replica", choices=REPLICA_KINDS, default="twistd")
    run.add_argument("--shaper", choices=("auto", "netem", "delayline"), default="auto")
    run.add_argument("--entry", default="leader", help="leader, proxy or a node id")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--convergence-timeout", type=float, default=30.0,
                     help="seconds the replicas get to agree once the faults end")
    run.add_argument("--replica-args", default="",
                     help='extra replica options, e.g. "--anti-entropy-interval 2"')
    commands.add_parser("list", help="list the scenarios")
    commands.add_parser("check", help="say whether the lab can run on this machine")
    commands.add_parser("clean", help="remove labs left behind by killed runs")
    up = commands.add_parser("up", help="start a lab and keep it until Ctrl-C")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--replica", choices=REPLICA_KINDS, default="auto")
    up.add_argument("--hold", type=float, default=3600.0, help="seconds before it is removed")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, scenario in sorted(scenarios.SCENARIOS.items()):
            print(f"{name:28} {scenario.summary}")
        return 0
    reason = unavailable_reason()
    if args.command == "check":
        print(reason or "the lab can run here")
        return 2 if reason else 0
    if reason:
        print(f"cannot run the lab: {reason}", file=sys.stderr)
        return 2
    # Whatever stops the command, the lab is removed on the way out (Lab.close in finally).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    if args.command == "clean":
        removed = clean_stale_labs()
        print(f"removed {len(removed)} stale lab(s)")
        return 0
    if args.command == "up":
        with Lab(args.nodes, replica=args.replica) as lab:
            for replica in lab.replicas.values():
                print(f"node {replica.node_id}: ip netns exec {replica.host.netns} "
                      f"curl http://{replica.host.address}:{HTTP_PORT}/status")
            print(f"Ctrl-C (or {args.hold:.0f} s) removes the lab", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait(args.hold)
        return 0
    try:
        report = scenarios.run(
            args.name, nodes=args.nodes, out=args.out, replica=args.replica,
            shaper=args.shaper, entry=args.entry, seed=args.seed,
            replica_args=shlex.split(args.replica_args),
            convergence_timeout=args.convergence_timeout,
        )
    except KeyboardInterrupt:
        print("interrupted: the lab was removed, no report", file=sys.stderr)
        return 130
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
