"""The failed-login limit on a Clock: the free failures, the doubling waits and their cap,
forgetting after the window, a success, keys kept apart, and the bound on memory."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from distpotify.auth.ratelimit import WINDOW, LoginLimiter


def limiter(**kwargs: Any) -> tuple[LoginLimiter, Clock]:
    clock = Clock()
    clock.advance(1_000_000)
    return LoginLimiter(clock, **kwargs), clock


def fail(limit: LoginLimiter, key: str, times: int) -> list[float]:
    return [limit.failed(key) for _ in range(times)]


def test_a_key_never_seen_may_go_ahead() -> None:
    limit, _ = limiter()

    assert limit.wait("10.0.0.1") == 0


def test_the_first_failures_of_a_minute_are_free() -> None:
    limit, _ = limiter(per_minute=5)

    assert fail(limit, "alice", 5) == [0, 0, 0, 0, 0]
    assert limit.wait("alice") == 0


def test_past_the_free_failures_the_wait_starts_at_a_minutes_share() -> None:
    limit, _ = limiter(per_minute=5)
    fail(limit, "alice", 5)

    assert limit.failed("alice") == 12
    assert limit.wait("alice") == 12


def test_the_wait_counts_down_with_the_clock() -> None:
    limit, clock = limiter(per_minute=5)
    fail(limit, "alice", 6)

    clock.advance(5)
    assert limit.wait("alice") == 7
    clock.advance(7)
    assert limit.wait("alice") == 0


def test_each_further_failure_doubles_the_wait() -> None:
    limit, clock = limiter(per_minute=5)
    fail(limit, "alice", 5)

    waits = []
    for _ in range(4):
        waits.append(limit.failed("alice"))
        clock.advance(waits[-1])  # the attacker waits exactly as long as told

    assert waits == [12, 24, 48, 96]


def test_once_limited_a_key_gets_no_more_free_failures_after_a_long_wait() -> None:
    limit, clock = limiter(per_minute=5)
    fail(limit, "alice", 5)
    for wait in (12, 24, 48, 96):
        assert limit.failed("alice") == wait
        clock.advance(wait)

    assert limit.failed("alice") == 192


def test_the_wait_is_capped_at_max_wait() -> None:
    limit, clock = limiter(per_minute=5, max_wait=900)
    fail(limit, "alice", 5)

    waits = []
    for _ in range(10):
        waits.append(limit.failed("alice"))
        clock.advance(waits[-1])

    assert max(waits) == 900
    assert waits[-3:] == [900, 900, 900]


def test_failures_spread_out_over_minutes_stay_free() -> None:
    limit, clock = limiter(per_minute=5)

    waits = []
    for _ in range(20):
        waits.append(limit.failed("alice"))
        clock.advance(WINDOW / 5 + 0.1)

    assert set(waits) == {0}


def test_a_key_is_forgotten_a_window_after_its_last_wait_ends() -> None:
    limit, clock = limiter(per_minute=5)
    fail(limit, "alice", 6)  # waits 12 s

    clock.advance(12 + WINDOW)

    assert limit.wait("alice") == 0
    assert fail(limit, "alice", 5) == [0, 0, 0, 0, 0]
    assert limit.failed("alice") == 12  # the streak started over


def test_a_key_is_remembered_within_the_window_after_its_wait() -> None:
    limit, clock = limiter(per_minute=5)
    fail(limit, "alice", 6)

    clock.advance(12 + WINDOW - 1)

    assert limit.failed("alice") == 24


def test_a_success_forgets_the_key() -> None:
    limit, _ = limiter(per_minute=5)
    fail(limit, "alice", 8)

    limit.succeeded("alice")

    assert limit.wait("alice") == 0
    assert len(limit) == 0


def test_keys_are_counted_apart() -> None:
    limit, _ = limiter(per_minute=5)
    fail(limit, "alice", 7)

    assert limit.wait("bob") == 0
    assert limit.failed("bob") == 0


def test_forgotten_keys_leave_memory() -> None:
    limit, clock = limiter(per_minute=5)
    for n in range(100):
        limit.failed(f"10.0.0.{n}")

    clock.advance(WINDOW + 1)
    limit.wait("anyone")

    assert len(limit) == 0


def test_past_max_keys_the_key_that_failed_longest_ago_is_dropped() -> None:
    limit, clock = limiter(per_minute=1, max_keys=3)
    for key in ("a", "b", "c"):
        fail(limit, key, 2)
        clock.advance(1)
    fail(limit, "a", 1)  # a failed most recently now, b longest ago

    limit.failed("d")

    assert len(limit) == 3
    assert limit.wait("b") == 0
    assert limit.wait("a") > 0
    assert limit.wait("c") > 0


def test_asking_to_wait_keeps_no_key() -> None:
    limit, _ = limiter()

    for n in range(50):
        limit.wait(f"10.0.0.{n}")

    assert len(limit) == 0


@pytest.mark.parametrize("kwargs", [{"per_minute": 0}, {"max_wait": 0}, {"max_keys": 0}])
def test_nonsense_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        limiter(**kwargs)


def test_guesses_sent_at_once_are_not_all_checked_before_the_first_fails() -> None:
    limiter = LoginLimiter(Clock())
    begun = [limiter.begin("ana") for _ in range(8)]

    assert begun == [True] * 5 + [False] * 3


def test_an_attempt_that_failed_leaves_one_free_attempt_fewer_to_run_at_once() -> None:
    limiter = LoginLimiter(Clock())
    for _ in range(3):
        assert limiter.begin("ana")
    limiter.end("ana")
    limiter.failed("ana")

    assert [limiter.begin("ana") for _ in range(3)] == [True, True, False]
