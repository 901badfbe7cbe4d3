"""Cover art (issue 18): which picture a song or album has, its bytes (original, or resized
and cached), and the covers users set on albums.

The pictures themselves are content-addressed files (store/covers.py) written before the rows
that name them, and replicated by SHA-256 (replication/covers.py). ``Covers`` is also what the
Subsonic API's getCoverArt calls: ``serve(request, cover_id, size)``.
"""
# test-case-name: tests.unit.test_covers, tests.integration.test_covers

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import IO, Any, BinaryIO

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request
from werkzeug.http import parse_etags, quote_etag

from distpotify.auth.access import UNRESTRICTED, Actor
from distpotify.errors import NotFound, PayloadTooLarge, Unavailable, UnsupportedMedia
from distpotify.idempotency import IdempotencyKey, Outcome
from distpotify.images import MAX_COVER_BYTES, NotImage, clamp_size, image_mime, resized
from distpotify.library import Library
from distpotify.model import Version, valid_uuid
from distpotify.replication.covers import CoverFetcher
from distpotify.store.covers import CoverCache, CoverStore, valid_sha256
from distpotify.store.metadata import Change, MetadataDB, MetadataStore, Runner

# Content-addressed: the bytes under /covers/<sha256> never change.
IMMUTABLE = b"public, max-age=31536000, immutable"
# An album's or a song's cover may change (a user sets one): kept, but asked for again.
REVALIDATE = b"private, no-cache"
MIME_MEMORY = 4096  # covers whose MIME type is remembered
# How long the albums' covers from their songs are used once the head moved, for an album
# they list: a busy leader's writes must not make every cover read scan the songs again. An
# album not listed yet (its songs just arrived) makes them be read again at once.
FROM_SONGS_MAX_AGE = 5.0
# The resized copies kept on disk (<data-dir>/cover-cache/): about 10,000 covers at 300 px.
COVER_CACHE_BYTES = 256 << 20


@attrs.frozen
class Picture:
    data: bytes
    mime: str
    etag: str  # unquoted: the cover's SHA-256, and the size for a resized copy


