"""The wait for convergence once the faults end: look until the replicas agree or a deadline
passes, a deadline that a replica still joining, and getting on with its join, pushes back.
"""
# test-case-name: tests.lab.test_convergence

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs

from lab.lab import Lab

# How long past --convergence-timeout joins that move on may keep the checker waiting: a
# replica wiped late in a random run joins again (a snapshot, then thousands of chunks), and
# may legitimately outlast the timeout.
JOIN_ALLOWANCE = 300.0
# A join must move on within this long to push the deadline back again, and each time it
# does the deadline is this long after the look that saw it.
JOIN_WINDOW = 10.0
STATUS_TIMEOUT = 3.0
JOINING, ACTIVE = "JOINING", "ACTIVE"

T = TypeVar("T")


@attrs.frozen
class JoinProgress:
    """A replica's state (JOINING or ACTIVE) and its join, as its /status shows them (the
    join under ``sync``: the one under way, or the last one)."""

    node_id: int
    state: str
    phase: str
    chunks_done: int = 0
    chunks_total: int = 0
    snapshots_fetched: int = 0

    @classmethod
    def of(cls, node_id: int, status: dict[str, Any] | None) -> JoinProgress | None:
        """What STATUS shows; None when the replica did not answer."""
        if not status:
            return None
        sync = status.get("sync")
        if not isinstance(sync, dict):
            sync = {}
        return cls(node_id, str(status.get("state")), str(sync.get("phase")),
                   _count(sync.get("chunks_done")), _count(sync.get("chunks_total")),
                   _count(sync.get("snapshots_fetched")))

    @property
    def joining(self) -> bool:
        return self.state == JOINING

    def brief(self) -> str:
        if not self.joining:
            return self.state
        return (f"{self.phase}, chunks {self.chunks_done:,}/{self.chunks_total:,}, "
                f"{self.snapshots_fetched} snapshot(s) fetched")


def _nodes(node_ids: Sequence[int]) -> str:
    return (f"node {node_ids[0]}" if len(node_ids) == 1
            else f"nodes {', '.join(map(str, node_ids))}")


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


def read_joins(lab: Lab, nodes: Iterable[int]) -> dict[int, JoinProgress]:
    """The state and join of each of NODES that answers /status (asked from its own host)."""
    found = {n: JoinProgress.of(n, lab.status(n, STATUS_TIMEOUT)) for n in sorted(nodes)}
    return {n: progress for n, progress in found.items() if progress is not None}


@attrs.frozen
class Extension:
    """The deadline pushed back to UNTIL (seconds into the wait), AT seconds into it,
    because NODE_ID's join moved on from BEFORE to NOW in the window before."""

    node_id: int
    at: float
    until: float
    before: JoinProgress
    now: JoinProgress

    def line(self) -> str:
        doing = "is still joining and moving on" if self.now.joining else "has joined"
        return (f"convergence: node {self.node_id} {doing} ({self.before.brief()} -> "
                f"{self.now.brief()}): waiting until {self.until:.0f} s")


