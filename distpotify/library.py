"""The music library's operations: what each API call reads and writes, on the leader.

Every write is one durable transaction on the database thread that decides, writes its ops,
builds its answer and (for a keyed write) stores that answer under its Idempotency-Key; chunk
files are written before the ops that make them visible and removed only after the ops that
hide them.
"""
# test-case-name: tests.unit.test_api

from __future__ import annotations

import contextlib
import datetime
import io
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, Concatenate, ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from distpotify.auth.access import UNRESTRICTED, Actor
from distpotify.catalog import VARIOUS
from distpotify.detach import detached
from distpotify.errors import BadRequest, Conflict, Forbidden, NotFound
from distpotify.failpoints import NONE, Failpoints
from distpotify.idempotency import IdempotencyKey, Outcome, request_digest
from distpotify.leadership import Leadership
from distpotify.model import new_id, valid_uuid
from distpotify.store.chunks import ChunkStore
from distpotify.store.covers import CoverStore
from distpotify.store.idempotency import ENTITY as KEYS_ENTITY
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

    Edits and deletes are allowed to the ``actor`` (auth/access.py) the gate found: checked
    against the record's owner (``uploaded_by``, a playlist's ``owner``) in the write's own
    transaction (403); without one, everything is (UNRESTRICTED, ``--auth off``).

    A write answers an Outcome (status, body, the version it made). With an IdempotencyKey
    the same transaction first looks the key up (a stored outcome is answered again, a key
    stored for another request is 422) and last stores the outcome under it; the records it
    creates take ids derived from the key. Writes with one key run one at a time here.
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
        covers: CoverStore | None = None,
    ) -> None:
        self.store = store
        self.covers = covers  # embedded cover pictures, written with the chunks
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
        self._keys_busy: dict[str, DeferredLock] = {}

    async def _write(
        self, key: IdempotencyKey | None,
        action: Callable[Concatenate[MetadataDB, P], Outcome], *args: P.args, **kwargs: P.kwargs
    ) -> Outcome:
        """``action`` as one keyed write on the database thread, once this leader may write,
        committed with the writes queued beside it (one fsync for all); then the replicas are
        told (push), and the answer waits until enough of them hold it (a stored outcome
        answered again too: the first answer may not have been)."""
        await self._writable()
        async with self._one_at_a_time(key):
            outcome = await self.store.write(_keyed, key, action, *args, **kwargs)
        if not outcome.replayed:
            self._on_written()
        await self._acknowledged()
        return outcome

    async def write(
        self, key: IdempotencyKey | None, action: Callable[Concatenate[MetadataDB, P], Outcome],
        *args: P.args, **kwargs: P.kwargs
    ) -> Outcome:
        """A write of another part (the accounts) on the same path as the library's own:
        only on the leader, once it may write, keyed, acknowledged as the others are."""
        self.leadership.require_leader()
        return await self._write(key, action, *args, **kwargs)

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, key: IdempotencyKey | None) -> AsyncIterator[None]:
        """Writes with the same key one after the other: a request sent again while the first
        is still being applied (a proxy's retry) waits, then gets the first one's outcome."""
        if key is None:
            yield
            return
        lock = self._keys_busy.setdefault(key.id, DeferredLock())
        await lock.acquire()
        try:
            yield
        finally:
            lock.release()
            if not lock.locked:
                self._keys_busy.pop(key.id, None)

    def request_key(self, text: str, method: bytes, uri: bytes, body: IO[bytes] | None
                    ) -> Deferred[IdempotencyKey]:
        """The IdempotencyKey of a request that sent key ``text``: its request is hashed on a
        worker thread when its body was spooled to a file (an upload can be large), here when
        it is in memory (a JSON body: a thread hop would cost more than the hash)."""
        if body is None or isinstance(body, io.BytesIO):
            return succeed(IdempotencyKey(text, request_digest(method, uri, body)))
        digest: Deferred[str] = self._blocking(request_digest, method, uri, body)
        return digest.addCallback(lambda request: IdempotencyKey(text, request))

    def _now(self) -> str:
        moment = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # songs

    def upload(
        self, content: BinaryIO, content_type: str, query: Mapping[str, str],
        key: IdempotencyKey | None = None, actor: Actor = UNRESTRICTED,
    ) -> Deferred[Outcome]:
        """Store an uploaded song: 201 ``{"song"}``; the same bytes again: 200 and the first.

        A client that goes away does not stop it: the body is already spooled, the chunk
        files are being written by a thread that cannot be stopped, and an upload finished
        (or undone) as a whole leaves no half behind. Cancelling the answer only drops it.
        The upload owns ``content``, and closes it once finished.
        """
        work = Deferred.fromCoroutine(self._upload(content, content_type, query, key, actor))
        return detached(work.addBoth(_closing, content), "an upload")

    async def _upload(
        self, content: BinaryIO, content_type: str, query: Mapping[str, str],
        key: IdempotencyKey | None, actor: Actor,
    ) -> Outcome:
        self.leadership.require_leader()
        await self._writable()  # a new leader's catch-up may bring this key's stored outcome
        async with self._one_at_a_time(key):
            stored = None
            if key is not None:
                # Before the body is read and split: a stored outcome costs no chunk file.
                stored = await self.store.run(MetadataDB.stored_outcome, key)
            outcome = (stored if stored is not None
                       else await self._store_upload(content, content_type, query, key,
                                                     actor))
        if not outcome.replayed:
            self._on_written()
        await self._acknowledged()
        return outcome

    async def _store_upload(
        self, content: BinaryIO, content_type: str, query: Mapping[str, str],
        key: IdempotencyKey | None, actor: Actor,
    ) -> Outcome:
        body: Body = await self._blocking(parse_body, content, content_type, query,
                                          self._spool_dir)
        # An empty override (?title=) keeps what the file's tags say.
        overrides = song_fields({k: v for k, v in body.fields.items()
                                 if k in _OVERRIDABLE and v not in (None, "")})
        song_id = key.record_id() if key is not None else new_id()
        ingested: Ingested = await self._blocking(
            ingest, body, song_id, self.chunk_size, self.chunks, self._failpoints.hit,
            self.covers,
        )
        names = [(song_id, idx) for idx, _, _ in ingested.chunks]
        try:
            outcome = await self._record(body, song_id, ingested, overrides, key, actor)
        except Exception:
            # Not recorded (a refused value, a failed write): its chunk files go too, unless
            # a song of this id lives (this key's, applied before its key row expired).
            if await self.store.run(MetadataDB.song, song_id) is None:
                await self._blocking(self.chunks.remove, names)
            raise
        assert outcome.body is not None
        song = outcome.body["song"]
        if song["id"] != song_id:
            # The same bytes were stored already, as another song: ours are not needed.
            await self._blocking(self.chunks.remove, names)
        log.info(
            "upload {outcome} song={song_id} size={size} chunks={chunks}",
            outcome="stored" if outcome.status == 201 else "duplicate", song_id=song["id"],
            size=ingested.size, chunks=len(ingested.chunks),
        )
        return outcome

    async def _record(
        self, body: Body, song_id: str, ingested: Ingested, overrides: dict[str, Any],
        key: IdempotencyKey | None, actor: Actor,
    ) -> Outcome:
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
            "uploaded_by": actor.user_id,
            # A compilation without an album artist is filed under VARIOUS (catalog.py).
            "album_artist": info.album_artist or (VARIOUS if info.compilation else None),
            "disc": info.disc, "cover_sha256": ingested.cover_sha256,
        }
        changes = [
            Change("chunks", f"{song_id}/{idx}", {"size": size, "sha256": sha, "deleted": 0})
            for idx, size, sha in ingested.chunks
        ]
        changes.append(Change("songs", song_id, fields))
        outcome = await self.store.write(_keyed, key, _create_unless_duplicate, ingested.sha256,
                                         changes)
        self._failpoints.hit("upload.committed")
        return outcome

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

    async def songs_by_sha256(self, hashes: list[str]) -> list[dict[str, Any]]:
        return await self.store.run(MetadataDB.songs_by_sha256, hashes)

    async def chunk(self, song_id: str, idx: int) -> dict[str, Any]:
        found = self.store.cached_chunk(song_id, idx)
        if found is not None:
            return found
        found = await self.store.run(MetadataDB.chunk, _checked_id(song_id, "song"), idx)
        if found is None:
            raise NotFound(f"no chunk {idx} of song {song_id}")
        return found

    async def patch_song(self, song_id: str, values: Mapping[str, Any],
                         key: IdempotencyKey | None = None, actor: Actor = UNRESTRICTED
                         ) -> Outcome:
        """200 ``{"song"}`` as edited; 403 unless ``actor`` uploaded it or is an admin."""
        self.leadership.require_leader()
        fields = song_fields(values)
        return await self._write(key, _edit_if_live, "songs", _checked_id(song_id, "song"),
                                 fields, actor)

    async def delete_song(self, song_id: str, key: IdempotencyKey | None = None,
                          actor: Actor = UNRESTRICTED) -> Outcome:
        """204; the song's chunk files go once its tombstones are durable."""
        self.leadership.require_leader()
        # A song's chunks never change after its upload: listed before, removed after.
        chunks = await self.store.run(MetadataDB.chunks_of, _checked_id(song_id, "song"))
        outcome = await self._write(key, _delete_song, song_id, actor)
        if not outcome.replayed:
            await self._blocking(self.chunks.remove, [(song_id, c["idx"]) for c in chunks])
            log.info("deleted song={song_id} chunks={chunks}", song_id=song_id,
                     chunks=len(chunks))
        return outcome

    # playlists

    async def playlists(self, actor: Actor = UNRESTRICTED) -> list[dict[str, Any]]:
        """The playlists ``actor`` may read: its own and the public ones (an admin: all)."""
        found = await self.store.run(MetadataDB.playlists)
        return [p for p in found if actor.may_read_playlist(p["owner"], p["public"])]

    async def playlist(self, playlist_id: str, actor: Actor = UNRESTRICTED) -> dict[str, Any]:
        found = await self.store.run(MetadataDB.playlist, _checked_id(playlist_id, "playlist"))
        if found is None:
            raise NotFound(f"no playlist {playlist_id}")
        if not actor.may_read_playlist(found["owner"], found["public"]):
            raise Forbidden(f"playlist {playlist_id} is private")
        return found

    async def create_playlist(self, values: Mapping[str, Any],
                              key: IdempotencyKey | None = None, actor: Actor = UNRESTRICTED
                              ) -> Outcome:
        """201 ``{"playlist"}`` owned by ``actor``; 200 if a client-chosen ``id`` (which
        makes a retried create idempotent without a key) exists already."""
        self.leadership.require_leader()
        _only(values, {"name", "id", "public"})
        playlist_id = _given_id(values, key)
        if not isinstance(playlist_id, str) or not valid_uuid(playlist_id):
            raise BadRequest("id must be a lowercase UUID")
        fields = {"name": _name(values.get("name")), "owner": actor.user_id,
                  "created_at": self._now(), "deleted": 0,
                  "public": _public(values.get("public", False))}
        return await self._write(key, _create_playlist, playlist_id, fields, actor)

    async def patch_playlist(self, playlist_id: str, values: Mapping[str, Any],
                             key: IdempotencyKey | None = None, actor: Actor = UNRESTRICTED
                             ) -> Outcome:
        """200 ``{"playlist"}`` as renamed or made public or private (by its owner or an
        admin, else 403)."""
        self.leadership.require_leader()
        _only(values, {"name", "public"})
        fields: dict[str, Any] = {}
        if "public" in values:
            fields["public"] = _public(values["public"])
        if "name" in values or not fields:
            fields["name"] = _name(values.get("name"))
        fields["changed_at"] = self._now()
        return await self._write(key, _edit_if_live, "playlists",
                                 _checked_id(playlist_id, "playlist"), fields, actor)

    async def delete_playlist(self, playlist_id: str, key: IdempotencyKey | None = None,
                              actor: Actor = UNRESTRICTED) -> Outcome:
        """204, the playlist and its items tombstoned."""
        self.leadership.require_leader()
        return await self._write(key, _delete_playlist, _checked_id(playlist_id, "playlist"),
                                 actor)

    async def add_item(self, playlist_id: str, values: Mapping[str, Any],
                       key: IdempotencyKey | None = None, actor: Actor = UNRESTRICTED
                       ) -> Outcome:
        """201 ``{"item"}``; 200 and the item if one of this ``id`` is in the playlist already
        (the same add sent again with its own id)."""
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
        item_id = _given_id(values, key)
        if not isinstance(item_id, str) or not valid_uuid(item_id):
            raise BadRequest("id must be a lowercase UUID")
        fields = {"playlist_id": playlist_id, "song_id": song_id,
                  "position": None if position is None else float(position),
                  "created_at": self._now(), "deleted": 0}
        return await self._write(key, _add_item, item_id, fields, actor)

    async def remove_item(self, playlist_id: str, item_id: str,
                          key: IdempotencyKey | None = None, actor: Actor = UNRESTRICTED
                          ) -> Outcome:
        """204."""
        self.leadership.require_leader()
        return await self._write(key, _remove_item, _checked_id(playlist_id, "playlist"),
                                 _checked_id(item_id, "item"), actor, self._now())


