"""The randomized nemesis: at random intervals, from a generator seeded with the run's seed,
it starts a fault (kill, pause, restart, wipe-and-rejoin, a partition of any split, a slow or
lossy link, a full disk) or ends one, until the run's time is up.

``choose`` is the decision, a pure function of the generator and what is broken now
(``World``), tested without namespaces; ``Chaos`` applies its choices to a lab through the
``Nemesis``, ends faults that last too long, and notices replicas that exit by themselves.
"""
# test-case-name: tests.lab.test_chaos

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from lab import checker
from lab.lab import Lab
from lab.nemesis import PROXY, Nemesis
from lab.netns import LabError
from lab.workload import find_leader

FAULT_KINDS = ("kill", "pause", "restart", "wipe", "partition", "slow", "lossy", "disk_full")
MIN_GAP, MAX_GAP = 1.0, 5.0  # seconds between two decisions
MAX_FAULT = 20.0  # a fault older than this is ended, so the cluster gets to work again
# A replica's stored field versions: (table, key) -> field -> version (checker.stored_versions).
Versions = dict[tuple[str, str], dict[str, str]]
WIPE_AGREEMENT = 8.0  # how long a wipe waits for the others to hold all the target has


@attrs.frozen
class Action:
    op: str  # a FAULT_KINDS entry, or "recover" (restart / resume), "heal", "disk_free"
    target: Any = None  # a node id, PROXY, or for a partition the list of groups
    params: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen
class World:
    """What is broken now, as far as the nemesis did it."""

    nodes: tuple[int, ...]
    proxy: bool = False
    disks: bool = False
    down: frozenset[int] = frozenset()  # killed, wiped, or exited
    paused: frozenset[int] = frozenset()
    full: frozenset[int] = frozenset()
    partitioned: bool = False
    slowed: frozenset[int | str] = frozenset()
    leader: int | None = None

    @property
    def faults(self) -> list[Action]:
        """The actions that would end each fault now standing."""
        ends = [Action("recover", n) for n in sorted(self.down | self.paused)]
        ends += [Action("disk_free", n) for n in sorted(self.full)]
        if self.partitioned or self.slowed:
            ends.append(Action("heal"))
        return ends


def choose(rng: random.Random, world: World, kinds: Sequence[str] = FAULT_KINDS) -> Action:
    """The next thing to do: end a standing fault (more likely the more there are), or
    start a new one that the world allows. At least one replica always runs unpaused.

    Every decision takes the same draws from RNG whatever the world, so two runs of one seed
    stay in step although their worlds differ now and then (a leader elected elsewhere, a
    replica slower to come back): they differ in that decision, not in every one after it."""
    end_u, kind_u, target_u, leader_u, first_u, second_u = (rng.random() for _ in range(6))
    split = random.Random(rng.getrandbits(64))
    ends = world.faults
    if ends and end_u < 0.25 + 0.15 * len(ends):
        return _pick(ends, target_u)
    up = [n for n in world.nodes if n not in world.down and n not in world.paused]
    # Pick a kind first, then a target: every kind stays as likely as the others.
    allowed = {
        "kill": len(up) > 1, "pause": len(up) > 1, "wipe": len(up) > 1, "restart": bool(up),
        "partition": len(_hosts(world)) > 1,
        "slow": len(_hosts(world)) > len(world.slowed),
        "lossy": len(_hosts(world)) > len(world.slowed),
        "disk_full": world.disks and bool(set(world.nodes) - world.full),
    }
    possible = [kind for kind in kinds if allowed[kind]]
    if not possible:
        return _pick(ends, target_u) if ends else Action("heal")
    kind = _pick(possible, kind_u)
    if kind in ("kill", "pause", "restart"):
        # The leader half the time: failover is where most bugs live.
        if world.leader in up and leader_u < 0.5:
            return Action(kind, world.leader)
        return Action(kind, _pick(up, target_u))
    if kind == "wipe":
        followers = [n for n in up if n != world.leader]
        return Action(kind, _pick(followers or up, target_u))
    if kind == "partition":
        return Action(kind, _split(split, _hosts(world)))
    if kind in ("slow", "lossy"):
        host = _pick([h for h in _hosts(world) if h not in world.slowed], target_u)
        if kind == "slow":
            return Action(kind, host, {"delay": round(0.02 + 0.28 * first_u, 3), "loss": 0.0})
        return Action("slow", host, {"delay": round(0.02 * first_u, 3),
                                     "loss": round(0.05 + 0.35 * second_u, 2)})
    return Action(kind, _pick(sorted(set(world.nodes) - world.full), target_u))


def _pick(choices: Sequence[Any], u: float) -> Any:
    """The element of CHOICES that U (uniform in [0, 1)) falls on."""
    return choices[min(int(u * len(choices)), len(choices) - 1)]


def _hosts(world: World) -> list[int | str]:
    return [*world.nodes, *([PROXY] if world.proxy else [])]


def _split(rng: random.Random, hosts: list[int | str]) -> list[list[int | str]]:
    """Any split of HOSTS into two or more non-empty groups."""
    shuffled = list(hosts)
    rng.shuffle(shuffled)
    count = 2 if len(shuffled) < 4 or rng.random() < 0.7 else 3
    cuts = sorted(rng.sample(range(1, len(shuffled)), count - 1))
    bounds = [0, *cuts, len(shuffled)]
    return [sorted(shuffled[a:b], key=str) for a, b in itertools.pairwise(bounds)]