@attrs.frozen
class Waited:
    """How the wait ended: agreed or not, after how long, and every extension on the way."""

    agreed: bool
    seconds: float  # from the start of the wait until agreement or giving up
    timeout: float
    allowance: float
    extensions: tuple[Extension, ...] = ()
    # When it gave up: the joins still under way that had not moved on in the last window,
    # and those still moving on when the allowance was spent.
    stuck: tuple[JoinProgress, ...] = ()
    moving: tuple[JoinProgress, ...] = ()

    @property
    def deadline(self) -> float:
        """The last deadline, seconds into the wait: TIMEOUT unless a join pushed it back."""
        return self.extensions[-1].until if self.extensions else self.timeout

    def waited_for(self) -> str:
        """What the wait allowed for beyond the timeout; empty when nothing was extended."""
        if not self.extensions:
            return ""
        nodes = sorted({e.node_id for e in self.extensions})
        return (f"the {self.timeout:.0f} s timeout extended to {self.deadline:.0f} s while "
                f"{_nodes(nodes)} joined and moved on ("
                + "; ".join(f"node {n}: {self._first(n).before.brief()} -> "
                            f"{self._last(n).now.brief()}" for n in nodes) + ")")

    def why_not(self) -> str:
        """Why it gave up: the deadline, extended or not, and the joins still under way."""
        words = [f"not within {self.deadline:.0f} s"
                 + (f" ({self.waited_for()})" if self.extensions else "")]
        words += [f"node {j.node_id} still joining and moving on ({j.brief()}) when the join"
                  f" allowance of {self.allowance:.0f} s was spent" for j in self.moving]
        words += [f"node {j.node_id} still joining, not seen moving on in the last "
                  f"{JOIN_WINDOW:.0f} s ({j.brief()})" for j in self.stuck]
        return "; ".join(words)

    def _first(self, node_id: int) -> Extension:
        return next(e for e in self.extensions if e.node_id == node_id)

    def _last(self, node_id: int) -> Extension:
        return next(e for e in reversed(self.extensions) if e.node_id == node_id)


def wait(
    look: Callable[[], T],
    agreed: Callable[[T], bool],
    joins: Callable[[], dict[int, JoinProgress]],
    timeout: float,
    allowance: float = JOIN_ALLOWANCE,
    *,
    interval: float,
    echo: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[T, Waited]:
    """LOOK every INTERVAL until what it finds is AGREED, or the deadline (TIMEOUT seconds)
    passes: then the last look, and how the wait went.

    At the deadline, a replica whose join (as JOINS reports it) was under way a JOIN_WINDOW
    earlier and has moved on since (its phase, chunks or snapshots changed, or it has ended:
    the replica is ACTIVE) pushes the deadline back a window, but never past TIMEOUT +
    ALLOWANCE; a join that did not move on, or one not under way a window earlier, pushes
    nothing: a stuck join still fails the wait.

    A look may take longer than a window (it reads whole libraries, and a loaded machine
    serves them slowly): the joins are then read before the look as well, so the read a
    window before the deadline is not made after it, next to the one at the deadline, where
    no join can be seen moving on."""
    started = clock()
    deadline, cap = timeout, timeout + allowance
    before: dict[int, JoinProgress] | None = None  # the joins a window before the deadline
    last_look = math.inf  # how long the last look took (none yet: the first may be long)
    extensions: list[Extension] = []
    while True:
        began = clock() - started
        ahead = (joins() if before is None and began + last_look >= deadline - JOIN_WINDOW
                 else None)
        found = look()
        elapsed = clock() - started
        last_look = elapsed - began
        if agreed(found):
            return found, Waited(True, round(elapsed, 3), timeout, allowance,
                                 tuple(extensions))
        if before is None and elapsed >= deadline - JOIN_WINDOW:
            before = ahead if ahead is not None else joins()
        if elapsed >= deadline:
            previous, now = before or {}, joins()
            moving = _moved_on(previous, now)
            if not moving or deadline >= cap:
                stuck = tuple(j for j in now.values() if j.joining and j not in moving)
                return found, Waited(False, round(elapsed, 3), timeout, allowance,
                                     tuple(extensions), stuck,
                                     tuple(j for j in moving if j.joining))
            deadline = min(elapsed + JOIN_WINDOW, cap)
            for progress in moving:
                extensions.append(Extension(progress.node_id, round(elapsed, 3),
                                            round(deadline, 3), previous[progress.node_id],
                                            progress))
                echo(extensions[-1].line())
            before = now
        sleep(min(interval, max(deadline - elapsed, 0.0)))


def _moved_on(before: dict[int, JoinProgress], now: dict[int, JoinProgress]
              ) -> Sequence[JoinProgress]:
    """The replicas of NOW whose join was under way BEFORE and has moved on since."""
    return [progress for node_id, progress in sorted(now.items())
            if node_id in before and before[node_id].joining and before[node_id] != progress]
