"""The network-namespace lab (lab/) as tests/lab's fixtures start it (one replica, once it
leads alone), and polling with a deadline."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab.lab import Lab

T = TypeVar("T")


def poll(what: str, condition: Callable[[], T | None], timeout: float = 20.0) -> T:
    """CONDITION's first truthy answer, asked every 50 ms; fails after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def lone_lab(base_dir: Path, timeout: float, **options: Any) -> Iterator[Lab]:
    """One real replica in its namespace (a ``Lab`` of one, with ``options``), once it leads
    (alone, it elects itself), within ``timeout`` seconds: it takes writes directly. Skips
    without ``twistd distpotify``; logs stay in ``base_dir`` for a failed test."""
    with Lab(1, base_dir=base_dir, keep_files=True, echo=print, **options) as running:
        if running.replica_kind != "twistd":
            pytest.skip("needs `twistd distpotify` (the replica foundation)")
        deadline = time.monotonic() + timeout
        while (running.status(1) or {}).get("role") != "leader":
            assert time.monotonic() < deadline, f"node 1 never led: {running.status(1)}"
            time.sleep(0.05)
        yield running
