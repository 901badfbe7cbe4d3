"""The failures a caller can act on, each with the HTTP status and code the API answers.

Handlers raise these; api/failures.py turns them into the JSON error shape in one place.
"""
# test-case-name: tests.unit.test_api

from __future__ import annotations

from typing import Any

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


class Conflict(ApiError):
    status = 409
    code = "conflict"


class KeyReused(ApiError):
    """An Idempotency-Key sent again with a different request (the IETF draft's 422)."""

    status = 422
    code = "key_reused"


class Behind(ApiError):
    """A read whose X-Distpotify-Min-Version this replica has not applied within the wait."""

    status = 409
    code = BEHIND
