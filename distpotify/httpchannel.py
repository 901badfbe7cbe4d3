"""The HTTP channel of both sites, the replica's and the proxy's: every phase of a connection
has a deadline, so a client that stalls cannot hold a connection open (slowloris).

A request's line and headers must arrive within ``header`` seconds of its first byte (of the
connection, for the first request); its body must make progress at least every ``body``
seconds; a keep-alive connection idle between requests closes after ``idle`` seconds. While
a request is handled and its response written no deadline runs: a listener that reads slowly,
or pauses, is never cut here. Lines and headers keep twisted.web's bounds (16 KiB per line,
16 KiB of request line and headers in all, 500 headers); a line over its bound is answered
414 (the request line) or 431 (a header), the others 400 by twisted.web itself.

The site provides ``timeouts`` (a Timeouts), ``clock``, and ``timed_out(phase)``, called once
per connection closed by a timer (for /metrics).
"""
# test-case-name: tests.unit.test_httpchannel, tests.integration.test_http_timeouts

from __future__ import annotations

import enum
import functools
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http

from distpotify.options import OptionList, check_positive
from distpotify.wire import error_json

# (option, default, help, converter): the same three options on the replica and the proxy.
TIMEOUT_OPTIONS: OptionList = [
    ("header-timeout", "30", "seconds a client has to send a request's line and headers",
     float),
    ("body-timeout", "60", "seconds a request body may go without a byte before the"
     " connection is closed", float),
    ("idle-timeout", "75", "seconds a keep-alive connection may stay idle between requests",
     float),
]


@attrs.frozen
class Timeouts:
    """The three deadlines, in seconds (the defaults are nginx's, header one halved)."""

    header: float = 30.0
    body: float = 60.0
    idle: float = 75.0

    def __attrs_post_init__(self) -> None:
        for name in ("header", "body", "idle"):
            check_positive(f"{name}-timeout", getattr(self, name))


DEFAULT_TIMEOUTS = Timeouts()


class Phase(enum.Enum):
    """Where a connection is between two requests; each phase but BUSY has its deadline."""

    HEADERS = "header"  # the request line and headers arrive: one deadline for them all
    BODY = "body"  # the body arrives: every read restarts the timer
    BUSY = "busy"  # the request is handled and answered: no timer, however slow the reader
    IDLE = "idle"  # between requests on a keep-alive connection


class TimeoutSite(Protocol):
    timeouts: Timeouts
    clock: IReactorTime

    def timed_out(self, phase: Phase) -> None: ...


@functools.lru_cache(maxsize=64)  # a few answers, sent to thousands of stalled clients
def raw_answer(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 JSON error answer that closes the connection, for the moments no
    Request exists to write one."""
    body = error_json(code, message)
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class TimedChannel(http.HTTPChannel):
    """An HTTPChannel whose one deadline follows the phase (twisted.web's own idle timer,
    reset by every read, is off: a client trickling one byte at a time would keep it alive)."""

    timeOut = None
    site: TimeoutSite
    _phase = Phase.HEADERS
    _timer: IDelayedCall | None = None
    _deadline: float | None = None  # when the current phase's time is up (None: BUSY)
    _begun = False  # some byte of the current request has arrived

    def connectionMade(self) -> None:
        super().connectionMade()
        self._enter(Phase.HEADERS)

    def dataReceived(self, data: bytes) -> None:
        if self._phase is Phase.IDLE:
            self._enter(Phase.HEADERS)
        elif self._phase is Phase.BODY:
            self._arm(self.site.timeouts.body)
        if self._phase is not Phase.BUSY:  # (bytes while BUSY are the next request's)
            self._begun = True
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.length != 0:  # a body follows (a length, or chunked); else it is complete
            self._enter(Phase.BODY)

    def allContentReceived(self) -> None:
        self._enter(Phase.BUSY)
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # IDLE before twisted.web replays the bytes of a pipelined request: they start it.
        if self.persistent:
            self._enter(Phase.IDLE)
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        super().connectionLost(reason)

    def lineLengthExceeded(self, line: bytes) -> None:
        # The request object is made from the request line: none yet means that line is it.
        if self.requests:
            self._close(raw_answer(431, "Request Header Fields Too Large", "header_too_large",
                                   f"a header line is over {self.MAX_LENGTH} bytes"))
        else:
            self._close(raw_answer(414, "URI Too Long", "uri_too_long",
                                   f"the request line is over {self.MAX_LENGTH} bytes"))

    # the timer
    #
    # One deadline, and one timer that may fire before it: a deadline moved later (the body's
    # next read, the next phase) only changes ``_deadline``, and the timer, on firing early,
    # waits the rest. Only a deadline sooner than the timer reschedules it. A connection
    # serving request after request touches the reactor's timer heap a few times in a header
    # timeout, not three times a request (resetting a timer sooner searches the whole heap).

    def _enter(self, phase: Phase) -> None:
        self._phase = phase
        timeouts = self.site.timeouts
        if phase is Phase.HEADERS:
            self._arm(timeouts.header)
        elif phase is Phase.BODY:
            self._arm(timeouts.body)
        elif phase is Phase.IDLE:
            self._begun = False
            self._arm(timeouts.idle)
        else:
            self._deadline = None  # BUSY: a timer that fires now finds nothing to do

    def _arm(self, seconds: float) -> None:
        clock = self.site.clock
        self._deadline = deadline = clock.seconds() + seconds
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= deadline:
                return
            timer.cancel()
        self._timer = clock.callLater(seconds, self._fired)

    def _disarm(self) -> None:
        self._deadline = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _fired(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        left = self._deadline - self.site.clock.seconds()
        if left > 0:
            self._timer = self.site.clock.callLater(left, self._fired)
        else:
            self._expired()

    def _expired(self) -> None:
        self._deadline = None
        phase = self._phase
        if phase is Phase.IDLE and self._waitingForTransport:
            # The last response is still leaving, at the client's pace: not idle yet.
            self._arm(self.site.timeouts.idle)
            return
        # Counted, not logged: under a slowloris attack a line each would flood the log.
        self.site.timed_out(phase)
        timeouts = self.site.timeouts
        if phase is Phase.IDLE or not self._begun:
            self._close(b"")
        elif phase is Phase.HEADERS:
            self._close(raw_answer(408, "Request Timeout", "request_timeout",
                                   f"the request headers took over {timeouts.header:g} s"))
        else:
            self._close(raw_answer(408, "Request Timeout", "request_timeout",
                                   f"the request body stalled for {timeouts.body:g} s"))

    def _close(self, answer: bytes) -> None:
        """Send ``answer`` (if any) and close; abort if the client will not take it."""
        transport = self.transport
        if transport is None:
            return
        if answer and not transport.disconnecting:  # type: ignore[attr-defined]
            transport.write(answer)
        if self._abortingCall is None and self.abortTimeout is not None:
            self._abortingCall = self.site.clock.callLater(self.abortTimeout,
                                                           self.forceAbortClient)
        self.loseConnection()