_OVERRIDABLE = ("title", "artist", "album", "track", "year", "genre")


def _record_id(key: IdempotencyKey | None) -> str:
    """The id of a record a write creates: derived from its key, so every leader that applies
    the write creates the same record; a fresh one without a key."""
    return key.record_id() if key is not None else new_id()


def _given_id(values: Mapping[str, Any], key: IdempotencyKey | None) -> Any:
    """The client-chosen ``id`` of a record to create, as given (checked by the caller): a
    given one is used even if falsy ("", null, 0 are refused, not taken for none); else
    ``_record_id``."""
    return values["id"] if "id" in values else _record_id(key)


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


def _public(value: Any) -> int:
    if not isinstance(value, bool):
        raise BadRequest("public must be true or false")
    return int(value)


def _owned(owner: str | None, actor: Actor, what: str) -> None:
    """403 unless ``actor`` may change a record ``owner`` made."""
    if not actor.may_change(owner):
        raise Forbidden(f"{what} belongs to another user")


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an integer too large for a float
        return False


# Functions run on the database thread: each is one atomic decision plus its write, and
# answers the Outcome the client gets.


def _keyed(
    db: MetadataDB, key: IdempotencyKey | None,
    action: Callable[Concatenate[MetadataDB, P], Outcome], *args: P.args, **kwargs: P.kwargs
) -> Outcome:
    """``action`` in one transaction with its key: a stored outcome is answered instead (422
    if stored for another request); a new one gets the version the write made and is stored
    under the key. An error (4xx) is not stored: it changed nothing, so trying again is
    harmless.

    The key's row rides in the write's last op (MetadataDB.write_outcome): no version, oplog
    entry or push item of its own, which made a keyed write cost two replicated ops. A write
    that made no op (a duplicate upload) stores it as an op of its own."""
    with db.atomic():
        if key is not None:
            stored = db.stored_outcome(key)
            if stored is not None:
                return stored
        before = db.written()
        outcome = action(db, *args, **kwargs)
        made = db.written()
        # A write that changed nothing answers the newest version it saw, which may be an
        # earlier write of its own commit group (one that made the record it answers).
        outcome = attrs.evolve(outcome, version=made if made != before else db.newest())
        if key is not None and made != before:
            db.write_outcome(key.id, outcome.fields(key))
        elif key is not None:
            db.write([Change(KEYS_ENTITY, key.id, outcome.fields(key))])
    return outcome


