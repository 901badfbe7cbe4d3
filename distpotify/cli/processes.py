"""The twistd command lines of a replica and of the proxy, and the child processes running them.

``distpotify-cluster``, the lab, the test helpers and the benchmarks all run replicas and
proxies as children: this module builds ``twistd -n --pidfile= ...`` for them, starts a child,
waits until it answers, stops it (SIGTERM, then SIGKILL) and shows the end of its log.
"""
# test-case-name: tests.unit.test_cli_processes, tests.integration.test_cli_processes

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import attrs

STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
TAIL_LINES = 15
T = TypeVar("T")

# What a probe raises while its child is still starting: a refused connection, a half-sent
# answer, a body that is not JSON yet.
_STARTING = (OSError, http.client.HTTPException, ValueError)

Output = Path | int  # a file to append to, or subprocess.DEVNULL or PIPE


class ChildError(Exception):
    """A child exited, or did not get ready in time; the message says which, with the end of
    its log."""


# ---------------------------------------------------------------- command lines


def twistd() -> list[str]:
    """The argv that starts twistd: the script beside this Python (a venv's), else the one on
    PATH, else this Python calling twistd's entry point."""
    beside = Path(sys.executable).with_name("twistd")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("twistd")
    if found is not None:
        return [found]
    # Not ``-m twisted``: that is ``twist``, which knows neither -n nor --pidfile.
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd_command(plugin: str, *options: str, logfile: Path | None = None) -> list[str]:
    """``twistd -n --pidfile= [--logfile=LOGFILE] PLUGIN OPTIONS...``.

    In the foreground, since the caller supervises it; with no pid file, since one left behind
    by a killed child would stop the next start. Without LOGFILE twistd logs to its stdout.
    """
    logging = [] if logfile is None else [f"--logfile={logfile}"]
    return [*twistd(), "-n", "--pidfile=", *logging, plugin, *options]


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


# What the test helpers, the benchmarks and the lab give every replica and proxy they start
# unless its options name --auth themselves (the tests of accounts say on): they are not about
# accounts, and their clients do not log in, as on a trusted network (docs/operations.md).
AUTH_OFF = ("--auth", "off")


def auth_off_unless_given(options: Iterable[str]) -> tuple[str, ...]:
    """AUTH_OFF, or nothing if OPTIONS set --auth already."""
    given = any(o == "--auth" or o.startswith("--auth=") for o in options)
    return () if given else AUTH_OFF


@attrs.frozen(kw_only=True)
class ReplicaCommand:
    """``twistd distpotify`` for one replica, its options in the order of these fields.

    An option left None keeps the replica's own default; EXTRA comes last, so it may also
    override one set here.
    """

    node_id: int
    data_dir: Path
    host: str | None = None
    advertise_host: str | None = None
    http_port: int
    amp_port: int
    cluster: str | None = None
    cluster_size: int | None = None
    multicast_port: int | None = None
    multicast_interface: str | None = None
    multicast_ttl: int | None = None
    cluster_key_file: Path | None = None
    extra: tuple[str, ...] = attrs.field(default=(), converter=_strings)

    def options(self) -> list[str]:
        named = attrs.asdict(self, filter=lambda field, _: field.name != "extra",
                             recurse=False)
        return [*_flags(named), *self.extra]

    def argv(self, logfile: Path | None = None) -> list[str]:
        return twistd_command("distpotify", *self.options(), logfile=logfile)


@attrs.frozen(kw_only=True)
class ProxyCommand:
    """``twistd distpotify-proxy`` on PORT in front of BACKENDS (``HOST:PORT`` each)."""

    backends: tuple[str, ...] = attrs.field(converter=_strings)
    host: str | None = None
    port: int
    extra: tuple[str, ...] = attrs.field(default=(), converter=_strings)

    def options(self) -> list[str]:
        named = {"host": self.host, "port": self.port, "backends": ",".join(self.backends)}
        return [*_flags(named), *self.extra]

    def argv(self, logfile: Path | None = None) -> list[str]:
        return twistd_command("distpotify-proxy", *self.options(), logfile=logfile)


def _flags(options: Mapping[str, object]) -> list[str]:
    """``--option-name value`` for each option given (None leaves it out), in order."""
    flags = []
    for name, value in options.items():
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


# ---------------------------------------------------------------- children


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``DISTPOTIFY_*``, plus EXTRA: a child is configured
    by its command line, never by whatever the caller's shell happens to hold."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTPOTIFY_")}
    return {**env, **(extra or {})}


