"""Faults on a running lab: crash, pause, restart and wipe replicas; cut, heal and slow links;
fill and free a replica's disk.

Every operation is recorded as an ``Event`` (lab time, wall time, what, on whom) and echoed,
so a report can lay the faults next to the workload's failures.
"""
# test-case-name: tests.lab.test_nemesis

from __future__ import annotations

import datetime
import shutil
import signal
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from lab.disk import Disk
from lab.lab import Lab
from lab.netns import LabError
from lab.network import LabNetwork

PROXY = "proxy"

FAULTS = ("kill", "wipe", "pause", "partition", "cut", "slow", "disk_full")


def ends(fault: Event, later: Event) -> bool:
    """Whether LATER ends the fault FAULT started (kill -> restart, partition -> heal, ...)."""
    same = later.target == fault.target
    if fault.op in ("kill", "wipe"):
        return later.op == "restart" and same
    if fault.op == "pause":
        return later.op in ("resume", "restart", "kill", "wipe") and same
    if fault.op == "partition":
        return later.op in ("heal", "partition")
    if fault.op == "cut":
        return later.op == "heal"
    if fault.op == "slow":
        return later.op == "heal" or (later.op in ("fast", "slow") and same)
    if fault.op == "disk_full":
        return later.op == "disk_free" and same
    return False


@attrs.frozen
class Event:
    at: float  # lab clock when the operation began
    done: float  # lab clock when it had taken effect (a restart: once the replica answers)
    wall: str  # ISO 8601, UTC, when it began
    op: str
    target: Any  # a node id, a list of groups, or None
    detail: dict[str, Any] = attrs.field(factory=dict)

    def line(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.detail.items())
        target = "" if self.target is None else f" {self.target}"
        return f"[{self.at:8.3f}s] nemesis {self.op}{target}{extra}"


