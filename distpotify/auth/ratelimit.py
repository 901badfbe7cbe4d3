"""The failed-login limit: a few failures per minute for free, then growing waits, kept per
key (a client address, or a case-folded username) in bounded memory.

Pure bookkeeping on an injected clock: the caller asks ``wait`` before checking a password
(and answers 429 with ``Retry-After`` while it is above 0), then reports ``failed`` or
``succeeded``. Which keys a success clears is the caller's choice: clearing the username's
is right, but clearing the address's would let one valid account reset an attacker's count.
"""
# test-case-name: tests.unit.test_auth_ratelimit

from __future__ import annotations

from collections import OrderedDict, deque

import attrs
from twisted.internet.interfaces import IReactorTime

WINDOW = 60.0
MAX_KEYS = 10_000


@attrs.define
class _Record:
    """One key's failures: while none was over the limit, those within the window; then how
    many came past the free ones in this streak, and when the last wait ends."""

    last: float
    recent: deque[float] = attrs.field(factory=deque)
    excess: int = 0
    blocked_until: float = 0.0

    def forgotten_at(self) -> float:
        return max(self.last, self.blocked_until) + WINDOW


class LoginLimiter:
    """Counts failed logins per key; after ``per_minute`` failures within a minute, every
    further one makes the key wait, first a minute's share (60 s / ``per_minute``), then
    twice as long each time, up to ``max_wait``. A key with no failure for a minute after
    its last wait ended is forgotten and starts free again. An attempt refused because of a
    wait is not a failure: it never reached the password.

    At most ``max_keys`` keys are kept; past that the key whose last failure is oldest goes.
    """

    def __init__(self, clock: IReactorTime, per_minute: int = 5, max_wait: float = 900.0,
                 *, max_keys: int = MAX_KEYS) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute is at least 1, not {per_minute}")
        if max_wait <= 0:
            raise ValueError(f"max_wait is positive, not {max_wait}")
        if max_keys < 1:
            raise ValueError(f"max_keys is at least 1, not {max_keys}")
        self._clock = clock
        self._free = per_minute
        self._first_wait = min(WINDOW / per_minute, max_wait)
        self._max_wait = max_wait
        self._max_keys = max_keys
        # Ordered by last failure, oldest first: expiry and eviction both take from the front.
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._checking: dict[str, int] = {}  # attempts begun and not yet ended, per key

    def __len__(self) -> int:
        return len(self._records)

    def wait(self, key: str) -> float:
        """Seconds ``key`` must still wait before its next attempt; 0 means go ahead."""
        now = self._clock.seconds()
        record = self._current(key, now)
        return 0.0 if record is None else max(0.0, record.blocked_until - now)

    def begin(self, key: str) -> bool:
        """Whether one more attempt of ``key`` may be checked now (call after ``wait`` says
        0): its failures lately plus the attempts still being checked stay within the free
        ones, one at a time once those are used up. Without this, guesses sent at once
        would all be checked before the first failure is counted. True counts the attempt
        until ``end``."""
        record = self._current(key, self._clock.seconds())
        if record is None:
            allowed = self._free
        elif record.excess:
            allowed = 1
        else:
            allowed = max(1, self._free - len(record.recent))
        checking = self._checking.get(key, 0)
        if checking >= allowed:
            return False
        self._checking[key] = checking + 1
        return True

    def end(self, key: str) -> None:
        """An attempt ``begin`` let through is decided (report ``failed`` or ``succeeded``
        too)."""
        left = self._checking.get(key, 0) - 1
        if left > 0:
            self._checking[key] = left
        else:
            self._checking.pop(key, None)

    def failed(self, key: str) -> float:
        """Count a failed attempt of ``key``; the wait it must now observe (0: none yet)."""
        now = self._clock.seconds()
        record = self._current(key, now) or _Record(now)
        self._records.pop(key, None)
        self._records[key] = record  # now the newest
        while len(self._records) > self._max_keys:
            self._records.popitem(last=False)
        record.last = now
        if not record.excess:
            while record.recent and record.recent[0] <= now - WINDOW:
                record.recent.popleft()
            record.recent.append(now)
            if len(record.recent) <= self._free:
                return 0.0
            record.recent.clear()  # the streak has begun: every failure now counts
        record.excess += 1
        wait = min(self._first_wait * 2 ** min(record.excess - 1, 62), self._max_wait)
        record.blocked_until = max(record.blocked_until, now + wait)
        return record.blocked_until - now

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures: it proved it knows the password."""
        self._records.pop(key, None)

    def _current(self, key: str, now: float) -> _Record | None:
        """``key``'s record unless it is forgotten by now; forgotten ones are dropped, from
        the front and this one, so memory holds only keys that failed lately."""
        while self._records:
            oldest = next(iter(self._records.values()))
            if oldest.forgotten_at() > now:
                break
            self._records.popitem(last=False)
        record = self._records.get(key)
        if record is not None and record.forgotten_at() <= now:
            del self._records[key]
            return None
        return record
