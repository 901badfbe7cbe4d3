"""The proxy's public face, a ReverseProxyResource, and the transport that forwards for it.

Each request becomes an Exchange: it picks a replica (writes: the leader, reads: round-robin
over followers), streams the spooled request body, and relays the response with backpressure.
What each answer or failure means (next replica, send again, redirect, resume, give up) is
decided by decision.py; the Exchange sends with the Agent, keeps the timeouts, and does what
it says. When a replica fails a read before the first byte reaches the client the request
goes to the next one; after that the download resumes elsewhere with Range + If-Range of the
same ETag. After three failed replicas the client gets 503 (a Subsonic client: the spec's
error, subsonic.py), or a torn connection if bytes were already sent: never a short response
dressed up as complete. Every write carries an Idempotency-Key (the client's or one made
here) and is sent again under it, to whichever replica leads, until the leader answers or
--write-hold passes (503). A write's answer tells its client's later reads which version to
wait for (sessions.py).
"""
# test-case-name: tests.unit.test_proxy_resource, tests.unit.test_proxy_decision

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import IO, Any

import attrs
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, RequestNotSent, ResponseDone
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from distpotify.keytime import new_key
from distpotify.leanclient import LeanResponse
from distpotify.wire import (
    IDEMPOTENCY_KEY,
    MIN_VERSION,
    SERVED_BY,
    VERSION,
    json_error,
    loggable_uri,
    version_writer,
)
from distpotify.zerocopy import plain_socket
from proxy import subsonic
from proxy.backends import Backend, BackendView
from proxy.config import ProxyConfig
from proxy.decision import (
    MAX_FAILED,
    READ_METHODS,
    Abort,
    Again,
    Answer,
    Answered,
    BodyEnded,
    Context,
    Decision,
    Finish,
    NextReplica,
    Redirect,
    Relay,
    Unanswered,
    classify,
    give_up,
    is_write,
)
from proxy.forwarded import CLIENT_CLAIMS, client_origin
from proxy.resume import Resume
from proxy.security import secure_session_cookies
from proxy.sessions import Sessions
from proxy.splice import AVAILABLE, MIN_SPLICE, Pipes, SpliceRelay, UpstreamStalled
from proxy.upstream import read_body

log = Logger()

# RFC 9110 section 7.6.1: meant for the next hop only, never forwarded either way.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})
# The Agent writes Host and Content-Length itself; twisted.web already answered Expect.
_REQUEST_ONLY = frozenset({b"host", b"content-length", b"expect"})
# A resumed request asks for fixed bytes of a fixed ETag: the client's conditions do not apply.
_CONDITIONS = frozenset({
    b"range", b"if-range", b"if-none-match", b"if-modified-since", b"if-match",
    b"if-unmodified-since",
})
MAX_SMALL_BODY = 64 * 1024
# A write's answer up to this long (a playlist of 50,000 items is about 5 MiB) is held whole
# before the client gets any of it (Exchange._relay); a longer one is relayed as it comes.
MAX_HELD_ANSWER = 16 * 1024 * 1024


def end_to_end(
    headers: Headers, drop: Iterable[bytes] = ()
) -> list[tuple[bytes, Sequence[bytes]]]:
    """The headers meant for the far end: hop-by-hop ones and those Connection names removed."""
    named = {
        token.strip().lower()
        for value in headers.getRawHeaders(b"connection", [])
        for token in value.split(b",")
    }
    dropped = HOP_BY_HOP | named | frozenset(drop)
    return [(name, values) for name, values in headers.getAllRawHeaders()
            if name.lower() not in dropped]


def _without_hop_by_hop(headers: Headers) -> Headers:
    """``headers`` itself, with the hop-by-hop ones (rarely any) removed."""
    for name in [name for name, _ in headers.getAllRawHeaders() if name.lower() in HOP_BY_HOP]:
        headers.removeHeader(name)
    return headers


def _forwarded_headers(request: Request) -> Headers:
    """The client's end-to-end request headers, plus X-Forwarded-For/-Proto/-Host as
    client_origin vouches for them: the client's own claims are not passed on as truth."""
    origin = client_origin(request)
    headers = Headers(dict(end_to_end(request.requestHeaders, _REQUEST_ONLY | CLIENT_CLAIMS)))
    if origin.chain:
        headers.setRawHeaders(b"X-Forwarded-For", [", ".join(origin.chain).encode()])
    headers.setRawHeaders(b"X-Forwarded-Proto", [origin.scheme.encode()])
    if origin.host:
        headers.setRawHeaders(b"X-Forwarded-Host", [origin.host])
    return headers


