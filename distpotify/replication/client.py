"""The HTTP client replicas use to talk to each other: /sync/* and chunk bytes.

One persistent connection pool; every request is signed with the cluster key (signing.py)
and never follows a redirect, and every request and every body read is bounded by a
timeout, so a dead or paused peer costs a timeout, never a hang.

Requests go through Twisted's Agent itself: treq's HTTPClient around it (the URL parsed and
re-encoded, a cookie jar, gzip and redirect wrappers, a body producer on a cooperator) cost
some 70 us of the reactor's time per request, on every push of every write, for features
peers never use. treq still reads the JSON bodies (treq.content). The leader's pushes, a
batch for every few writes to each follower, go through the lean client instead
(leanclient.py, ``make_push_pool``): the Agent's request and answer parsing were a tenth to a
seventh of a small write's CPU at the leader (0.85 -> 0.76 ms and 1.18 -> 1.00 ms a write, in
two runs on fast and slow hours).
"""
# test-case-name: tests.integration.test_replication

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlencode

import treq
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from distpotify.httpfailures import cancelled, in_words
from distpotify.keys import ClusterKeys
from distpotify.leanclient import LeanPool
from distpotify.model import Op, Row, Version
from distpotify.signing import body_sha256, sign

T = TypeVar("T")

# The largest push batch a follower takes. Its JSON is parsed on the reactor thread, and in
# CPython a worker thread would not help (the C parser holds the GIL throughout): 1 MiB parses
# in about 25 ms of CPU at most, far inside a heartbeat's failure timeout, so a batch cannot
# stall heartbeats or requests (it could at 32 MiB, about a second). The leader cuts its
# batches to fit (push.py).
MAX_BATCH_BYTES = 1024 * 1024

# Row keys per GET /sync/rows: about 60 bytes each in its URL, so the request line stays far
# below the server's limit.
KEYS_PER_REQUEST = 100


class PeerError(Exception):
    """A peer answered something we cannot use: wrong status, garbage, wrong bytes.

    ``answer`` is the JSON body of an error the peer answered (its ``error`` code), if any.
    """

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.answer = answer or {}


class PeerTimeout(PeerError, defer.TimeoutError):
    """The peer's answer did not come within the client's timeout (a TimeoutError too, as
    the failure of a Deferred that timed out is)."""


class BelowFloor(PeerError):
    """The peer's oplog no longer reaches back to the version we asked after (409
    ``below_floor``): its ops cannot bring us up to date, only a reconciliation by rows can."""

    def __init__(self, message: str, floor: Version) -> None:
        super().__init__(message)
        self.floor = floor


class NotHeld(PeerError):
    """The peer answered 404: it does not hold what was asked (for a chunk, the chunk's
    registry row is not live there: never received, or deleted)."""


class Joining(PeerError):
    """The peer answered 503 ``joining``: it is joining the cluster and serves no library
    reads until it is done, though our view of it may still say it is ACTIVE (the heartbeat
    that says otherwise not heard yet). Another 503 (a chunk or song this peer cannot serve
    now) is a plain PeerError: it says nothing of the peer's other chunks."""


class StaleSnapshot(PeerError):
    """The leader no longer holds the ops past our snapshot: a new snapshot is needed."""


def op_from_json(value: Any) -> Op:
    """An op from its JSON form; ValueError (or KeyError/TypeError) when malformed."""
    if not isinstance(value, dict) or not isinstance(value.get("fields"), dict):
        raise ValueError("an op is an object with version, entity, key and fields")
    carried = value.get("outcome")
    if carried is not None and not (
        isinstance(carried, dict) and isinstance(carried.get("key"), str)
        and isinstance(carried.get("fields"), dict)
    ):
        raise ValueError("an op's outcome is an object with key and fields")
    return Op(Version.decode(value["version"]), str(value["entity"]), str(value["key"]),
              value["fields"], None if carried is None else (carried["key"], carried["fields"]))


def op_text(op: Op) -> str:
    """An op as a push batch carries it: compact JSON."""
    return json.dumps(op.to_json(), separators=(",", ":"))


def batch_body(source: str, ops: Sequence[Op], texts: Sequence[str] | None = None) -> bytes:
    """A push batch as sent: compact JSON, so push.fit_batch can count its bytes exactly.
    ``texts``: the ops already encoded (op_text), as the leader reads them for every link."""
    texts = [op_text(op) for op in ops] if texts is None else texts
    return f'{{"source":{json.dumps(source)},"ops":[{",".join(texts)}]}}'.encode()


