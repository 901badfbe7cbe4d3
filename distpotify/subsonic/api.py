"""The /rest resource of a replica: finds the method a path names (``/rest/getAlbum`` or
``/rest/getAlbum.view``, any case), reads the parameters (query string and form POST), checks
the credentials (auth.py), runs the handler and renders its answer (subsonicresponse.py).

The spec answers failures with HTTP 200 and an error element, as clients expect. Three
answers stay HTTP ones, for the proxy to act on: a write on a replica that does not lead
(421, as the JSON API), a replica still joining (503: another replica has the data), and a
stream whose bytes this replica cannot serve now (503), or a Range it cannot (416).
"""
# test-case-name: tests.unit.test_subsonic_api

from __future__ import annotations

import importlib
import io
from collections.abc import Awaitable, Callable
from typing import IO, Any
from urllib.parse import parse_qs

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from distpotify.api.failures import answer_failure
from distpotify.errors import (
    ApiError,
    Behind,
    Forbidden,
    InsufficientStorage,
    NotFound,
    NotLeader,
    PreconditionFailed,
    RangeNotSatisfiable,
    Unavailable,
)
from distpotify.store.metadata import MetadataStore, Runner
from distpotify.subsonic import absent, browse, media, system  # noqa: F401  (they register methods)
from distpotify.subsonic.auth import Authenticator
from distpotify.subsonic.call import (
    GENERIC,
    METHODS,
    NOT_AUTHORIZED,
    NOT_FOUND,
    SENT,
    Call,
    Method,
    Params,
    SubsonicError,
    method,
)
from distpotify.subsonicmethods import WRITES, method_name
from distpotify.subsonicresponse import XML, Format, error, format_of, render
from distpotify.userstate import MAX_QUEUE

log = Logger()

MAX_FORM = 1024 * 1024  # bytes of a form POST body
# Parameters in one: a saved play queue's ids (one each) and the rest.
MAX_FIELDS = MAX_QUEUE + 1000
# Parts written by others that register methods of their own, when they are there.
OPTIONAL_MODULES = ("annotations", "playlists", "users", "nowplaying", "resume")
# Every method of Subsonic 1.16.1 and OpenSubsonic: those no module implements answer error 0
# "not implemented" (never a 500, nor "unknown method").
SPEC_METHODS = (
    "ping", "getLicense", "getMusicFolders", "getIndexes", "getMusicDirectory", "getGenres",
    "getArtists", "getArtist", "getAlbum", "getSong", "getVideos", "getVideoInfo",
    "getArtistInfo", "getArtistInfo2", "getAlbumInfo", "getAlbumInfo2", "getSimilarSongs",
    "getSimilarSongs2", "getTopSongs", "getAlbumList", "getAlbumList2", "getRandomSongs",
    "getSongsByGenre", "getNowPlaying", "getStarred", "getStarred2", "search", "search2",
    "search3", "getPlaylists", "getPlaylist", "createPlaylist", "updatePlaylist",
    "deletePlaylist", "stream", "download", "hls", "getCaptions", "getCoverArt", "getLyrics",
    "getAvatar", "star", "unstar", "setRating", "scrobble", "getShares", "createShare",
    "updateShare", "deleteShare", "getPodcasts", "getNewestPodcasts", "refreshPodcasts",
    "createPodcastChannel", "deletePodcastChannel", "deletePodcastEpisode",
    "downloadPodcastEpisode", "getPodcastEpisode", "jukeboxControl",
    "getInternetRadioStations", "createInternetRadioStation", "updateInternetRadioStation",
    "deleteInternetRadioStation", "getChatMessages", "addChatMessage", "getUser", "getUsers",
    "createUser", "updateUser", "deleteUser", "changePassword", "getBookmarks",
    "createBookmark", "deleteBookmark", "getPlayQueue", "savePlayQueue",
    "getPlayQueueByIndex", "savePlayQueueByIndex", "getScanStatus", "startScan",
    "getOpenSubsonicExtensions", "tokenInfo", "getLyricsBySongId",
)