def describe(error: BaseException | Failure) -> str:
    """One line naming a failure, unwrapping the Agent's exception lists."""
    value = error.value if isinstance(error, Failure) else error
    reasons = getattr(value, "reasons", None)
    if reasons:
        return "; ".join(describe(reason) for reason in reasons)
    text = str(value).strip()
    return f"{type(value).__name__}: {text}" if text else type(value).__name__


@attrs.define
class Counters:
    """What /proxy/status reports about the requests the proxy has handled."""

    requests: int = 0
    retries: int = 0
    write_retries: int = 0
    behind: int = 0
    resumes: int = 0
    held_writes: int = 0
    unavailable: int = 0
    aborted: int = 0
    client_gone: int = 0
    # body bytes sent to clients through Python (request.write), and around it (splice.py)
    relayed_bytes: int = 0
    spliced_bytes: int = 0
    # POST /auth/login: answered 401 by a replica, and refused here with 429 (auth.py)
    login_failures: int = 0
    login_refused: int = 0

    def count(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)


class ProxyResource(ReverseProxyResource):
    """A ReverseProxyResource whose upstream is the cluster, one replica chosen per request.

    Kept from the parent: its place in the tree (every request below it is relayed to
    another server: a leaf, and getChild answers with the subclass), ``path`` (the prefix of
    the upstream path: empty, since a replica serves the proxy's own paths, so the URI goes
    upstream as the client sent it, query included) and ``reactor`` (it times every request;
    the Agent connects on the same one). Replaced: ``host`` and ``port`` (None: the
    BackendView picks the replica, per request and per retry), and ``render`` with its
    ``proxyClientFactoryClass``, which open an HTTP/1.0 connection per request, read the body
    into memory, apply no backpressure and finish a cut response as if it were whole; an
    Exchange over the pooled ``agent`` does the forwarding instead.
    """

    isLeaf = True
    reactor: IReactorTime

    def __init__(
        self,
        view: BackendView,
        agent: IAgent,
        reactor: IReactorTime,
        config: ProxyConfig,
        counters: Counters | None = None,
        cooperator: Any = task,
        sessions: Sessions | None = None,
    ) -> None:
        super().__init__(None, None, b"", reactor=reactor)
        self.view = view
        self.agent = agent
        self.config = config
        self.counters = counters if counters is not None else Counters()
        self.cooperator = cooperator
        # Not ``sessions or ...``: an empty Sessions is falsy (it has a length), and the
        # service's report (/proxy/status, /metrics) counts the one it passed.
        self.sessions = sessions if sessions is not None else Sessions(
            reactor, config.session_memory)
        # GET bodies from the lean client go around Python when both sockets allow it.
        self.pipes = Pipes() if config.splice and AVAILABLE else None

    def getChild(self, path: bytes, request: Any) -> ProxyResource:
        return self

    def render(self, request: Request) -> int:
        self.counters.requests += 1
        Exchange(self, request).start()
        return NOT_DONE_YET


