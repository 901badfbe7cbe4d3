"""The music API of a replica (docs/architecture.md section 3.3): songs, chunks, streams, status.

A Klein app on a class; path segments arrive typed (parsing.py), handlers read the rest and
Library decides, and every failure becomes the JSON error shape in one place (failures.py).
"""
# test-case-name: tests.unit.test_api

from __future__ import annotations

import datetime
import io
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, BinaryIO

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from distpotify.api.failures import answer_failure
from distpotify.api.gate import actor_of, open_gate
from distpotify.api.outcomes import answer, request_key
from distpotify.api.parsing import (
    chunk_address,
    int_arg,
    json_body,
    query,
    sha256_arg,
    typed_routes,
    utf8_path,
)
from distpotify.api.ranges import Representation, Span, evaluate, modified_at, serve
from distpotify.auth.access import Actor
from distpotify.detach import detached
from distpotify.errors import ApiError, BadRequest, Behind, NotFound, Unavailable
from distpotify.idempotency import IdempotencyKey, Outcome
from distpotify.library import Library
from distpotify.metrics import CONTENT_TYPE, ReplicaMetrics
from distpotify.model import Version
from distpotify.replication.fetch import ChunkRef
from distpotify.replication.repair import ChunkGuard
from distpotify.store.metadata import SONG_ORDERS, Runner, SongSearch
from distpotify.subsonicmethods import writes
from distpotify.wire import (
    MIN_VERSION,
    SERVED_BY,
    json_error,
    json_response,
)

MAX_PAGE = 500
# Songs whose Last-Modified the chunk path keeps (a date each; a song's never changes).
MAX_MODIFIED = 4096


