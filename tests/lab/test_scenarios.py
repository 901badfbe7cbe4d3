"""The lab's scenarios against the real cluster: every one must PASS its checker."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import scenarios

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("leader-crash", "leader"),
        ("leader-crash", "proxy"),  # the proxy in its own namespace takes the writes
        ("follower-crash", "leader"),
        ("partition-minority-leader", "leader"),
        ("flapping-link", "leader"),
    ],
)
def test_scenario_passes(name: str, entry: str, tmp_path: Path) -> None:
    report = scenarios.run(
        name, out=tmp_path / "report", base_dir=tmp_path / "lab", entry=entry,
        replica_args=["--anti-entropy-interval", "2"], convergence_timeout=60,
    )

    assert report.ok, report.table()
