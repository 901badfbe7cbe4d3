"""The randomized fault run as CI runs it: one seed, two minutes of random faults under the
mixed workload, and every invariant must hold (the report names the seed that replays it)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from lab import scenarios
from lab.report import Report

pytestmark = [pytest.mark.lab, pytest.mark.timeout(420)]

SEED = int(os.environ.get("DISTPOTIFY_LAB_SEED", "20"))
DURATION = float(os.environ.get("DISTPOTIFY_LAB_DURATION", "120"))

# The failures known today. Each is an expected failure while it explains every failed
# check; anything else fails the test.
#
# A stuck follower, reproduced by tests/integration/test_found_by_random_run.py: a follower
# more than one push batch behind is refused a batch whose chunks a later batch deletes,
# forever. It shows as the leader's push to that follower failing on chunks that "could not
# be fetched", the follower never leaving JOINING (so it answers no reads), and the others
# lacking the acknowledged writes only that follower holds.
STUCK = re.compile(r"push to node (\d+) is failing .*could not be fetched")
A_STUCK_FOLLOWER_FAILS = {"converged", "replicas answer", "no acknowledged write lost",
                          "no acknowledged delete undone", "replicas serve the same rows",
                          "replicas store the same rows"}
# The proxy's retry on a new leader after the leader it wrote to was killed or paused mid
# request (issue 13's write path): an upload then takes effect twice (two songs of the same
# bytes), or a write the first leader applied is answered 404 by the next, which lacks it.
RETRIED = {"every write takes effect at most once": "upload",
           "a refused write changes nothing": 404}
LEADER_FAULTS = ("kill", "pause")


def known_bugs(report: Report) -> list[str]:
    """The known bugs that together explain every failed check of REPORT (empty when one
    check failed for another reason, or none did)."""
    failed = {check.name for check in report.checks if not check.ok}
    found = []
    stuck = {int(match.group(1)) for note in report.notes if (match := STUCK.search(note))}
    silent = {row["node"] for row in report.replicas if row.get("error")}
    joining = {row["node"] for row in report.replicas if row.get("state") == "JOINING"}
    if stuck and silent <= stuck & joining:
        found.append(f"node(s) {sorted(stuck)} stuck behind the push (test_found_by_random_run)")
        failed -= A_STUCK_FOLLOWER_FAILS
        # A song whose only chunk copy is on the stuck follower is listed (its row came by
        # anti-entropy) but answers 503 elsewhere; wrong bytes are never excused.
        if all(problem["reasons"] == ["stream answered 503"]
               for problem in report.chunk_problems):
            failed.discard("chunks served and stored match their sha256")
    retried = [v for v in report.violations if v["invariant"] in RETRIED]
    if retried and all(_retried_on_a_leader_fault(report, v) for v in retried):
        found.append(f"{len(retried)} write(s) retried by the proxy across a leader fault")
        failed -= set(RETRIED)
    return found if found and not failed else []


def _retried_on_a_leader_fault(report: Report, violation: dict[str, Any]) -> bool:
    """Every operation behind VIOLATION went through the proxy, is of the kind the known
    bug makes (an acknowledged upload, a write answered 404), and had a replica killed or
    paused while it waited."""
    faults = [e["at"] for e in report.events if e["op"] in LEADER_FAULTS]
    want = RETRIED[violation["invariant"]]
    return bool(violation["ops"]) and all(
        op["via"] == "proxy" and want in (op["kind"], op["status"])
        and any(op["at"][0] - 1 <= at <= op["at"][1] for at in faults)
        for op in violation["ops"])


def test_two_minutes_of_random_faults_keep_every_invariant(tmp_path: Path) -> None:
    report = scenarios.run(
        "random", seed=SEED, duration=DURATION, out=tmp_path / "report",
        base_dir=tmp_path / "lab", replica_args=["--anti-entropy-interval", "2"],
        convergence_timeout=90,
    )

    if not report.ok and (bugs := known_bugs(report)):
        pytest.xfail("known bugs: " + "; ".join(bugs) + "\n" + report.table())
    assert report.ok, report.table()