class PublicAPI:
    app = typed_routes(Klein())

    def __init__(
        self,
        library: Library,
        guard: ChunkGuard,
        status: Callable[[], Awaitable[dict[str, Any]]],
        blocking: Runner,
        metrics: ReplicaMetrics | None = None,
        sendfile: bool = True,
    ) -> None:
        self._library = library
        self._sendfile = sendfile
        self._guard = guard
        self._status = status
        self._metrics = metrics
        self._blocking = blocking  # reads and parses spooled JSON bodies
        self._modified: dict[str, datetime.datetime] = {}

    @app.handle_errors(Exception)
    def _failed(self, request: IRequest, failure: Failure) -> bytes:
        return answer_failure(request, failure)

    def _json(self, request: Request) -> Awaitable[dict[str, Any]]:
        return json_body(request, self._blocking)

    # writes: an optional Idempotency-Key in, an Outcome and its version out

    async def _key(self, request: Request) -> IdempotencyKey | None:
        return await request_key(request, self._library.request_key)

    _answer = staticmethod(answer)

    # status

    @app.route("/status", methods=["GET"])
    async def status(self, request: Request) -> bytes:
        return json_response(request, 200, await self._status())

    @app.route("/health", methods=["GET"])
    def health(self, request: Request) -> bytes:
        """Liveness, open to anyone (container health checks): nothing but "up"."""
        request.setHeader(b"Cache-Control", b"no-store")
        return json_response(request, 200, {"status": "up"})

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: Request) -> bytes:
        if self._metrics is None:
            raise NotFound("no metrics here")
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode())
        return await self._metrics.render(self._status)

    # songs

    @app.route("/songs", methods=["GET"])
    async def search(self, request: Request) -> bytes:
        args = query(request)
        if "sha256" in args:
            return await self._by_sha256(request, args)
        limit = int_arg(args, "limit", 50, 1, MAX_PAGE)
        offset = int_arg(args, "offset", 0, 0, 2**62)
        sort = args.get("sort") or "newest"
        if sort not in SONG_ORDERS:
            raise BadRequest(f"sort must be one of {', '.join(SONG_ORDERS)}")
        after = None
        if args.get("after"):
            try:
                after = SONG_ORDERS[sort].parse_cursor(args["after"])
            except ValueError as e:
                raise BadRequest(f"after: {e}") from None
        page = await self._library.search(SongSearch(
            q=args.get("q"), artist=args.get("artist"), album=args.get("album"),
            genre=args.get("genre"), sort=sort, limit=limit, offset=offset, after=after))
        return json_response(request, 200,
                             {"songs": page.songs, "total": page.total, "next": page.next})

    async def _by_sha256(self, request: Request, args: dict[str, str]) -> bytes:
        """``?sha256=``: the songs holding these bytes, so a client (distpotify-import) can
        skip a file the library has without uploading it. An exact lookup: no other filter,
        order or page applies."""
        mixed = sorted(set(args) & {"q", "artist", "album", "genre", "sort", "after", "offset"})
        if mixed:
            raise BadRequest(f"sha256 cannot be combined with {', '.join(mixed)}")
        songs = await self._library.songs_by_sha256(sha256_arg(args["sha256"]))
        return json_response(request, 200, {"songs": songs, "total": len(songs), "next": None})

    @app.route("/songs", methods=["POST"])
    async def upload(self, request: Request) -> bytes:
        content_type = (request.getHeader(b"Content-Type") or b"").decode("latin-1")
        fields, actor = query(request), actor_of(request)
        # The body is the upload's from here, hashed for its key and stored even if the client
        # goes away meanwhile: twisted.web closes a request's body when its client goes away.
        content, request.content = request.content, io.BytesIO()
        assert content is not None
        keying = request_key(request, self._library.request_key, content)
        return self._answer(request, await detached(Deferred.fromCoroutine(
            self._upload(keying, content, content_type, fields, actor)), "an upload"))

    async def _upload(self, keying: Awaitable[IdempotencyKey | None], content: BinaryIO,
                      content_type: str, fields: dict[str, str], actor: Actor) -> Outcome:
        try:
            key = await keying
        except BaseException:
            content.close()  # a malformed key: not an upload, and nothing reads the body
            raise
        return await self._library.upload(content, content_type, fields, key, actor)

    @app.route("/songs/<id:song_id>", methods=["GET"])
    async def song(self, request: Request, song_id: str) -> bytes:
        return json_response(request, 200, await self._library.song_with_chunks(song_id))

    @app.route("/songs/<id:song_id>", methods=["PATCH"])
    async def patch_song(self, request: Request, song_id: str) -> bytes:
        key = await self._key(request)
        return self._answer(request, await self._library.patch_song(
            song_id, await self._json(request), key, actor_of(request)))

    @app.route("/songs/<id:song_id>", methods=["DELETE"])
    async def delete_song(self, request: Request, song_id: str) -> bytes:
        key = await self._key(request)
        return self._answer(request, await self._library.delete_song(song_id, key,
                                                                     actor_of(request)))

    @app.route("/songs/<id:song_id>/chunks/<index:index>", methods=["GET"])
    async def chunk(self, request: Request, song_id: str, index: int) -> bytes:
        """Chunk bytes (also reached without Klein: ReplicaRoot's fast path)."""
        chunk = await self._library.chunk(song_id, index)
        representation = Representation(chunk["size"], chunk["sha256"],
                                        "application/octet-stream",
                                        await self._song_modified(song_id))
        decision = evaluate(request, representation)
        ref = ChunkRef(song_id, index, chunk["size"], chunk["sha256"])
        # A 304 sends no byte: it does not need the chunk here.
        if decision.status != 304 and not await self._guard.ensure(ref):
            raise Unavailable(f"chunk {index} of song {song_id} is not available here")
        path = self._library.chunks.path(song_id, index)
        return await serve(request, [Span(path, 0, chunk["size"])], representation, decision,
                           sendfile=self._sendfile)

    async def _song_modified(self, song_id: str) -> datetime.datetime | None:
        """The song's creation time, the Last-Modified of its chunks as of the song; kept,
        since it never changes. None while the song's row has not reached this replica."""
        modified = self._modified.get(song_id)
        if modified is None:
            try:
                song = await self._library.song(song_id)
            except NotFound:
                return None
            modified = modified_at(song["created_at"])
            if modified is None:
                return None
            if len(self._modified) >= MAX_MODIFIED:
                self._modified.pop(next(iter(self._modified)))
            self._modified[song_id] = modified
        return modified

    @app.route("/songs/<id:song_id>/stream", methods=["GET"])
    async def stream(self, request: Request, song_id: str) -> bytes:
        song = await self._library.song_with_chunks(song_id)
        chunks = song["chunks"]
        if len(chunks) != song["chunk_count"]:
            raise Unavailable(f"song {song_id} is not complete on this replica")
        representation = Representation(song["size"], song["sha256"], song["mime"],
                                        modified_at(song["created_at"]))
        decision = evaluate(request, representation)
        start, end = decision.first, decision.last  # a 304 sends no byte: no chunk is checked
        # The first chunk sent is verified (or repaired) before the answer starts, so a replica
        # that cannot serve it answers 503 and the proxy asks another; each later one as the
        # stream reaches it, so the first byte of a long song waits for one chunk, not all.
        spans, position, first = [], 0, True
        for chunk in chunks:
            ref = ChunkRef(song_id, chunk["idx"], chunk["size"], chunk["sha256"])
            ready = None
            if position <= end and position + chunk["size"] > start:
                if first and not await self._guard.ensure(ref):
                    raise Unavailable(f"chunk {chunk['idx']} of song {song_id} is not available")
                ready, first = None if first else partial(self._guard.ensure, ref), False
            spans.append(Span(self._library.chunks.path(song_id, chunk["idx"]), 0, chunk["size"],
                              ready))
            position += chunk["size"]
        return await serve(request, spans, representation, decision, sendfile=self._sendfile)

    # playlists

    @app.route("/playlists", methods=["GET"])
    async def playlists(self, request: Request) -> bytes:
        return json_response(request, 200, {"playlists": await self._library.playlists(
            actor_of(request))})

    @app.route("/playlists", methods=["POST"])
    async def create_playlist(self, request: Request) -> bytes:
        key = await self._key(request)
        return self._answer(request, await self._library.create_playlist(
            await self._json(request), key, actor_of(request)))

    @app.route("/playlists/<id:playlist_id>", methods=["GET"])
    async def playlist(self, request: Request, playlist_id: str) -> bytes:
        return json_response(request, 200, {"playlist": await self._library.playlist(
            playlist_id, actor_of(request))})

    @app.route("/playlists/<id:playlist_id>", methods=["PATCH"])
    async def patch_playlist(self, request: Request, playlist_id: str) -> bytes:
        key = await self._key(request)
        return self._answer(request, await self._library.patch_playlist(
            playlist_id, await self._json(request), key, actor_of(request)))

    @app.route("/playlists/<id:playlist_id>", methods=["DELETE"])
    async def delete_playlist(self, request: Request, playlist_id: str) -> bytes:
        key = await self._key(request)
        return self._answer(request, await self._library.delete_playlist(
            playlist_id, key, actor_of(request)))

    @app.route("/playlists/<id:playlist_id>/items", methods=["POST"])
    async def add_item(self, request: Request, playlist_id: str) -> bytes:
        key = await self._key(request)
        return self._answer(request, await self._library.add_item(
            playlist_id, await self._json(request), key, actor_of(request)))

    @app.route("/playlists/<id:playlist_id>/items/<id:item_id>", methods=["DELETE"])
    async def remove_item(self, request: Request, playlist_id: str, item_id: str) -> bytes:
        key = await self._key(request)
        return self._answer(request, await self._library.remove_item(
            playlist_id, item_id, key, actor_of(request)))