class Covers:
    """The covers service: reads on any replica, album covers set on the leader through
    ``library`` (its write path: leadership, idempotency keys, replication)."""

    def __init__(
        self,
        store: MetadataStore,
        files: CoverStore,
        cache: CoverCache,
        blocking: Runner,
        library: Library,
        head: Callable[[], Version],
        clock: IReactorTime,
        fetcher: CoverFetcher | None = None,
        peers: Callable[[], Sequence[str]] = lambda: (),
    ) -> None:
        self._store = store
        self.files = files
        self.cache = cache
        self._blocking = blocking
        self._library = library
        self._head = head
        self._clock = clock
        self._fetcher = fetcher
        self._peers = peers
        self._mimes: dict[str, str] = {}
        # Each album's cover from its first song, as of a head and a time (FROM_SONGS_MAX_AGE).
        self._from_songs: tuple[Version, float, dict[str, str]] | None = None

    # which cover

    async def album_cover(self, album_id: str) -> str | None:
        """The SHA-256 of album ``album_id``'s cover: the one a user set, else its first
        song's (by disc, track, upload time) that has one; None when it has none (or there
        is no such album)."""
        if not valid_uuid(album_id):
            return None
        chosen: str | None = await self._store.run(MetadataDB.album_cover_set, album_id)
        if chosen is not None:
            return chosen
        head, now = self._head(), self._clock.seconds()
        known = self._from_songs
        stale = known is not None and known[0] != head and (
            album_id not in known[2] or now - known[1] > FROM_SONGS_MAX_AGE)
        if known is None or stale:
            known = self._from_songs = (
                head, now, await self._store.run(MetadataDB.first_song_covers))
        return known[2].get(album_id)

    async def resolve(self, cover_id: str) -> str:
        """The cover a cover id names: a cover's SHA-256 (named by a live song or album), an
        album id (its cover, as ``album_cover``) or a song id (its own cover); NotFound
        otherwise. Raw text never reaches the filesystem."""
        if valid_sha256(cover_id):
            if await self._store.run(MetadataDB.cover_named, cover_id):
                return cover_id
        elif valid_uuid(cover_id):
            found = await self._store.run(MetadataDB.song_cover, cover_id)
            if found is None:
                found = await self.album_cover(cover_id)
            if found is not None:
                return str(found)
        raise NotFound(f"no cover {cover_id[:100]}")

    # bytes

    async def picture(self, sha256: str, size: int | None) -> Picture:
        """The cover's bytes, or a copy that fits ``size`` x ``size`` (clamped to 16..2048),
        resized off the reactor thread and cached; fetched from a peer first if the file is
        missing or corrupt here (Unavailable when no peer has it)."""
        data: bytes | None = await self._blocking(self.files.read, sha256)
        if data is None and self._fetcher is not None:
            await self._fetcher.fetch(sha256, self._peers())
            data = await self._blocking(self.files.read, sha256)
        if data is None:
            raise Unavailable(f"cover {sha256} is not available here")
        if size is None:
            return Picture(data, await self._mime(sha256, data), sha256)
        size = clamp_size(size)
        cached: bytes | None = await self._blocking(self.cache.get, sha256, size)
        if cached is not None:
            mime = "image/png" if cached.startswith(b"\x89PNG") else "image/jpeg"
            return Picture(cached, mime, f"{sha256}-{size}")
        try:
            small, mime = await self._blocking(resized, data, size)
        except NotImage as e:
            raise UnsupportedMedia(f"cover {sha256} cannot be resized: {e}") from None
        await self._blocking(self.cache.put, sha256, size, small)
        return Picture(small, mime, f"{sha256}-{size}")

    async def _mime(self, sha256: str, data: bytes) -> str:
        mime = self._mimes.get(sha256)
        if mime is None:
            try:
                mime = str(await self._blocking(image_mime, data))
            except NotImage:
                mime = "application/octet-stream"
            if len(self._mimes) >= MIME_MEMORY:
                self._mimes.pop(next(iter(self._mimes)))
            self._mimes[sha256] = mime
        return mime

    async def serve(self, request: Request, cover_id: str, size: int | None) -> bytes:
        """Answer ``request`` with the cover ``cover_id`` names (see ``resolve``), resized
        to fit ``size`` if given: its bytes, with Content-Type, ETag and caching set, or an
        empty 304 when the client holds them. NotFound for an unknown id."""
        sha256 = await self.resolve(cover_id)
        return await self.answer(request, sha256, size, immutable=cover_id == sha256)

    async def answer(self, request: Request, sha256: str, size: int | None, *,
                     immutable: bool) -> bytes:
        etag = sha256 if size is None else f"{sha256}-{clamp_size(size)}"
        wanted = request.getHeader(b"If-None-Match")
        if wanted is not None and parse_etags(wanted.decode("latin-1")).contains_weak(etag):
            _cacheable(request, etag, immutable)
            request.setResponseCode(304)
            return b""
        picture = await self.picture(sha256, size)  # an error's answer is not to be kept
        _cacheable(request, etag, immutable)
        request.setHeader(b"Content-Type", picture.mime.encode())
        return picture.data

    # album covers set by users

    def request_key(self, text: str, method: bytes, uri: bytes, body: IO[bytes] | None
                    ) -> Deferred[IdempotencyKey]:
        return self._library.request_key(text, method, uri, body)

    async def set_album_cover(self, album_id: str, content: BinaryIO,
                              key: IdempotencyKey | None = None,
                              actor: Actor = UNRESTRICTED) -> Outcome:
        """Make the picture ``content`` holds album ``album_id``'s cover: 200 ``{"album":
        {"id", "cover_sha256"}}``. Refused with nothing changed: 404 for an unknown album,
        413 over MAX_COVER_BYTES, 415 for anything but a JPEG, PNG, WebP or GIF. The file is
        durable before the record that names it."""
        self._library.leadership.require_leader()
        if not valid_uuid(album_id):
            raise NotFound(f"no album {album_id[:100]}")
        data: bytes = await self._blocking(_read_bounded, content)
        try:
            await self._blocking(image_mime, data)
        except NotImage as e:
            raise UnsupportedMedia(f"an album cover must be a JPEG, PNG, WebP or GIF: {e}") \
                from None
        if not await self._store.run(MetadataDB.album_exists, album_id):
            raise NotFound(f"no album {album_id}")
        sha256: str = await self._blocking(self.files.put, data)
        fields = {"cover_sha256": sha256, "set_by": actor.user_id, "deleted": 0}
        return await self._library.write(key, _set_album_cover, album_id, fields)


def _cacheable(request: Request, etag: str, immutable: bool) -> None:
    """The headers that let a client keep a picture: only on the picture or its 304, never on
    an error (a 503 marked immutable would be kept for a year by a shared cache)."""
    request.setHeader(b"ETag", quote_etag(etag).encode())
    request.setHeader(b"Cache-Control", IMMUTABLE if immutable else REVALIDATE)


def _read_bounded(content: BinaryIO) -> bytes:
    content.seek(0)
    data = content.read(MAX_COVER_BYTES + 1)
    if len(data) > MAX_COVER_BYTES:
        raise PayloadTooLarge(f"a cover may be at most {MAX_COVER_BYTES >> 20} MiB")
    return data


def _set_album_cover(db: MetadataDB, album_id: str, fields: dict[str, Any]) -> Outcome:
    """On the database thread, in the write's transaction: the album must still exist."""
    if not db.album_exists(album_id):
        raise NotFound(f"no album {album_id}")
    db.write([Change("album_covers", album_id, fields)])
    return Outcome(200, {"album": {"id": album_id, "cover_sha256": fields["cover_sha256"]}})
