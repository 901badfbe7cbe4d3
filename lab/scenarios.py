"""Fault scenarios against a lab of real replicas, each ending in the checker's report.

A scenario is a short story (find the leader, start writing, break something, repair it);
``run`` wraps it: builds the lab, makes sure every replica is back and the network healed,
waits for convergence, checks, prints the table and saves the JSON. A step that cannot
happen (no leader is ever agreed, say) ends the story early with a failed check naming
what was missing, never with a made-up result.
"""
# test-case-name: tests.lab.test_scenarios

from __future__ import annotations

import datetime
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from lab import checker, convergence, invariants
from lab.chaos import Chaos
from lab.disk import DEFAULT_SIZE, size_for
from lab.lab import Echo, Lab, echo_stderr, twistd_plugins
from lab.nemesis import Nemesis
from lab.netns import LabError
from lab.report import Check, Report
from lab.traffic import Traffic
from lab.workload import Operation, Workload

RESULTS = Path("/tmp/distpotify-lab-results")
LEADER_TIMEOUT = 10.0
PROGRESS_TIMEOUT = 10.0
CONVERGENCE_TIMEOUT = 30.0  # three anti-entropy rounds at the default 10 s
STATUS_TIMEOUT = 0.5
RANDOM_DURATION = 120.0
RANDOM_POLL = 0.5  # a look at every whole library and stored digest


class Blocked(Exception):
    """The scenario cannot go on; the message says what the cluster did not do."""


class Context:
    """What a scenario body works with: the lab, the nemesis, workloads and its checks."""

    def __init__(self, lab: Lab, entry: str | int, seed: int,
                 duration: float = RANDOM_DURATION) -> None:
        self.lab = lab
        self.nemesis = Nemesis(lab)
        self.entry = entry
        self.seed = seed
        self.duration = duration
        self.workloads: list[Workload] = []
        self.traffic: Traffic | None = None
        self.chaos: Chaos | None = None
        self.checks: list[Check] = []
        self.notes: list[str] = []
        self._hold = threading.Event()

    def check(self, name: str, ok: bool, why_not: str = "", how: str = "") -> bool:
        """Record a check; WHY_NOT is kept only when it fails, HOW only when it passes."""
        detail = how if ok else why_not
        self.checks.append(Check(name, ok, detail))
        self.lab.echo(f"check {'ok' if ok else 'FAIL'}: {name}" + (f" ({detail})" if detail
                                                                    else ""))
        return ok

    def start_workload(self, entry: str | int | None = None, name: str = "w1") -> Workload:
        workload = Workload(self.lab, self.entry if entry is None else entry, name=name,
                            seed=self.seed)
        self.workloads.append(workload.start())
        return workload

    def progress(self, workload: Workload, writes: int, what: str,
                 timeout: float = PROGRESS_TIMEOUT) -> float | None:
        """Check that WRITES more writes get acknowledged within TIMEOUT; seconds taken."""
        started = time.monotonic()
        ok = workload.wait_for(writes, timeout)
        took = time.monotonic() - started
        self.check(what, ok, f"fewer than {writes} acknowledged in {timeout:.0f} s")
        if ok:
            self.lab.echo(f"{writes} more writes acknowledged in {took:.2f} s")
        return took if ok else None

    def hold(self, seconds: float) -> None:
        """Keep the current fault for SECONDS: the schedule of a scenario, not a wait for a
        condition (those poll with a deadline)."""
        self._hold.wait(seconds)

    def agreed_leader(self, among: Iterable[int] | None = None) -> tuple[int, int] | None:
        """(leader, epoch) when every running replica of AMONG names the same leader and that
        leader says it leads; None otherwise."""
        nodes = sorted(among if among is not None else self.lab.replicas)
        statuses = {n: self.lab.status(n, STATUS_TIMEOUT) for n in nodes
                    if self.lab.replicas[n].running and not self.lab.replicas[n].paused}
        named = {s.get("leader_id") if s else None for s in statuses.values()}
        if len(named) != 1:
            return None
        (leader,) = named
        if not isinstance(leader, int) or leader not in statuses:
            return None
        status = statuses[leader]
        if status is None or status.get("role") != "leader":
            return None
        return leader, int(status.get("epoch") or 0)

    def await_leader(self, what: str, among: Iterable[int] | None = None,
                     other_than: int | None = None, timeout: float = LEADER_TIMEOUT) -> int:
        """Poll until the replicas of AMONG agree on a leader (not OTHER_THAN); Blocked if
        they do not within TIMEOUT."""
        nodes = sorted(among if among is not None else self.lab.replicas)
        started = time.monotonic()
        deadline = started + timeout
        while True:
            found = self.agreed_leader(nodes)
            if found and found[0] != other_than:
                self.check(what, True)
                self.notes.append(f"{what}: node {found[0]}, epoch {found[1]}, after "
                                  f"{time.monotonic() - started:.2f} s")
                return found[0]
            if time.monotonic() > deadline:
                views = {n: _role(self.lab.status(n, STATUS_TIMEOUT)) for n in nodes}
                detail = f"none within {timeout:.0f} s; replicas say " + ", ".join(
                    f"node {n}: {v}" for n, v in views.items())
                self.check(what, False, detail)
                raise Blocked(f"{what}: {detail}")
            time.sleep(0.1)


