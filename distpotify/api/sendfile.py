"""Chunk files sent with sendfile(2): their pages go from the page cache to the socket without
passing through Python; ranges.serve uses it on a plain TCP connection (not TLS).

The rules are SpanProducer's: a span's ``ready`` check passes before any of its bytes go out,
the socket's writability is the backpressure (a full socket parks the sender until the
transport says it drained), and any error tears the connection down, since the headers
promised every byte. The status line and headers go through ``request.write`` like any
response's; the body bytes are added to ``request.sentLength``; the request finishes as
usual, so the HTTPChannel takes the next keep-alive request (docs/architecture.md section 3.3).
"""
# test-case-name: tests.unit.test_sendfile

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from distpotify.detach import detached
from distpotify.zerocopy import resume_when_drained

log = Logger()

# Bytes sent in one reactor turn at most: a reader as fast as loopback may never fill the
# socket, and the sender must not hold the reactor (heartbeats, other clients) for a song.
TURN = 1024 * 1024


class Span(Protocol):
    """Bytes ``offset .. offset + length`` of a file, checked by ``ready`` first (ranges.Span)."""

    @property
    def path(self) -> Path: ...
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def ready(self) -> Callable[[], Coroutine[Any, Any, bool]] | None: ...


def send_spans(request: Request, spans: Sequence[Span], sock: socket.socket) -> Deferred[bytes]:
    """Send the status line and headers ``request`` holds, then the bytes of ``spans`` straight
    from their files to ``sock`` (the request's connection). Fires with b"" once the last byte
    is in the socket; cancelling it (the client went away) stops at once."""
    sender = _Sender(request, sock)
    request.registerProducer(sender, True)
    request.write(b"")
    return Deferred.fromCoroutine(sender.send(spans))


@implementer(IPushProducer)
class _Sender:
    """The request's producer while sendfile runs: the channel resumes it when the transport
    has drained, and stops it when the connection is lost."""

    def __init__(self, request: Request, sock: socket.socket) -> None:
        self._request = request
        self._socket = sock
        self._transport = request.channel.transport
        self._wake: Deferred[None] | None = None
        self._stopped = False
        self._turn = 0  # bytes sent since the reactor last ran

    async def send(self, spans: Sequence[Span]) -> bytes:
        try:
            await self._send_all(spans)
        except CancelledError:
            # The client went away: nothing more goes out, and the request (finished by
            # whoever gets the cancellation) must not keep this producer.
            if self._request.channel is not None:
                self._request.unregisterProducer()
            else:  # the connection's loss took the channel, and its producer, already
                self._request.producer = None
            raise
        self._request.unregisterProducer()
        return b""

    async def _send_all(self, spans: Sequence[Span]) -> None:
        try:
            # The headers are in the transport's buffer: they go first.
            await self._writable()
            for span in spans:
                await self._send_span(span)
        except CancelledError:
            raise
        except Exception as e:
            log.warn("stream aborted: {error}", error=str(e) or type(e).__name__)
            self._stopped = True
            # Headers promised a length: a torn connection, never a short clean response.
            self._request.channel.transport.abortConnection()  # type: ignore[union-attr]
            await self._writable()  # only the connection's loss ends it: a cancellation

    async def _send_span(self, span: Span) -> None:
        if span.ready is not None:
            ready = await detached(Deferred.fromCoroutine(span.ready()), "a chunk check")
            if ready is not True:
                raise OSError(f"{span.path.name} is not available")
        with open(span.path, "rb") as file:
            offset, left = span.offset, span.length
            while left:
                if self._turn >= TURN:
                    await self._writable()
                try:
                    sent = os.sendfile(self._socket.fileno(), file.fileno(), offset,
                                       min(left, TURN))
                except BlockingIOError:
                    await self._writable()
                    continue
                if sent == 0:
                    raise OSError(f"{span.path.name} is shorter than its registry says")
                offset += sent
                left -= sent
                self._turn += sent
                self._request.sentLength += sent

    def _writable(self) -> Deferred[None]:
        """Fires once the transport has written out its buffer and the socket takes more."""
        if self._transport.disconnected:  # type: ignore[union-attr]
            raise CancelledError("the connection is gone")
        self._turn = 0
        self._wake = Deferred()
        if not self._stopped:  # else only the connection's loss ends the wait, cancelling it
            resume_when_drained(self._transport)  # type: ignore[arg-type]
        return self._wake

    def resumeProducing(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)

    def pauseProducing(self) -> None:
        """Nothing to do: only a full socket holds the sender, and it waits for the drain."""

    def stopProducing(self) -> None:
        self._stopped = True
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.cancel()