def _create_unless_duplicate(db: MetadataDB, sha256: str, changes: list[Change]) -> Outcome:
    existing = db.song_by_sha256(sha256)
    if existing is not None:
        return Outcome(200, {"song": existing})
    db.write(changes)
    song = db.song(changes[-1].key)
    assert song is not None
    return Outcome(201, {"song": song})


def _delete_song(db: MetadataDB, song_id: str, actor: Actor) -> Outcome:
    song = db.song(song_id)
    if song is None:
        raise NotFound(f"no song {song_id}")
    _owned(song["uploaded_by"], actor, f"song {song_id}")
    chunks = [chunk["idx"] for chunk in db.chunks_of(song_id)]
    changes = [Change("chunks", f"{song_id}/{idx}", {"deleted": 1}) for idx in chunks]
    changes += [Change("playlist_items", item, {"deleted": 1})
                for item in db.item_ids_of_song(song_id)]
    changes.append(Change("songs", song_id, {"deleted": 1}))
    db.write(changes)
    return Outcome(204)


def _edit_if_live(db: MetadataDB, entity: str, key: str, fields: dict[str, Any],
                  actor: Actor) -> Outcome:
    """Edit a song or playlist that is live now (else 404) and ``actor``'s to edit (else
    403); 200 with it as edited. No fields (a song's ``PATCH {}``) change no row: the answer
    is the record as it is, and the write makes no op (with a key, only the key row's, as a
    duplicate upload's)."""
    name = "song" if entity == "songs" else "playlist"
    read = db.song if entity == "songs" else db.playlist
    record = read(key)
    if record is None:
        raise NotFound(f"no {name} {key}")
    _owned(record["uploaded_by" if entity == "songs" else "owner"], actor, f"{name} {key}")
    if not fields:
        return Outcome(200, {name: record})
    db.write([Change(entity, key, fields)])
    return Outcome(200, {name: read(key)})