def _role(status: dict[str, Any] | None) -> str:
    if status is None:
        return "no answer"
    return (f"{status.get('role')} (leader {status.get('leader_id')}, "
            f"epoch {status.get('epoch')})")


# -- the scenarios ------------------------------------------------------------------------


def leader_crash(ctx: Context) -> None:
    """SIGKILL the leader mid-workload; a new one takes over; the old one rejoins."""
    leader = ctx.await_leader("one leader agreed")
    workload = ctx.start_workload()
    ctx.progress(workload, 5, "writes acknowledged before the fault")
    ctx.nemesis.kill(leader)
    others = [n for n in ctx.lab.replicas if n != leader]
    ctx.await_leader("a new leader after the crash", among=others, other_than=leader)
    ctx.progress(workload, 5, "writes resume after the leader crash")
    ctx.nemesis.restart(leader)
    ctx.progress(workload, 5, "writes go on while the old leader rejoins")


def follower_crash(ctx: Context) -> None:
    """SIGKILL a follower mid-workload; writes go on; it restarts and catches up."""
    leader = ctx.await_leader("one leader agreed")
    follower = max(n for n in ctx.lab.replicas if n != leader)
    workload = ctx.start_workload()
    ctx.progress(workload, 5, "writes acknowledged before the fault")
    ctx.nemesis.kill(follower)
    ctx.progress(workload, 10, "writes go on while a follower is down")
    ctx.nemesis.restart(follower)
    ctx.progress(workload, 5, "writes go on while the follower catches up")


def partition_minority_leader(ctx: Context) -> None:
    """Cut the leader off alone; the majority elects another; on heal both sides merge.

    Both sides may take writes (docs/architecture.md 6.4): one workload follows the leader, another
    stays on the isolated old leader; every write either acknowledged must survive."""
    leader = ctx.await_leader("one leader agreed")
    majority = [n for n in ctx.lab.replicas if n != leader]
    workload = ctx.start_workload()
    minority = ctx.start_workload(entry=leader, name="w-minority")
    ctx.progress(workload, 5, "writes acknowledged before the fault")
    ctx.nemesis.partition([[*majority, "proxy"] if ctx.lab.proxy else majority, [leader]])
    ctx.await_leader("the majority elects a new leader", among=majority, other_than=leader)
    ctx.progress(workload, 5, "the majority accepts writes during the partition")
    ctx.hold(1.0)
    ctx.nemesis.heal()
    ctx.await_leader("one leader after the heal")
    ctx.progress(workload, 3, "writes go on after the heal")
    ctx.notes.append(f"{len(minority.acknowledged())} writes acknowledged by the isolated "
                     "old leader; each must survive the merge")


def flapping_link(ctx: Context) -> None:
    """The leader's link goes down and up, and lossy and slow, a few times; then settles.

    Once it settles there must be one leader and nothing acknowledged may be lost."""
    leader = ctx.await_leader("one leader agreed")
    others = [n for n in ctx.lab.replicas if n != leader]
    workload = ctx.start_workload()
    ctx.progress(workload, 5, "writes acknowledged before the fault")
    for cycle in range(4):
        ctx.nemesis.partition([others, [leader]])
        ctx.hold(0.8)
        ctx.nemesis.heal()
        ctx.hold(0.5)
        if cycle % 2:
            ctx.nemesis.slow(leader, 0.05, 0.2)
            ctx.hold(1.0)
            ctx.nemesis.heal()
    ctx.await_leader("one leader once the link settles")
    ctx.progress(workload, 3, "writes go on once the link settles")


