"""A periodic task as a service: one body run every interval (optionally jittered) while the
service runs, whose failures are logged and never end the loop.

Shared by the replica and the proxy (it imports nothing from either). Modelled on buildbot's
util/service.py and util/poll.py: an exception escaping a LoopingCall stops it for good, and
a replica whose heartbeats, anti-entropy or scrubbing silently stopped looks healthy while it
rots, so the loop itself catches, logs and carries on.
"""
# test-case-name: tests.unit.test_periodic

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.diskfull import log_failure


class Periodic(service.Service):
    """Runs ``body`` every ``interval`` seconds from start to stop.

    ``body`` may return a Deferred: the next run waits for it, so runs never overlap. Runs
    are ``interval`` apart from start to start (each wait drawn from ``interval`` times
    1 ± ``jitter``, and ``interval`` may be a function, asked after each run); a run that
    ends after the next one was due is followed by a whole wait, so a slow body or a busy
    reactor spaces the runs out rather than running them back to back. The first run comes
    after ``first`` seconds (0: at once, within startService), by default after one wait.

    ``run_early`` brings a run that is nearly due forward to now.

    stopService cancels the pending run and the run under way, and fires once that run has
    ended; a stopped Periodic can be started again.
    """

    log = Logger()

    def __init__(
        self,
        body: Callable[[], object],
        interval: float | Callable[[], float],
        clock: IReactorTime,
        *,
        name: str,
        jitter: float = 0.0,
        first: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.name = name
        self._body = body
        self._interval = interval
        self._clock = clock
        self._jitter = jitter
        self._first = first
        self._rng = rng or random.Random()
        self._call: IDelayedCall | None = None
        self._run: Deferred[object] | None = None
        self._due = 0.0  # when the run under way (or the next one) was due
        self._ended: list[Deferred[None]] = []

    def startService(self) -> None:
        super().startService()
        if self._run is not None:
            return  # a run cancelled by the last stop has not ended yet: it schedules the next
        first = self._wait() if self._first is None else self._first
        if first <= 0:
            self._due = self._clock.seconds()
            self._go()
        else:
            self._schedule(first)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._run is None:
            return succeed(None)
        ended: Deferred[None] = Deferred()
        self._ended.append(ended)
        self._run.cancel()
        return ended

    def run_early(self, within: float) -> bool:
        """Run now if the next run is due within ``within`` seconds (and none is under way);
        the waits start again from now. Whether it ran."""
        call = self._call
        now = self._clock.seconds()
        if call is None or not call.active() or call.getTime() - now > within:
            return False
        call.cancel()
        self._due = now
        self._go()
        return True

    def _wait(self) -> float:
        interval = self._interval() if callable(self._interval) else self._interval
        if self._jitter:
            interval *= self._rng.uniform(1 - self._jitter, 1 + self._jitter)
        return interval

    def _schedule(self, delay: float) -> None:
        self._due = self._clock.seconds() + delay
        self._call = self._clock.callLater(delay, self._go)

    def _go(self) -> None:
        self._call = None
        run: Deferred[object] = maybeDeferred(self._body)
        self._run = run
        run.addErrback(self._failed)
        run.addBoth(self._ran)

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError) and not self.running:
            return  # cancelled by stopService
        log_failure(self.log, failure, "{task} failed", task=self.name)

    def _ran(self, _: object) -> None:
        self._run = None
        if self.running:
            late = self._clock.seconds() - self._due
            wait = self._wait()
            self._schedule(wait - late if late < wait else wait)
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(None)
