"""The randomized fault run as CI runs it: one seed, two minutes of random faults under the
mixed workload, and every invariant must hold (the report names the seed that replays it).
The replicas and the proxy run ``--auth on``, as deployed: every request of the run carries
the session of the admin the leader made, and none through the proxy may be refused it.

No failure is excused: the proxy's retry of a write across a leader fault, which once made
an upload take effect twice (issue 13), now carries the write's Idempotency-Key, so a write
that takes effect twice fails this test like any other broken invariant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import scenarios

pytestmark = [pytest.mark.lab, pytest.mark.timeout(420)]

SEED = int(os.environ.get("DISTPOTIFY_LAB_SEED", "20"))
DURATION = float(os.environ.get("DISTPOTIFY_LAB_DURATION", "120"))


def test_two_minutes_of_random_faults_keep_every_invariant(tmp_path: Path) -> None:
    report = scenarios.run(
        "random", seed=SEED, duration=DURATION, out=tmp_path / "report",
        base_dir=tmp_path / "lab", replica_args=["--anti-entropy-interval", "2"],
        convergence_timeout=90, auth=True,
    )

    assert report.ok, report.table()