def row_to_json(row: Row) -> dict[str, Any]:
    return {
        "entity": row.entity, "key": row.key, "fields": dict(row.fields),
        "versions": {name: v.encode() for name, v in row.versions.items()},
    }


def row_from_json(value: Any) -> Row:
    if not isinstance(value, dict) or not isinstance(value.get("versions"), dict):
        raise ValueError("a row is an object with entity, key, fields and versions")
    fields, versions = value["fields"], value["versions"]
    if not isinstance(fields, dict) or set(fields) != set(versions):
        raise ValueError("a row's fields and versions must name the same fields")
    return Row(str(value["entity"]), str(value["key"]), fields,
               {name: Version.decode(text) for name, text in versions.items()})


def _error_body(data: bytes) -> dict[str, Any] | None:
    """The JSON error shape a peer answered (``{"error": code, ...}``), or None."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@implementer(IAgentEndpointFactory)
class PeerEndpoints:
    """The Agent's endpoint for each peer address, made once. The Agent asks for one on
    every request, and the standard factory's new HostnameEndpoint checks the host's IDNA
    form each time (tens of microseconds, on every push). Peers speak plain HTTP."""

    MAX = 256  # peer addresses remembered; more (a churning cluster) starts again

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        self._known: dict[tuple[bytes, int], HostnameEndpoint] = {}

    def endpointForURI(self, uri: URI) -> HostnameEndpoint:
        if uri.scheme != b"http":
            raise SchemeNotSupported(f"peers are called over http, not {uri.scheme!r}")
        endpoint = self._known.get((uri.host, uri.port))
        if endpoint is None:
            if len(self._known) >= self.MAX:
                self._known.clear()
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._timeout)
            self._known[(uri.host, uri.port)] = endpoint
        return endpoint


PER_HOST = 16  # idle connections kept per peer
IDLE = 30  # seconds an idle connection is kept
CONNECT_TIMEOUT = 2.0
READS = ("GET", "HEAD")  # sent again once if their connection fails before an answer
UNANSWERED = (RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived)


def make_agent(reactor: Any, endpoints: IAgentEndpointFactory | None = None) -> Agent:
    """The Agent of a replica's calls to its peers (pushes excepted: make_push_pool), on
    ``endpoints`` (PeerEndpoints by default)."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = PER_HOST
    pool.cachedConnectionTimeout = IDLE
    # The pool would send a read that failed on a kept-alive connection again as it was,
    # nonce and all: a peer that had received it refuses the copy as a replay (401).
    # PeerClient sends such a read again itself, signed anew (_request).
    pool.retryAutomatically = False
    return Agent.usingEndpointFactory(
        reactor, endpoints or PeerEndpoints(reactor, connect_timeout=CONNECT_TIMEOUT), pool=pool)


def make_push_pool(reactor: Any) -> LeanPool:
    """The lean client's pool for pushes, under the Agent's rules (one batch is in flight per
    follower at a time: one connection each)."""
    return LeanPool(reactor, PeerEndpoints(reactor, connect_timeout=CONNECT_TIMEOUT),
                    per_host=PER_HOST, idle=IDLE)


