"""The HTTP server of a replica: request bodies spooled to the data dir, oversized ones refused
(bodylimit.py), stalled clients timed out (httpchannel.py), every request counted for /metrics.
"""
# test-case-name: tests.integration.test_replica, tests.integration.test_http_timeouts

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import IResource

from distpotify.bodylimit import LimitedRequest
from distpotify.httpchannel import Phase, TimedChannel, Timeouts
from distpotify.metrics import ReplicaMetrics
from distpotify.upload import raw_audio
from distpotify.wire import loggable_uri

log = Logger()

class ReplicaSite(server.Site):
    protocol = TimedChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(
        self, resource: IResource, *, node_id: int, max_body: int, spool_dir: Path, clock: Any,
        metrics: ReplicaMetrics | None = None, timeouts: Timeouts | None = None,
        upload_spool: Callable[[], io.RawIOBase] | None = None,
    ) -> None:
        # Multipart bodies are parsed by upload.py from the spool file, never into memory:
        # twisted.web's own parsing held about 14 times a 48 MiB upload's size at its peak.
        # No twisted.web idle timeout: TimedChannel keeps its own, one per phase.
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=None)
        self.timeouts = timeouts or Timeouts()
        self.metrics = metrics
        self.node_id = node_id
        self.max_body = max_body
        self.spool_dir: Path | None = spool_dir
        self.clock = clock
        self.served_by: str | None = str(node_id)
        self._upload_spool = upload_spool
        self.displayTracebacks = False
        self.noisy = False

    def spool_file(self, request: LimitedRequest) -> IO[bytes] | None:
        """A raw audio upload (``POST /songs``, not multipart) goes straight into chunk files
        as it arrives (store/chunkspool.py); every other body to a temp file."""
        if self._upload_spool is None:
            return None
        method, target = request.request_line()
        content_type = request.getHeader(b"content-type") or b""
        if (method != b"POST" or target.split(b"?", 1)[0] != b"/songs"
                or not raw_audio(content_type.decode("latin-1"))):
            return None
        return cast(IO[bytes], self._upload_spool())

    def timed_out(self, phase: Phase) -> None:
        if self.metrics is not None:
            self.metrics.timed_out(phase.value)

    def log(self, request: http.Request) -> None:
        """Every request is counted (/metrics); only errors get a log line."""
        if self.metrics is not None:
            self.metrics.request_done(
                request.method.decode("latin-1"), request.uri.decode("utf-8", "replace"),
                request.code, request.sentLength,
            )
        if request.code >= 400:
            log.info(
                "{method} {uri} -> {code}", method=request.method.decode(),
                uri=loggable_uri(request.uri), code=request.code,
            )