def _register_the_rest() -> None:
    for name in OPTIONAL_MODULES:
        try:
            importlib.import_module(f"distpotify.subsonic.{name}")
        except ModuleNotFoundError as missing:
            if missing.name != f"distpotify.subsonic.{name}":
                raise
    for name in SPEC_METHODS:
        if name.lower() not in METHODS:
            method(name, writes=name.lower() in WRITES)(_not_implemented(name))


def _not_implemented(name: str) -> Callable[[Call], Awaitable[dict[str, Any]]]:
    async def handler(call: Call) -> dict[str, Any]:
        raise SubsonicError(GENERIC, f"{name} is not implemented by this server")
    return handler


_register_the_rest()


@attrs.define
class Server:
    """What handlers reach through ``call.server``: the replica's services. ``stream`` is
    PublicAPI.stream (GET /songs/{id}/stream: the original bytes, with Range). ``covers``
    (the pictures, covers.py) and ``state`` (per-user stars, ratings, plays) are filled by
    the parts that provide them, None until then."""

    library: Any  # library.Library
    accounts: Any  # accounts.Accounts
    store: MetadataStore
    blocking: Runner
    auth: Authenticator
    stream: Callable[[Request, str], Awaitable[bytes]]
    serving: Callable[[], bool] = lambda: True
    covers: Any | None = None
    state: Any | None = None


# CORS: a Subsonic app served from another origin (a web client on its own host) may call
# /rest from the browser. Its credentials travel in each request (u with p or t and s, or
# apiKey), never in a cookie, so a page of another site gains nothing a request of its own
# could not already do; the answers say any origin may read them (as Navidrome's do), and
# a stream's Range headers may be read too.
CORS = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Expose-Headers",
     b"Content-Length, Content-Range, Accept-Ranges, ETag, Content-Disposition"),
)
PREFLIGHT = (
    (b"Access-Control-Allow-Methods", b"GET, HEAD, POST, OPTIONS"),
    (b"Access-Control-Allow-Headers", b"Content-Type, Range, If-None-Match, If-Range"),
    (b"Access-Control-Max-Age", b"86400"),
)


class SubsonicAPI(Resource):
    """``/rest/*``: every request answered by ``_answer`` (a coroutine) once it is done; a
    CORS preflight (OPTIONS) answered at once."""

    isLeaf = True

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.services = server

    def render(self, request: Request) -> Any:
        for name, value in CORS:
            request.setHeader(name, value)
        if request.method == b"OPTIONS":
            for name, value in PREFLIGHT:
                request.setHeader(name, value)
            request.setResponseCode(204)
            return b""
        d = Deferred.fromCoroutine(self._answer(request))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addErrback(_lost, request)
        return NOT_DONE_YET

    async def _answer(self, request: Request) -> None:
        fmt: Format = XML
        name = method_name(request.path) or ""
        try:
            params = Params(await self._params(request))
            found = format_of(params.get("f"), params.get("callback"))
            if found is None:
                raise SubsonicError(GENERIC, "f must be xml, json, or jsonp with a callback")
            fmt = found
            handler = METHODS.get(name)
            if handler is None:
                raise SubsonicError(GENERIC, f"Unknown method: {name[:64]!r}")
            if not self.services.serving():
                request.setResponseCode(503)
                raise SubsonicError(GENERIC, "joining: this replica is still joining the"
                                    " cluster; ask another")
            result = await self._call(handler, request, params)
            # Rendered here, so that a tree it cannot render is error 0 like any failure
            # (after the try, it would drop the connection).
            answer = None if result is SENT else render(fmt, _tree(result))
        except SubsonicError as e:
            return _send(request, *error(fmt, e.code, e.message))
        except ApiError as e:
            answered = _as_subsonic(e)
            if answered is None:  # an HTTP answer the proxy or the player acts on
                return _send_raw(request, answer_failure(request, Failure(e)))
            return _send(request, *error(fmt, *answered))
        except CancelledError:
            raise
        except Exception:
            log.failure("subsonic {method} failed", method=name[:64])
            return _send(request, *error(fmt, GENERIC, "Internal error"))
        if answer is None:
            if not request.finished and not request._disconnected:
                request.finish()
            return None
        return _send(request, *answer)

    async def _call(self, found: Method, request: Request, params: Params) -> Any:
        user = None if found.public else await self.services.auth.user(params)
        if found.writes:
            self.services.library.leadership.require_leader()
        return await found.handler(Call(request, params, user, self.services))

    async def _params(self, request: Request) -> dict[str, list[str]]:
        """The query's parameters and a form POST's (formPost), as UTF-8 text. Both read here,
        from the URI and the body: ``request.args`` holds the form's too when the Site parses
        form bodies (twisted.web's default, though not our Sites'), and a form's values would
        count twice (a song scrobbled, or added to a playlist, twice)."""
        raw = _pairs(request.uri.partition(b"?")[2])
        if request.method == b"POST" and _is_form(request):
            content = request.content
            # A spooled body (over 100 KB) is read and split on a worker thread: up to 1 MiB
            # of %-escapes took half a second to split, before the caller was authenticated.
            if content is not None and not isinstance(content, io.BytesIO):
                form = await self.services.blocking(_form_pairs, content)
            else:
                form = _form_pairs(content)
            for key, values in form.items():
                raw.setdefault(key, []).extend(values)
        try:
            found = {k.encode("latin-1").decode("utf-8"):
                     [v.encode("latin-1").decode("utf-8") for v in values]
                     for k, values in raw.items()}
        except UnicodeDecodeError:
            raise SubsonicError(GENERIC, "Parameters must be UTF-8 text") from None
        for name, texts in found.items():
            if "\0" in name or any("\0" in text for text in texts):
                raise SubsonicError(GENERIC, f"Parameter {name[:64]!r} holds a NUL character")
        return found


