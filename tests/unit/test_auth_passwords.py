"""Password hashes: a roundtrip, every way a check says no without raising, the decoy for
unknown users, rehashing, the bound on hashes at once, and the rule for new passwords."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from distpotify.auth.passwords import (
    MAX_LENGTH,
    HashParams,
    Passwords,
    PasswordsBusy,
    WeakPassword,
    check_new_password,
)
from tests.helpers.api import result_of, run_now

# Cheap parameters keep the tests fast; the defaults' cost is bench/hashcost.py's business.
CHEAP = HashParams(time_cost=1, memory_cost=1024, parallelism=1)


class QueuedRunner:
    """Holds each blocking call until the test runs it, to see how many wait at once."""

    def __init__(self) -> None:
        self.queued: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.queued.append((d, f, args))
        return d

    def run_one(self) -> None:
        d, f, args = self.queued.pop(0)
        d.callback(f(*args))


def passwords(params: HashParams = CHEAP) -> Passwords:
    return Passwords(run_now, params)


def stored(password: str, params: HashParams = CHEAP) -> str:
    return result_of(passwords(params).hash(password))


# -- hashing and checking


def test_a_hashed_password_verifies() -> None:
    hashed = stored("correct horse battery")

    assert result_of(passwords().verify(hashed, "correct horse battery")) is True


def test_the_hash_is_argon2id_with_a_fresh_salt_and_no_password_in_it() -> None:
    first, second = stored("correct horse battery"), stored("correct horse battery")

    assert first.startswith("$argon2id$")
    assert first != second
    assert "correct" not in first


def test_a_wrong_password_is_false() -> None:
    hashed = stored("correct horse battery")

    assert result_of(passwords().verify(hashed, "correct horse battery!")) is False


@pytest.mark.parametrize("hashed", [
    "", "not a hash", "$argon2id$", "$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$",
    "$2b$12$abcdefghijklmnopqrstuv", "$argon2id$v=19$m=1024,t=1,p=1$ĉĉĉĉ$ĉĉĉĉ",
])
def test_a_malformed_hash_is_false_not_an_error(hashed: str) -> None:
    assert result_of(passwords().verify(hashed, "correct horse battery")) is False


def test_a_hash_costing_far_more_than_ours_is_refused_unchecked() -> None:
    runner = QueuedRunner()
    costly = stored("correct horse battery").replace("m=1024,", "m=4194304,")

    verdict = Passwords(runner, CHEAP).verify(costly, "correct horse battery")

    assert result_of(verdict) is False
    assert runner.queued == []


def test_an_unknown_user_checks_a_decoy_and_is_false() -> None:
    runner = QueuedRunner()

    verdict = Passwords(runner, CHEAP).verify(None, "correct horse battery")
    runner.run_one()

    assert result_of(verdict) is False


def test_the_same_password_in_another_unicode_form_verifies() -> None:
    hashed = stored("caf\u00e9 au lait")  # é as one code point

    assert result_of(passwords().verify(hashed, "cafe\u0301 au lait")) is True  # e + accent


def test_hashing_and_checking_run_through_the_injected_runner() -> None:
    runner = QueuedRunner()
    hashing = Passwords(runner, CHEAP).hash("correct horse battery")

    assert len(runner.queued) == 1
    runner.run_one()
    assert result_of(hashing).startswith("$argon2id$")


def test_at_most_concurrency_hashes_run_at_once() -> None:
    runner = QueuedRunner()
    hasher = Passwords(runner, CHEAP, concurrency=2)

    pending = [hasher.hash(f"password number {n}") for n in range(3)]
    waiting = len(runner.queued)
    while runner.queued:
        runner.run_one()

    assert waiting == 2
    assert all(result_of(d).startswith("$argon2id$") for d in pending)


def test_one_check_runs_at_a_time_by_default() -> None:
    runner = QueuedRunner()
    hasher = Passwords(runner, CHEAP)

    for n in range(3):
        hasher.hash(f"password number {n}")

    assert len(runner.queued) == 1


def test_past_max_waiting_a_check_is_refused_at_once_as_busy() -> None:
    runner = QueuedRunner()
    hasher = Passwords(runner, CHEAP, concurrency=1, max_waiting=2)
    hashed = stored("correct horse battery")
    accepted = [hasher.verify(hashed, "correct horse battery") for _ in range(3)]

    refused = hasher.verify(hashed, "correct horse battery")

    with pytest.raises(PasswordsBusy):
        result_of(refused)
    while runner.queued:
        runner.run_one()
    assert [result_of(d) for d in accepted] == [True, True, True]


def test_once_the_queue_drains_checks_are_taken_again() -> None:
    runner = QueuedRunner()
    hasher = Passwords(runner, CHEAP, concurrency=1, max_waiting=0)
    hashed = stored("correct horse battery")
    first = hasher.verify(hashed, "correct horse battery")
    with pytest.raises(PasswordsBusy):
        result_of(hasher.verify(hashed, "correct horse battery"))

    runner.run_one()
    later = hasher.verify(hashed, "correct horse battery")
    runner.run_one()

    assert (result_of(first), result_of(later)) == (True, True)


# -- rehashing


def test_a_hash_with_our_parameters_needs_no_rehash() -> None:
    assert passwords().needs_rehash(stored("correct horse battery")) is False


def test_a_hash_with_other_parameters_needs_a_rehash() -> None:
    older = stored("correct horse battery", HashParams(time_cost=2, memory_cost=1024))

    assert passwords().needs_rehash(older) is True
    assert result_of(passwords().verify(older, "correct horse battery")) is True


def test_a_malformed_hash_needs_a_rehash() -> None:
    assert passwords().needs_rehash("not a hash") is True


def test_the_default_parameters_are_argon2id_at_64_mib() -> None:
    params = HashParams()

    assert (params.time_cost, params.memory_cost, params.parallelism) == (3, 64 * 1024, 1)


# -- new passwords


@pytest.mark.parametrize("password", ["eight ch", "x" * MAX_LENGTH, " padded password "])
def test_a_reasonable_password_is_accepted(password: str) -> None:
    check_new_password(password)


@pytest.mark.parametrize(("password", "reason"), [
    ("", "at least 8"),
    ("seven c", "at least 8"),
    ("x" * (MAX_LENGTH + 1), "at most 1024"),
    (" \t" * 8, "not only spaces"),
])
def test_a_weak_password_is_refused_with_a_reason(password: str, reason: str) -> None:
    with pytest.raises(WeakPassword, match=reason):
        check_new_password(password)


def test_the_refusal_never_shows_the_password() -> None:
    with pytest.raises(WeakPassword) as refused:
        check_new_password("hunter2")

    assert "hunter2" not in str(refused.value)