def _delete_playlist(db: MetadataDB, playlist_id: str, actor: Actor) -> Outcome:
    """Delete a playlist and every item it has now (an item added a moment ago too)."""
    playlist = db.playlist(playlist_id)
    if playlist is None:
        raise NotFound(f"no playlist {playlist_id}")
    _owned(playlist["owner"], actor, f"playlist {playlist_id}")
    changes = [Change("playlist_items", item["id"], {"deleted": 1})
               for item in playlist["items"]]
    changes.append(Change("playlists", playlist_id, {"deleted": 1}))
    db.write(changes)
    return Outcome(204)


def _create_playlist(db: MetadataDB, playlist_id: str, fields: dict[str, Any],
                     actor: Actor) -> Outcome:
    """201 and the new playlist; 200 and the playlist if ``actor``'s create of this id was
    applied before; 409, with nothing of it, if the id is another user's playlist."""
    created = _create_once(db, "playlists", playlist_id, fields)
    playlist = db.playlist(playlist_id)
    assert playlist is not None, "live: just made, or _create_once found it live"
    if not created and not actor.may_change(playlist["owner"]):
        raise Conflict(f"playlist id {playlist_id} is taken; create it with a new id")
    return Outcome(201 if created else 200, {"playlist": playlist})


def _add_item(db: MetadataDB, item_id: str, fields: dict[str, Any], actor: Actor) -> Outcome:
    """Add an item if its playlist and song are both live now, at the end unless placed."""
    playlist = db.playlist(fields["playlist_id"])
    if playlist is None:
        raise NotFound(f"no playlist {fields['playlist_id']}")
    _owned(playlist["owner"], actor, f"playlist {fields['playlist_id']}")
    if db.song(fields["song_id"]) is None:
        raise NotFound(f"no song {fields['song_id']}")
    if fields["position"] is None:
        fields = {**fields, "position": db.last_position(fields["playlist_id"]) + 1.0}
    created = _create_once(db, "playlist_items", item_id, fields)
    if created:
        db.write([Change("playlists", fields["playlist_id"], {"changed_at": fields["created_at"]})])
    item = db.item(item_id)
    if item is None or item["playlist_id"] != fields["playlist_id"]:
        raise Conflict(f"item {item_id} belongs to another playlist")
    if item["song_id"] != fields["song_id"]:  # the id names another song's item: not a retry
        raise Conflict(f"item {item_id} is of another song")
    return Outcome(201 if created else 200, {"item": item})