class Exchange:
    """One client request, from choosing a replica to the last byte (or the torn connection).

    The transport half of the proxy: it sends each attempt with the Agent under a timeout,
    cancels a write's attempt when another replica is elected leader meanwhile, relays bodies,
    and does what decision.classify says the end of each attempt means. A write goes out
    under one Idempotency-Key however often it is sent; a read of a client that wrote a
    moment ago names that write's version (X-Distpotify-Min-Version).
    """

    def __init__(self, resource: ProxyResource, request: Request) -> None:
        self._resource = resource
        self._request = request
        self._view = resource.view
        self._clock = resource.reactor
        self._config = resource.config
        self._counters = resource.counters
        self._write = is_write(request.method, request.uri)
        self._uri = resource.path + request.uri
        self._shown = loggable_uri(self._uri)  # in log lines: a /rest query holds passwords
        self._sessions = resource.sessions
        # A write keeps the client's key; one made here is a UUIDv7 (its row is stored in
        # time order: distpotify/keytime.py) in an RFC 8941 string, as the
        # Idempotency-Key draft writes it.
        self._key: bytes | None = None
        self._waits_for: bytes | None = None
        if self._write:
            sent = request.requestHeaders.getRawHeaders(IDEMPOTENCY_KEY)
            self._key = sent[-1] if sent else f'"{new_key()}"'.encode()
        elif not request.requestHeaders.hasHeader(MIN_VERSION):
            self._waits_for = self._sessions.recall(request)
        self._unknown_on: set[str] = set()
        self._attempts = 0
        self._tried: set[str] = set()
        self._redirected = False
        self._fell_back = False
        self._failures: list[str] = []
        self._committed = False
        self._resume: Resume | None = None
        self._sent = 0
        self._sink: _ClientSink | None = None
        self._held: list[bytes] | None = None  # a write's answer, while it is held (_relay)
        self._gone = False
        self._run: Deferred[None] | None = None
        self._forwarded: Headers | None = None

    def start(self) -> None:
        self._run = Deferred.fromCoroutine(self._forward())
        self._run.addErrback(self._crashed)
        self._request.notifyFinish().addErrback(self._client_gone)

    # choosing replicas

    async def _forward(self) -> None:
        deadline = self._clock.seconds() + self._config.write_hold
        target: Backend | None = None
        while not self._gone:
            if self._write:
                if self._attempts and self._clock.seconds() >= deadline:
                    break
            elif len(self._failures) >= MAX_FAILED:
                break
            backend: Backend | None
            if target is not None:
                backend, target = target, None
            elif self._write:
                backend = await self._leader(deadline)
            else:
                backend = (self._view.fresh_reader(self._tried)
                           or await self._view.choose_reader(self._tried))
            if backend is None:
                break
            self._tried.add(backend.url)
            self._attempts += 1
            decision = await self._attempt(backend)
            if isinstance(decision, Redirect):
                self._redirected = self._redirected or self._write
                self._fell_back = self._fell_back or not self._write
                # None: a write goes round again, to the leader the view knows by then
                target = self._view.backend_at(decision.to) if decision.to else None
            elif isinstance(decision, NextReplica):
                self._failures.append(f"{backend.describe()}: {decision.reason}")
                self._counters.retries += 1
                log.info("{method} {uri}: {backend} failed ({reason}){action}",
                         method=self._request.method.decode(), uri=self._shown,
                         backend=backend.describe(), reason=decision.reason,
                         action=f"; resuming at byte {self._sent}" if self._committed else "")
            elif isinstance(decision, Again):
                self._failures.append(f"{backend.describe()}: {decision.reason}")
                self._counters.write_retries += 1
                if decision.unknown:
                    self._unknown_on.add(backend.url)
                log.info("{method} {uri}: {reason}; sending it again under its key {key}",
                         method=self._request.method.decode(), uri=self._shown,
                         reason=decision.reason, key=(self._key or b"").decode("latin-1"))
                left = deadline - self._clock.seconds()
                if decision.pause and left > 0:
                    # The view may still name that replica: ask again after its next poll.
                    await deferLater(self._clock, min(self._config.poll_interval, left),
                                     lambda: None)
            else:
                assert not isinstance(decision, Relay)  # _attempt relays
                self._end(decision)
                return
        if self._gone:
            return
        ending = give_up(write=self._write, committed=self._committed, failures=self._failures,
                         write_hold=self._config.write_hold)
        if isinstance(ending, Answer):
            self._counters.unavailable += 1
        self._end(ending)

    async def _leader(self, deadline: float) -> Backend | None:
        leader = self._view.leader()
        if leader is not None and leader.fresh(self._clock.seconds(), self._view.health_max_age):
            return leader
        self._counters.held_writes += 1
        return await self._view.leader_within(deadline)

    def _context(self, backend: Backend) -> Context:
        """What classify needs to know of this request, now that an attempt on ``backend``
        has ended."""
        leader = self._view.leader()
        waits_for = self._waits_for or self._request.requestHeaders.getRawHeaders(
            MIN_VERSION, [None])[-1]
        return Context(
            self._request.method, self._uri,
            committed=self._committed, sent=self._sent, redirected=self._redirected,
            fell_back=self._fell_back, leader=None if leader is None else leader.url,
            tried=frozenset(self._tried), replica=backend.describe(), url=backend.url,
            unknown_on=frozenset(self._unknown_on),
            min_version=waits_for is not None,
            writer=None if waits_for is None else self._writer_of(waits_for),
        )

    def _writer_of(self, version: bytes) -> str | None:
        """The URL of the replica that made ``version``, whatever the view thinks of its
        health: it has applied its own write."""
        return self._url_of(version_writer(version))

    def _url_of(self, node_id: int | None) -> str | None:
        """The URL at which the view knows replica ``node_id``, if it does."""
        return next((b.url for b in self._view.backends.values()
                     if node_id is not None and b.node_id == node_id), None)

    def _end(self, decision: Finish | Abort | Answer) -> None:
        if isinstance(decision, Finish):
            self._finish()
        elif isinstance(decision, Abort):
            self._abort(decision.why)
        else:
            self._answer_error(decision.status, decision.code, decision.message)

    # one replica

    async def _attempt(self, backend: Backend) -> Decision:
        """Send the request to ``backend`` and do what its answer means; returns what the
        exchange does next (never Relay: a relayed body has ended when this returns)."""
        backend.forwarded += 1
        response = await self._send(backend)
        if isinstance(response, Unanswered):
            return classify(response, self._context(backend))
        mismatch = None
        if self._committed:
            assert self._resume is not None
            mismatch = self._resume.mismatch(response.code, response.headers, self._sent)
        answered = Answered(response.code, mismatch, from_app=_from_app(response))
        decision = classify(answered, self._context(backend))
        if isinstance(decision, Relay):
            if decision.resumed:
                self._counters.resumes += 1
            return await self._relay(backend, response)
        behind = response.code == 409 and not self._committed
        if behind:
            self._counters.behind += 1  # a replica behind the client's write: not relayed
        if isinstance(decision, NextReplica):
            if not behind:  # behind is not failing: counted above
                backend.failures += 1
            response.deliverBody(_Drop() if decision.close else _Discard())
        elif isinstance(decision, Redirect):
            if decision.to is None:
                return Redirect(await self._named_leader(backend, response))
            _discard(response)
        else:
            _discard(response)
        return decision

    async def _send(self, backend: Backend) -> IResponse | Unanswered:
        """The request, sent once to ``backend``: its answer, or how it failed to come."""
        request = self._request
        body = self._body()
        d = self._resource.agent.request(
            request.method, backend.url.encode() + self._uri, self._upstream_headers(), body)
        timeout = self._config.write_timeout if self._write else self._config.response_timeout
        d.addTimeout(timeout, self._clock)
        superseded: list[Backend] = []
        watch: Deferred[Backend] | None = None
        if self._write:
            # A leader that stops answering (SIGSTOP) holds a write until another is elected.
            def supersede(new: Backend) -> None:
                superseded.append(new)
                d.cancel()

            watch = self._view.leader_replaced(backend)
            # Cancelled below once the answer is in: a CancelledError nobody consumed would
            # be logged as "Unhandled error in Deferred" when the watch is collected.
            watch.addCallbacks(supersede, lambda failure: failure.trap(CancelledError))
        try:
            response: IResponse = await d
        except Exception as e:  # the Agent wraps a cancellation in ResponseNeverReceived
            if self._gone:
                raise CancelledError() from e
            if superseded:
                return Unanswered(f"{superseded[0].describe()} leads now")
            # every other way of not getting an answer is this replica's failure
            backend.failures += 1
            self._view.mark_down(backend, describe(e))
            return Unanswered(describe(e), unsent=isinstance(e, ConnectError | RequestNotSent))
        finally:
            if watch is not None and not superseded:
                watch.cancel()
            if body is not None:
                body.stop()  # an answer can come before all of the body went (_SpooledBody)
        return response

    async def _named_leader(self, backend: Backend, response: IResponse) -> str | None:
        """The leader a 421 names, once the view is refreshed; None if it names no other."""
        node_id, named = _leader_named(await _small_body(response))
        log.info("{method} {uri}: {backend} is not the leader; it names {named}",
                 method=self._request.method.decode(), uri=self._shown,
                 backend=backend.describe(), named=named)
        await self._view.refresh()
        # The URL the view knows that replica by: it may advertise another name for itself
        # (--advertise-host), which would be a second replica of that id in the view.
        named = self._url_of(node_id) or named
        return named if named != backend.url else None

    async def _relay(self, backend: Backend, response: IResponse) -> Decision:
        """The answer's body to the client as it comes; a write's, held whole first when its
        length is known and at most MAX_HELD_ANSWER: a write's answer cannot be resumed, so
        once the client had part of it a body cut or stalled midway could only tear the
        client's connection, leaving the write's outcome unknown to it. Held, nothing has
        been sent yet, and the write goes again under its key: its stored outcome answers."""
        length = _length(response)
        if self._write and length is not None and length <= MAX_HELD_ANSWER:
            self._held = []
        splice = self._splice_relay(response)
        if splice is not None:
            reason = await splice.start()
            self._detach(splice)
        else:
            relay = _Relay(self, response, self._clock, self._config.stall_timeout)
            response.deliverBody(relay)
            reason = await relay.done
        held, self._held = self._held, None
        if reason is None:
            if not self._committed:
                self._commit(response)  # a held body, or an empty one: none went yet
            if held:
                self._write_body(b"".join(held))
        else:
            backend.failures += 1
            self._view.mark_down(backend, describe(reason))
        remaining = self._resume.remaining(self._sent) if self._resume is not None else None
        error = None if reason is None else describe(reason)
        return classify(BodyEnded(error, remaining), self._context(backend))

    def _splice_relay(self, response: IResponse) -> SpliceRelay | None:
        """The relay of a GET body of known length from the lean client when both sockets
        are plain: moved in the kernel (splice.py). None: read through Python (_Relay), as a
        held answer is (a Subsonic write is a GET: spliced, its body would reach the client
        before the status line it is held behind)."""
        pipes = self._resource.pipes
        request = self._request
        if (pipes is None or request.method != b"GET" or self._held is not None
                or not isinstance(response, LeanResponse)):
            return None
        transport = request.channel.transport
        client = plain_socket(transport)
        if client is None or request.chunked:
            return None
        source = response.take_body(MIN_SPLICE)
        if source is None:
            return None
        relay = SpliceRelay(
            source, transport, client, pipes, self._clock, self._config.stall_timeout,
            deliver=lambda data: self._deliver(relay, response, data), spliced=self._spliced)
        return relay

    def _upstream_headers(self) -> Headers:
        """The headers every attempt sends: the client's end-to-end ones plus X-Forwarded-*;
        a resume asks for the missing bytes of the first response's ETag instead."""
        if self._forwarded is None:
            self._forwarded = _forwarded_headers(self._request)
            if self._key is not None:
                self._forwarded.setRawHeaders(IDEMPOTENCY_KEY, [self._key])
            if self._waits_for is not None:
                self._forwarded.setRawHeaders(MIN_VERSION, [self._waits_for])
        if not self._committed:
            return self._forwarded
        assert self._resume is not None
        headers = self._forwarded.copy()
        for name in _CONDITIONS:
            headers.removeHeader(name)
        headers.setRawHeaders(b"Range", [self._resume.range_header(self._sent).encode()])
        headers.setRawHeaders(b"If-Range", [self._resume.etag.encode()])
        return headers

    def _body(self) -> _SpooledBody | None:
        content = self._request.content
        if content is None:
            return None
        size = content.seek(0, os.SEEK_END)
        if size == 0 and self._request.method in READ_METHODS:
            return None  # a GET, even a Subsonic write's, sends no body
        content.seek(0)
        return _SpooledBody(content, self._resource.cooperator)

    # the client's side

    def _deliver(self, relay: _Relay | SpliceRelay, response: IResponse, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
            return
        if not self._committed:
            self._commit(response)
        if self._sink is None:
            self._sink = _ClientSink(self._client_gone)
            self._request.registerProducer(self._sink, True)
            # HTTPChannel does not pause a producer registered while the client's buffer is
            # already full; it would only hear of it once the buffer drained.
            if getattr(self._request.channel, "_waitingForTransport", False):
                self._sink.pauseProducing()
        self._sink.attach(relay)
        self._write_body(data)

    def _write_body(self, data: bytes) -> None:
        self._sent += len(data)
        self._counters.relayed_bytes += len(data)
        self._request.write(data)

    def _spliced(self, size: int) -> None:
        """``size`` body bytes went to the client around request.write: count them where
        twisted.web and the resume count what it writes."""
        self._sent += size
        self._request.sentLength += size
        self._counters.spliced_bytes += size

    def _detach(self, relay: _Relay | SpliceRelay) -> None:
        if self._sink is not None:
            self._sink.detach(relay)

    def _commit(self, response: IResponse) -> None:
        """Send the first replica's status and headers: from now on the response is the client's."""
        request = self._request
        request.setResponseCode(response.code, response.phrase)
        date = request.responseHeaders.getRawHeaders(b"date")
        # The Agent keeps connection headers (Connection, Content-Length, ...) out of these.
        request.responseHeaders = _without_hop_by_hop(response.headers)
        if client_origin(request).https:
            secure_session_cookies(request.responseHeaders)
        if date and not request.responseHeaders.hasHeader(b"date"):
            request.responseHeaders.setRawHeaders(b"date", date)
        length = _length(response)
        if length is not None and request.method != b"HEAD" and response.code not in NO_BODY_CODES:
            request.setHeader(b"Content-Length", str(length).encode())
        self._resume = Resume.of(request.method, response.code, response.headers, length)
        self._committed = True
        version = response.headers.getRawHeaders(VERSION)
        if self._write and version and 200 <= response.code < 300:
            self._sessions.remember(request, version[-1])

    def _finish(self) -> None:
        if self._gone:
            return
        if self._sink is not None:
            self._request.unregisterProducer()
        self._request.finish()

    def _abort(self, why: str) -> None:
        """Tear the client's connection: it must not take a short body for the whole one."""
        if self._gone:
            return
        log.warn("{method} {uri}: aborting the client's connection after {sent} bytes: {why}",
                 method=self._request.method.decode(), uri=self._shown,
                 sent=self._sent, why=why)
        self._counters.aborted += 1
        self._gone = True  # our doing, not the client's: nothing more is written to it
        if self._sink is not None:
            self._request.unregisterProducer()
        transport = self._request.channel.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    def _answer_error(self, status: int, code: str, message: str) -> None:
        """The proxy's own answer: its JSON error, or for a Subsonic client the spec's error 0
        in a 200 (what every Subsonic client reads), the status only in the log line."""
        if self._gone:
            return
        request = self._request
        as_subsonic = subsonic.is_subsonic(request)
        log.info("{method} {uri} -> {status} {code}{shape}: {message}",
                 method=self._request.method.decode(), uri=self._shown,
                 status=status, code=code, message=message,
                 shape=" (as Subsonic error 0)" if as_subsonic else "")
        if as_subsonic:
            body = subsonic.failed(request, message)
        else:
            body = json_error(request, status, code, message)
        if status == 503:
            request.setHeader(b"Retry-After", b"1")
        request.write(body)
        request.finish()

    def _client_gone(self, reason: object = None) -> None:
        if self._gone:
            return
        self._gone = True
        self._counters.client_gone += 1
        if self._run is not None:
            self._run.cancel()

    def _crashed(self, failure: Failure) -> None:
        if failure.check(CancelledError) and self._gone:
            return
        log.failure("{method} {uri}: the proxy failed", failure,
                    method=self._request.method.decode(), uri=self._shown)
        if self._committed:
            self._abort("internal error")
        elif not self._gone and not self._request.finished:
            self._answer_error(502, "proxy_error", "the proxy failed to forward this request")


@implementer(IPushProducer)
class _ClientSink:
    """The request's one producer: the client's pace, applied to whichever replica is sending."""

    def __init__(self, on_stop: Any) -> None:
        self._on_stop = on_stop
        self._relay: _Relay | SpliceRelay | None = None
        self.paused = False

    def attach(self, relay: _Relay | SpliceRelay) -> None:
        if self._relay is not relay:
            self._relay = relay
            if self.paused:
                relay.pause()

    def detach(self, relay: _Relay | SpliceRelay) -> None:
        if self._relay is relay:
            self._relay = None

    def pauseProducing(self) -> None:
        self.paused = True
        if self._relay is not None:
            self._relay.pause()

    def resumeProducing(self) -> None:
        self.paused = False
        if self._relay is not None:
            self._relay.resume()

    def stopProducing(self) -> None:
        self._on_stop()


class _Relay(Protocol):
    """Receives one upstream body and hands it to the exchange; ``done`` fires with None after
    ResponseDone, or with the exception of any other end (a loss, a stall): never errbacks."""

    def __init__(
        self, exchange: Exchange, response: IResponse, clock: IReactorTime, stall_timeout: float
    ) -> None:
        self._exchange = exchange
        self._response = response
        self._clock = clock
        self._stall_timeout = stall_timeout
        self._timer: IDelayedCall | None = None
        self._paused = False
        self._stalled = False
        self.done: Deferred[BaseException | None] = Deferred(self._cancel)

    def connectionMade(self) -> None:
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        self._arm()
        self._exchange._deliver(self, self._response, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self._exchange._detach(self)
        if self.done.called:
            return
        if self._stalled:
            self.done.callback(UpstreamStalled(f"no data for {self._stall_timeout:g} s"))
        else:
            self.done.callback(None if reason.check(ResponseDone) else reason.value)

    def pause(self) -> None:
        self._paused = True
        self._disarm()
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume(self) -> None:
        self._paused = False
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        self._arm()

    def _arm(self) -> None:
        """(Re)start the stall timer; it runs only while the client is willing to read."""
        if self._paused or self.done.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._stall_timeout)
        else:
            self._timer = self._clock.callLater(self._stall_timeout, self._stall)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stall(self) -> None:
        self._timer = None
        self._stalled = True
        self._stop()

    def _cancel(self, d: Deferred[BaseException | None]) -> None:
        self._disarm()
        self._stop()

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class _Drop(Protocol):
    """Closes a response's connection without reading its body (a whole song, maybe)."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


class _Discard(Protocol):
    """Reads an unwanted body to its end, so the connection can go back to the pool."""

    def __init__(self) -> None:
        self._left = MAX_SMALL_BODY

    def dataReceived(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0 and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def _from_app(response: IResponse) -> bool:
    """Whether an answer is the replica's own: it names the replica and is JSON (every error
    a replica makes is), not a page made by something between."""
    content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[-1]
    return (response.headers.hasHeader(SERVED_BY)
            and content_type.split(b";")[0].strip().lower() == b"application/json")


def _length(response: IResponse) -> int | None:
    """The body length the replica declared (Content-Length), or None if it did not."""
    length = response.length
    return length if isinstance(length, int) else None


def _discard(response: IResponse) -> None:
    response.deliverBody(_Discard())


async def _small_body(response: IResponse) -> bytes:
    """A short JSON body (a 421's), or b"" if it is longer than MAX_SMALL_BODY or cut.
    Cancelled (the client went away), it closes the answer's connection."""
    try:
        return await read_body(response, MAX_SMALL_BODY)
    except CancelledError:
        raise
    except Exception:
        return b""


def _leader_named(body: bytes) -> tuple[int | None, str | None]:
    """The leader's id and URL a 421's body names (either may be None)."""
    try:
        value = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(value, dict):
        return None, None
    node_id, leader = value.get("leader_id"), value.get("leader_http")
    return (node_id if isinstance(node_id, int) and not isinstance(node_id, bool) else None,
            leader.rstrip("/") if isinstance(leader, str) and leader else None)


class _SpooledBody(FileBodyProducer):
    """The spooled request body, sent to one replica; ``stop`` ends the sending wherever it is.

    The Agent stops a body's producer when its request is cancelled or its connection lost,
    but not when the whole answer arrives first: a replica refuses a body it cannot take
    (413, or 507 for a full disk) before reading it. Left running, the producer would read on
    after the client's request ended and closed the spool ("read of closed file", logged as
    critical), or, under the next attempt's producer, from the same file at once.
    """

    def __init__(self, content: IO[bytes], cooperator: Any) -> None:
        super().__init__(_KeepOpen(content), cooperator=cooperator)
        self._started = False

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._started = True
        return super().startProducing(consumer)

    def stop(self) -> None:
        """Send nothing more; a no-op once everything was sent, or if nothing was to be."""
        if self._started:
            self.stopProducing()


class _KeepOpen:
    """The spooled request body, readable again for a retry (FileBodyProducer closes files)."""

    def __init__(self, content: IO[bytes]) -> None:
        self._content = content

    def read(self, size: int = -1) -> bytes:
        return self._content.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._content.seek(offset, whence)

    def tell(self) -> int:
        return self._content.tell()

    def close(self) -> None:
        """Left open: the request owns the spool file and may need it for the next attempt."""
