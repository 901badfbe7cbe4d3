"""Idempotency keys in time order: UUIDv7 (RFC 9562 section 5.7), the keys the proxy makes,
and the time a replica reads from one to store the key's row in time order (idempotency.py).
"""
# test-case-name: tests.unit.test_idempotency

from __future__ import annotations

import os
import re
import time
import uuid

TIME_BITS = 48  # a UUIDv7's first 48 bits: its Unix time in milliseconds
VERSION = 0xF << 76  # a UUID's version bits ...
VARIANT = 0x3 << 62  # ... and its variant's
RFC_VARIANT = 0x2 << 62  # RFC 9562's variant (10)

_V7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                 re.IGNORECASE)


def new_key() -> str:
    """A new key as the proxy makes one: a UUIDv7 (Python's uuid has uuid7 from 3.14), the
    Unix time in milliseconds, then 74 random bits."""
    value = (time.time_ns() // 1_000_000) << (128 - TIME_BITS) | int.from_bytes(os.urandom(10))
    return str(uuid.UUID(int=(value & ~(VERSION | VARIANT)) | (0x7 << 76) | RFC_VARIANT))


def key_time(key: str) -> int | None:
    """The time (Unix milliseconds) a UUIDv7 key begins with, or None for a key of another
    form."""
    if not _V7.fullmatch(key):
        return None
    return int(key[:8] + key[9:13], 16)
