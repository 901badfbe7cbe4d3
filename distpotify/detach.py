"""Waiting for work that must run to its end, whatever happens to whoever waits for it.

Cancelling a Deferred that awaits a thread or a download cannot stop the work; it can only
make the work lose track of itself (its in-flight entry freed, its files left half done).
``detached`` gives the caller the work's result through a Deferred of its own, so cancelling
the caller drops the answer and leaves the work running to its end.
"""
# test-case-name: tests.unit.test_api,tests.unit.test_diskfull

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.diskfull import log_failure
from distpotify.errors import ApiError

log = Logger()

T = TypeVar("T")


def detached(work: Deferred[T], what: str) -> Deferred[T]:
    """``work``'s result, in a Deferred whose cancellation leaves ``work`` running; a failure
    nobody waits for any more is logged as ``what``'s."""
    answer: Deferred[T] = Deferred()

    def relay(result: Any) -> None:
        if answer.called:  # cancelled: nobody waits for it any more
            if isinstance(result, Failure) and not result.check(CancelledError):
                _gone_failed(result, what)
            return
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)

    work.addBoth(relay)
    return answer


def _gone_failed(failure: Failure, what: str) -> None:
    """A failure nobody is told of any more: a refusal (the answer the caller would have had)
    is one line, a full disk one warning, and anything else logged whole."""
    if isinstance(failure.value, ApiError):
        log.info("{what} failed after its caller went away: {status} {error}", what=what,
                 status=failure.value.status, error=failure.value.message)
    else:
        log_failure(log, failure, "{what} failed after its caller went away", what=what)
