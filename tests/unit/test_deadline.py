"""waited: the wait ends at the deadline, the work does not."""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.task import Clock

from distpotify.deadline import waited
from tests.helpers.api import result_of


def test_the_work_done_in_time_gives_its_result() -> None:
    clock = Clock()
    work: Deferred[int] = Deferred()
    wait = waited(work, 2.0, clock)
    clock.advance(1.9)
    work.callback(7)
    assert result_of(wait) == 7
    assert clock.getDelayedCalls() == []


def test_work_already_done_gives_its_result_at_once() -> None:
    assert result_of(waited(succeed("done"), 2.0, Clock())) == "done"


def test_a_failure_in_time_is_the_waits() -> None:
    work: Deferred[int] = Deferred()
    wait = waited(work, 2.0, Clock())
    work.errback(ValueError("bad"))
    with pytest.raises(ValueError):
        result_of(wait)


def test_past_the_deadline_the_wait_times_out_and_the_work_goes_on() -> None:
    clock = Clock()
    cancelled: list[Deferred[int]] = []
    work: Deferred[int] = Deferred(cancelled.append)
    wait = waited(work, 2.0, clock)
    clock.advance(2.0)
    with pytest.raises(TimeoutError):
        result_of(wait)
    assert cancelled == [] and not work.called
    work.errback(ValueError("late"))
    assert work.result is None  # consumed: no unhandled error in a Deferred


def test_cancelling_the_wait_leaves_the_work_alone() -> None:
    clock = Clock()
    work: Deferred[int] = Deferred()
    wait = waited(work, 2.0, clock)
    wait.cancel()
    with pytest.raises(CancelledError):
        result_of(wait)
    work.callback(1)
    assert clock.getDelayedCalls() == []
