"""Who may write: the replica's view of its role, epoch and leader, as the API needs it.

Until the Bully election is wired in, a lone replica leads epoch 1; the election replaces
LoneLeader with the same interface.
"""
# test-case-name: tests.unit.test_library

from __future__ import annotations

from typing import Any, Protocol

from distpotify.errors import NotLeader


class Leadership(Protocol):
    epoch: int

    def require_leader(self) -> None:
        """Return if this replica may write now, else raise NotLeader naming the leader."""

    def status(self) -> dict[str, Any]:
        """role, state, epoch, leader_id, leader_http for /status."""


class LoneLeader:
    def __init__(self, node_id: int, http_url: str, epoch: int = 1) -> None:
        self.node_id = node_id
        self.http_url = http_url
        self.epoch = epoch

    def require_leader(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {
            "role": "leader",
            "state": "ACTIVE",
            "epoch": self.epoch,
            "leader_id": self.node_id,
            "leader_http": self.http_url,
        }


class NoLeader:
    """A replica that knows no leader: every write is refused (used by tests and JOINING)."""

    epoch = 0

    def require_leader(self) -> None:
        raise NotLeader("no leader is known; retry shortly", leader_id=None, leader_http=None)

    def status(self) -> dict[str, Any]:
        return {"role": "follower", "state": "ACTIVE", "epoch": 0, "leader_id": None,
                "leader_http": None}
