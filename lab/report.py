"""A scenario's verdict: named checks, the fault time line, the workload's counts and how
each replica looked at the end; printed as a short table and saved as JSON.
"""
# test-case-name: tests.lab.test_checker

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

VIOLATION_LINES = 12


@attrs.frozen
class Check:
    name: str
    ok: bool
    detail: str = ""


@attrs.define
class Report:
    scenario: str
    started_at: str
    lab: dict[str, Any] = attrs.field(factory=dict)
    checks: list[Check] = attrs.field(factory=list)
    events: list[dict[str, Any]] = attrs.field(factory=list)
    workloads: list[dict[str, Any]] = attrs.field(factory=list)
    replicas: list[dict[str, Any]] = attrs.field(factory=list)
    missing: list[dict[str, Any]] = attrs.field(factory=list)
    divergent: list[dict[str, Any]] = attrs.field(factory=list)
    chunk_problems: list[dict[str, Any]] = attrs.field(factory=list)
    failed_reads: dict[str, Any] = attrs.field(factory=dict)
    # From the end of the workload (every fault repaired) until the replicas agreed.
    convergence_seconds: float | None = None
    convergence_timeout: float = 0.0
    # Past the timeout, how long joins that move on may keep the checker waiting; and each
    # time one did (convergence.Extension: node_id, at, until, before, now).
    join_allowance: float = 0.0
    convergence_extensions: list[dict[str, Any]] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    duration: float = 0.0
    path: str | None = None
    seed: int = 0  # replays the scenario's choices: `make lab SCENARIO=... SEED=N`
    operations: dict[str, dict[str, int]] = attrs.field(factory=dict)  # kind -> outcome -> n
    violations: list[dict[str, Any]] = attrs.field(factory=list)  # invariants.Violation

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["ok"] = self.ok
        return data

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "report.json"
        self.path = str(path)
        path.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")
        (directory / "report.txt").write_text(self.table() + "\n")
        return path

    def table(self) -> str:
        lab = self.lab
        lines = [
            f"distpotify lab | {self.scenario} | {'PASS' if self.ok else 'FAIL'} | "
            f"{lab.get('nodes', '?')} x {lab.get('replica', '?')} replica, "
            f"slow via {lab.get('shaper', '?')}, {self.duration:.1f} s, seed {self.seed}",
            "",
            f"{'node':>4}  {'state':11} {'songs':>6} {'playlists':>9} {'acked missing':>13}"
            f"  differs",
        ]
        for row in self.replicas:
            songs = "-" if row.get("songs") is None else row["songs"]
            playlists = "-" if row.get("playlists") is None else row["playlists"]
            lines.append(
                f"{row['node']:>4}  {row['state']:11} {songs:>6} {playlists:>9} "
                f"{row.get('acked_missing', 0):>13}  {row.get('differs') or '-'}"
            )
        lines.append("")
        for work in self.workloads:
            lines.append(
                f"workload {work['worker']} via {work['entry']}: {work['writes']} writes, "
                f"{work['acknowledged']} acknowledged, {work['failed_writes']} failed "
                f"(longest gap {work.get('longest_ack_gap', 0):.2f} s at "
                f"{work.get('longest_ack_gap_from', 0):.1f} s); "
                f"{work['reads']} reads, {work['failed_reads']} failed"
            )
        if self.operations:
            lines.append("operations: " + "; ".join(
                f"{kind} " + " ".join(f"{n} {outcome}" for outcome, n in outcomes.items())
                for kind, outcomes in self.operations.items()))
        if self.failed_reads:
            lines.append(
                f"failed reads: {self.failed_reads.get('during_faults', 0)} during faults, "
                f"{self.failed_reads.get('outside_faults', 0)} outside"
            )
        if self.convergence_seconds is not None:
            lines.append(f"convergence: {self.convergence_seconds:.2f} s after the workload "
                         "stopped, every fault repaired" + self._extended())
        elif self.convergence_timeout and self.replicas:
            lines.append(f"convergence: none within {self.convergence_timeout:.0f} s"
                         + self._extended())
        if self.events:
            lines.append("faults:")
            lines += [_event_line(event) for event in self.events]
        if self.violations:
            lines.append(f"violations ({len(self.violations)}):")
            lines += [f"  {v['invariant']}: {v['record']}"
                      + (f" on {v['nodes']}" if v.get("nodes") else "") + f": {v['detail']}"
                      for v in self.violations[:VIOLATION_LINES]]
        lines.append("checks:")
        lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}" + (f": {c.detail}" if c.detail
                                                                  else "")
                  for c in self.checks]
        lines += [f"note: {note}" for note in self.notes]
        if self.path:
            lines.append(f"report: {self.path}")
        return "\n".join(lines)


    def _extended(self) -> str:
        """What the deadline was pushed back to, and for whose join; empty when it was not."""
        if not self.convergence_extensions:
            return ""
        nodes = sorted({e["node_id"] for e in self.convergence_extensions})
        return (f" (the deadline extended {len(self.convergence_extensions)} time(s), to "
                f"{self.convergence_extensions[-1]['until']:.0f} s of at most "
                f"{self.convergence_timeout + self.join_allowance:.0f} s, while "
                f"{'node' if len(nodes) == 1 else 'nodes'} {', '.join(map(str, nodes))}"
                " joined and moved on)")


def _event_line(event: dict[str, Any]) -> str:
    words = [f"  {event['at']:8.3f}s", event["op"]]
    if event.get("target") is not None:
        words.append(str(event["target"]))
    words += [f"{key}={value}" for key, value in (event.get("detail") or {}).items()]
    return " ".join(words)
