"""Who may write: the replica's view of its role, epoch and leader, as the API needs it.

cluster/node.py's ClusterNode is the real one; tests use small stand-ins.
"""
# test-case-name: tests.unit.test_api

from __future__ import annotations

from typing import Any, Protocol


class Leadership(Protocol):
    @property
    def epoch(self) -> int:
        """The epoch this replica knows (its own while it leads)."""

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads now (it pushes, purges and answers joins)."""

    def require_leader(self) -> None:
        """Return if this replica may write now, else raise NotLeader naming the leader."""

    def status(self) -> dict[str, Any]:
        """role, state, epoch, leader_id, leader_http for /status."""
