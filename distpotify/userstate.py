"""Per-user state (issue 18): stars, ratings, plays, now playing, the saved play queue and
bookmarks, as replicated records written through the library's write path (the leader,
idempotency keys, semi-sync ack).

Merging in a partition (docs/architecture.md, "Per-user state and Subsonic credentials"): a
star's and a rating's id derive from user, kind and item, so the same star made on both sides
is one record, and its fields merge by version like any record's; a play is a record of its
own that nothing changes, so plays made on both sides all stay, and a play count is a count;
a play queue is one record per user that every save writes whole, so the newer save wins; a
bookmark's id derives from user and song, like a star's.
"""
# test-case-name: tests.unit.test_userstate

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Container, Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from distpotify.auth.access import Actor
from distpotify.errors import BadRequest, Forbidden, NotFound
from distpotify.idempotency import IdempotencyKey, Outcome
from distpotify.library import MAX_NAME, Library
from distpotify.model import new_id, valid_uuid
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from distpotify.store.userstate import (
    KINDS,
    bookmark_id,
    item_record_id,
    keyed_play_id,
    now_playing_id,
    play_queue_id,
    play_record_id,
)

# How long a client's song stays in getNowPlaying after its last report, unless reported again.
NOW_PLAYING_WINDOW = 10 * 60.0
MAX_RATING = 5
MAX_ITEMS = 500  # ids in one star, unstar or scrobble call
MAX_CLIENT = 200  # characters of a client's name kept (now playing, a play queue's saver)
MAX_COMMENT = 1000  # characters of a playlist's or a bookmark's comment
# Songs in a saved play queue: more is refused (never cut short), as a queue saved in part
# would resume elsewhere as something the user did not leave. Its ids are up to 390 KB of
# JSON, written whole by every save and carried in one op.
MAX_QUEUE = 10_000
# A position within a song, in milliseconds: at most the largest integer every JSON reader
# keeps exactly.
MAX_POSITION_MS = 2**53 - 1
# The items a Subsonic playlist write makes take ids derived from the write's own (its key's
# record id): a leader that applies a keyed write again makes the same items.
_ITEMS = uuid.UUID("8c4f2a61-0d3b-4e7a-b5c9-3e1f6a2d8b47")
# A scrobble's time, if given, between 2000 and a day ahead of the leader's clock.
_EARLIEST_PLAY = 946684800.0
_LATEST_AHEAD = 86400.0


