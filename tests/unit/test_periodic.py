"""The periodic-task service on a Clock: its schedule, jitter, failures that never end the
loop, and stopping (also in the middle of a run) and starting again."""

from __future__ import annotations

import errno
import random
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from distpotify.periodic import Periodic


class Body:
    """Records when it runs; answers with what the test queued (a value, an exception, a
    Deferred), else None."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.times: list[float] = []
        self.answers: list[Any] = []

    def __call__(self) -> Any:
        self.times.append(self.clock.seconds())
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer


def periodic(interval: Any = 1.0, **kwargs: Any) -> tuple[Periodic, Body, Clock]:
    clock = Clock()
    body = Body(clock)
    return Periodic(body, interval, clock, name="test task", **kwargs), body, clock


def test_first_run_comes_after_one_interval_then_every_interval() -> None:
    task, body, clock = periodic()

    task.startService()
    clock.pump([0.5] * 7)

    assert body.times == [1.0, 2.0, 3.0]


def test_first_zero_runs_at_once_within_start() -> None:
    task, body, clock = periodic(first=0)

    task.startService()
    assert body.times == [0.0]
    clock.pump([1.0, 1.0])

    assert body.times == [0.0, 1.0, 2.0]


def test_a_given_first_delay_is_used_once() -> None:
    task, body, clock = periodic(first=3.5)

    task.startService()
    clock.pump([0.5] * 11)

    assert body.times == [3.5, 4.5, 5.5]


def test_a_body_that_raises_is_logged_and_the_loop_goes_on() -> None:
    task, body, clock = periodic(first=0)
    body.answers = [RuntimeError("boom")]

    with capturedLogs() as events:
        task.startService()
        clock.pump([1.0, 1.0])

    assert body.times == [0.0, 1.0, 2.0]
    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["task"] == "test task"
    assert failures[0]["log_failure"].check(RuntimeError)


def test_a_body_that_finds_the_disk_full_is_one_warning_line() -> None:
    """A full disk is the operator's to mend, not a bug: no traceback, every run."""
    task, body, clock = periodic(first=0)
    body.answers = [OSError(errno.ENOSPC, "No space left on device")]

    with capturedLogs() as events:
        task.startService()
        clock.pump([1.0])

    assert body.times == [0.0, 1.0]
    assert [e for e in events if e.get("log_failure") is not None] == []
    warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert warned == ["test task failed: the disk is full (a file could not be written)"]


def test_a_body_that_fails_later_is_logged_and_the_loop_goes_on() -> None:
    task, body, clock = periodic(first=0)
    pending: Deferred[None] = Deferred()
    body.answers = [pending]

    with capturedLogs() as events:
        task.startService()
        clock.advance(0.3)
        pending.errback(ValueError("no peer answered"))
        clock.pump([0.7, 1.0])

    assert body.times == [0.0, 1.0, 2.0]
    assert [e["log_failure"].type for e in events if e.get("log_failure")] == [ValueError]


def test_the_next_run_waits_for_the_body_and_keeps_to_the_interval() -> None:
    task, body, clock = periodic(first=0)
    slow: Deferred[None] = Deferred()
    body.answers = [slow]

    task.startService()
    clock.advance(0.4)
    slow.callback(None)  # ended 0.4 s after it started: the next is still due at 1.0
    clock.pump([0.3, 0.3])

    assert body.times == [0.0, 1.0]


def test_a_run_that_outlasts_the_interval_is_followed_by_a_whole_interval() -> None:
    task, body, clock = periodic(first=0)
    slow: Deferred[None] = Deferred()
    body.answers = [slow]

    task.startService()
    clock.pump([1.0, 1.0, 0.5])
    assert body.times == [0.0]  # never two runs at once
    slow.callback(None)
    clock.pump([0.5, 0.5, 0.5])

    assert body.times == [0.0, 3.5]


def test_an_interval_function_is_asked_after_each_run() -> None:
    waits = [2.0, 5.0]
    task, body, clock = periodic(interval=lambda: waits.pop(0) if waits else 1.0, first=0)

    task.startService()
    clock.pump([0.5] * 18)

    assert body.times == [0.0, 2.0, 7.0, 8.0, 9.0]


