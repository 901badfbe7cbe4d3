"""Passwords of user accounts: argon2id hashes made and checked off the reactor thread, and
the rule a new password must meet.

Hashing is meant to be slow (50-250 ms per check, docs/architecture.md "Accounts"), so every
hash and verify runs through an injected ``run_blocking`` (a thread pool on a replica, a synchronous
call in tests), and at most ``concurrency`` of them at once (one, by default), which bounds
the memory (``memory_cost`` each) and the cores they take whatever the size of that pool,
so a burst of logins cannot slow streaming; past ``max_waiting`` queued behind those, more
are refused at once (PasswordsBusy) rather than queued without end. Passwords are
NFKC-normalised first, so the same password typed on another keyboard or system matches.
"""
# test-case-name: tests.unit.test_auth_passwords

from __future__ import annotations

import base64
import secrets
import unicodedata
from collections.abc import Callable
from typing import Any

import attrs
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import ARGON2_VERSION
from argon2.profiles import RFC_9106_LOW_MEMORY
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed

RunBlocking = Callable[..., Deferred[Any]]

MIN_LENGTH = 8
MAX_LENGTH = 1024
# Hashes that would cost more than this many times our own parameters are refused unread:
# a stored hash comes from the cluster, but a corrupt one must not make a login allocate
# gigabytes or run for minutes.
_MAX_COST_FACTOR = 4


@attrs.frozen
class HashParams:
    """argon2id's cost: passes over memory, KiB of memory, and lanes (threads) per hash.

    The defaults are RFC 9106's second recommendation (64 MiB, 3 passes) with one lane: one
    lane keeps a check on one core, leaving the others to the reactor, for no more CPU time
    than four lanes take. Measured with
    ``bench/hashcost.py`` on the 2-core development machine: 137 ms per verify (neighbours:
    2 passes 99 ms, 4 passes 183 ms), in the middle of 50-250 ms; bench/README.md has the run.
    """

    time_cost: int = RFC_9106_LOW_MEMORY.time_cost
    memory_cost: int = RFC_9106_LOW_MEMORY.memory_cost
    parallelism: int = 1

    def hasher(self) -> PasswordHasher:
        return PasswordHasher(time_cost=self.time_cost, memory_cost=self.memory_cost,
                              parallelism=self.parallelism, type=Type.ID)


class WeakPassword(ValueError):
    """A new password that does not meet the rule; the message says which part, never the
    password."""


def check_new_password(password: str) -> None:
    """Raise WeakPassword unless ``password`` has 8 to 1024 characters, not all whitespace."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")
    if password.isspace():
        raise WeakPassword("a password is not only spaces")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON's \ud800): no text, no hash
        raise WeakPassword("a password is valid Unicode text") from None


class PasswordsBusy(Exception):
    """Too many password hashes or checks are waiting already; try again in a moment."""


class Passwords:
    """Makes and checks argon2id password hashes with one set of parameters."""

    def __init__(self, run_blocking: RunBlocking, params: HashParams | None = None,
                 *, concurrency: int = 1, max_waiting: int = 32) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency is at least 1, not {concurrency}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting is at least 0, not {max_waiting}")
        self.params = params or HashParams()
        self._run = run_blocking
        self._hasher = self.params.hasher()
        self._slots = DeferredSemaphore(concurrency)
        self._max_waiting = max_waiting
        # Checked instead of a real hash when the user does not exist, so that a login for
        # an unknown name takes as long as one with a wrong password.
        self._decoy = _decoy_hash(self.params)

    def hash(self, password: str) -> Deferred[str]:
        """The encoded hash of ``password`` (with a fresh salt), to store; fails with
        PasswordsBusy when too many are waiting."""
        return self._queue(self._hasher.hash, _normal(password))

    def verify(self, stored_hash: str | None, password: str) -> Deferred[bool]:
        """Whether ``password`` matches ``stored_hash``: False on a mismatch, a malformed or
        too costly hash, or None (no such user: a decoy is checked, for the same time).
        Fails only with PasswordsBusy, when too many checks are waiting."""
        if stored_hash is None:
            stored_hash, wanted = self._decoy, False
        else:
            wanted = True
        if not self._acceptable(stored_hash):
            return succeed(False)
        d = self._queue(_verify, self._hasher, stored_hash, _normal(password))
        return d.addCallback(lambda matched: matched and wanted)

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether ``stored_hash`` was made with other parameters (or is not a hash we can
        read): after a successful login, store a new hash of the password."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True

    def _queue(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if len(self._slots.waiting) >= self._max_waiting and not self._slots.tokens:
            return fail(PasswordsBusy("too many password checks at once; try again shortly"))
        return self._slots.run(self._run, f, *args)

    def _acceptable(self, stored_hash: str) -> bool:
        try:
            found = _parameters(stored_hash)
        except (InvalidHashError, ValueError):
            return False
        return (found.time_cost <= self.params.time_cost * _MAX_COST_FACTOR
                and found.memory_cost <= self.params.memory_cost * _MAX_COST_FACTOR
                and found.parallelism <= max(self.params.parallelism, 4) * _MAX_COST_FACTOR)


def _normal(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def _parameters(stored_hash: str) -> HashParams:
    if not stored_hash.isascii():
        raise InvalidHashError
    found = extract_parameters(stored_hash)
    return HashParams(found.time_cost, found.memory_cost, found.parallelism)


def _verify(hasher: PasswordHasher, stored_hash: str, password: str) -> bool:
    try:
        return hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError, ValueError):
        return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _decoy_hash(params: HashParams) -> str:
    """A well-formed argon2id hash of no password anyone knows: random salt and digest."""
    return (f"$argon2id$v={ARGON2_VERSION}$m={params.memory_cost},t={params.time_cost},"
            f"p={params.parallelism}${_b64(secrets.token_bytes(16))}"
            f"${_b64(secrets.token_bytes(32))}")
