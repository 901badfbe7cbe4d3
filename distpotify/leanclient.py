"""A lean HTTP/1.1 client to the replicas over persistent connections, its answers parsed by
httptools (llhttp, in C): the proxy's reads (GET and HEAD; any other request goes to the Agent
``ReadAgent`` wraps), and the leader's pushes to its followers (a POST whose body is in
memory: replication/client.py).

Its responses are IResponse like the Agent's, so the exchange relays them the same way; a body
of known length may instead be taken whole by the splice relay (``LeanResponse.take_body``),
which moves it in the kernel and then hands the connection back (docs/architecture.md
section 5.3).
The pool keeps the Agent's rules: persistent connections, at most ``per_host`` idle per
replica, closed after ``idle`` seconds; a pooled connection found closed before any byte of
an answer came is retried once on a new one. Unlike the Agent, a POST too: a push found its
kept connection closed by the follower's idle timeout, which never read it. Had the follower
read it and closed without answering, the copy sent again (same nonce) is refused as a replay,
and the leader's link pushes the batch again, signed anew, after its backoff.
"""
# test-case-name: tests.unit.test_splice

from __future__ import annotations

import socket
from typing import Any

import attrs
import httptools
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from distpotify.zerocopy import plain_socket

log = Logger()

LEAN_METHODS = frozenset({b"GET", b"HEAD"})
# Bytes read at once while the answer's headers are awaited: a replica's headers fit, and the
# body bytes that come with them (read through Python) stay few when the rest is spliced.
HEAD_READ = 4096
# ... and once a body is read here: the transport's usual size.
BODY_READ = 65536
# Kept out of the response's headers, as the Agent keeps them (they describe this connection).
CONNECTION_HEADERS = frozenset({
    b"content-length", b"connection", b"keep-alive", b"te", b"trailers", b"transfer-encoding",
    b"upgrade", b"proxy-connection",
})


@implementer(IAgent)
class ReadAgent:
    """GET and HEAD without a body through the lean pool; everything else through ``fallback``."""

    def __init__(self, pool: LeanPool, fallback: IAgent) -> None:
        self.pool = pool
        self._fallback = fallback

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        if method not in LEAN_METHODS or bodyProducer is not None or not uri.startswith(b"http:"):
            return self._fallback.request(method, uri, headers, bodyProducer)
        return Deferred.fromCoroutine(self.pool.request(method, uri, headers or Headers()))


class _Stale(Exception):
    """A pooled connection was closed before any byte of the answer came: try a new one."""

    def __init__(self, reason: Failure) -> None:
        super().__init__(reason.getErrorMessage())
        self.reason = reason


class LeanPool:
    """Persistent connections to the replicas, by (host, port)."""

    def __init__(self, reactor: Any, endpoints: IAgentEndpointFactory, per_host: int,
                 idle: float) -> None:
        self._reactor = reactor
        self._endpoints = endpoints
        self._per_host = per_host
        self._idle_timeout = idle
        self._idle: dict[tuple[bytes, int], list[LeanConnection]] = {}
        # base URL -> its parsed form and Host value: parsed once per replica, not per request
        self._bases: dict[bytes, tuple[URI, bytes]] = {}

    async def request(self, method: bytes, uri: bytes, headers: Headers,
                      body: bytes | None = None) -> IResponse:
        """``method uri`` with ``headers`` and, if not None, ``body`` (its Content-Length
        added here)."""
        slash = uri.find(b"/", len(b"http://"))
        base, target = (uri, b"/") if slash < 0 else (uri[:slash], uri[slash:])
        known = self._bases.get(base)
        if known is None:
            parsed = URI.fromBytes(base)
            host = host_header(parsed)
            known = self._bases[base] = (parsed, host)
        parsed, host = known
        key = (parsed.host, parsed.port)
        sent = _request_bytes(method, target, host, headers, body)
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            connection.taken()
            try:
                return await connection.send(sent, method == b"HEAD")
            except _Stale:
                continue
        endpoint = self._endpoints.endpointForURI(parsed)
        connection = await connectProtocol(endpoint, LeanConnection(self, key, self._reactor))
        try:
            return await connection.send(sent, method == b"HEAD")
        except _Stale as e:
            raise ResponseNeverReceived([e.reason]) from None

    def put(self, connection: LeanConnection) -> None:
        """``connection`` finished an answer and may carry the next request."""
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self._per_host:
            connection.close()
            return
        idle.append(connection)
        connection.idle(self._idle_timeout)

    def drop(self, connection: LeanConnection) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in list(idle):
                connection.close()
        self._idle.clear()


