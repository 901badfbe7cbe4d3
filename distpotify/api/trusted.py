"""The gate in front of /sync/*: only requests signed with the cluster key reach the sync API
(docs/architecture.md 3.4, 3.6); anything else is 401 {"error": "unauthorized"} and changes
nothing.

The headers are checked first (time, signature, nonce: no work for a stranger), then the
body's SHA-256 against the signed one: small bodies at once, larger ones on a worker thread.
"""
# test-case-name: tests.unit.test_signing

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from distpotify.cluster.trust import AuthFailures
from distpotify.signing import Refused, RequestVerifier, file_sha256
from distpotify.store.metadata import Runner
from distpotify.wire import json_error, loggable_uri

log = Logger()

# Bodies up to this size are hashed on the reactor thread (a push batch of a few writes takes
# microseconds); larger ones, up to the batch limit, on a worker thread.
HASH_INLINE = 256 * 1024


class ClusterOnly(Resource):
    """``inner`` (the sync API), for signed requests only; failures go to ``failures`` under
    the client's address."""

    isLeaf = True

    def __init__(self, inner: IResource, verifier: RequestVerifier, failures: AuthFailures,
                 blocking: Runner) -> None:
        super().__init__()
        self._inner = inner
        self._verifier = verifier
        self._failures = failures
        self._blocking = blocking

    def render(self, request: Request) -> Any:
        try:
            claimed = self._verifier.check(request.method, request.uri, request.requestHeaders)
        except Refused as refused:
            return self._refuse(request, refused)
        content = request.content
        assert content is not None
        content.seek(0, 2)
        size = content.tell()
        if size <= HASH_INLINE:
            return self._checked(request, claimed, file_sha256(content))
        d: Deferred[str] = self._blocking(file_sha256, content)
        d.addCallback(self._hashed, request, claimed)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _hashed(self, actual: str, request: Request, claimed: str) -> None:
        if request._disconnected:
            # The peer went away while its body was hashed (a push that timed out): twisted
            # closed the body, and a request rendered now would never hear of its end, so
            # its handler would read the closed body and answer nobody.
            log.info("{method} {uri}: the peer went away while its body was checked",
                     method=request.method.decode("latin-1"), uri=loggable_uri(request.uri))
            return
        self._finish(request, self._checked(request, claimed, actual))

    def _checked(self, request: Request, claimed: str, actual: str) -> Any:
        try:
            self._verifier.check_body(claimed, actual)
        except Refused as refused:
            return self._refuse(request, refused)
        return self._inner.render(request)

    def _refuse(self, request: Request, refused: Refused) -> bytes:
        self._failures.record(_peer(request), f"http_{refused.kind}", refused.detail)
        request.setHeader(b"WWW-Authenticate", b"Distpotify-Cluster")
        return json_error(request, 401, "unauthorized", str(refused))

    def _finish(self, request: Request, result: Any) -> None:
        if result is NOT_DONE_YET or request.finished or request._disconnected:
            return
        request.write(result)
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        if request._disconnected:  # its body closed under the hash: nobody to answer
            log.info("{uri}: the peer went away while its body was checked",
                     uri=loggable_uri(request.uri))
            return
        log.failure("checking the body of {uri} failed", failure,
                    uri=loggable_uri(request.uri))
        self._finish(request, json_error(request, 500, "internal", "the body could not be read"))


def _peer(request: Request) -> str:
    return str(getattr(request.getClientAddress(), "host", "unknown"))