def randomized(ctx: Context) -> None:
    """Random faults from --seed for --duration s under a mixed workload; then every invariant.

    The nemesis (chaos.py) kills, pauses, restarts and wipes replicas, partitions any split of
    the hosts (the proxy's included), slows or loses a host's frames and fills a replica's
    disk, at random intervals; writers upload, edit, delete and build playlists through the
    proxy and straight to replicas, and listeners stream (traffic.py). Once the faults are
    repaired the replicas must converge and pass invariants.py."""
    ctx.await_leader("one leader agreed")
    ctx.traffic = Traffic(ctx.lab, ctx.seed).start()
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while ctx.traffic.acknowledged() < 5:
        if time.monotonic() > deadline:
            ctx.check("writes acknowledged before the faults", False,
                      f"fewer than 5 in {PROGRESS_TIMEOUT:.0f} s")
            raise Blocked("the workload made no progress before any fault")
        time.sleep(0.1)
    ctx.chaos = Chaos(ctx.lab, ctx.nemesis, ctx.seed)
    ctx.lab.echo(f"random run: seed {ctx.seed}, {ctx.duration:.0f} s of faults")
    ctx.chaos.run(ctx.duration)


@attrs.frozen
class Scenario:
    name: str
    body: Callable[[Context], None]
    proxy: bool = False  # the lab gets the proxy whatever the entry
    disk_size: int | None = None  # each replica's data dir on a tmpfs of this size
    # Checks the end of the story: (context, report, convergence timeout, join allowance).
    conclude: Callable[[Context, Report, float, float], None] | None = None

    @property
    def summary(self) -> str:
        return (self.body.__doc__ or "").strip().split("\n")[0]


SCENARIOS = {s.name: s for s in (
    Scenario("leader-crash", leader_crash),
    Scenario("follower-crash", follower_crash),
    Scenario("partition-minority-leader", partition_minority_leader),
    Scenario("flapping-link", flapping_link),
    Scenario("random", randomized, proxy=True, disk_size=DEFAULT_SIZE,
             conclude=lambda ctx, report, timeout, allowance: _conclude_random(
                 ctx, report, timeout, allowance)),
)}


# -- running one ----------------------------------------------------------------------------


def run(
    name: str,
    *,
    nodes: int = 3,
    out: Path | None = None,
    replica: str = "twistd",
    shaper: str = "auto",
    entry: str | int = "leader",
    seed: int = 0,
    base_dir: Path | None = None,
    replica_args: Iterable[str] = (),
    convergence_timeout: float = CONVERGENCE_TIMEOUT,
    join_allowance: float = convergence.JOIN_ALLOWANCE,
    echo: Echo = echo_stderr,
    duration: float = RANDOM_DURATION,
    auth: bool = False,
) -> Report:
    """Run scenario NAME in a fresh lab, print its report table and save it under OUT. With
    ``auth`` the replicas and the proxy run ``--auth on`` and every request the scenario and
    the checker send carries the session of the admin the leader made. The replicas get
    ``convergence_timeout`` seconds to agree once the faults are repaired, and up to
    ``join_allowance`` more while one of them joins and moves on (convergence.wait)."""
    scenario = SCENARIOS[name]
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.UTC)
    out = out or RESULTS / f"{name}-{stamp:%Y%m%d-%H%M%S}"
    report = Report(scenario=name, started_at=stamp.isoformat(timespec="seconds"),
                    convergence_timeout=convergence_timeout, join_allowance=join_allowance,
                    seed=seed)
    if isinstance(entry, str) and entry.isdigit():
        entry = int(entry)
    try:
        if replica == "twistd" and "distpotify" not in twistd_plugins():
            raise LabError("`twistd distpotify` is not available yet (the replica foundation)")
        with Lab(nodes, replica=replica, shaper=shaper, proxy=scenario.proxy or entry == "proxy",
                 base_dir=base_dir, replica_args=replica_args, echo=echo, auth=auth,
                 admin_password=secrets.token_urlsafe(18) if auth else None,
                 disk_size=None if scenario.disk_size is None
                 else max(scenario.disk_size, size_for(duration))) as lab:
            ctx = Context(lab, entry, seed, duration)
            try:
                scenario.body(ctx)
            except Blocked as exc:
                ctx.notes.append(f"stopped early: {exc}")
            finally:
                for workload in ctx.workloads:
                    workload.stop()
                if ctx.traffic is not None:
                    ctx.traffic.stop()
            _restore(ctx)
            (scenario.conclude or _conclude)(ctx, report, convergence_timeout, join_allowance)
            _copy_logs(lab, out)
    except LabError as exc:
        report.checks.append(Check("the lab starts", False, str(exc)))
    report.duration = round(time.monotonic() - started, 2)
    report.save(out)
    print(report.table(), flush=True)
    return report