def _pairs(encoded: bytes) -> dict[str, list[str]]:
    """A query string's or form body's parameters, each character one byte (Latin-1) of the
    name or value, %-escapes undone: parse_qs of bytes fails on any byte past ASCII, %-escaped
    or not ("q=Bj%C3%B6rk")."""
    try:
        return parse_qs(encoded.decode("latin-1"), keep_blank_values=True,
                        max_num_fields=MAX_FIELDS, encoding="latin-1")
    except ValueError:
        raise SubsonicError(GENERIC, f"At most {MAX_FIELDS} parameters") from None


def _tree(result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise TypeError(f"a handler answered {type(result).__name__}, not a tree")
    return result


def _is_form(request: Request) -> bool:
    kind = request.getHeader(b"Content-Type") or b""
    return kind.split(b";", 1)[0].strip().lower() == b"application/x-www-form-urlencoded"


def _form_pairs(content: IO[bytes] | None) -> dict[str, list[str]]:
    return _pairs(_read_form(content))


def _read_form(content: IO[bytes] | None) -> bytes:
    if content is None:
        return b""
    content.seek(0)
    body = content.read(MAX_FORM + 1)
    content.seek(0)
    if len(body) > MAX_FORM:
        raise SubsonicError(GENERIC, f"A form body is at most {MAX_FORM} bytes")
    return body


def _as_subsonic(e: ApiError) -> tuple[int, str] | None:
    """The spec's code and message for a failure of the library, or None for those answered
    as HTTP (the proxy redirects a 421, tries another replica after a 503)."""
    if isinstance(e, NotLeader | Unavailable | Behind | RangeNotSatisfiable | PreconditionFailed
                  | InsufficientStorage):
        return None
    if isinstance(e, NotFound):
        return NOT_FOUND, e.message
    if isinstance(e, Forbidden):
        return NOT_AUTHORIZED, e.message
    return GENERIC, e.message


def _send(request: Request, body: bytes, content_type: bytes) -> None:
    if request.finished or request._disconnected:
        return
    if request.startedWriting:
        _abort(request)  # the headers promised other bytes
        return
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(body)
    request.finish()


def _send_raw(request: Request, body: bytes) -> None:
    if request.finished or request._disconnected:
        return
    if request.startedWriting:
        _abort(request)
        return
    request.write(body)
    request.finish()


def _lost(failure: Failure, request: Request) -> None:
    if failure.check(CancelledError):
        return
    log.failure("subsonic answer failed", failure)
    if not request.finished and not request._disconnected:
        _abort(request)


def _abort(request: Request) -> None:
    transport: Any = request.channel.transport if request.channel is not None else None
    if transport is not None:
        transport.abortConnection()
