"""The lab's fixtures, and its skip rule: tests marked ``lab`` skip, naming the missing
capability, where namespaces cannot be made (not root, no ``ip netns``); under ``CI=true``
that skip is an error, since CI runs as root and must exercise the lab."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.lab import Lab
from lab.netns import list_netns, unavailable_reason
from tests.helpers.lab import lone_lab


@pytest.fixture(scope="session")
def lab_capability() -> Iterator[None]:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the network-namespace lab, but {reason}", pytrace=False)
        pytest.skip(reason)
    yield
    # Every lab of this run is named with our pid: none may outlive the tests.
    left = [name for name in list_netns() if f"-{os.getpid()}-" in name]
    assert left == [], f"lab tests left namespaces behind: {left}"


@pytest.fixture(autouse=True)
def _lab_needs_namespaces(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("lab") is not None:
        request.getfixturevalue("lab_capability")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Three replicas in their namespaces; logs stay in tmp_path for a failed test."""
    with Lab(3, base_dir=tmp_path, keep_files=True, echo=print) as running:
        yield running


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[Lab]:
    """One real replica, once it leads (alone, it elects itself): it takes writes directly."""
    with lone_lab(tmp_path, timeout=10) as running:
        yield running