@functools.lru_cache(maxsize=1024)
def _target(url: bytes) -> bytes:
    """What the Agent puts on the request line for ``url`` (its path and query), which the
    signature covers; kept for the URLs asked most (every push is ``<peer>/sync/ops``)."""
    target: bytes = URI.fromBytes(url).originForm
    return target


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory, written in one go."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class PeerClient:
    """Calls to another replica's HTTP API, given its base URL (``http://host:port``), each
    signed with ``keys``."""

    def __init__(self, agent: IAgent, clock: IReactorTime, keys: ClusterKeys,
                 timeout: float = 5.0, pushes: LeanPool | None = None) -> None:
        self._agent = agent
        self._pushes = pushes  # pushes go through the agent without it
        self._clock = clock
        self._keys = keys
        self.timeout = timeout
        self.bytes_received = 0

    def _request(self, method: str, url: str, body: bytes = b"",
                 headers: dict[bytes, bytes] | None = None) -> Deferred[IResponse]:
        """``method url`` (ASCII: every caller quotes what it puts in), signed. No redirect
        is followed: a peer cannot send our signed request, or our fetch, anywhere else.
        Each body is read once, as it comes, and kept nowhere (treq's default buffering
        had a joiner hold its whole snapshot, 200 MiB at 200,000 songs, in memory)."""
        sent = self._send(method, url, body, headers)
        if method in READS:
            sent.addErrback(self._send_again, method, url, headers)
        return sent

    def _send(self, method: str, url: str, body: bytes, headers: dict[bytes, bytes] | None
              ) -> Deferred[IResponse]:
        verb, uri, all_headers = self._signed(method, url, body, headers)
        return self._agent.request(verb, uri, all_headers, _Body(body) if body else None)

    def _send_again(self, failure: Failure, method: str, url: str,
                    headers: dict[bytes, bytes] | None) -> Deferred[IResponse] | Failure:
        """A read that was not answered because its connection failed before the answer
        (most often a kept-alive one the peer had closed) is sent once more, on a new
        connection and signed anew; a cancelled one (its caller's, or a timeout's) is not.
        A write is never sent again here: it may have been applied."""
        if not failure.check(*UNANSWERED) or cancelled(failure):
            return failure
        return self._send(method, url, b"", headers)

    def _signed(self, method: str, url: str, body: bytes, headers: dict[bytes, bytes] | None
                ) -> tuple[bytes, bytes, Headers]:
        verb, uri = method.encode("ascii"), url.encode("ascii")
        signed = sign(self._keys, verb, _target(uri), body_sha256(body), self._clock.seconds())
        return verb, uri, Headers({name: [value] for name, value in {**(headers or {}),
                                                                    **signed}.items()})

    def _bounded(self, d: Deferred[T], what: str) -> Deferred[T]:
        """``d``, failing with PeerTimeout if it has not fired within ``timeout``, and with
        CancelledError when its caller cancels it. The Agent wraps a cancellation in
        ResponseNeverReceived (or RequestTransmissionFailed), and one made while connecting
        is a ConnectingCancelledError: unwrapped, a handler whose client went away (Klein
        cancels it) fails as cancelled, which nobody logs, instead of as an unreachable peer,
        and a timeout says so. Any other wrapped failure is a PeerError in words."""

        def timed_out(result: T | Failure, timeout: float) -> T | Failure:
            if isinstance(result, Failure) and cancelled(result):
                raise PeerTimeout(f"{what}: no complete answer in {timeout:g} s")
            return result

        def unwrapped(failure: Failure) -> Failure:
            if cancelled(failure):
                if not failure.check(CancelledError):
                    raise CancelledError(f"{what}: cancelled")
                return failure
            return _in_words(failure, what)

        d.addTimeout(self.timeout, self._clock, onTimeoutCancel=timed_out)
        return d.addErrback(unwrapped)

    async def _json(self, d: Deferred[IResponse], what: str) -> Any:
        response = await self._bounded(d, what)
        data = await self._bounded(treq.content(response), what)
        self.bytes_received += len(data)
        if response.code != 200:
            raise PeerError(f"{what}: HTTP {response.code}: {data[:200]!r}", _error_body(data))
        try:
            return json.loads(data)
        except ValueError:
            raise PeerError(f"{what}: not JSON") from None

    async def push_ops(self, base: str, source: str, ops: Sequence[Op],
                       texts: Sequence[str] | None = None) -> Version:
        """Send ops to a follower (``texts``: already encoded); its cursor (newest version it
        holds) after applying."""
        body = batch_body(source, ops, texts)
        url, headers = f"{base}/sync/ops", {b"Content-Type": b"application/json"}
        if self._pushes is None:
            sent = self._request("POST", url, body, headers)
        else:
            verb, uri, signed = self._signed("POST", url, body, headers)
            sent = Deferred.fromCoroutine(self._pushes.request(verb, uri, signed, body))
        answer = await self._json(sent, f"push to {base}")
        try:
            return Version.decode(answer["cursor"])
        except (KeyError, TypeError, ValueError):
            raise PeerError(f"push to {base}: no cursor in the answer") from None

    async def ops_after(self, base: str, after: Version, limit: int) -> tuple[list[Op], Version]:
        """The ops the peer applied after ``after`` (at most ``limit``, oldest first), and
        its head; BelowFloor when ``after`` is below the peer's oplog floor, PeerError when
        the answer is anything else."""
        query = urlencode({"after": after.encode(), "limit": str(limit)})
        try:
            answer = await self._json(self._request("GET", f"{base}/sync/ops?{query}"),
                                      f"ops of {base}")
        except PeerError as e:
            if e.answer.get("error") != "below_floor":
                raise
            try:
                floor = Version.decode(e.answer["floor"])
            except (KeyError, TypeError, ValueError):
                raise PeerError(f"ops of {base}: below_floor without a floor") from None
            raise BelowFloor(f"ops of {base}: {after.encode()} is below its oplog floor"
                             f" {floor.encode()}", floor) from None
        try:
            return [op_from_json(value) for value in answer["ops"]], Version.decode(answer["head"])
        except (KeyError, TypeError, ValueError) as e:
            raise PeerError(f"ops of {base}: malformed: {e}") from None

    async def digest(self, base: str) -> list[str]:
        answer = await self._json(self._request("GET", f"{base}/sync/digest"),
                                  f"digest of {base}")
        buckets = answer.get("buckets") if isinstance(answer, dict) else None
        if not isinstance(buckets, list) or not all(isinstance(b, str) for b in buckets):
            raise PeerError(f"digest of {base}: malformed")
        return buckets

    async def bucket(self, base: str, bucket: int) -> list[tuple[str, str, str]]:
        answer = await self._json(self._request("GET", f"{base}/sync/digest/{bucket}"),
                                  f"bucket {bucket} of {base}")
        rows = answer.get("rows") if isinstance(answer, dict) else None
        if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) == 3 and all(isinstance(x, str) for x in r)
            for r in rows
        ):
            raise PeerError(f"bucket {bucket} of {base}: malformed")
        return [(r[0], r[1], r[2]) for r in rows]

    async def rows(self, base: str, keys: Iterable[tuple[str, str]]) -> list[Row]:
        query = "&".join(f"key={quote(f'{entity}:{key}', safe='')}" for entity, key in keys)
        answer = await self._json(self._request("GET", f"{base}/sync/rows?{query}"),
                                  f"rows of {base}")
        try:
            return [row_from_json(value) for value in answer["rows"]]
        except (KeyError, TypeError, ValueError) as e:
            raise PeerError(f"rows of {base}: malformed: {e}") from None

    async def snapshot(self, base: str, path: str, dest: Path) -> Version:
        """Stream the peer's snapshot to ``dest``; the version it contains."""
        response = await self._bounded(self._request("GET", f"{base}{path}"),
                                       f"snapshot from {base}")
        tag = response.headers.getRawHeaders(b"x-snapshot-version", [b""])[0].decode()
        if response.code != 200:
            response.deliverBody(_Discard())
            raise PeerError(f"snapshot from {base}: HTTP {response.code}")
        with open(dest, "wb") as out:
            # No overall timeout: a large snapshot takes what it takes; one that stops
            # coming (a paused or cut-off leader) is given up after `timeout` without data.
            await self._collect(response, out.write, f"snapshot from {base}")
        self.bytes_received += dest.stat().st_size
        try:
            return Version.decode(tag)
        except ValueError:
            raise PeerError(f"snapshot from {base}: no version tag") from None

    async def done(self, base: str, node_id: int, head: Version, missing: int) -> None:
        """Tell the leader this replica holds everything (POST /sync/done); StaleSnapshot when
        the leader's oplog no longer reaches back to ``head``."""
        body = json.dumps({"node_id": node_id, "head": head.encode(), "missing": missing})
        try:
            await self._json(
                self._request("POST", f"{base}/sync/done", body.encode(),
                              {b"Content-Type": b"application/json"}),
                f"join done at {base}",
            )
        except PeerError as e:
            if "snapshot_too_old" in str(e):
                raise StaleSnapshot(str(e)) from None
            raise

    async def resync(self, base: str, source: str, cursor: Version) -> str:
        """Tell a follower whose cursor is below our oplog floor to take a new snapshot
        (POST /sync/resync); the join phase it is in."""
        body = json.dumps({"source": source, "cursor": cursor.encode()})
        answer = await self._json(
            self._request("POST", f"{base}/sync/resync", body.encode(),
                          {b"Content-Type": b"application/json"}),
            f"resync of {base}",
        )
        phase = answer.get("phase") if isinstance(answer, dict) else None
        if not isinstance(phase, str):
            raise PeerError(f"resync of {base}: no phase in the answer")
        return phase

    async def stream_range(
        self, base: str, song_id: str, start: int, end: int, song_sha256: str,
        write: Callable[[bytes], None],
    ) -> None:
        """Stream bytes ``start..end`` (inclusive) of a song to ``write``; PeerError unless the
        peer sends exactly that range of the song whose ETag is ``song_sha256``."""
        headers = {b"Range": f"bytes={start}-{end}".encode(),
                   b"If-Range": f'"{song_sha256}"'.encode()}
        response = await self._bounded(
            self._request("GET", f"{base}/songs/{song_id}/stream", headers=headers),
            f"song {song_id} from {base}")
        if response.code == 503:
            await self._refused(response, f"song {song_id} from {base}")
        content_range = response.headers.getRawHeaders(b"content-range", [b""])[0].decode()
        if response.code != 206 or not content_range.startswith(f"bytes {start}-{end}/"):
            response.deliverBody(_Discard())
            raise PeerError(f"song {song_id} from {base}: HTTP {response.code} {content_range}")
        await self._collect(response, write, f"song {song_id} from {base}")

    async def _refused(self, response: IResponse, what: str) -> NoReturn:
        """Raise for a 503: Joining when its error says the peer is joining, else PeerError
        (its small JSON body read whole, within the client's timeout)."""
        data = await self._bounded(treq.content(response), what)
        answer = _error_body(data) or {}
        kind = Joining if answer.get("error") == "joining" else PeerError
        raise kind(f"{what}: HTTP 503 {answer.get('error', '')}".rstrip(), answer)

    async def chunk(
        self, base: str, song_id: str, idx: int, offset: int, sha256: str,
        write: Callable[[bytes], None],
    ) -> None:
        """Stream chunk bytes from ``offset`` to ``write``; PeerError unless the peer sends
        exactly that part of the chunk whose ETag is ``sha256`` (NotHeld when it answers that
        it does not hold the chunk)."""
        headers = {b"If-Range": f'"{sha256}"'.encode()}
        if offset:
            headers[b"Range"] = f"bytes={offset}-".encode()
        response = await self._bounded(
            self._request("GET", f"{base}/songs/{song_id}/chunks/{idx}", headers=headers),
            f"chunk {song_id}/{idx} from {base}")
        if response.code == 404:
            response.deliverBody(_Discard())
            raise NotHeld(f"chunk {song_id}/{idx} from {base}: HTTP 404")
        if response.code == 503:
            await self._refused(response, f"chunk {song_id}/{idx} from {base}")
        etag = response.headers.getRawHeaders(b"etag", [b""])[0].decode("latin-1")
        expected = 206 if offset else 200
        if response.code != expected or etag != f'"{sha256}"':
            response.deliverBody(_Discard())
            raise PeerError(f"chunk {song_id}/{idx} from {base}: HTTP {response.code} {etag}")
        if offset:
            content_range = response.headers.getRawHeaders(b"content-range", [b""])[0]
            if not content_range.startswith(f"bytes {offset}-".encode()):
                response.deliverBody(_Discard())
                raise PeerError(f"chunk {song_id}/{idx} from {base}: range {content_range!r}")
        await self._collect(response, write, f"chunk {song_id}/{idx} from {base}")

    async def cover(self, base: str, sha256: str, limit: int) -> bytes:
        """The bytes of cover ``sha256`` (GET /sync/covers/<sha256>), at most ``limit`` of
        them; NotHeld when the peer answers 404. The caller verifies their SHA-256."""
        response = await self._bounded(self._request("GET", f"{base}/sync/covers/{sha256}"),
                                       f"cover {sha256} from {base}")
        if response.code != 200:
            response.deliverBody(_Discard())
            kind = NotHeld if response.code == 404 else PeerError
            raise kind(f"cover {sha256} from {base}: HTTP {response.code}")
        received = bytearray()

        def write(data: bytes) -> None:
            received.extend(data)
            if len(received) > limit:
                raise PeerError(f"cover {sha256} from {base}: more than {limit} bytes")

        await self._collect(response, write, f"cover {sha256} from {base}")
        self.bytes_received += len(received)
        return bytes(received)

    def _collect(self, response: IResponse, write: Callable[[bytes], object], what: str
                 ) -> Deferred[None]:
        """Hand the body to ``write``; PeerError once no data came for ``timeout`` (a paused
        or cut-off peer holds a connection open without sending: never wait for it)."""
        collector = _IdleCollector(write, self._clock, self.timeout, what)
        response.deliverBody(collector)
        return collector.done


def _in_words(failure: Failure, what: str) -> Failure:
    """``failure``, unless the HTTP clients wrapped it: then a PeerError that says what
    failed in words (httpfailures.in_words), where the wrapper prints as a list of Failure
    reprs."""
    words = in_words(failure)
    return failure if words is None else Failure(PeerError(f"{what}: {words}"))


class _IdleCollector(Protocol):
    def __init__(self, write: Callable[[bytes], object], clock: IReactorTime, idle: float,
                 what: str) -> None:
        self._write = write
        self._idle = idle
        self._what = what
        self._timer = clock.callLater(idle, self._stalled)
        self.done: Deferred[None] = Deferred(lambda _: self._abort())

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._timer.reset(self._idle)
        try:
            self._write(data)
        except Exception:
            self._abort()
            self.done.errback()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(_in_words(reason, self._what))

    def _stalled(self) -> None:
        if not self.done.called:
            self._abort()
            self.done.errback(PeerError(f"{self._what}: no data for {self._idle:g} s"))

    def _abort(self) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class _Discard:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
