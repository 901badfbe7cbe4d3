"""The music library's operations: what each API call reads and writes, on the leader.

Every write becomes ops through MetadataDB.write (one durable transaction); chunk files are
written before the ops that make them visible and removed only after the ops that hide them.
"""
# test-case-name: tests.unit.test_api

from __future__ import annotations

import datetime
import math
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from distpotify.detach import detached
from distpotify.errors import BadRequest, Conflict, NotFound
from distpotify.failpoints import NONE, Failpoints
from distpotify.leadership import Leadership
from distpotify.model import new_id, valid_uuid
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import (
    Change,
    MetadataDB,
    MetadataStore,
    Runner,
    SongPage,
    SongSearch,
)
from distpotify.upload import (
    Body,
    Ingested,
    encodable,
    ingest,
    parse_body,
    song_fields,
    title_from_filename,
)

log = Logger()
P = ParamSpec("P")
T = TypeVar("T")

MAX_NAME = 200


class Library:
    """What each music API call reads and writes: songs, their chunks, and playlists.

    Reads work on any replica. Every write first asks ``leadership.require_leader()`` (a
    follower answers 421), checks its input (400 or 404 before anything changes), waits until
    ``writable`` (a new leader first catches up with its peers), then runs one function on
    the database thread that decides and writes in the same transaction, so
    no other write comes between the check and the change; ``on_written`` then tells
    replication that new ops exist, and the answer waits for ``acknowledged`` (semi-synchronous
    replication: followers hold the write too). An upload's chunk files are durable before
    the song row that makes them visible; a delete removes files only after its tombstones are
    written.
    """

    def __init__(
        self,
        store: MetadataStore,
        chunks: ChunkStore,
        blocking: Runner,
        clock: IReactorTime,
        leadership: Leadership,
        chunk_size: int,
        on_written: Callable[[], object] = lambda: None,
        writable: Callable[[], Awaitable[object]] = lambda: succeed(None),
        acknowledged: Callable[[], Awaitable[object]] = lambda: succeed(None),
        spool_dir: Path | None = None,
        failpoints: Failpoints = NONE,
    ) -> None:
        self.store = store
        self.chunks = chunks
        self._blocking = blocking
        self._clock = clock
        self.leadership = leadership
        self.chunk_size = chunk_size
        self._on_written = on_written
        self._writable = writable
        self._acknowledged = acknowledged
        self._spool_dir = spool_dir  # where multipart file parts over 1 MiB are spooled
        self._failpoints = failpoints

    async def _write(
        self, method: Callable[Concatenate[MetadataDB, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A write on the database thread, once this leader may write, committed with the
        writes queued beside it (one fsync for all); then the replicas are told (push), and the
        answer waits until it is durable here and enough of them hold it."""
        await self._writable()
        result = await self.store.write(method, *args, **kwargs)
        self._on_written()
        await self._acknowledged()
        return result

    def _now(self) -> str:
        moment = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # songs

    def upload(
        self, content: BinaryIO, content_type: str, query: Mapping[str, str]
    ) -> Deferred[tuple[dict[str, Any], bool]]:
        """Store an uploaded song; (song, created). The same bytes again return the first.

        A client that goes away does not stop it: the body is already spooled, the chunk
        files are being written by a thread that cannot be stopped, and an upload finished
        (or undone) as a whole leaves no half behind. Cancelling the answer only drops it.
        """
        return detached(Deferred.fromCoroutine(self._upload(content, content_type, query)),
                        "an upload")

    async def _upload(
        self, content: BinaryIO, content_type: str, query: Mapping[str, str]
    ) -> tuple[dict[str, Any], bool]:
        self.leadership.require_leader()
        body: Body = await self._blocking(parse_body, content, content_type, query,
                                          self._spool_dir)
        # An empty override (?title=) keeps what the file's tags say.
        overrides = song_fields({k: v for k, v in body.fields.items()
                                 if k in _OVERRIDABLE and v not in (None, "")})
        song_id = new_id()
        ingested: Ingested = await self._blocking(
            ingest, body, song_id, self.chunk_size, self.chunks, self._failpoints.hit
        )
        try:
            song, created = await self._record(body, song_id, ingested, overrides)
        except Exception:
            # Not recorded (a refused value, a failed write): its chunk files go too.
            await self._blocking(
                self.chunks.remove, [(song_id, idx) for idx, _, _ in ingested.chunks])
            raise
        log.info(
            "upload {outcome} song={song_id} size={size} chunks={chunks}",
            outcome="stored" if created else "duplicate", song_id=song["id"],
            size=ingested.size, chunks=len(ingested.chunks),
        )
        return song, created

    async def _record(
        self, body: Body, song_id: str, ingested: Ingested, overrides: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Write the song and its chunk registry, unless the same bytes are stored already."""
        info = ingested.info
        fields = {
            "title": info.title or title_from_filename(body.filename) or "Untitled",
            "artist": info.artist, "album": info.album, "track": info.track,
            "year": info.year, "genre": info.genre,
            **overrides,
            "duration": info.duration, "mime": info.mime, "size": ingested.size,
            "sha256": ingested.sha256, "chunk_size": self.chunk_size,
            "chunk_count": len(ingested.chunks), "created_at": self._now(), "deleted": 0,
        }
        changes = [
            Change("chunks", f"{song_id}/{idx}", {"size": size, "sha256": sha, "deleted": 0})
            for idx, size, sha in ingested.chunks
        ]
        changes.append(Change("songs", song_id, fields))
        song, created = await self._write(_create_unless_duplicate, ingested.sha256, changes)
        self._failpoints.hit("upload.committed")
        if not created:
            await self._blocking(
                self.chunks.remove, [(song_id, idx) for idx, _, _ in ingested.chunks]
            )
        return song, created

    async def song(self, song_id: str) -> dict[str, Any]:
        song = await self.store.run(MetadataDB.song, _checked_id(song_id, "song"))
        if song is None:
            raise NotFound(f"no song {song_id}")
        return song

    async def song_with_chunks(self, song_id: str) -> dict[str, Any]:
        song = await self.song(song_id)
        song["chunks"] = await self.store.run(MetadataDB.chunks_of, song_id)
        return song

    async def search(self, search: SongSearch) -> SongPage:
        return await self.store.run(MetadataDB.search_songs, search)

    async def chunk(self, song_id: str, idx: int) -> dict[str, Any]:
        found = self.store.cached_chunk(song_id, idx)
        if found is not None:
            return found
        found = await self.store.run(MetadataDB.chunk, _checked_id(song_id, "song"), idx)
        if found is None:
            raise NotFound(f"no chunk {idx} of song {song_id}")
        return found

    async def patch_song(self, song_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        self.leadership.require_leader()
        fields = song_fields(values)
        if not await self._write(_edit_if_live, "songs", _checked_id(song_id, "song"), fields):
            raise NotFound(f"no song {song_id}")
        return await self.song(song_id)

    async def delete_song(self, song_id: str) -> None:
        self.leadership.require_leader()
        removed = await self._write(_delete_song, _checked_id(song_id, "song"))
        if removed is None:
            raise NotFound(f"no song {song_id}")
        await self._blocking(self.chunks.remove, [(song_id, idx) for idx in removed])
        log.info("deleted song={song_id} chunks={chunks}", song_id=song_id, chunks=len(removed))

    # playlists

    async def playlists(self) -> list[dict[str, Any]]:
        return await self.store.run(MetadataDB.playlists)

    async def playlist(self, playlist_id: str) -> dict[str, Any]:
        found = await self.store.run(MetadataDB.playlist, _checked_id(playlist_id, "playlist"))
        if found is None:
            raise NotFound(f"no playlist {playlist_id}")
        return found

    async def create_playlist(self, values: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create a playlist; a client-chosen ``id`` makes a retried create idempotent."""
        self.leadership.require_leader()
        _only(values, {"name", "id"})
        playlist_id = values.get("id") or new_id()
        if not isinstance(playlist_id, str) or not valid_uuid(playlist_id):
            raise BadRequest("id must be a lowercase UUID")
        fields = {"name": _name(values.get("name")), "owner": None,
                  "created_at": self._now(), "deleted": 0}
        created = await self._write(_create_once, "playlists", playlist_id, fields)
        return await self.playlist(playlist_id), created

    async def patch_playlist(self, playlist_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        self.leadership.require_leader()
        _only(values, {"name"})
        fields = {"name": _name(values.get("name"))}
        if not await self._write(_edit_if_live, "playlists",
                                 _checked_id(playlist_id, "playlist"), fields):
            raise NotFound(f"no playlist {playlist_id}")
        return await self.playlist(playlist_id)

    async def delete_playlist(self, playlist_id: str) -> None:
        self.leadership.require_leader()
        if not await self._write(_delete_playlist, _checked_id(playlist_id, "playlist")):
            raise NotFound(f"no playlist {playlist_id}")

    async def add_item(self, playlist_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        self.leadership.require_leader()
        _only(values, {"song_id", "position", "id"})
        _checked_id(playlist_id, "playlist")
        song_id = values.get("song_id")
        if not isinstance(song_id, str):
            raise BadRequest("song_id is required")
        _checked_id(song_id, "song")
        position = values.get("position")
        if position is not None and (isinstance(position, bool)
                                     or not isinstance(position, int | float)
                                     or not _finite(position)):
            raise BadRequest("position must be a finite number")
        item_id = values.get("id") or new_id()
        if not isinstance(item_id, str) or not valid_uuid(item_id):
            raise BadRequest("id must be a lowercase UUID")
        fields = {"playlist_id": playlist_id, "song_id": song_id,
                  "position": None if position is None else float(position),
                  "created_at": self._now(), "deleted": 0}
        await self._write(_add_item, item_id, fields)
        item = await self.store.run(MetadataDB.item, item_id)
        if item is None or item["playlist_id"] != playlist_id:
            raise Conflict(f"item {item_id} belongs to another playlist")
        return item

    async def remove_item(self, playlist_id: str, item_id: str) -> None:
        self.leadership.require_leader()
        item = await self.store.run(MetadataDB.item, _checked_id(item_id, "item"))
        if item is None or item["playlist_id"] != _checked_id(playlist_id, "playlist"):
            raise NotFound(f"no item {item_id} in playlist {playlist_id}")
        await self._write(MetadataDB.write, [Change("playlist_items", item_id, {"deleted": 1})])


_OVERRIDABLE = ("title", "artist", "album", "track", "year", "genre")


def _checked_id(text: str, kind: str) -> str:
    if not valid_uuid(text):
        raise NotFound(f"no {kind} {text}")
    return text


def _only(values: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(values) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")


def _name(value: Any) -> str:
    if (not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME
            or not encodable(value)):
        raise BadRequest(f"name must be a non-empty string of at most {MAX_NAME} characters")
    return value.strip()


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an integer too large for a float
        return False


# Functions run on the database thread: each is one atomic decision plus its write.


def _create_unless_duplicate(
    db: MetadataDB, sha256: str, changes: list[Change]
) -> tuple[dict[str, Any], bool]:
    existing = db.song_by_sha256(sha256)
    if existing is not None:
        return existing, False
    db.write(changes)
    song = db.song(changes[-1].key)
    assert song is not None
    return song, True


def _delete_song(db: MetadataDB, song_id: str) -> list[int] | None:
    if db.song(song_id) is None:
        return None
    chunks = [chunk["idx"] for chunk in db.chunks_of(song_id)]
    changes = [Change("chunks", f"{song_id}/{idx}", {"deleted": 1}) for idx in chunks]
    changes += [Change("playlist_items", item, {"deleted": 1})
                for item in db.item_ids_of_song(song_id)]
    changes.append(Change("songs", song_id, {"deleted": 1}))
    db.write(changes)
    return chunks


def _edit_if_live(db: MetadataDB, entity: str, key: str, fields: dict[str, Any]) -> bool:
    """Edit a song or playlist that is live now; False (a 404) if it is not."""
    live = db.song(key) if entity == "songs" else db.playlist(key)
    if live is None:
        return False
    db.write([Change(entity, key, fields)])
    return True


def _delete_playlist(db: MetadataDB, playlist_id: str) -> bool:
    """Delete a playlist and every item it has now (an item added a moment ago too)."""
    playlist = db.playlist(playlist_id)
    if playlist is None:
        return False
    changes = [Change("playlist_items", item["id"], {"deleted": 1})
               for item in playlist["items"]]
    changes.append(Change("playlists", playlist_id, {"deleted": 1}))
    db.write(changes)
    return True


def _add_item(db: MetadataDB, item_id: str, fields: dict[str, Any]) -> bool:
    """Add an item if its playlist and song are both live now, at the end unless placed."""
    if db.playlist(fields["playlist_id"]) is None:
        raise NotFound(f"no playlist {fields['playlist_id']}")
    if db.song(fields["song_id"]) is None:
        raise NotFound(f"no song {fields['song_id']}")
    if fields["position"] is None:
        fields = {**fields, "position": db.last_position(fields["playlist_id"]) + 1.0}
    return _create_once(db, "playlist_items", item_id, fields)


def _create_once(db: MetadataDB, entity: str, key: str, fields: dict[str, Any]) -> bool:
    row = db.get_row(entity, key)
    if row is not None:
        if row.fields.get("deleted"):
            raise Conflict(f"{key} was deleted; create it with a new id")
        return False
    db.write([Change(entity, key, fields)])
    return True