class Nemesis:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.events: list[Event] = []
        self._lock = threading.Lock()

    @property
    def _network(self) -> LabNetwork:
        if self.lab.network is None:
            raise LabError("the lab is not started")
        return self.lab.network

    def _begin(self) -> tuple[float, str]:
        wall = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        return self.lab.clock(), wall

    def _record(self, began: tuple[float, str], op: str, target: Any, **detail: Any) -> Event:
        event = Event(
            at=round(began[0], 3), done=round(self.lab.clock(), 3), wall=began[1],
            op=op, target=target, detail=detail,
        )
        with self._lock:
            self.events.append(event)
        self.lab.echo(event.line())
        return event

    # -- processes ------------------------------------------------------------------------

    def kill(self, node: int) -> None:
        """SIGKILL the replica: no goodbye, its disk stays as it was."""
        began = self._begin()
        self.lab.stop_replica(node, graceful=False)
        self._record(began, "kill", node)

    def pause(self, node: int) -> None:
        """SIGSTOP: the replica keeps its sockets but answers nothing, like a GC pause."""
        began = self._begin()
        self.lab.signal_replica(node, signal.SIGSTOP)
        self._record(began, "pause", node)

    def resume(self, node: int) -> None:
        began = self._begin()
        self.lab.signal_replica(node, signal.SIGCONT)
        self._record(began, "resume", node)

    def restart(self, node: int, wait: bool = True) -> None:
        """Start the replica again on its data dir (stopping it first if it runs)."""
        began = self._begin()
        was_running = self.lab.replicas[node].running
        if was_running:
            self.lab.stop_replica(node, graceful=True)
        self.lab.start_replica(node, wait=wait)
        self._record(began, "restart", node, **({"was_running": True} if was_running else {}))

    def wipe(self, node: int) -> None:
        """Kill the replica and lose its data dir; ``restart`` brings it back empty."""
        began = self._begin()
        self.lab.stop_replica(node, graceful=False)
        shutil.rmtree(self.lab.replicas[node].data_dir, ignore_errors=True)
        self._record(began, "wipe", node)

    def note_exit(self, node: int, status: int | None) -> None:
        """Record that NODE's process ended by itself (nobody here stopped it), and whether
        it refused to start for lack of space (``disk_full``: its last words say it could
        not start, for lack of space or while its disk is still full), a refused start on a
        disk the nemesis filled, not a crash."""
        began = self._begin()
        self.lab.replicas[node].process = None
        disk = self.lab.replicas[node].disk
        refused = _refused_start(self.lab.dir / f"node{node}.out")
        self._record(began, "exited", node, status=status,
                     disk_full=disk is not None and status == 1 and refused is not None
                     and (disk.full or any(words in refused for words in _NO_SPACE)))

    # -- disks ----------------------------------------------------------------------------

    def disk_full(self, node: int) -> None:
        """Fill the replica's own tmpfs: its next write of any kind gets ENOSPC."""
        began = self._begin()
        filler = self._disk(node).fill()
        self._record(began, "disk_full", node, filler=filler)

    def disk_free(self, node: int) -> None:
        began = self._begin()
        self._disk(node).release()
        self._record(began, "disk_free", node)

    def _disk(self, node: int) -> Disk:
        disk = self.lab.replicas[node].disk
        if disk is None:
            raise LabError(f"node {node} has no disk of its own (Lab(disk_size=...))")
        return disk

    # -- network --------------------------------------------------------------------------

    def partition(self, groups: Sequence[Iterable[int | str]]) -> None:
        """Split the lab into GROUPS of node ids (``"proxy"`` names the proxy host); hosts not
        named stay with the first group."""
        began = self._begin()
        named = [[self._host_name(member) for member in group] for group in groups]
        self._network.partition(named)
        self._record(began, "partition", [list(group) for group in groups])

    def cut(self, node: int | str, others: Iterable[int | str]) -> None:
        """NODE and each of OTHERS stop reaching each other; everyone else still reaches
        both sides (``"proxy"`` names the proxy host)."""
        began = self._begin()
        others = list(others)
        self._network.cut(self._host_name(node), [self._host_name(o) for o in others])
        self._record(began, "cut", [node, others])

    def heal(self) -> None:
        """Undo every partition, cut and slowdown."""
        began = self._begin()
        self._network.heal()
        self._record(began, "heal", None)

    def slow(self, node: int | str, delay: float, loss: float = 0.0) -> None:
        """Add DELAY seconds to, and lose a LOSS fraction of, every frame NODE sends."""
        began = self._begin()
        self._network.slow(self._host_name(node), delay, loss)
        self._record(began, "slow", node, delay=delay, loss=loss, via=self._network.shaper)

    def fast(self, node: int | str) -> None:
        began = self._begin()
        self._network.fast(self._host_name(node))
        self._record(began, "fast", node)

    def _host_name(self, member: int | str) -> str:
        if member == PROXY:
            if self.lab.proxy is None:
                raise LabError("this lab has no proxy host")
            return self.lab.proxy.name
        if member not in self.lab.replicas:
            raise LabError(f"no node {member!r} in the lab")
        return self.lab.replicas[int(member)].host.name

    # -- reading the record ---------------------------------------------------------------

    def fault_windows(self, until: float) -> list[tuple[float, float, str]]:
        """(start, end, description) of every fault; one never ended runs until UNTIL."""
        windows = []
        for number, event in enumerate(self.events):
            if event.op not in FAULTS:
                continue
            end = next((e.done for e in self.events[number + 1:] if ends(event, e)), until)
            windows.append((event.at, end, f"{event.op} {event.target}"))
        return windows


# What a replica's refused start says of a full disk (distpotify/service.py, tap.py); SQLite
# may say "disk I/O error" instead, hence the disk's own state too.
_NO_SPACE = ("No space left on device", "database or disk is full")


def _refused_start(out: Path) -> str | None:
    """The last line of the replica's output if it is a refused start ("distpotify: cannot
    ...": one line, no traceback), else None."""
    try:
        with open(out, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return None
    last = lines[-1] if lines else ""
    return last if last.startswith("distpotify: cannot") else None
