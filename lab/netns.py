"""Thin, checked wrappers around iproute2 and setns(2) for the lab.

Everything that touches the kernel's network configuration goes through ``ip()`` here, so
one place shows every command the lab runs; sockets are opened inside a namespace with
``socket_in`` instead of running the test process itself in a namespace.
"""
# test-case-name: tests.lab.test_network

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
COMMAND_TIMEOUT = 15.0

_libc = ctypes.CDLL(None, use_errno=True)


class LabError(Exception):
    """The lab could not do what was asked; the message says what and why."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``, return its stdout; LabError with its stderr when it fails."""
    return run(["ip", *args], check=check)


def run(argv: list[str], check: bool = True) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def netns_exec(netns: str, *argv: str) -> list[str]:
    """The argv that runs ARGV inside NETNS."""
    return ["ip", "netns", "exec", netns, *argv]


def list_netns() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    """Processes whose network namespace is NETNS (empty when it is gone)."""
    out = ip("netns", "pids", netns, check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def netns_inode(netns: str) -> int:
    """The namespace's identity, as ``/proc/<pid>/ns/net`` shows it (``net:[inode]``)."""
    return os.stat(os.path.join(NETNS_DIR, netns)).st_ino


def processes_in_netns_inodes(inodes: set[int]) -> list[int]:
    """Every process whose network namespace is one of INODES, deleted namespaces included."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            inode = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if inode in inodes:
            found.append(int(entry))
    return found


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the body with the calling thread (only) inside NETNS.

    A socket belongs for life to the namespace it was created in, so the body should only
    create sockets; the thread is back in its own namespace as soon as the block ends.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def socket_in(
    netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket living in NETNS, as if a process on that host had opened it."""
    with entered(netns):
        return socket.socket(family, kind)


def unavailable_reason() -> str | None:
    """Why the lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the network-namespace lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "the network-namespace lab needs iproute2's `ip` command"
    prefix = f"dpl{secrets.token_hex(2)}"
    probe = f"{prefix}-{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except LabError as exc:
        return f"`ip netns` does not work here: {exc}"
    try:
        ip("-n", probe, "link", "add", f"{prefix}b", "type", "bridge")
        ip("-n", probe, "link", "add", f"{prefix}v", "type", "veth", "peer", "name", f"{prefix}w")
        with contextlib.closing(socket_in(probe)):
            pass
    except (LabError, OSError) as exc:
        return f"bridges, veth pairs or setns(2) are not available: {exc}"
    finally:
        ip("netns", "del", probe, check=False)
    return None