def host_header(uri: URI) -> bytes:
    """The Host header for ``uri``, an IPv6 address in brackets (as the Agent sends it)."""
    name = b"[%s]" % uri.host if b":" in uri.host else uri.host
    return name if uri.port == 80 else b"%s:%d" % (name, uri.port)


def _request_bytes(method: bytes, target: bytes, host: bytes, headers: Headers,
                  body: bytes | None = None) -> bytes:
    """The request as sent: its head, and its body if it has one."""
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host)]
    for name, values in headers.getAllRawHeaders():
        lines.extend(b"%s: %s\r\n" % (name, value) for value in values)
    if body is None:
        lines.append(b"\r\n")
    else:
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
    return b"".join(lines)


@attrs.define
class BodySource:
    """The rest of a response body, still in its connection's socket: for the splice relay.

    ``leftover`` came with the headers (already read); ``remaining`` bytes follow it in
    ``socket``. The taker calls ``release`` once it read exactly those, else ``abort``.
    """

    leftover: bytes
    remaining: int
    socket: socket.socket
    transport: Any
    _connection: LeanConnection

    def release(self) -> None:
        self._connection.body_done()

    def abort(self) -> None:
        self._connection.abort()


@implementer(IResponse)
class LeanResponse:
    """The status, headers and body of one answer on a LeanConnection."""

    request = None
    previousResponse = None

    def __init__(self, connection: LeanConnection, version: tuple[bytes, int, int], code: int,
                 phrase: bytes, headers: Headers, length: int | object) -> None:
        self._connection = connection
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self._received: list[bytes] = []
        self._protocol: Protocol | None = None
        self._ended: Failure | None = None

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def deliverBody(self, protocol: Any) -> None:
        self._protocol = protocol
        self._connection.reading_body()
        protocol.makeConnection(_BodyControl(self._connection))
        received, self._received = self._received, []
        for data in received:
            protocol.dataReceived(data)
        if self._ended is not None:
            protocol.connectionLost(self._ended)
        else:
            self._connection.resume()

    def take_body(self, at_least: int) -> BodySource | None:
        """The rest of the body for the splice relay, if at least ``at_least`` bytes of it
        are still in a plain socket and its length is known; None otherwise (deliverBody)."""
        connection = self._connection
        if self._protocol is not None or self._ended is not None or connection.complete:
            return None
        if not isinstance(self.length, int) or connection.chunked:
            return None
        leftover = b"".join(self._received)
        remaining = self.length - len(leftover)
        sock = plain_socket(connection.transport)
        if sock is None or remaining < at_least:
            return None
        self._received = []
        connection.hand_over()
        return BodySource(leftover, remaining, sock, self._connection.transport,
                          self._connection)

    # from the connection

    def received(self, data: bytes) -> None:
        if self._protocol is None:
            self._received.append(data)
        else:
            self._protocol.dataReceived(data)

    def ended(self, reason: Failure) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        if self._protocol is not None:
            self._protocol.connectionLost(reason)


@implementer(IPushProducer)
class _BodyControl:
    """What a body protocol gets as its transport: the pace, or the end, of the connection."""

    def __init__(self, connection: LeanConnection) -> None:
        self._connection = connection

    def pauseProducing(self) -> None:
        self._connection.pause()

    def resumeProducing(self) -> None:
        self._connection.resume()

    def stopProducing(self) -> None:
        self._connection.abort()

    abortConnection = loseConnection = stopProducing