def _remove_item(db: MetadataDB, playlist_id: str, item_id: str, actor: Actor, at: str
                 ) -> Outcome:
    playlist = db.playlist(playlist_id)
    if playlist is not None:
        _owned(playlist["owner"], actor, f"playlist {playlist_id}")
    item = db.item(item_id)
    if item is None or item["playlist_id"] != playlist_id:
        raise NotFound(f"no item {item_id} in playlist {playlist_id}")
    changes = [Change("playlist_items", item_id, {"deleted": 1})]
    if playlist is not None:
        changes.append(Change("playlists", playlist_id, {"changed_at": at}))
    db.write(changes)
    return Outcome(204)


def _create_once(db: MetadataDB, entity: str, key: str, fields: dict[str, Any]) -> bool:
    row = db.get_row(entity, key)
    if row is not None:
        if row.fields.get("deleted"):
            raise Conflict(f"{key} was deleted; create it with a new id")
        return False
    db.write([Change(entity, key, fields)])
    return True


def _closing(result: T, content: BinaryIO) -> T:
    """``result``, once ``content`` is closed (a raw upload's spool removes the pieces it did not
    hand over as chunks). A buffered file's last flush may fail (a full disk): the upload's
    outcome stands, and the file is closed all the same."""
    with contextlib.suppress(OSError):
        content.close()
    return result