def _restore(ctx: Context) -> None:
    """Whatever the story left broken is repaired before the check: network healed, every
    replica resumed or restarted on its data dir."""
    network = ctx.lab.network
    if network is not None and (network.slowed() or network.cuts()
                                or len(network.groups()) > 1):
        ctx.nemesis.heal()
    for node_id, replica in ctx.lab.replicas.items():
        if replica.disk is not None and replica.disk.full:
            ctx.nemesis.disk_free(node_id)
        elif replica.disk is not None and replica.disk.make_room():
            # Filled by the library itself, not the nemesis: a leader that cannot write a
            # snapshot keeps every joiner waiting, which an operator would see and fix.
            ctx.lab.echo(f"node {node_id}: its disk was full of data; grown, as an operator"
                         " would")
        if replica.paused:
            ctx.nemesis.resume(node_id)
        elif not replica.running:
            if replica.process is not None:  # it ended by itself: say so before restarting
                ctx.nemesis.note_exit(node_id, replica.process.returncode)
            ctx.nemesis.restart(node_id)


def _conclude(ctx: Context, report: Report, timeout: float, allowance: float) -> None:
    lab = ctx.lab
    operations = [op for workload in ctx.workloads for op in workload.snapshot()]
    acked = checker.acked_writes(operations)
    result = checker.await_convergence(lab, acked, timeout, join_allowance=allowance)
    if not result.wait.agreed:
        ctx.notes += checker.keep_evidence(lab, result.views)
    _say_how_long(ctx, report, result.wait)
    views = {n: v for n, v in result.views.items() if v.reachable}
    expected = checker.uploaded(acked)
    report.missing = checker.missing_writes(views, acked)
    report.divergent = checker.divergence(views)
    report.chunk_problems = checker.chunk_divergence(lab, views, expected)
    report.failed_reads = _failed_reads(operations, ctx.nemesis.fault_windows(lab.clock()))
    report.workloads = [workload.summary() for workload in ctx.workloads]
    report.events = [attrs.asdict(event) for event in ctx.nemesis.events]
    report.replicas = _rows(result.views, report)
    report.lab = {"prefix": lab.prefix, "nodes": len(lab.replicas),
                  "replica": lab.replica_kind,
                  "shaper": lab.network.shaper if lab.network else None,
                  "subnet": str(lab.network.subnet) if lab.network else None}
    ctx.check("replicas answer", all(v.reachable for v in result.views.values()),
              "; ".join(f"node {v.node_id}: {v.error}" for v in result.views.values()
                        if not v.reachable))
    if not ctx.workloads:
        ctx.notes.append("no workload ran: nothing about writes or convergence was checked")
        report.checks = ctx.checks
        report.notes = ctx.notes
        return
    wrong = [op for op in acked if op.kind == "upload" and op.answer_sha256 != op.sha256]
    ctx.check("writes acknowledged", bool(acked), "none")
    ctx.check("no acknowledged write lost", not report.missing,
              f"{len(report.missing)} missing or different somewhere")
    ctx.check("uploads acknowledged with their own sha256", not wrong,
              f"{len(wrong)} answers named another sha256")
    ctx.check("replicas hold the same rows", not report.divergent,
              f"{len(report.divergent)} replicas differ")
    ctx.check("replicas hold the same chunk bytes", not report.chunk_problems,
              f"{len(report.chunk_problems)} song copies differ")
    ctx.check("converged", result.wait.agreed, result.wait.why_not(),
              how=result.wait.waited_for())
    report.checks = ctx.checks
    report.notes = ctx.notes