def spawn(
    argv: Sequence[str],
    *,
    output: Output = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    own_session: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ARGV with no stdin, its stdout and stderr together into OUTPUT (a Path is appended
    to: a child restarted under the same name keeps its earlier output), with ``child_env(ENV)``.

    In a session of its own a Ctrl-C typed in the terminal reaches only the caller, which then
    stops its children in order; test helpers keep theirs in the caller's session instead, so
    an interrupted test run takes its children with it.
    """
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(output, "ab")) if isinstance(output, Path) else output
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
            env=child_env(env), start_new_session=own_session,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM (a clean shutdown), then SIGKILL if it outlives TIMEOUT; its exit status."""
    _terminate(process)
    return _reap(process, time.monotonic() + timeout)


def kill(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGKILL, the crash no code can intercept; its exit status once reaped, None if it is
    still there after TIMEOUT (stuck in the kernel)."""
    if process.poll() is None:
        process.kill()
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        # A paused (SIGSTOPped) child acts on the SIGTERM only once it runs again.
        process.send_signal(signal.SIGCONT)


def _reap(process: subprocess.Popen[bytes], deadline: float) -> int | None:
    try:
        return process.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return kill(process)


def wait_ready(
    probe: Callable[[], T | None],
    *,
    what: str,
    timeout: float,
    child: subprocess.Popen[bytes] | None = None,
    logs: Sequence[Path] = (),
    interval: float = POLL_INTERVAL,
) -> T:
    """Poll PROBE (``/status``, say) until it returns something truthy, and return that.

    A probe that raises as a starting server makes it (refused, cut, not JSON) counts as not
    ready yet. ChildError as soon as CHILD exits, or once TIMEOUT has passed, with the end of
    every file in LOGS.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if child is not None and child.poll() is not None:
            raise ChildError(f"{what} exited with status {child.returncode}{tails(logs)}")
        try:
            result = probe()
        except _STARTING as e:
            last, result = e, None
        if result:
            return result
        if time.monotonic() > deadline:
            why = "" if last is None else f" (last: {last!r})"
            raise ChildError(f"{what} did not get ready in {timeout:.3g} s{why}{tails(logs)}")
        time.sleep(interval)


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last LINES lines of a log file, or why there are none."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e.strerror})"


def tails(paths: Iterable[Path], lines: int = TAIL_LINES) -> str:
    """The end of each log, each under its name: what an error message about a child shows."""
    return "".join(f"\n--- {path}\n{tail(path, lines)}" for path in paths)


@attrs.frozen
class Child:
    """A supervised child: its name in messages, its process, and the log that tells its story."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    argv: tuple[str, ...] = ()
    output: Output = subprocess.DEVNULL
    env: Mapping[str, str] | None = None

    def exit_message(self, restartable: bool = False) -> str:
        """What to tell the user once it has exited: its status, and how to start it again:
        Enter, when its supervisor reads a terminal (``restartable``), else the command line
        (from a shell, without the variables its supervisor set, and unsupervised)."""
        how = ("Press Enter to start it again." if restartable else
               "To start it again, in another terminal in this directory:"
               f" {shlex.join(self.argv)}")
        return f"{self.name} exited (status {self.process.returncode}); the others go on. {how}"


class Supervisor:
    """Named children started one by one and stopped together, the last started first.

    Each child's LOG is where its story is (twistd's ``--logfile``, or its OUTPUT file): error
    messages about it end with that log's last lines.
    """

    def __init__(self, cwd: Path | None = None) -> None:
        self.cwd = cwd
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], log: Path,
              output: Output = subprocess.DEVNULL, env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as the child ``name``, with ``env`` added to its environment."""
        process = spawn(argv, output=output, cwd=self.cwd, env=env)
        self.children.append(Child(name, process, log, tuple(argv), output, env))
        return process

    def restart(self, child: Child) -> subprocess.Popen[bytes]:
        """Start an exited CHILD again as it was started: its name, command, log and
        environment; supervised again from now on."""
        return self.start(child.name, child.argv, child.log, child.output, child.env)

    def check(self, process: subprocess.Popen[bytes]) -> None:
        """ChildError, with the end of its log, if our child PROCESS has exited."""
        child = self._find(process)
        if process.poll() is not None:
            raise ChildError(f"{child.name} exited with status {process.returncode}"
                             f"{tails([child.log])}")

    def wait_ready(self, probe: Callable[[], T | None], *, what: str, timeout: float,
                   interval: float = POLL_INTERVAL) -> T:
        """``wait_ready`` for the children as a whole: ChildError, with the end of its log, as
        soon as one of them has exited."""

        def checked() -> T | None:
            for child in self.children:
                self.check(child.process)
            return probe()

        return wait_ready(checked, what=what, timeout=timeout, interval=interval)

    def exited(self) -> Iterator[Child]:
        """The children that have exited since the last look; they are forgotten."""
        for child in list(self.children):
            if child.process.poll() is not None:
                self.children.remove(child)
                yield child

    def stop(self, process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT
             ) -> int | None:
        self.children.remove(self._find(process))
        return stop(process, timeout)

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every child at once (the last started first), then SIGKILL whichever still
        runs when TIMEOUT has passed."""
        children, self.children = list(reversed(self.children)), []
        for child in children:
            _terminate(child.process)
        deadline = time.monotonic() + timeout
        for child in children:
            _reap(child.process, deadline)

    def _find(self, process: subprocess.Popen[bytes]) -> Child:
        for child in self.children:
            if child.process is process:
                return child
        raise ValueError(f"process {process.pid} is not one of this supervisor's children")
