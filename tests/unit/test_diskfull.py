"""A full disk, told in one line: what it looks like to a write, and work that fails for it
after nobody waits for it any more (detach.py)."""

from __future__ import annotations

import errno
import sqlite3
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import LogLevel, capturedLogs, formatEvent

from distpotify.detach import detached
from distpotify.diskfull import what_is_full
from distpotify.errors import Conflict
from tests.helpers.sqlite import sqlite_error


@pytest.mark.parametrize(("error", "full"), [
    (OSError(errno.ENOSPC, "No space left on device"), "a file"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "a file"),
    (sqlite_error("database or disk is full", sqlite3.SQLITE_FULL), "the database"),
    (OSError(errno.EIO, "Input/output error"), None),
    (sqlite_error("disk I/O error", sqlite3.SQLITE_IOERR), None),
    (sqlite3.OperationalError("database or disk is full"), None),  # no code: not told so
    (ValueError("I/O operation on closed file"), None),
])
def test_a_full_disk_is_no_space_a_quota_or_sqlite_full(error: Exception,
                                                        full: str | None) -> None:
    assert what_is_full(error) == full


def gone_and_failed(error: Exception) -> list[dict[str, Any]]:
    """The events logged when work fails with ``error`` after its caller cancelled."""
    work: Deferred[None] = Deferred()
    answer = detached(work, "an upload")
    answer.addErrback(lambda f: f.trap(CancelledError))
    with capturedLogs() as events:
        answer.cancel()
        work.errback(error)
    return events


def test_work_that_finds_the_disk_full_after_its_caller_went_away_is_one_warning() -> None:
    events = gone_and_failed(OSError(errno.ENOSPC, "No space left on device"))

    assert [e for e in events if e.get("log_failure") is not None] == []
    assert [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn] == [
        "an upload failed after its caller went away: the disk is full (a file could not be"
        " written)"]


def test_work_refused_after_its_caller_went_away_is_one_line_with_the_refusal() -> None:
    events = gone_and_failed(Conflict("the playlist changed"))

    assert [e for e in events if e.get("log_failure") is not None] == []
    assert [formatEvent(e) for e in events] == [
        "an upload failed after its caller went away: 409 the playlist changed"]


def test_any_other_failure_after_its_caller_went_away_is_logged_whole() -> None:
    events = gone_and_failed(RuntimeError("boom"))

    failures = [e["log_failure"] for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1 and failures[0].check(RuntimeError)