class ReplicaRoot(Resource):
    """Root resource: tags every response with X-Served-By, sends /sync/* to the
    cluster-internal API and /rest/* to the Subsonic API (subsonic/api.py: its own
    credentials, the same read wait), authorizes every other request (``authorize``, api/gate.py: it
    raises the 401 or 403), sends /auth/* and /users/* to the account API, and holds a read
    that carries X-Distpotify-Min-Version until that version is applied here (``wait_for``),
    or answers it 409 behind.

    Chunk GETs, the hot path of every listener, skip Klein's routing (a third of their CPU
    time): matched here by the route's own converters (``chunk_address``), served by the same
    PublicAPI.chunk, failures answered by the same handler; any other path goes to Klein.
    """

    isLeaf = True

    def __init__(
        self, node_id: int, api: PublicAPI, sync: IResource,
        serving: Callable[[], bool] = lambda: True,
        wait_for: Callable[[Version], Deferred[bool]] | None = None,
        accounts: IResource | None = None,
        authorize: Callable[[Request], None] = open_gate,
        accounts_wait_for: Callable[[Version], Deferred[bool]] | None = None,
        subsonic: IResource | None = None,
        covers: IResource | None = None,
    ) -> None:
        super().__init__()
        self._subsonic = subsonic  # /rest/*: the Subsonic API, which checks its own credentials
        self._served_by = str(node_id).encode()
        self._api = api
        self._routes = api.app.resource()
        self._sync = sync
        self._accounts = accounts
        self._authorize = authorize
        self._serving = serving
        self._wait_for = wait_for
        # For reads of /auth/* and /users/*: the version applied and the accounts in memory
        # read again after it (they are reloaded in the background as ops apply).
        self._accounts_wait_for = accounts_wait_for
        self._covers = covers  # /covers/* and /albums/*/cover (api/covers.py)

    def render(self, request: Request) -> Any:
        request.setHeader(SERVED_BY, self._served_by)
        if not utf8_path(request):
            # Klein would answer this itself, in text/html: every error here is JSON.
            return json_error(request, 400, "bad_request", "the path is not UTF-8")
        first = (request.postpath or [b""])[0]
        if first == b"sync":
            return self._sync.render(request)
        if first == b"rest" and self._subsonic is not None:
            return self._rest(request, self._subsonic)
        try:
            self._authorize(request)
        except ApiError as refused:
            return answer_failure(request, Failure(refused))
        reading = request.method in (b"GET", b"HEAD")
        if first in (b"auth", b"users") and self._accounts is not None:
            wanted = request.getHeader(MIN_VERSION) if reading else None
            if wanted is not None and self._accounts_wait_for is not None:
                return self._when_applied(request, wanted, self._accounts_wait_for,
                                          self._accounts.render)
            return self._accounts.render(request)
        library_read = reading and first not in (b"status", b"metrics", b"health")
        if library_read and not self._serving():
            # A JOINING replica may lack rows and chunks: its reads would be wrong, not slow.
            return json_error(request, 503, "joining", "this replica is still joining the cluster")
        wanted = request.getHeader(MIN_VERSION) if library_read else None
        if wanted is not None and self._wait_for is not None:
            return self._when_applied(request, wanted, self._wait_for,
                                      partial(self._serve, reading=True))
        return self._serve(request, reading)

    def _rest(self, request: Request, subsonic: IResource) -> Any:
        """/rest/*: its own credentials (u and p, a token, an API key) rather than the
        gate's session; a read (any method not in subsonicmethods.WRITES, GET or POST) waits
        for X-Distpotify-Min-Version like the library's."""
        wanted = None if writes(request.path) else request.getHeader(MIN_VERSION)
        if wanted is not None and self._wait_for is not None:
            return self._when_applied(request, wanted, self._wait_for, subsonic.render)
        return subsonic.render(request)

    def _serve(self, request: Request, reading: bool) -> Any:
        address = chunk_address(request.path) if reading else None
        if address is not None:
            return self._chunk(request, *address)
        first = (request.postpath or [b""])[0]
        if first in (b"covers", b"albums") and self._covers is not None:
            return self._covers.render(request)
        return self._routes.render(request)

    def _when_applied(self, request: Request, wanted: str | bytes,
                      wait_for: Callable[[Version], Deferred[bool]],
                      serve: Callable[[Request], Any]) -> Any:
        """``serve`` the read once ``wait_for`` says the version it names is applied here,
        else answer 409 behind."""
        text = wanted.decode("latin-1") if isinstance(wanted, bytes) else wanted
        try:
            version = Version.decode(text.strip())
        except ValueError:
            return json_error(request, 400, "bad_request",
                              f"{MIN_VERSION.decode()} must be a version such as"
                              f" 0000000003-00003-000000000001, got {text[:64]!r}")
        d = wait_for(version)
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def go(applied: bool) -> None:
            if request.finished or request._disconnected:
                return
            if not applied:
                behind = Behind(f"this replica has not applied version {version.encode()} yet;"
                                " ask the leader")
                request.write(answer_failure(request, Failure(behind)))
                request.finish()
                return
            body = serve(request)
            if body is not NOT_DONE_YET:
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError) or request.finished or request._disconnected:
                return
            request.write(answer_failure(request, failure))
            request.finish()

        d.addCallback(go).addErrback(failed)
        return NOT_DONE_YET

    def _chunk(self, request: Request, song_id: str, index: int) -> object:
        d = Deferred.fromCoroutine(self._api.chunk(request, song_id, index))
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def done(body: bytes) -> None:
            if not (request.finished or request._disconnected):
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError) or request.finished or request._disconnected:
                return
            request.write(answer_failure(request, failure))
            request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET
