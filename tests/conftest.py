"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.replica import ReplicaProcess, killed_at_end


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[ReplicaProcess]]:
    """A list to put started replicas in; each is SIGKILLed at the end whatever happened."""
    with killed_at_end() as started:
        yield started


@pytest.fixture
def replica(tmp_path: Path, replicas: list[ReplicaProcess]) -> ReplicaProcess:
    """One running replica on a free port of 127.0.0.1."""
    process = ReplicaProcess(1, tmp_path)
    replicas.append(process)
    return process.start()
