"""The lab's wiring: a namespace per host, each joined by a veth pair to a Linux bridge that
lives in a namespace of its own, with addresses from one private /24 that exists only there.

The root namespace gets nothing (no interface, address or route): clients reach a host by
opening their sockets inside its namespace (``netns.socket_in``). ``partition``/``heal`` move
hosts' bridge ports between bridges; ``cut`` separates chosen pairs of hosts while each still
reaches every other host; ``slow``/``fast`` add delay and loss to what a host sends, with
``tc netem`` or, where the kernel has no netem, the userspace delay line.
"""
# test-case-name: tests.lab.test_network

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from lab.netns import LabError, ip, list_netns, netns_exec, netns_pids, run

SUBNET = "10.77.0.0/24"
MULTICAST_ROUTE = "239.0.0.0/8"
SHAPERS = ("netem", "delayline")
_READY_TIMEOUT = 10.0


@attrs.frozen
class Host:
    """One machine of the lab: its namespace, its address and the two ends of its cable."""

    name: str  # short and unique in the lab ("n1", "px"); part of interface names
    netns: str
    address: str
    ifname: str  # the host's lab interface, inside its namespace
    port: str  # the other end of the veth pair, on the bridge side


@attrs.define
class _Slowdown:
    delay: float
    loss: float
    process: subprocess.Popen[bytes] | None = None  # the delay line, when netem is missing


