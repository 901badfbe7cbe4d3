"""A twisted.web request whose body is spooled, and refused early when it is too large.

twisted.web reads a whole request body before the resource sees it. This request class
spools it to an anonymous temp file (a small one stays in memory) and answers 413 as soon as
the declared, or received, length passes the site's limit, before the rest of the body is
read or stored. The replicas and the proxy both use it: it is HTTP only, with no replica
internals, which keeps the proxy independent of the replica (docs/architecture.md section 8).

The site provides ``max_body`` (bytes), ``spool_dir`` (None: the system's temp dir),
``clock``, and ``served_by`` (the X-Served-By of the 413, or None for none).
"""
# test-case-name: tests.integration.test_replica

from __future__ import annotations

import json
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.web import server

log = Logger()

SPOOL_THRESHOLD = 100_000  # bodies declared shorter stay in memory
LINGER = 5.0  # seconds a refused client may keep sending before its connection closes


class Limits(Protocol):
    max_body: int
    spool_dir: Path | None
    clock: Any
    served_by: str | None


class LimitedRequest(server.Request):
    _refused = False
    _received = 0

    @property
    def _limits(self) -> Limits:
        site: Limits = self.channel.site  # type: ignore[attr-defined]
        return site

    def _transport(self) -> Any:
        assert self.channel.transport is not None
        return self.channel.transport

    def gotLength(self, length: int | None) -> None:
        limits = self._limits
        if length is not None and length > limits.max_body:
            self._refuse(limits, length)
        elif length is not None and length < SPOOL_THRESHOLD:
            self.content = BytesIO()
        else:
            self.content = tempfile.TemporaryFile(dir=limits.spool_dir)  # noqa: SIM115

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        limits = self._limits
        if self._received > limits.max_body:
            self._refuse(limits, self._received)
            return
        assert self.content is not None
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            self._transport().loseConnection()
            return
        super().requestReceived(command, path, version)

    def _refuse(self, limits: Limits, length: int) -> None:
        """Answer 413 now, discard the rest of the body, and close the connection."""
        self._refused = True
        if self.content is not None:
            self.content.close()
        self.content = BytesIO()
        # No "100 Continue" after a final answer: the client need not send the body at all.
        self.requestHeaders.removeHeader(b"Expect")
        body = json.dumps({
            "error": "too_large",
            "message": f"request body of {length} bytes exceeds the limit of {limits.max_body}",
        }).encode()
        served_by = f"X-Served-By: {limits.served_by}\r\n" if limits.served_by else ""
        head = (
            "HTTP/1.1 413 Content Too Large\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{served_by}"
            "Connection: close\r\n\r\n"
        )
        transport = self._transport()
        transport.write(head.encode() + body)
        log.info("refused a body of {length} bytes (limit {limit})",
                 length=length, limit=limits.max_body)
        # Keep reading (and dropping) for a moment so the client sees the answer, not a reset.
        limits.clock.callLater(LINGER, transport.loseConnection)