class Chaos:
    """Applies ``choose``'s decisions to LAB for DURATION seconds."""

    def __init__(self, lab: Lab, nemesis: Nemesis, seed: int,
                 kinds: Sequence[str] = FAULT_KINDS,
                 gaps: tuple[float, float] = (MIN_GAP, MAX_GAP),
                 max_fault: float = MAX_FAULT) -> None:
        self.lab = lab
        self.nemesis = nemesis
        self.rng = random.Random(f"{seed}-nemesis")
        self.kinds = tuple(k for k in kinds if k != "disk_full"
                           or all(r.disk for r in lab.replicas.values()))
        self.gaps = gaps
        self.max_fault = max_fault
        self.down: set[int] = set()
        self.since: dict[str, float] = {}  # fault -> when it started (monotonic)
        self.exits: list[dict[str, Any]] = []
        self.skipped: list[str] = []

    def world(self) -> World:
        network = self.lab.network
        slowed = frozenset(PROXY if self.lab.proxy and name == self.lab.proxy.name
                           else int(name[1:]) for name in (network.slowed() if network else {}))
        return World(
            nodes=tuple(sorted(self.lab.replicas)),
            proxy=self.lab.proxy is not None,
            disks="disk_full" in self.kinds,
            down=frozenset(n for n, r in self.lab.replicas.items() if not r.running),
            paused=frozenset(n for n, r in self.lab.replicas.items() if r.paused),
            full=frozenset(n for n, r in self.lab.replicas.items() if r.disk and r.disk.full),
            partitioned=bool(network and len(network.groups()) > 1),
            slowed=slowed,
            leader=find_leader(self.lab),
        )

    def run(self, duration: float, stopped: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + duration
        while not stopped():
            pause = self.rng.uniform(*self.gaps)
            if time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
            self.notice_exits()
            self.end_old_faults()
            self.apply(choose(self.rng, self.world(), self.kinds))

    def notice_exits(self) -> None:
        """A replica that ended although nobody stopped it is recorded (and counts as down)."""
        for node_id, replica in sorted(self.lab.replicas.items()):
            process = replica.process
            if process is not None and process.poll() is not None:
                self.exits.append({"node": node_id, "status": process.returncode,
                                   "at": round(self.lab.clock(), 3)})
                self.nemesis.note_exit(node_id, process.returncode)
                self.since.setdefault(f"recover {node_id}", time.monotonic())

    def end_old_faults(self) -> None:
        now = time.monotonic()
        for end in self.world().faults:
            name = _name(end)
            started = self.since.setdefault(name, now)
            if now - started > self.max_fault:
                self.apply(end)

    def apply(self, action: Action) -> None:
        """Carry ACTION out; an operation the lab refuses is noted, and the run goes on."""
        try:
            self._apply(action)
        except LabError as exc:
            self.skipped.append(f"{action.op} {action.target}: {exc}")
            self.lab.echo(f"nemesis could not {action.op} {action.target}: {exc}")

    def _apply(self, action: Action) -> None:
        nemesis, target = self.nemesis, action.target
        started = time.monotonic()
        if action.op == "kill":
            nemesis.kill(target)
        elif action.op == "pause":
            nemesis.pause(target)
        elif action.op == "restart":
            nemesis.restart(target, wait=False)
        elif action.op == "wipe":
            if not self._covered(target):
                self.skipped.append(f"wipe {target}: other replicas did not hold all it "
                                    "stores in time; killed instead")
                nemesis.kill(target)
            else:
                nemesis.wipe(target)
        elif action.op == "partition":
            nemesis.partition(target)
            self.since.pop("heal", None)
        elif action.op == "slow":
            nemesis.slow(target, action.params["delay"], action.params["loss"])
        elif action.op == "disk_full":
            nemesis.disk_full(target)
        elif action.op == "recover":
            if self.lab.replicas[target].paused:
                nemesis.resume(target)
            else:
                nemesis.restart(target, wait=False)
        elif action.op == "heal":
            nemesis.heal()
        elif action.op == "disk_free":
            nemesis.disk_free(target)
        for end in self.world().faults:
            self.since.setdefault(_name(end), started)
        standing = {_name(end) for end in self.world().faults}
        for name in list(self.since):
            if name not in standing:
                del self.since[name]

    def _covered(self, target: int) -> bool:
        """Whether TARGET may be wiped now (``may_wipe``), waiting up to WIPE_AGREEMENT for
        the others to hold what it holds; every replica must run."""
        deadline = time.monotonic() + WIPE_AGREEMENT
        while time.monotonic() < deadline:
            if any(not r.running or r.paused for r in self.lab.replicas.values()):
                return False
            versions = {n: checker.stored_versions(r.data_dir)
                        for n, r in self.lab.replicas.items()}
            if may_wipe(target, versions, find_leader(self.lab)):
                return True
            time.sleep(0.25)
        return False


def may_wipe(target: int, versions: Mapping[int, Versions | None], leader: int | None) -> bool:
    """Whether wiping TARGET loses no write: TARGET does not lead, and every field version
    it stores is held, as new or newer, by another replica (``versions``: each replica's,
    read from its database; None if unreadable). A follower merely behind the leader is
    covered at once; one holding writes only it has waits for anti-entropy, or is not wiped.

    Nor is a replica wiped while another holds nothing yet (a lost disk still fetching its
    snapshot): two replicas without data that hear each other, cut off from the rest,
    cannot tell a cluster they lost from a new one, and with --cluster-size 3 they found
    one (docs/architecture.md 5.2). One that has installed its snapshot holds data, and the
    others wait for it (the case of seed 5353)."""
    mine = versions.get(target)
    others = [v for node, v in versions.items() if node != target]
    return (mine is not None and leader != target and all(others)
            and checker.covered(mine, [v for v in others if v]))


def _name(end: Action) -> str:
    return end.op if end.target is None else f"{end.op} {end.target}"
