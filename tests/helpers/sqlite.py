"""SQLite's errors as the sqlite3 module raises them, for tests of what the code does with
them (a full disk above all)."""

from __future__ import annotations

import sqlite3


def sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    """The error sqlite3 raises for ``code`` (``sqlite3.SQLITE_FULL``, ...), with ``message``."""
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


def full_database() -> sqlite3.OperationalError:
    """What a write meets when the disk under the database is full."""
    return sqlite_error("database or disk is full", sqlite3.SQLITE_FULL)
