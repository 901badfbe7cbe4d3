"""Waiting for a Deferred until a deadline without cancelling it: what it does goes on, only
the wait ends (a new leader's rounds of anti-entropy, which writes wait for)."""
# test-case-name: tests.unit.test_deadline

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")


def waited(work: Deferred[T], seconds: float, clock: IReactorTime) -> Deferred[T]:
    """A Deferred with ``work``'s result, or a TimeoutError once ``seconds`` have passed;
    cancelling it ends the wait alone. ``work`` goes on either way, and its result is
    consumed here: whatever it fails with must be dealt with where it was made."""
    wait: Deferred[T] = Deferred()

    def relay(result: T | Failure) -> None:
        if wait.called:
            return
        if isinstance(result, Failure):
            wait.errback(result)
        else:
            wait.callback(result)

    work.addBoth(relay)
    return wait.addTimeout(max(seconds, 0.0), clock)