class LabNetwork:
    """Namespaces, veth pairs and bridges of one lab, and the faults it can put on them."""

    def __init__(
        self,
        prefix: str,
        run_dir: Path,
        subnet: str = SUBNET,
        shaper: str = "auto",
        owner_pid: int | None = None,
    ) -> None:
        self.prefix = prefix
        self.owner_pid = os.getpid() if owner_pid is None else owner_pid
        self.run_dir = run_dir
        self.subnet = ipaddress.ip_network(subnet)
        self.bridge_netns = self.netns_name("br")
        self.hosts: dict[str, Host] = {}
        self.shaper = shaper
        self._group_of: dict[str, int] = {}
        self._bridges: set[int] = set()
        self._slow: dict[str, _Slowdown] = {}
        self._cuts: set[tuple[str, str]] = set()  # (host, peer): host drops peer's traffic
        self._created: list[str] = []

    def netns_name(self, role: str) -> str:
        # The owner's pid in the name lets a later run recognise a lab whose owner died.
        return f"{self.prefix}-{self.owner_pid}-{role}"

    def bridge(self, group: int) -> str:
        return f"{self.prefix}b{group}"

    @property
    def namespaces(self) -> list[str]:
        return list(self._created)

    def create(self) -> None:
        """The bridge namespace and its main bridge; chooses how ``slow`` shapes traffic."""
        self._add_netns(self.bridge_netns)
        self._add_bridge(0)
        if self.shaper == "auto":
            self.shaper = "netem" if self._netem_works() else "delayline"
        elif self.shaper not in SHAPERS:
            raise LabError(f"unknown shaper {self.shaper!r}; use one of {', '.join(SHAPERS)}")

    def add_host(self, name: str, index: int) -> Host:
        """A namespace NAME at the INDEXth address of the subnet, cabled to the main bridge."""
        address = str(self.subnet.network_address + index)
        if ipaddress.ip_address(address) not in self.subnet or index in (0, 255):
            raise LabError(f"host index {index} is not a host address of {self.subnet}")
        host = Host(
            name=name,
            netns=self.netns_name(name),
            address=address,
            ifname=f"{self.prefix}{name}",
            port=f"{self.prefix}{name}p",
        )
        self._add_netns(host.netns)
        ip("-n", host.netns, "link", "set", "lo", "up")
        ip(
            "link", "add", host.ifname, "netns", host.netns, "type", "veth",
            "peer", "name", host.port, "netns", self.bridge_netns,
        )
        ip("-n", self.bridge_netns, "link", "set", host.port, "master", self.bridge(0), "up")
        ip("-n", host.netns, "addr", "add", f"{address}/{self.subnet.prefixlen}",
           "dev", host.ifname)
        ip("-n", host.netns, "link", "set", host.ifname, "up")
        # Multicast leaves by the lab interface only; nothing else is routed anywhere.
        ip("-n", host.netns, "route", "add", MULTICAST_ROUTE, "dev", host.ifname)
        self.hosts[name] = host
        self._group_of[name] = 0
        return host

    def partition(self, groups: Sequence[Iterable[str]]) -> None:
        """Split the hosts into GROUPS that cannot reach each other; hosts not named join the
        first group. A second partition replaces the first."""
        wanted: dict[str, int] = {}
        for number, group in enumerate(groups):
            for name in group:
                if name not in self.hosts:
                    raise LabError(f"partition names unknown host {name!r}")
                if name in wanted:
                    raise LabError(f"host {name!r} is in two groups of the partition")
                wanted[name] = number
        for name in self.hosts:
            self._move(name, wanted.get(name, 0))
        self._drop_unused_bridges()

    def cut(self, name: str, others: Iterable[str]) -> None:
        """Host NAME and each host of OTHERS stop reaching each other, unicast and multicast
        alike; every other pair still can, so a third host (the proxy) reaches both sides,
        which moving bridge ports cannot do. Each side gets a blackhole route to the other's
        address and strict reverse-path filtering, which drops what arrives from an address
        whose route is a blackhole (multicast heartbeats included)."""
        others = list(others)
        for host in (name, *others):
            if host not in self.hosts:
                raise LabError(f"no host {host!r} in the lab")
        if name in others:
            raise LabError(f"host {name!r} cannot be cut from itself")
        for other in others:
            for host, peer in ((name, other), (other, name)):
                if (host, peer) in self._cuts:
                    continue
                here = self.hosts[host]
                run(netns_exec(here.netns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1",
                               f"net.ipv4.conf.{here.ifname}.rp_filter=1"))
                ip("-n", here.netns, "route", "add", "blackhole",
                   f"{self.hosts[peer].address}/32")
                self._cuts.add((host, peer))

    def cuts(self) -> list[tuple[str, str]]:
        """The pairs of hosts ``cut`` separated, each pair once."""
        return sorted({tuple(sorted(pair)) for pair in self._cuts})  # type: ignore[misc]

    def heal(self) -> None:
        """Every host back on the main bridge, with no delay, loss or cut."""
        for host, peer in sorted(self._cuts):
            ip("-n", self.hosts[host].netns, "route", "del", "blackhole",
               f"{self.hosts[peer].address}/32")
        self._cuts.clear()
        for name in list(self._slow):
            self.fast(name)
        for name in self.hosts:
            self._move(name, 0)
        self._drop_unused_bridges()

    def groups(self) -> list[list[str]]:
        found: dict[int, list[str]] = {}
        for name, group in sorted(self._group_of.items()):
            found.setdefault(group, []).append(name)
        return [found[group] for group in sorted(found)]

    def slow(self, name: str, delay: float, loss: float = 0.0) -> None:
        """Delay every frame host NAME sends by DELAY seconds and lose a LOSS fraction of them,
        as ``tc qdisc add dev <lab interface> root netem delay .. loss ..`` does."""
        if name not in self.hosts:
            raise LabError(f"no host {name!r} in the lab")
        if delay < 0 or not 0.0 <= loss <= 1.0:
            raise LabError(f"slow needs delay >= 0 and 0 <= loss <= 1, got {delay}, {loss}")
        self.fast(name)
        host = self.hosts[name]
        if self.shaper == "netem":
            run([
                "tc", "-n", host.netns, "qdisc", "replace", "dev", host.ifname, "root", "netem",
                "delay", f"{delay * 1000:.3f}ms", "loss", f"{loss * 100:.4f}%",
            ])
            self._slow[name] = _Slowdown(delay, loss)
        else:
            self._slow[name] = _Slowdown(delay, loss, self._start_delay_line(host, delay, loss))

    def fast(self, name: str) -> None:
        """Undo ``slow`` for host NAME (nothing if it is not slowed)."""
        slowdown = self._slow.pop(name, None)
        if slowdown is None:
            return
        host = self.hosts[name]
        if slowdown.process is None:
            run(["tc", "-n", host.netns, "qdisc", "del", "dev", host.ifname, "root"])
            return
        bridge = self.bridge(self._group_of[name])
        ip("-n", self.bridge_netns, "link", "set", self._line_ends(host)[1], "nomaster")
        ip("-n", self.bridge_netns, "link", "set", host.port, "promisc", "off",
           "master", bridge)
        _stop(slowdown.process)
        ip("-n", self.bridge_netns, "link", "del", self._line_ends(host)[0])

    def slowed(self) -> dict[str, tuple[float, float]]:
        return {name: (s.delay, s.loss) for name, s in self._slow.items()}

    def destroy(self) -> None:
        """Kill every process in the lab's namespaces and delete them (idempotent)."""
        for slowdown in self._slow.values():
            if slowdown.process is not None:
                _stop(slowdown.process)
        self._slow.clear()
        remove_namespaces(self._created)
        self._created.clear()

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._created.append(name)
        # No IPv6 inside the lab: the /24 is the lab's only network, and no DAD noise.
        run(netns_exec(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                       "net.ipv6.conf.default.disable_ipv6=1"))

    def _add_bridge(self, group: int) -> None:
        # Without IGMP snooping the bridge floods multicast: a host moved back after a
        # partition hears heartbeats at once, with no querier needed to relearn its group.
        ip("-n", self.bridge_netns, "link", "add", self.bridge(group), "type", "bridge",
           "mcast_snooping", "0")
        ip("-n", self.bridge_netns, "link", "set", self.bridge(group), "up")
        self._bridges.add(group)

    def _bridge_port(self, name: str) -> str:
        host = self.hosts[name]
        slowdown = self._slow.get(name)
        if slowdown is not None and slowdown.process is not None:
            return self._line_ends(host)[1]
        return host.port

    def _move(self, name: str, group: int) -> None:
        if self._group_of[name] == group:
            return
        if group not in self._bridges:
            self._add_bridge(group)
        ip("-n", self.bridge_netns, "link", "set", self._bridge_port(name),
           "master", self.bridge(group))
        self._group_of[name] = group

    def _drop_unused_bridges(self) -> None:
        for group in sorted(self._bridges - set(self._group_of.values()) - {0}):
            ip("-n", self.bridge_netns, "link", "del", self.bridge(group))
            self._bridges.discard(group)

    def _netem_works(self) -> bool:
        probe = ["tc", "-n", self.bridge_netns, "qdisc"]
        try:
            run([*probe, "add", "dev", self.bridge(0), "root", "netem", "delay", "1ms"])
        except LabError:
            return False
        run([*probe, "del", "dev", self.bridge(0), "root"], check=False)
        return True

    def _line_ends(self, host: Host) -> tuple[str, str]:
        """The veth pair that carries a slowed host's frames from the delay line to its bridge."""
        return f"{self.prefix}{host.name}d", f"{self.prefix}{host.name}e"

    def _start_delay_line(self, host: Host, delay: float, loss: float) -> subprocess.Popen[bytes]:
        line_side, bridge_side = self._line_ends(host)
        bridge = self.bridge(self._group_of[host.name])
        ns = ("-n", self.bridge_netns)
        ip(*ns, "link", "add", line_side, "type", "veth", "peer", "name", bridge_side)
        ip(*ns, "link", "set", line_side, "promisc", "on", "up")
        ip(*ns, "link", "set", host.port, "promisc", "on")
        log = open(self.run_dir / f"delayline-{host.name}.log", "ab")  # noqa: SIM115
        with log:
            process = subprocess.Popen(
                netns_exec(
                    self.bridge_netns, sys.executable, "-m", "lab.delayline",
                    "--host-side", host.port, "--bridge-side", line_side,
                    "--delay", repr(delay), "--loss", repr(loss),
                ),
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
            )
        try:
            _wait_ready(process, _READY_TIMEOUT)
            # Switch the cable only once the line forwards, so little is lost meanwhile.
            ip(*ns, "link", "set", host.port, "nomaster")
            ip(*ns, "link", "set", bridge_side, "master", bridge, "up")
        except BaseException:
            _stop(process)
            ip(*ns, "link", "del", line_side, check=False)
            ip(*ns, "link", "set", host.port, "master", bridge, check=False)
            raise
        return process


def _wait_ready(process: subprocess.Popen[bytes], timeout: float) -> None:
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if readable else b""
    if line.strip() != b"ready":
        raise LabError(f"the delay line did not start (exit {process.poll()}); see its log")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=_READY_TIMEOUT)
    if process.stdout is not None:
        process.stdout.close()


def remove_namespaces(names: Iterable[str]) -> None:
    """SIGKILL every process inside NAMES, then delete the namespaces (those still there)."""
    names = list(names)
    existing = set(list_netns())
    for name in names:
        if name not in existing:
            continue
        for pid in netns_pids(name):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
    for name in names:
        if name in existing:
            ip("netns", "del", name, check=False)
