"""The user directory: every account in memory, found by id or by name, kept by the replica
as user records apply and by the proxy, so a token is checked without a database read.

Names are compared folded (NFKC, then case-folded): "Alice", "ALICE" and fullwidth "Alice" are
one name. Two accounts holding one name (made on two sides of a partition) are resolved by
``resolve_clash``, a pure rule that gives the same answer on every replica.
"""
# test-case-name: tests.unit.test_auth_users

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Literal

import attrs

ADMIN = "admin"
LISTENER = "listener"
ROLES = (ADMIN, LISTENER)
Role = Literal["admin", "listener"]

MAX_USERNAME = 64
# The renamed account of a clash takes "-" and this many hex digits of its id.
_SUFFIX_DIGITS = 8


class InvalidUsername(ValueError):
    """A name an account cannot take; the message says why."""


def name_key(username: str) -> str:
    """The form names are compared in: NFKC, case-folded, NFKC again (folding can undo the
    normalisation, as Unicode's NFKC_Casefold notes)."""
    folded = unicodedata.normalize("NFKC", username).casefold()
    return unicodedata.normalize("NFKC", folded)


def check_username(username: str) -> str:
    """``username`` in NFKC, if an account may take it: 1 to 64 characters, none of them a
    space, separator or control character. InvalidUsername otherwise."""
    name = unicodedata.normalize("NFKC", username)
    if not 1 <= len(name) <= MAX_USERNAME:
        raise InvalidUsername(f"a username has 1 to {MAX_USERNAME} characters")
    if any(unicodedata.category(c)[0] in "CZ" for c in name):
        raise InvalidUsername("a username has no spaces or control characters")
    return name


@attrs.frozen
class User:
    """One account as its record holds it. ``created_at`` is the record's fixed-width UTC
    timestamp text ("2026-12-02T22:04:34.000Z"), so text order is time order; ``version`` the
    encoded version of its last write. Its repr leaves the password hash and box out."""

    id: str
    username: str
    role: Role = attrs.field(validator=attrs.validators.in_(ROLES))
    password_hash: str = attrs.field(repr=False)
    generation: int = attrs.field(validator=attrs.validators.ge(0))
    created_at: str
    disabled: bool = False
    version: str = ""
    # The password sealed for Subsonic token auth (auth/box.py); None before one was stored.
    subsonic_box: str | None = attrs.field(default=None, repr=False)

    @property
    def key(self) -> str:
        return name_key(self.username)


@attrs.frozen
class Clash:
    """Two accounts found holding one name: ``keeper`` keeps it, ``renamed`` is the other
    with its new name. The caller logs it, and the leader writes the rename."""

    keeper: User
    renamed: User


def resolve_clash(a: User, b: User) -> tuple[User, User]:
    """(keeper, renamed) for two accounts of one folded name: the older account (by
    ``created_at``, then the smaller id) keeps it; the other is renamed to its name, "-" and
    the first 8 hex digits of its id. The same on every replica, whatever the order of the
    arguments; a renamed name may pass 64 characters."""
    if a.id == b.id:
        raise ValueError("a clash is between two accounts")
    keeper, other = sorted((a, b), key=lambda user: (user.created_at, user.id))
    digits = other.id.replace("-", "")[:_SUFFIX_DIGITS]
    return keeper, attrs.evolve(other, username=f"{other.username}-{digits}")


class Directory:
    """Every account, by id and by folded name; one name, one account.

    ``put`` is given records as they apply, in any order: a name held by another account is
    resolved by ``resolve_clash`` at once (the order records arrive in changes nothing), and
    the clashes are returned for the caller to log and, on the leader, to write.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, User] = {}
        self._by_key: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[User]:
        return iter(list(self._by_id.values()))

    def by_id(self, user_id: str) -> User | None:
        return self._by_id.get(user_id)

    def by_name(self, username: str) -> User | None:
        """The account holding ``username``, compared folded."""
        user_id = self._by_key.get(name_key(username))
        return None if user_id is None else self._by_id[user_id]

    def put(self, user: User) -> list[Clash]:
        """Add ``user`` or replace the account of its id; the clashes this resolved."""
        self._unindex(user.id)
        clashes: list[Clash] = []
        pending: User | None = user
        while pending is not None:
            holder_id = self._by_key.get(pending.key)
            if holder_id is None:
                self._store(pending)
                pending = None
                continue
            keeper, renamed = resolve_clash(self._by_id[holder_id], pending)
            clashes.append(Clash(keeper, renamed))
            self._unindex(holder_id)
            self._store(keeper)
            pending = renamed  # its new name may be taken too
        return clashes

    def remove(self, user_id: str) -> User | None:
        """Forget the account ``user_id`` (deleted); the account it was, if any."""
        user = self._unindex(user_id)
        if user is not None:
            del self._by_id[user_id]
        return user

    def _store(self, user: User) -> None:
        self._by_id[user.id] = user
        self._by_key[user.key] = user.id

    def _unindex(self, user_id: str) -> User | None:
        user = self._by_id.get(user_id)
        if user is not None and self._by_key.get(user.key) == user_id:
            del self._by_key[user.key]
        return user
