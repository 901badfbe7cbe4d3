"""The randomized fault run as CI runs it: one seed, two minutes of random faults under the
mixed workload, and every invariant must hold (the report names the seed that replays it)."""

from __future__ import annotations

import os
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
