"""The workload client against real replicas: what it records and what the checker finds."""

from __future__ import annotations

import pytest

from lab import checker
from lab.lab import Lab
from lab.nemesis import Nemesis
from lab.workload import Workload

pytestmark = [pytest.mark.lab]


@pytest.mark.timeout(60)
def test_every_acknowledged_write_is_found_down_to_its_chunk_bytes(lone: Lab) -> None:
    workload = Workload(lone, entry=1, max_ops=12, max_seconds=30, interval=0.0).start()
    workload.join(timeout=30)
    acked = checker.acked_writes(workload.snapshot())
    result = checker.await_convergence(lone, acked, timeout=5)
    problems = checker.chunk_divergence(lone, result.views, checker.uploaded(acked))

    assert not workload.running
    assert workload.summary()["acknowledged"] == 12
    assert {op.kind for op in acked} == {"upload", "playlist"}
    assert all(op.served_by == "1" and op.answer_sha256 == op.sha256
               for op in acked if op.kind == "upload")
    assert result.seconds is not None
    assert problems == []
    assert len(result.views[1].songs) == 9


@pytest.mark.timeout(60)
def test_writes_to_a_dead_entry_are_recorded_as_failed(lone: Lab) -> None:
    Nemesis(lone).kill(1)
    workload = Workload(lone, entry=1, max_ops=4, max_seconds=20, interval=0.0).start()
    workload.join(timeout=20)

    writes = [op for op in workload.snapshot() if op.kind != "read"]
    assert len(writes) == 4
    assert not any(op.ok for op in writes)
    assert all("Refused" in (op.error or "") for op in writes)
