"""Who may do what (docs/architecture.md, "Who may do what"): the route table the gate
applies before any handler runs, and the actor handlers pass on for the ownership rules.

The gate decides what it can from the path alone (anonymous or not, admin or not); whether a
listener owns the song or playlist a request names is decided where the record is read, in
the leader's write transaction (library.py), with the Actor this module defines.
"""
# test-case-name: tests.unit.test_access

from __future__ import annotations

import enum

import attrs

from distpotify.auth.users import ADMIN, User


class Need(enum.Enum):
    """What a request must prove before its handler runs."""

    NOTHING = "anyone"  # login, setup, logout, /health
    USER = "user"  # any account: the library (ownership checked later), /auth/me
    ADMIN = "admin"  # the accounts of others
    MONITOR = "monitor"  # /status, /metrics: a cluster signature, an admin or --metrics-token


_OPEN_AUTH = {b"login", b"setup", b"logout"}
_SAFE = (b"GET", b"HEAD")


def need_of(method: bytes, segments: list[bytes]) -> Need:
    """What a request for the path ``segments`` (split at "/", without the first empty one)
    needs. /sync/* never comes here: it keeps its cluster signatures."""
    first = segments[0] if segments else b""
    if first == b"auth":
        second = segments[1] if len(segments) > 1 else b""
        return Need.NOTHING if second in _OPEN_AUTH and method == b"POST" else Need.USER
    if first == b"users":
        return Need.ADMIN
    if first in (b"status", b"metrics") and len(segments) == 1:
        return Need.MONITOR
    if first == b"health" and len(segments) == 1 and method in _SAFE:
        # Liveness for container health checks, which hold no secret: it says "up", no more.
        return Need.NOTHING
    return Need.USER


@attrs.frozen
class Actor:
    """Who a request acts as: an account's id and whether it is an admin. ``user_id`` None
    with ``admin`` is UNRESTRICTED: enforcement off (``--auth off``), or the cluster itself."""

    user_id: str | None
    admin: bool

    @classmethod
    def of(cls, user: User) -> Actor:
        return cls(user.id, user.role == ADMIN)

    def may_change(self, owner: str | None) -> bool:
        """Whether this actor may edit or delete a record ``owner`` made. Records from before
        accounts (no owner) belong to the first admin, so to admins only."""
        return self.admin or (owner is not None and owner == self.user_id)

    def may_read_playlist(self, owner: str | None, public: bool) -> bool:
        return public or self.may_change(owner)


UNRESTRICTED = Actor(None, admin=True)
