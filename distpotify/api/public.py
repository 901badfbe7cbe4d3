"""The music API of a replica (DESIGN section 3): songs, chunks, streaming, playlists, status.

A Klein app on a class; handlers parse and validate, Library decides, and every ApiError
becomes the JSON error shape in one place (``_api_error``).
"""
# test-case-name: tests.unit.test_api

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException

from distpotify.api.ranges import Representation, Span, evaluate, modified_at, serve
from distpotify.errors import ApiError, BadRequest, NotFound, PayloadTooLarge, Unavailable
from distpotify.library import Library
from distpotify.metrics import CONTENT_TYPE, ReplicaMetrics
from distpotify.replication.fetch import ChunkRef
from distpotify.replication.repair import ChunkGuard
from distpotify.store.metadata import SONG_ORDERS

log = Logger()

MAX_JSON = 1024 * 1024
MAX_PAGE = 500
MAX_INDEX = 2**31
# Songs whose Last-Modified the chunk path keeps (a date each; a song's never changes).
MAX_MODIFIED = 4096


def json_response(request: IRequest, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    data = json.dumps(body, separators=(",", ":")).encode()
    request.setHeader(b"Content-Length", str(len(data)).encode())
    return data


def _query(request: Request) -> dict[str, str]:
    args = request.args or {}
    return {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace") for k, v in args.items()}


def _int_arg(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    if not _decimal(text) or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be an integer between {low} and {high}")
    return int(text)


def _decimal(text: str) -> bool:
    """ASCII digits only (str.isdigit takes "²"), and few enough for int()."""
    return text.isascii() and text.isdigit() and len(text) <= 19


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(request: Request, limit: int = MAX_JSON) -> dict[str, Any]:
    content = request.content
    data = content.read(limit + 1) if content is not None else b""
    if len(data) > limit:
        raise PayloadTooLarge(f"JSON bodies are limited to {limit} bytes")
    try:
        body = json.loads(data or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting thousands deep
        raise BadRequest(f"body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _chunk_index(text: str) -> int:
    """Chunk indexes are plain decimal integers; anything else is a 404, like a missing one."""
    if not _decimal(text) or int(text) >= MAX_INDEX:
        raise NotFound(f"no chunk {text!r}")
    return int(text)


class PublicAPI:
    app = Klein()

    def __init__(
        self,
        library: Library,
        guard: ChunkGuard,
        status: Callable[[], Awaitable[dict[str, Any]]],
        metrics: ReplicaMetrics | None = None,
    ) -> None:
        self._library = library
        self._guard = guard
        self._status = status
        self._metrics = metrics
        self._modified: dict[str, datetime.datetime] = {}

    @app.handle_errors(ApiError)
    def _api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, ApiError)
        for name, value in error.headers.items():
            request.setHeader(name.encode(), value.encode())
        return json_response(request, error.status, error.body())

    @app.handle_errors(HTTPException)
    def _http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.code or 500, "http_error")
        if error.code == 405:
            allowed = error.get_response().headers.get("Allow", "")
            request.setHeader(b"Allow", allowed.encode())
        body = {"error": code, "message": error.description}
        return json_response(request, error.code or 500, body)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("unhandled error on {method} {uri}", failure,
                    method=request.method, uri=request.uri)
        return json_response(request, 500, {"error": "internal", "message": "internal error"})

    # status

    @app.route("/status", methods=["GET"])
    async def status(self, request: Request) -> bytes:
        return json_response(request, 200, await self._status())

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: Request) -> bytes:
        if self._metrics is None:
            raise NotFound("no metrics here")
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode())
        return await self._metrics.render(self._status)

    # songs

    @app.route("/songs", methods=["GET"])
    async def search(self, request: Request) -> bytes:
        query = _query(request)
        limit = _int_arg(query, "limit", 50, 1, MAX_PAGE)
        offset = _int_arg(query, "offset", 0, 0, 2**62)
        sort = query.get("sort") or "newest"
        if sort not in SONG_ORDERS:
            raise BadRequest(f"sort must be one of {', '.join(SONG_ORDERS)}")
        songs, total = await self._library.search(
            query.get("q"), query.get("artist"), query.get("album"), limit, offset, sort
        )
        return json_response(request, 200, {"songs": songs, "total": total})

    @app.route("/songs", methods=["POST"])
    async def upload(self, request: Request) -> bytes:
        content_type = request.getHeader(b"Content-Type") or b""
        assert request.content is not None
        song, created = await self._library.upload(
            request.content, content_type.decode("latin-1"), _query(request)
        )
        return json_response(request, 201 if created else 200, {"song": song})

    @app.route("/songs/<song_id>", methods=["GET"])
    async def song(self, request: Request, song_id: str) -> bytes:
        return json_response(request, 200, await self._library.song_with_chunks(song_id))

    @app.route("/songs/<song_id>", methods=["PATCH"])
    async def patch_song(self, request: Request, song_id: str) -> bytes:
        song = await self._library.patch_song(song_id, read_json(request))
        return json_response(request, 200, {"song": song})

    @app.route("/songs/<song_id>", methods=["DELETE"])
    async def delete_song(self, request: Request, song_id: str) -> bytes:
        await self._library.delete_song(song_id)
        request.setResponseCode(204)
        return b""

    @app.route("/songs/<song_id>/chunks/<idx>", methods=["GET"])
    async def chunk(self, request: Request, song_id: str, idx: str) -> bytes:
        """Chunk bytes (also reached without Klein: ReplicaRoot's fast path)."""
        index = _chunk_index(idx)
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
        return await serve(request, [Span(path, 0, chunk["size"])], representation, decision)

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

    @app.route("/songs/<song_id>/stream", methods=["GET"])
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
        return await serve(request, spans, representation, decision)

    # playlists

    @app.route("/playlists", methods=["GET"])
    async def playlists(self, request: Request) -> bytes:
        return json_response(request, 200, {"playlists": await self._library.playlists()})

    @app.route("/playlists", methods=["POST"])
    async def create_playlist(self, request: Request) -> bytes:
        playlist, created = await self._library.create_playlist(read_json(request))
        return json_response(request, 201 if created else 200, {"playlist": playlist})

    @app.route("/playlists/<playlist_id>", methods=["GET"])
    async def playlist(self, request: Request, playlist_id: str) -> bytes:
        return json_response(request, 200, {"playlist": await self._library.playlist(playlist_id)})

    @app.route("/playlists/<playlist_id>", methods=["PATCH"])
    async def patch_playlist(self, request: Request, playlist_id: str) -> bytes:
        playlist = await self._library.patch_playlist(playlist_id, read_json(request))
        return json_response(request, 200, {"playlist": playlist})

    @app.route("/playlists/<playlist_id>", methods=["DELETE"])
    async def delete_playlist(self, request: Request, playlist_id: str) -> bytes:
        await self._library.delete_playlist(playlist_id)
        request.setResponseCode(204)
        return b""

    @app.route("/playlists/<playlist_id>/items", methods=["POST"])
    async def add_item(self, request: Request, playlist_id: str) -> bytes:
        item = await self._library.add_item(playlist_id, read_json(request))
        return json_response(request, 201, {"item": item})

    @app.route("/playlists/<playlist_id>/items/<item_id>", methods=["DELETE"])
    async def remove_item(self, request: Request, playlist_id: str, item_id: str) -> bytes:
        await self._library.remove_item(playlist_id, item_id)
        request.setResponseCode(204)
        return b""


def authorize(request: Request) -> None:
    """The one authorization hook every request passes; users and roles plug in here."""


_CHUNK_PATH = re.compile(rb"^/songs/([0-9a-f-]{36})/chunks/(\d{1,10})$")


class ReplicaRoot(Resource):
    """Root resource: tags every response with X-Served-By, authorizes every request, and
    sends /sync/* to the cluster-internal API.

    Chunk GETs, the hot path of every listener, skip Klein's routing (a third of their CPU
    time): matched here, served by the same PublicAPI.chunk, errors in the same JSON shape.
    """

    isLeaf = True

    def __init__(
        self, node_id: int, api: PublicAPI, sync: IResource,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__()
        self._served_by = str(node_id).encode()
        self._api = api
        self._routes = api.app.resource()
        self._sync = sync
        self._serving = serving

    def render(self, request: Request) -> Any:
        request.setHeader(b"X-Served-By", self._served_by)
        authorize(request)
        first = (request.postpath or [b""])[0]
        if first == b"sync":
            return self._sync.render(request)
        reading = request.method in (b"GET", b"HEAD")
        if reading and first not in (b"status", b"metrics") and not self._serving():
            # A JOINING replica may lack rows and chunks: its reads would be wrong, not slow.
            return json_response(request, 503, {
                "error": "joining", "message": "this replica is still joining the cluster"})
        match = _CHUNK_PATH.match(request.path) if reading else None
        if match is not None:
            return self._chunk(request, match[1].decode(), match[2].decode())
        return self._routes.render(request)

    def _chunk(self, request: Request, song_id: str, idx: str) -> object:
        d = Deferred.fromCoroutine(self._api.chunk(request, song_id, idx))
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def done(body: bytes) -> None:
            if not (request.finished or request._disconnected):
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError) or request.finished or request._disconnected:
                return
            if failure.check(ApiError):
                body = self._api._api_error(request, failure)
            else:
                body = self._api._unexpected(request, failure)
            request.write(body)
            request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