def iso(seconds: float) -> str:
    """Fixed-width UTC text (text order is time order), as every record's times."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds_of(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@attrs.frozen
class PlayQueue:
    """A saved play queue as it is shown: its live songs in order (the catalog's rows), the
    index of the current one among them (None: none is), the position in it, and when and by
    which client it was saved."""

    songs: list[dict[str, Any]]
    current: int | None
    position_ms: int
    changed_at: str
    changed_by: str


def shown_queue(entries: Sequence[str], current: int | None, live: Container[str]
                ) -> tuple[list[str], int | None, bool]:
    """A queue's ``entries`` without the songs deleted since (those not ``live``), the index of
    the ``current`` entry among those kept, and whether that entry itself is gone: the index
    is then the next entry kept after it, or the last one kept when none follows (its
    position, within a song that is gone, no longer applies); None only when none is kept
    (a queue with songs always has a current one, as the OpenSubsonic errata ask)."""
    kept: list[str] = []
    index: int | None = None
    for n, song_id in enumerate(entries):
        if song_id not in live:
            continue
        if current is not None and index is None and n >= current:
            index = len(kept)
        kept.append(song_id)
    if current is not None and index is None and kept:
        index = len(kept) - 1
    gone = current is not None and (current >= len(entries) or entries[current] not in live)
    return kept, index, gone


@attrs.frozen
class Bookmark:
    """A bookmark as it is shown: its song (the catalog's row), the position kept in it, the
    user's comment (None: none), when it was made and when last changed."""

    song: dict[str, Any]
    position_ms: int
    comment: str | None
    created_at: str
    changed_at: str


class UserState:
    """Reads on any replica; writes on the leader, through ``library.write`` (421 elsewhere).

    Item ids are checked in the write's own transaction: a star or rating names a live song
    or an album or artist of the catalog (NotFound otherwise, and nothing is written).
    """

    def __init__(self, store: MetadataStore, library: Library, clock: IReactorTime,
                 now_playing_window: float = NOW_PLAYING_WINDOW) -> None:
        self._store = store
        self._library = library
        self._clock = clock
        self.now_playing_window = now_playing_window

    # writes

    async def star(self, user_id: str, items: Sequence[tuple[str | None, str]],
                   key: IdempotencyKey | None = None) -> Outcome:
        """Star each item, (kind, id) with kind None for an id of any kind; 200 ``{}``."""
        return await self._library.write(key, _star, user_id, _checked(items),
                                         iso(self._clock.seconds()), True)

    async def unstar(self, user_id: str, items: Sequence[tuple[str | None, str]],
                     key: IdempotencyKey | None = None) -> Outcome:
        """Unstar each item (a tombstone); an item starred before and gone since may be
        unstarred too."""
        return await self._library.write(key, _star, user_id, _checked(items),
                                         iso(self._clock.seconds()), False)

    async def set_rating(self, user_id: str, item_id: str, rating: int,
                         key: IdempotencyKey | None = None) -> Outcome:
        """Rate an item 1-5; 0 removes its rating."""
        if not 0 <= rating <= MAX_RATING:
            raise BadRequest(f"a rating is 0 to {MAX_RATING}")
        _checked([(None, item_id)])
        return await self._library.write(key, _rate, user_id, item_id, rating,
                                         iso(self._clock.seconds()))

    async def scrobble(self, user_id: str, song_ids: Sequence[str],
                       times: Sequence[float | None], submission: bool, client: str,
                       key: IdempotencyKey | None = None) -> Outcome:
        """``submission``: one play of each song (at its time, in seconds, or now); else the
        last song is what ``client`` plays now."""
        now = self._clock.seconds()
        _checked([("song", song_id) for song_id in song_ids])
        if not song_ids:
            raise BadRequest("id is required")
        if len(times) not in (0, len(song_ids)):
            raise BadRequest("give a time for every id, or none")
        moments, ids = [], []
        for index, (song_id, given) in enumerate(
                zip(song_ids, times or [None] * len(song_ids), strict=True)):
            if given is not None and not _EARLIEST_PLAY <= given <= now + _LATEST_AHEAD:
                raise BadRequest("time is not a plausible moment (milliseconds since 1970)")
            moments.append(iso(now if given is None else given))
            ids.append(keyed_play_id(key.record_id(), index) if given is None and key is not None
                       else play_record_id(user_id, song_id, moments[-1]))
        if submission:
            return await self._library.write(key, _play, user_id, list(song_ids), moments, ids)
        return await self._library.write(key, _playing, user_id, song_ids[-1],
                                         client[:MAX_CLIENT], iso(now))

    # Subsonic's playlist edits: the library's playlists and items, several changes in one
    # write (a playlist and its songs; songs added and removed), owner's or admin's only

    async def create_playlist(self, actor: Actor, name: str, song_ids: Sequence[str],
                              key: IdempotencyKey | None = None) -> Outcome:
        """201 ``{"playlist": {"id"}}``: a new playlist of ``actor`` holding the songs."""
        fields = {"name": _playlist_name(name), "owner": actor.user_id,
                  "created_at": iso(self._clock.seconds()), "deleted": 0, "public": 0}
        base = key.record_id() if key is not None else new_id()
        return await self._library.write(key, _create_playlist, base, fields,
                                         _song_ids(song_ids), iso(self._clock.seconds()))

    async def edit_playlist(self, actor: Actor, playlist_id: str, *, fields: dict[str, Any],
                            add: Sequence[str] = (), remove: Sequence[int] = (),
                            replace: bool = False, key: IdempotencyKey | None = None
                            ) -> Outcome:
        """200 ``{"playlist": {"id"}}``: set ``fields`` (name, comment, public), remove the
        songs at the indexes ``remove`` (of the songs it shows), add ``add`` at the end;
        ``replace``: remove every song first."""
        checked: dict[str, Any] = {}
        if "name" in fields:
            checked["name"] = _playlist_name(fields["name"])
        if "comment" in fields:
            checked["comment"] = _comment(fields["comment"])
        if "public" in fields:
            checked["public"] = int(bool(fields["public"]))
        if not valid_uuid(playlist_id):
            raise NotFound(f"no playlist {playlist_id}")
        base = key.record_id() if key is not None else new_id()
        return await self._library.write(key, _edit_playlist, playlist_id, actor, checked,
                                         _song_ids(add), sorted(set(remove)), replace, base,
                                         iso(self._clock.seconds()))

    # the play queue: where the user left off, to resume on another device

    async def save_play_queue(self, user_id: str, song_ids: Sequence[str], current: int | None,
                              position_ms: int, client: str,
                              key: IdempotencyKey | None = None) -> Outcome:
        """Replace ``user_id``'s play queue: the songs in order (one may come twice),
        ``current`` the index of the one playing (None exactly when there are none: a save of
        no songs clears the queue), ``position_ms`` within it, ``client`` the app that saved
        it. Every field is written in one op, so merged with a save made elsewhere the newer
        save wins whole. 200 ``{}``; NotFound for a song that is not live, BadRequest for
        anything else out of bounds, and nothing is written."""
        ids = _song_ids(song_ids, MAX_QUEUE)
        if (current is None) != (not ids) or (current is not None
                                               and not 0 <= current < len(ids)):
            raise BadRequest(f"current must be an index of the {len(ids)} songs, and is given"
                             " only with songs")
        _position(position_ms)
        return await self._library.write(key, _save_queue, user_id, ids, current, position_ms,
                                         client[:MAX_CLIENT], iso(self._clock.seconds()))

    async def play_queue(self, user_id: str) -> PlayQueue | None:
        """``user_id``'s saved play queue as ``shown_queue`` shows it, with its songs; None if
        they never saved one."""
        return await self._store.run(_shown_queue, user_id)

    # bookmarks: a position kept in a song (an audiobook, a long mix), one per user and song

    async def create_bookmark(self, user_id: str, song_id: str, position_ms: int,
                              comment: str | None, key: IdempotencyKey | None = None
                              ) -> Outcome:
        """Keep ``position_ms`` in ``song_id`` for ``user_id``, with ``comment`` (None: none),
        in place of the bookmark they had in it (whose creation time stays). 200 ``{}``;
        NotFound for a song that is not live, BadRequest for a position or comment out of
        bounds, and nothing is written."""
        _song_ids([song_id])
        _position(position_ms)
        return await self._library.write(key, _bookmark, user_id, song_id, position_ms,
                                         None if comment is None else _comment(comment),
                                         iso(self._clock.seconds()))

    async def delete_bookmark(self, user_id: str, song_id: str,
                              key: IdempotencyKey | None = None) -> Outcome:
        """Delete ``user_id``'s bookmark in ``song_id`` (a tombstone), one in a song deleted
        since too; with none there nothing is written. 200 ``{}``; NotFound when the id is
        neither a bookmark of theirs nor a live song."""
        _song_ids([song_id])
        return await self._library.write(key, _unbookmark, user_id, song_id)

    async def bookmarks(self, user_id: str) -> list[Bookmark]:
        """``user_id``'s bookmarks in live songs, the latest changed first."""
        return await self._store.run(_shown_bookmarks, user_id)

    async def playlist_summaries(self) -> dict[str, dict[str, Any]]:
        return await self._store.run(MetadataDB.playlist_summaries)

    async def songs(self, song_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The live songs among ``song_ids``, by id (the catalog's columns)."""
        return await self._store.run(MetadataDB.catalog_songs, list(dict.fromkeys(song_ids)))

    # reads

    async def annotations(self, user_id: str, kind: str, item_ids: Sequence[str]
                          ) -> dict[str, dict[str, Any]]:
        """store/userstate.py's ``annotations``, off the reactor thread."""
        if kind not in KINDS:
            raise ValueError(f"no kind {kind!r}")
        return await self._store.run(MetadataDB.annotations, user_id, kind, list(item_ids))

    async def starred(self, user_id: str, kind: str) -> list[tuple[str, str]]:
        return await self._store.run(MetadataDB.starred, user_id, kind)

    async def highest_rated(self, user_id: str, kind: str) -> list[tuple[str, int]]:
        return await self._store.run(MetadataDB.highest_rated, user_id, kind)

    async def album_plays(self, user_id: str) -> dict[str, tuple[int, str]]:
        """(play count, last played) by album, of the albums with a live song."""
        return await self._store.run(MetadataDB.album_plays, user_id)

    async def live_albums(self) -> set[str]:
        """Every album id of the catalog now."""
        albums, _ = await self._store.run(MetadataDB.catalog_ids)
        return albums

    async def live_artists(self) -> set[str]:
        _, artists = await self._store.run(MetadataDB.catalog_ids)
        return artists

    async def now_playing(self) -> list[dict[str, Any]]:
        """Each client's song reported within the window, newest first, with
        ``minutes_ago``."""
        now = self._clock.seconds()
        found = await self._store.run(MetadataDB.now_playing,
                                      iso(now - self.now_playing_window))
        for entry in found:
            entry["minutes_ago"] = max(0, int((now - seconds_of(entry["at"])) // 60))
        return found


def _checked(items: Sequence[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    """The items as given, once each; NotFound for an id no record could have."""
    if len(items) > MAX_ITEMS:
        raise BadRequest(f"at most {MAX_ITEMS} ids at once")
    for kind, item_id in items:
        if kind is not None and kind not in KINDS:
            raise BadRequest(f"no kind {kind!r}")
        if not isinstance(item_id, str) or not valid_uuid(item_id):
            raise NotFound(f"no item {item_id}")
    return list(dict.fromkeys(items))


# On the database thread: each decides and writes in one transaction.


def _resolve(db: MetadataDB, items: Sequence[tuple[str | None, str]],
             starred: set[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """(kind, id) of each item, its kind found when not given (a song first, then an album,
    then an artist); NotFound for one that names nothing (``starred``: what the user has
    starred counts as named, so a star of an item since gone can be taken back)."""
    songs = db.live_song_ids([item for _, item in items])
    catalog: tuple[set[str], set[str]] | None = None
    resolved = []
    for kind, item in items:
        if starred is not None:
            held = [k for k in KINDS if (k, item) in starred and kind in (None, k)]
            if held:
                resolved.append((held[0], item))
                continue
        if kind in (None, "song") and item in songs:
            resolved.append(("song", item))
            continue
        if kind != "song":
            if catalog is None:
                catalog = db.catalog_ids()
            albums, artists = catalog
            if kind in (None, "album") and item in albums:
                resolved.append(("album", item))
                continue
            if kind in (None, "artist") and item in artists:
                resolved.append(("artist", item))
                continue
        raise NotFound(f"no {kind or 'item'} {item}")
    return resolved


def _star(db: MetadataDB, user_id: str, items: list[tuple[str | None, str]], at: str,
          star: bool) -> Outcome:
    held = None
    if not star:
        held = {(kind, item) for kind in KINDS for item, _ in db.starred(user_id, kind)}
    changes = []
    for kind, item in _resolve(db, items, held):
        record = item_record_id("stars", user_id, kind, item)
        if star:
            changes.append(Change("stars", record, {"user_id": user_id, "kind": kind,
                                                    "item_id": item, "starred_at": at,
                                                    "deleted": 0}))
        elif db.get_row("stars", record) is not None:
            changes.append(Change("stars", record, {"deleted": 1}))
    if changes:
        db.write(changes)
    return Outcome(200, {})


def _rate(db: MetadataDB, user_id: str, item_id: str, rating: int, at: str) -> Outcome:
    ((kind, item),) = _resolve(db, [(None, item_id)])
    record = item_record_id("ratings", user_id, kind, item)
    if rating:
        db.write([Change("ratings", record, {"user_id": user_id, "kind": kind,
                                             "item_id": item, "rating": rating,
                                             "rated_at": at, "deleted": 0})])
    elif db.get_row("ratings", record) is not None:
        db.write([Change("ratings", record, {"rating": 0, "rated_at": at, "deleted": 1})])
    return Outcome(200, {})


def _play(db: MetadataDB, user_id: str, song_ids: list[str], moments: list[str],
          ids: list[str] | None = None) -> Outcome:
    """One play of each song at its moment; ``ids``: the plays' (UserState.scrobble's),
    else each from its user, song and moment."""
    _resolve(db, [("song", song_id) for song_id in song_ids])
    ids = ids or [play_record_id(user_id, song_id, at)
                  for song_id, at in zip(song_ids, moments, strict=True)]
    changes = [Change("plays", record, {"user_id": user_id, "song_id": song_id, "played_at": at})
               for record, song_id, at in zip(ids, song_ids, moments, strict=True)]
    db.write(changes)
    return Outcome(200, {})


def _playing(db: MetadataDB, user_id: str, song_id: str, client: str, at: str) -> Outcome:
    _resolve(db, [("song", song_id)])
    db.write([Change("now_playing", now_playing_id(user_id, client),
                     {"user_id": user_id, "client": client, "song_id": song_id, "at": at})])
    return Outcome(200, {})


def _save_queue(db: MetadataDB, user_id: str, song_ids: list[str], current: int | None,
                position_ms: int, client: str, at: str) -> Outcome:
    _require_live(db, song_ids)
    db.write([Change("play_queues", play_queue_id(user_id), {
        "user_id": user_id, "entries": json.dumps(song_ids, separators=(",", ":")),
        "current": current, "position_ms": position_ms, "changed_at": at,
        "changed_by": client})])
    return Outcome(200, {})


def _shown_queue(db: MetadataDB, user_id: str) -> PlayQueue | None:
    """The queue and its songs in one read: what a song's deletion leaves of it."""
    saved = db.play_queue(user_id)
    if saved is None:
        return None
    songs = db.catalog_songs(list(dict.fromkeys(saved["entries"])))
    kept, current, gone = shown_queue(saved["entries"], saved["current"], songs)
    return PlayQueue([songs[song_id] for song_id in kept], current,
                     0 if gone else saved["position_ms"], saved["changed_at"],
                     saved["changed_by"])


def _bookmark(db: MetadataDB, user_id: str, song_id: str, position_ms: int,
              comment: str | None, at: str) -> Outcome:
    _require_live(db, [song_id])
    record = bookmark_id(user_id, song_id)
    held = db.get_row("song_bookmarks", record)
    made = None  # the time it was made: a live bookmark's stays
    if held is not None and not held.fields.get("deleted"):
        made = held.fields.get("created_at")
    db.write([Change("song_bookmarks", record, {
        "user_id": user_id, "song_id": song_id, "position_ms": position_ms, "comment": comment,
        "created_at": made or at, "changed_at": at, "deleted": 0})])
    return Outcome(200, {})


def _unbookmark(db: MetadataDB, user_id: str, song_id: str) -> Outcome:
    record = bookmark_id(user_id, song_id)
    held = db.get_row("song_bookmarks", record)
    if held is not None and not held.fields.get("deleted"):
        db.write([Change("song_bookmarks", record, {"deleted": 1})])
    else:
        _require_live(db, [song_id])
    return Outcome(200, {})


def _shown_bookmarks(db: MetadataDB, user_id: str) -> list[Bookmark]:
    """The bookmarks and their songs in one read: those of songs deleted since are left out."""
    found = db.bookmarks(user_id)
    songs = db.catalog_songs([mark["song_id"] for mark in found])
    return [Bookmark(songs[mark["song_id"]], int(mark["position_ms"] or 0),
                     mark["comment"] or None, str(mark["created_at"] or ""),
                     str(mark["changed_at"] or ""))
            for mark in found if mark["song_id"] in songs]


def _position(position_ms: int) -> None:
    if not 0 <= position_ms <= MAX_POSITION_MS:
        raise BadRequest(f"a position is 0 to {MAX_POSITION_MS} milliseconds")


def _comment(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_COMMENT:
        raise BadRequest(f"a comment has at most {MAX_COMMENT} characters")
    return value


def _playlist_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise BadRequest(f"a playlist's name has 1 to {MAX_NAME} characters")
    return value.strip()


def _song_ids(song_ids: Sequence[str], most: int = MAX_ITEMS) -> list[str]:
    if len(song_ids) > most:
        raise BadRequest(f"at most {most} songs at once")
    for song_id in song_ids:
        if not valid_uuid(song_id):
            raise NotFound(f"no song {song_id}")
    return list(song_ids)


def _require_live(db: MetadataDB, song_ids: list[str]) -> None:
    """NotFound for the first of ``song_ids`` (by id) that is not a live song."""
    missing = set(song_ids) - db.live_song_ids(song_ids)
    if missing:
        raise NotFound(f"no song {sorted(missing)[0]}")


def _item_changes(db: MetadataDB, playlist_id: str, song_ids: list[str], base: str, at: str
                  ) -> list[Change]:
    """Items of ``song_ids`` at the end of the playlist (NotFound for a song not live)."""
    _require_live(db, song_ids)
    last = db.last_position(playlist_id)
    return [Change("playlist_items", str(uuid.uuid5(_ITEMS, f"{base}\n{n}")),
                   {"playlist_id": playlist_id, "song_id": song_id,
                    "position": last + 1.0 + n, "created_at": at, "deleted": 0})
            for n, song_id in enumerate(song_ids)]


def _create_playlist(db: MetadataDB, playlist_id: str, fields: dict[str, Any],
                     song_ids: list[str], at: str) -> Outcome:
    if db.get_row("playlists", playlist_id) is not None:
        raise BadRequest(f"playlist id {playlist_id} is taken")
    items = _item_changes(db, playlist_id, song_ids, playlist_id, at)
    db.write([Change("playlists", playlist_id, fields), *items])
    return Outcome(201, {"playlist": {"id": playlist_id}})


def shown_items(db: MetadataDB, playlist: dict[str, Any]) -> list[dict[str, Any]]:
    """A playlist's items whose song is live: what getPlaylist shows, in order, and what a
    song index of updatePlaylist counts."""
    live = db.live_song_ids([item["song_id"] for item in playlist["items"]])
    return [item for item in playlist["items"] if item["song_id"] in live]


def _edit_playlist(db: MetadataDB, playlist_id: str, actor: Actor, fields: dict[str, Any],
                   add: list[str], remove: list[int], replace: bool, base: str, at: str
                   ) -> Outcome:
    playlist = db.playlist(playlist_id)
    if playlist is None:
        raise NotFound(f"no playlist {playlist_id}")
    if not actor.may_change(playlist["owner"]):
        raise Forbidden(f"playlist {playlist_id} belongs to another user")
    items = playlist["items"] if replace else shown_items(db, playlist)
    if any(not 0 <= index < len(items) for index in remove):
        raise BadRequest(f"the playlist shows {len(items)} songs: no such index")
    gone = items if replace else [items[index] for index in remove]
    changes = [Change("playlist_items", item["id"], {"deleted": 1}) for item in gone]
    if fields or gone or add:
        changes.append(Change("playlists", playlist_id, {**fields, "changed_at": at}))
    if changes:
        db.write(changes)  # before the new items: their positions follow what is left
    added = _item_changes(db, playlist_id, add, base, at)
    if added:
        db.write(added)
    return Outcome(200, {"playlist": {"id": playlist_id}})