def _say_how_long(ctx: Context, report: Report, waited: convergence.Waited) -> None:
    """The wait for convergence in the report and on the console: how long it took, and
    each time a join moving on pushed its deadline back (said as it happened, too)."""
    report.convergence_seconds = waited.seconds if waited.agreed else None
    report.convergence_extensions = [attrs.asdict(e) for e in waited.extensions]
    ctx.lab.echo(f"convergence: {waited.seconds} s" if waited.agreed else
                 f"no convergence: {waited.why_not()}")


# What the random run's checker looks at: every replica's library as served, and the set of
# their stored digests (None for a database it could not read).
Libraries = tuple[dict[int, invariants.LibraryView], set[tuple[tuple[int, str], ...] | None]]


def _conclude_random(ctx: Context, report: Report, timeout: float, allowance: float) -> None:
    """Wait until every replica answers with the same library and the same stored digest,
    then check the invariants, the stored rows and every chunk, served and on disk."""
    lab = ctx.lab
    history = ctx.traffic.history() if ctx.traffic is not None else []
    nodes = sorted(lab.replicas)

    def look() -> Libraries:
        return ({n: checker.read_library(lab, n) for n in nodes},
                {checker.stored_digest(r.data_dir) for r in lab.replicas.values()})

    def agree(found: Libraries) -> bool:
        views, digests = found
        return (all(v.reachable for v in views.values()) and None not in digests
                and len(digests) == 1
                and len({repr(v.comparable()) for v in views.values()}) == 1)

    (views, _), waited = convergence.wait(look, agree, lambda: convergence.read_joins(lab, nodes),
                                          timeout, allowance, interval=RANDOM_POLL,
                                          echo=lab.echo)
    if not waited.agreed:
        ctx.notes += checker.keep_evidence(lab, nodes)
    _say_how_long(ctx, report, waited)
    states, stuck = checker.replication_state(lab)
    reachable = [n for n, v in views.items() if v.reachable]
    violations = invariants.check(history, views)
    rows = checker.row_divergence(lab, reachable)
    uploaded = {op.result["id"]: op.args["sha256"] for op in history
                if op.kind == "upload" and op.outcome == "ok" and op.result.get("id")}
    served = checker.stream_divergence(lab, {n: views[n] for n in reachable}, uploaded)
    stored = checker.chunk_file_problems(lab, reachable)
    exited = [e for e in ctx.nemesis.events if e.op == "exited"]
    # A replica (re)started while the nemesis had filled its disk may stop, saying so
    # ("distpotify: cannot start" or "cannot open the database"): not a crash.
    exits = [e for e in exited if not e.detail.get("disk_full")]
    ctx.notes += [f"node {e.target} stopped at {e.at:.1f} s (status {e.detail.get('status')})"
                  " while its disk was full" for e in exited if e.detail.get("disk_full")]
    report.violations = [attrs.asdict(v) for v in violations]
    report.divergent = rows[:checker.EXAMPLES * 4]
    report.chunk_problems = (served + stored)[:checker.EXAMPLES * 4]
    report.operations = invariants.summary(history)
    report.events = [attrs.asdict(event) for event in ctx.nemesis.events]
    report.replicas = [{"node": n, "state": states[n],
                        "songs": len(v.songs) if v.reachable else None,
                        "playlists": len(v.playlists) if v.reachable else None,
                        "acked_missing": sum(n in x.nodes for x in violations
                                             if x.invariant == "no acknowledged write lost"),
                        "differs": "", "error": v.error} for n, v in sorted(views.items())]
    report.lab = {"prefix": lab.prefix, "nodes": len(lab.replicas), "replica": lab.replica_kind,
                  "shaper": lab.network.shaper if lab.network else None,
                  "duration": ctx.duration, "disk_size": lab.disk_size, "auth": lab.auth}
    if ctx.chaos is not None:
        ctx.notes += [f"nemesis skipped: {line}" for line in ctx.chaos.skipped]
    ctx.notes += stuck
    ctx.notes += checker.log_errors(_logs(lab))
    ctx.check("replicas answer", all(v.reachable for v in views.values()),
              "; ".join(f"node {v.node_id}: {v.error}" for v in views.values()
                        if not v.reachable))
    ctx.check("writes acknowledged", any(op.outcome == "ok" and op.kind != "stream"
                                         for op in history), "none")
    ctx.check("converged", waited.agreed, waited.why_not(), how=waited.waited_for())
    for invariant in invariants.INVARIANTS:
        broken = [v for v in violations if v.invariant == invariant]
        ctx.check(invariant, not broken, f"{len(broken)} violation(s); first: "
                  + (broken[0].line() if broken else ""))
    ctx.check("replicas store the same rows", not rows, f"{len(rows)} rows differ")
    ctx.check("chunks served and stored match their sha256", not served and not stored,
              f"{len(served)} served, {len(stored)} stored problems")
    if lab.auth:
        # The session was made before the first fault, so every replica the proxy sends a
        # request to holds it (a wiped one gets it in the snapshot it joins from): a refusal
        # is a session lost or a check gone wrong. (A replica still joining answers a
        # request sent straight to it 503 joining, not 401: it cannot check the session yet.)
        refused = [op for op in history if op.via == "proxy" and op.status in (401, 403)]
        ctx.check("no request through the proxy refused its session", not refused,
                  f"{len(refused)} refused; first: {refused[0].brief() if refused else ''}")
    ctx.check("no replica exits by itself", not exits,
              "; ".join(f"node {e.target} at {e.at:.1f} s (status {e.detail.get('status')})"
                        for e in exits))
    report.checks = ctx.checks
    report.notes = ctx.notes