def test_jittered_waits_stay_within_the_bounds_and_vary() -> None:
    task, body, clock = periodic(interval=10.0, jitter=0.2, rng=random.Random(7))

    task.startService()
    for _ in range(2000):
        clock.advance(0.5)

    waits = [b - a for a, b in zip([0.0, *body.times], body.times, strict=False)]
    assert len(waits) > 50
    assert all(8.0 - 0.5 <= w <= 12.0 + 0.5 for w in waits), (min(waits), max(waits))
    assert min(waits) < 9.0 and max(waits) > 11.0


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 1.5])
def test_a_jitter_outside_zero_to_one_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        Periodic(lambda: None, 1.0, Clock(), name="bad", jitter=jitter)


def test_stop_cancels_the_next_run() -> None:
    task, body, clock = periodic(first=0)
    task.startService()

    stopped = task.stopService()
    clock.pump([1.0] * 3)

    assert stopped.called
    assert body.times == [0.0]
    assert clock.getDelayedCalls() == []


def test_stop_while_a_body_runs_cancels_it_quietly_and_fires_once_it_ended() -> None:
    task, body, clock = periodic(first=0)
    cancelled: list[bool] = []
    body.answers = [Deferred(lambda d: cancelled.append(True))]
    task.startService()

    with capturedLogs() as events:
        stopped = task.stopService()

    assert cancelled == [True] and stopped.called
    assert [e for e in events if e.get("log_failure")] == []
    clock.pump([1.0] * 3)
    assert body.times == [0.0] and clock.getDelayedCalls() == []


def test_stop_waits_for_a_body_that_outlives_its_cancellation() -> None:
    task, body, clock = periodic(first=0)
    waiting: Deferred[None] = Deferred()
    cleanup: Deferred[None] = Deferred()
    body.answers = [Deferred.fromCoroutine(_cleans_up_when_cancelled(waiting, cleanup))]
    task.startService()

    stopped = task.stopService()
    assert not stopped.called
    cleanup.callback(None)

    assert stopped.called
    clock.pump([1.0] * 3)
    assert body.times == [0.0]


async def _cleans_up_when_cancelled(waiting: Deferred[None], cleanup: Deferred[None]) -> None:
    try:
        await waiting
    except CancelledError:
        await cleanup


def test_a_stopped_task_starts_again_on_a_fresh_schedule() -> None:
    task, body, clock = periodic()
    task.startService()
    clock.pump([1.0, 1.0])
    task.stopService()
    clock.advance(0.5)

    task.startService()
    clock.pump([0.5] * 4)

    assert body.times == [1.0, 2.0, 3.5, 4.5]


def test_a_body_failing_at_once_still_gets_its_next_run() -> None:
    task, body, clock = periodic(first=0)
    body.answers = [fail(KeyError("gone"))]

    with capturedLogs():
        task.startService()
        clock.advance(1.0)

    assert body.times == [0.0, 1.0]


def test_run_early_runs_a_nearly_due_run_now_and_counts_the_next_from_now() -> None:
    task, body, clock = periodic()
    task.startService()
    clock.advance(0.7)

    assert task.run_early(0.35)
    clock.pump([1.0, 1.0])

    assert body.times == pytest.approx([0.7, 1.7, 2.7])


def test_run_early_leaves_a_run_due_later_than_asked() -> None:
    task, body, clock = periodic()
    task.startService()
    clock.advance(0.6)

    assert not task.run_early(0.35)
    clock.pump([0.4, 1.0, 1.0])

    assert body.times == pytest.approx([1.0, 2.0, 3.0])


def test_run_early_never_overlaps_a_run_under_way_and_does_nothing_stopped() -> None:
    task, body, _ = periodic(first=0)
    pending: Deferred[None] = Deferred()
    body.answers.append(pending)
    task.startService()

    assert not task.run_early(10.0)  # the first run has not ended
    pending.callback(None)
    task.stopService()

    assert not task.run_early(10.0)
    assert body.times == [0.0]
