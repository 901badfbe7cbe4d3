"""The failures a caller can act on, each with the HTTP status and code the API answers.

Handlers raise these; api/failures.py turns them into the JSON error shape in one place.
"""
# test-case-name: tests.unit.test_api

from __future__ import annotations

import math
from typing import Any

from distpotify.diskfull import what_is_full
from distpotify.wire import BEHIND


class ApiError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra
        self.headers: dict[str, str] = {}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class NotLeader(ApiError):
    status = 421
    code = "not_leader"


class PayloadTooLarge(ApiError):
    status = 413
    code = "too_large"


class UnsupportedMedia(ApiError):
    status = 415
    code = "unsupported_media"


class PreconditionFailed(ApiError):
    """An If-Match or If-Unmodified-Since that the current representation fails."""

    status = 412
    code = "precondition_failed"


class RangeNotSatisfiable(ApiError):
    status = 416
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the range lies outside the {size} bytes of this resource")
        self.headers["Content-Range"] = f"bytes */{size}"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"


class Joining(Unavailable):
    """A replica still joining the cluster: it may lack rows, chunks and accounts."""

    code = "joining"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class SnapshotTooOld(Conflict):
    """A joiner's snapshot is older than the leader's oplog floor: it must take a new one."""

    code = "snapshot_too_old"


class BelowFloor(Conflict):
    """Ops after a version below this replica's oplog floor were asked for: some of them are
    compacted away, so no answer by ops would be whole (the asker reconciles by rows)."""

    code = "below_floor"


class InsufficientStorage(ApiError):
    """The disk is full: nothing was written; the same request may succeed once space returns."""

    status = 507
    code = "insufficient_storage"


def disk_full(error: object) -> InsufficientStorage | None:
    """The 507 to answer when ``error`` is a write that found the disk full; else None."""
    what = what_is_full(error)
    if what is None:
        return None
    return InsufficientStorage(f"the disk is full: {what} could not be written; nothing was"
                               " changed (retry once space is freed)")


class KeyReused(ApiError):
    """An Idempotency-Key sent again with a different request (the IETF draft's 422)."""

    status = 422
    code = "key_reused"


class Behind(ApiError):
    """A read whose X-Distpotify-Min-Version this replica has not applied within the wait."""

    status = 409
    code = BEHIND


class Unauthorized(ApiError):
    """No valid session: anonymous, or a token that proves nothing."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers["WWW-Authenticate"] = 'Bearer realm="distpotify"'


class Forbidden(ApiError):
    """A known user whose role or ownership does not allow this; or a cookie without a
    matching Origin (CSRF)."""

    status = 403
    code = "forbidden"


class TooManyRequests(ApiError):
    """Too many failed logins for one username lately: wait ``retry_after`` seconds."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
