"""The HTTP server of a replica: request bodies spooled to the data dir, oversized ones refused.

twisted.web buffers a body before the resource sees it; this request class spools it to an
anonymous temp file under ``<data-dir>/tmp`` and answers 413 as soon as the declared (or
received) length passes the limit, before the rest of the body is read.
"""
# test-case-name: tests.integration.test_replica

from __future__ import annotations

import json
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import IResource

from distpotify.metrics import ReplicaMetrics

log = Logger()

SPOOL_THRESHOLD = 100_000
LINGER = 5.0


class ReplicaRequest(server.Request):
    # Multipart bodies are parsed by upload.py from the spool file, not into memory here.
    _parsePOSTFormSubmission = False
    _refused = False
    _received = 0

    @property
    def _site(self) -> ReplicaSite:
        site: ReplicaSite = self.channel.site  # type: ignore[attr-defined]
        return site

    def _transport(self) -> Any:
        assert self.channel.transport is not None
        return self.channel.transport

    def gotLength(self, length: int | None) -> None:
        site = self._site
        if length is not None and length > site.max_body:
            self._refuse(site, length)
        elif length is not None and length < SPOOL_THRESHOLD:
            self.content = BytesIO()
        else:
            self.content = tempfile.TemporaryFile(dir=site.spool_dir)  # noqa: SIM115

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        site = self._site
        if self._received > site.max_body:
            self._refuse(site, self._received)
            return
        assert self.content is not None
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            self._transport().loseConnection()
            return
        super().requestReceived(command, path, version)

    def _refuse(self, site: ReplicaSite, length: int) -> None:
        """Answer 413 now, discard the rest of the body, and close the connection."""
        self._refused = True
        if self.content is not None:
            self.content.close()
        self.content = BytesIO()
        # No "100 Continue" after a final answer: the client need not send the body at all.
        self.requestHeaders.removeHeader(b"Expect")
        body = json.dumps({
            "error": "too_large",
            "message": f"request body of {length} bytes exceeds the limit of {site.max_body}",
        }).encode()
        head = (
            "HTTP/1.1 413 Content Too Large\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Served-By: {site.node_id}\r\n"
            "Connection: close\r\n\r\n"
        )
        transport = self._transport()
        transport.write(head.encode() + body)
        log.info("refused a body of {length} bytes (limit {limit})",
                 length=length, limit=site.max_body)
        # Keep reading (and dropping) for a moment so the client sees the answer, not a reset.
        site.clock.callLater(LINGER, transport.loseConnection)


class ReplicaSite(server.Site):
    requestFactory = ReplicaRequest

    def __init__(
        self, resource: IResource, *, node_id: int, max_body: int, spool_dir: Path, clock: Any,
        metrics: ReplicaMetrics | None = None,
    ) -> None:
        super().__init__(resource)
        self.metrics = metrics
        self.node_id = node_id
        self.max_body = max_body
        self.spool_dir = spool_dir
        self.clock = clock
        self.displayTracebacks = False
        self.noisy = False

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
                uri=request.uri.decode("utf-8", "replace"), code=request.code,
            )