class LeanConnection(Protocol):
    """One connection to one replica: one request at a time, its answer parsed by llhttp.

    States: idle (in the pool, reading only to notice a close), waiting (request sent, no
    answer yet), body (the answer's body is being read), handed (the splice relay reads the
    body from the socket itself), closed.
    """

    def __init__(self, pool: LeanPool, key: tuple[bytes, int], reactor: Any) -> None:
        self._pool = pool
        self.key = key
        self._reactor = reactor
        self._state = "new"
        self._answer: Deferred[IResponse] | None = None
        self._response: LeanResponse | None = None
        self._parser: Any = None
        self._head_only = False
        self._raw: list[tuple[bytes, bytes]] = []
        self._phrase = b""
        self._complete = False
        self._keep_alive = False
        self._got_bytes = False
        self._idle_timer: IDelayedCall | None = None
        self.chunked = False

    @property
    def complete(self) -> bool:
        """The whole answer has been read (and parsed) here."""
        return self._complete

    def send(self, request: bytes, head_only: bool) -> Deferred[IResponse]:
        """Send ``request`` (all its bytes); its answer, once its status and headers came
        (``head_only``: an answer to HEAD, with no body)."""
        assert self.transport is not None
        self._state = "waiting"
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._raw, self._phrase, self._complete, self._keep_alive = [], b"", False, False
        self._got_bytes, self._response, self.chunked = False, None, False
        self._answer = Deferred(self._cancelled)
        self.transport.bufferSize = HEAD_READ  # type: ignore[attr-defined]
        self.transport.write(request)
        self.resume()
        return self._answer

    def _cancelled(self, answer: Deferred[IResponse]) -> None:
        self._answer = None  # errbacks with CancelledError once this returns
        self.abort()

    def taken(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    def idle(self, timeout: float) -> None:
        """In the pool: reading only to notice a close, and closed after ``timeout``."""
        self._state = "idle"
        self._idle_timer = self._reactor.callLater(timeout, self.close)
        self.resume()

    # the transport's pace

    def pause(self) -> None:
        if self.transport is not None and self._state in ("waiting", "body"):
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume(self) -> None:
        if self.transport is not None and self._state in ("waiting", "body", "idle"):
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def close(self) -> None:
        self._state = "closed"
        self._pool.drop(self)
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        self._state = "closed"
        self._pool.drop(self)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def reading_body(self) -> None:
        """The body is read here, through Python: in the transport's usual blocks."""
        if self.transport is not None:
            self.transport.bufferSize = BODY_READ  # type: ignore[attr-defined]

    def hand_over(self) -> None:
        """The splice relay reads the rest of this body from the socket: stop reading it."""
        self._state = "handed"
        self._parser = None
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    def body_done(self) -> None:
        """The body is over (parsed here or spliced): carry the next request, or close."""
        if self._state == "closed":
            return
        if self._keep_alive:
            self._pool.put(self)
        else:
            self.close()

    # the parser's callbacks

    def on_status(self, phrase: bytes) -> None:
        self._phrase += phrase

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        headers = Headers()
        length: int | object = UNKNOWN_LENGTH
        for name, value in self._raw:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                self.chunked = True
            if lower not in CONNECTION_HEADERS or (self._head_only and lower == b"content-length"):
                # A HEAD's Content-Length is the GET's body length: the client's to know.
                headers.addRawHeader(name, value)
        if self.chunked:
            length = UNKNOWN_LENGTH
        code = self._parser.get_status_code()
        major, _, minor = self._parser.get_http_version().partition(".")
        self._keep_alive = self._parser.should_keep_alive()
        if self._head_only:
            length = 0
        self._response = LeanResponse(self, (b"HTTP", int(major), int(minor or 0)), code,
                                      self._phrase, headers, length)
        self._state = "body"

    def on_body(self, data: bytes) -> None:
        assert self._response is not None
        self._response.received(data)

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep_alive = self._keep_alive and self._parser.should_keep_alive()

    # the connection

    def dataReceived(self, data: bytes) -> None:
        if self._state not in ("waiting", "body"):
            # Bytes nobody asked for (idle), or past the answer: this connection is unusable.
            self.abort()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(Failure(ConnectionLost(f"malformed answer: {e}")))
            return
        response = self._response
        if response is None:
            return
        if self._head_only:
            self._complete = True
        answer, self._answer = self._answer, None
        if answer is not None:
            if not self._complete:
                # Held until the exchange chooses how to read the body (deliverBody, splice).
                self.transport.pauseProducing()  # type: ignore[union-attr]
            answer.callback(response)
        if self._complete and self._state == "body":
            self._response = None
            self.body_done()
            response.ended(Failure(ResponseDone()))

    def _fail(self, reason: Failure) -> None:
        self.abort()
        self._lost(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._pool.drop(self)
        self.taken()
        self._lost(reason)
        self._state = "closed"

    def _lost(self, reason: Failure) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            if not self._got_bytes and not reason.check(CancelledError):
                answer.errback(_Stale(reason))
            else:
                answer.errback(ResponseNeverReceived([reason]))
        response, self._response = self._response, None
        if response is not None and self._state in ("body", "closed"):
            if reason.check(ConnectionDone) and self._complete:
                response.ended(Failure(ResponseDone()))
            else:
                response.ended(Failure(ResponseFailed([reason])))