def _failed_reads(operations: list[Operation],
                  windows: list[tuple[float, float, str]]) -> dict[str, Any]:
    failed = [op for op in operations if op.kind == "read" and not op.ok]
    during = [op for op in failed
              if any(op.started <= end and op.finished >= start for start, end, _ in windows)]
    outside = [op for op in failed if op not in during]
    return {
        "total": len(failed), "during_faults": len(during), "outside_faults": len(outside),
        "examples": [{"at": op.started, "target": op.target, "error": op.error}
                     for op in (outside or during)[:checker.EXAMPLES]],
    }


def _rows(views: dict[int, checker.ReplicaView], report: Report) -> list[dict[str, Any]]:
    rows = []
    for node_id, view in sorted(views.items()):
        differs = next((d for d in report.divergent if d["node"] == node_id), None)
        bad_chunks = sum(p["node"] == node_id for p in report.chunk_problems)
        notes = []
        if differs:
            notes.append(f"{differs['songs_missing']} songs, {differs['playlists_missing']} "
                         f"playlists missing, {differs['songs_conflicting']} conflicting")
        if bad_chunks:
            notes.append(f"{bad_chunks} songs with bad chunks")
        rows.append({
            "node": node_id,
            "state": "up" if view.reachable else "unreachable",
            "songs": len(view.songs) if view.reachable else None,
            "playlists": len(view.playlists) if view.reachable else None,
            "acked_missing": sum(node_id in m["missing_on"] or node_id in m["different_on"]
                                 for m in report.missing),
            "differs": "; ".join(notes),
            "error": view.error,
        })
    return rows


def _logs(lab: Lab) -> list[Path]:
    """Every log of the lab, those twistd rotated away (``node1.log.1``, at each megabyte)
    with the current ones: a long run's first errors are in them."""
    return sorted(lab.dir.glob("*.log")) + sorted(lab.dir.glob("*.log.[0-9]*"))


def _copy_logs(lab: Lab, out: Path) -> None:
    """The logs into ``out``, and the evidence a failed wait for convergence kept."""
    out.mkdir(parents=True, exist_ok=True)
    for path in _logs(lab) + sorted(lab.dir.glob("*.out")):
        shutil.copy2(path, out / path.name)
    evidence = lab.dir / checker.EVIDENCE
    if evidence.is_dir():
        shutil.copytree(evidence, out / checker.EVIDENCE, dirs_exist_ok=True)
