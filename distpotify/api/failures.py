"""How a replica answers a request that failed: one handler for both Klein apps (public.py,
sync.py) and ReplicaRoot's chunk fast path, always in the JSON error shape of wire.py.
"""
# test-case-name: tests.unit.test_api,tests.unit.test_sync_api

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from distpotify.errors import ApiError, disk_full
from distpotify.wire import json_error, loggable_uri

log = Logger()

# werkzeug's routing failures, by the code they carry.
_ROUTING_CODES = {404: "not_found", 405: "method_not_allowed"}


def answer_failure(request: IRequest, failure: Failure) -> bytes:
    """The answer to ``failure``: an ApiError as it says, a routing error (no route, wrong
    method) in the same shape, a write that found the disk full a 507 (any route: an upload,
    an edit, a follower's apply), a cancellation nothing (the client went away: the answer
    has nobody to go to, and a stream's headers are out already), and anything else a 500
    whose details go to the log only."""
    error = failure.value
    if isinstance(error, CancelledError):  # the client went away: nobody reads an answer
        log.info("{method} {uri}: cancelled, the client went away",
                 method=request.method.decode("latin-1"), uri=loggable_uri(request.uri))
        return b""
    full = disk_full(error)
    if full is not None:
        log.error("{method} {uri} refused: {error}", method=request.method.decode("latin-1"),
                  uri=loggable_uri(request.uri), error=error)
        error = full
    if isinstance(error, ApiError):
        for name, value in error.headers.items():
            request.setHeader(name.encode(), value.encode())
        return json_error(request, error.status, error.code, error.message, **error.extra)
    if isinstance(error, HTTPException):
        status = error.code or 500
        if status == 405:
            allowed = error.get_response().headers.get("Allow", "")
            request.setHeader(b"Allow", allowed.encode())
        code = _ROUTING_CODES.get(status, "http_error")
        return json_error(request, status, code, error.description or code)
    log.failure("unhandled error on {method} {uri}", failure,
                method=request.method, uri=loggable_uri(request.uri))
    return json_error(request, 500, "internal", "internal error")
