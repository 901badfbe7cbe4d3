"""A full disk, as a write meets it, and the one line an operator is told of it.

A file's write fails with ENOSPC (or EDQUOT, over a quota), SQLite's with SQLITE_FULL. Both
are the operator's to mend, by freeing space, and not a bug: work that fails for it says so
in one warning line, where any other failure is logged whole, with its traceback. Shared by
the replica and the proxy (whose request bodies are spooled to disk too); it imports nothing
else of distpotify.
"""
# test-case-name: tests.unit.test_diskfull

from __future__ import annotations

import errno
import sqlite3
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def what_is_full(error: object) -> str | None:
    """What could not be written, "a file" or "the database", when ``error`` is a write that
    found the disk full; else None."""
    if isinstance(error, OSError) and error.errno in ERRNOS:
        return "a file"
    if (isinstance(error, sqlite3.OperationalError)
            and getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL):
        return "the database"
    return None


def log_failure(log: Logger, failure: Failure, format: str, **fields: Any) -> None:
    """``log.failure(format, failure, **fields)``; for a full disk, one warning line instead:
    ``format``, then what could not be written (the field ``disk_full``, which ``fields``
    must not name)."""
    full = what_is_full(failure.value)
    if full is None:
        log.failure(format, failure, **fields)
    else:
        log.warn(format + ": the disk is full ({disk_full} could not be written)",
                 disk_full=full, **fields)
