"""The randomized fault run as CI runs it: one seed, two minutes of random faults under the
mixed workload, and every invariant must hold (the report names the seed that replays it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import scenarios

pytestmark = [pytest.mark.lab, pytest.mark.timeout(420)]

SEED = int(os.environ.get("DISTPOTIFY_LAB_SEED", "20"))
DURATION = float(os.environ.get("DISTPOTIFY_LAB_DURATION", "120"))


@pytest.mark.xfail(strict=False, reason=(
    "known bug, reproduced by tests/integration/test_found_by_random_run.py: a follower more "
    "than one push batch behind never catches up; remove this mark once it is fixed"))
def test_two_minutes_of_random_faults_keep_every_invariant(tmp_path: Path) -> None:
    report = scenarios.run(
        "random", seed=SEED, duration=DURATION, out=tmp_path / "report",
        base_dir=tmp_path / "lab", replica_args=["--anti-entropy-interval", "2"],
        convergence_timeout=60,
    )

    assert report.ok, report.table()
