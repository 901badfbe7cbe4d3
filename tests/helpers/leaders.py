"""Who says it leads, seen from outside: every replica's /status polled from a thread of its
own, for tests and benchmarks that measure how long two replicas claim leadership at once."""

from __future__ import annotations

import http.client
import threading
import time

from tests.helpers.replica import ReplicaProcess


class LeaderWatch:
    """Polls every replica's /status from a thread of its own and records who says it leads.

    A replica's answer holds from the moment it arrives until its next answer; a replica
    that does not answer (paused) claims nothing we can see."""

    def __init__(self, nodes: list[ReplicaProcess]) -> None:
        self._nodes = nodes
        self._stop = threading.Event()
        self.samples: dict[int, list[tuple[float, bool | None]]] = {n.node_id: [] for n in nodes}
        self._threads = [threading.Thread(target=self._poll, args=(n,), daemon=True)
                         for n in nodes]

    def __enter__(self) -> LeaderWatch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _poll(self, node: ReplicaProcess) -> None:
        while not self._stop.is_set():
            try:
                answer = node.get("/status", timeout=0.2)
                leads: bool | None = answer.json()["role"] == "leader"
            except (OSError, http.client.HTTPException, ValueError):
                leads = None
            self.samples[node.node_id].append((time.monotonic(), leads))
            self._stop.wait(0.005)

    def longest_two_leader_window(self) -> float:
        changes = sorted((t, node, leads) for node, samples in self.samples.items()
                         for t, leads in samples)
        leading: dict[int, bool] = {}
        longest, since = 0.0, None
        for t, node, leads in changes:
            leading[node] = bool(leads)
            two = sum(leading.values()) >= 2
            if two and since is None:
                since = t
            elif not two and since is not None:
                longest, since = max(longest, t - since), None
        return longest
