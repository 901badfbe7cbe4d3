"""Where a listener left off, kept for their other devices: the play queue (savePlayQueue and
getPlayQueue, and OpenSubsonic's indexBasedQueue: savePlayQueueByIndex, getPlayQueueByIndex),
a replicated record per user, and bookmarks (createBookmark, deleteBookmark, getBookmarks), a
record per user and song (userstate.py), which any replica reads.
"""
# test-case-name: tests.unit.test_subsonic_user

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distpotify.subsonic import elements as shapes
from distpotify.subsonic.annotations import annotate, userstate, write_key, written
from distpotify.subsonic.call import MISSING_PARAMETER, Call, SubsonicError, method
from distpotify.userstate import MAX_POSITION_MS, iso

# The changed time of a queue never saved: before any save, so a client that keeps the newer
# of its own queue and the server's keeps its own.
NEVER = iso(0)


async def _save(call: Call, current_by: str, index_of: Callable[[list[str], str], int | None],
                *, first_unless_given: bool = False) -> dict[str, Any]:
    """Save the caller's queue: the songs ``id`` (repeated, in order; none clears the queue,
    and ``current_by`` is not read then), the one playing named by the parameter ``current_by``,
    which ``index_of`` finds among them (error 10, the spec's code, when it names none, or is
    missing unless ``first_unless_given``: then the first song is current), ``position`` in
    ms (none is 0), ``c`` the client."""
    sent = call.params.all("id")
    song_ids = [song_id for song_id in sent if song_id]
    if song_ids and len(song_ids) < len(sent):  # "id=" alone clears, as no id does
        # Dropped, it would move every currentIndex after it onto another song.
        raise SubsonicError(MISSING_PARAMETER, "Parameter id is empty in one of its places")
    current = None
    if song_ids:
        given = call.params.get(current_by)
        if not given and first_unless_given:
            given = song_ids[0]
        if not given:
            raise SubsonicError(MISSING_PARAMETER, f"Required parameter is missing: {current_by}")
        current = index_of(song_ids, given)
        if current is None:
            raise SubsonicError(MISSING_PARAMETER, f"Parameter {current_by} must name one of"
                                f" the {len(song_ids)} songs")
    outcome = await userstate(call).save_play_queue(
        call.user.id, song_ids, current, _position(call, 0), call.params.get("c") or "unknown",
        await write_key(call))
    return written(call, outcome)


def _position(call: Call, default: int | None) -> int:
    """``position`` in ms: ``default`` when absent (None: required, error 10), error 0 when it
    is not an integer from 0, as other malformed integers."""
    if default is None:
        call.params.required("position")
    position = call.params.integer("position", default, 0, MAX_POSITION_MS)
    assert position is not None  # given, or its default
    return position


def _first_place(song_ids: list[str], song_id: str) -> int | None:
    return song_ids.index(song_id) if song_id in song_ids else None


def _index(song_ids: list[str], text: str) -> int | None:
    """``text`` as an index of ``song_ids`` (0-based), or None."""
    fits = text.isascii() and text.isdigit() and len(text) <= 9 and int(text) < len(song_ids)
    return int(text) if fits else None


@method("savePlayQueue", writes=True)
async def save_play_queue(call: Call) -> dict[str, Any]:
    """The one playing is ``current``, a song id (its first place, if it comes twice).
    Required with songs by the OpenSubsonic errata, but optional in Subsonic 1.12 to 1.16,
    and apps written against those (or against Navidrome, which takes the first song) send
    none: the first song is then current, as Navidrome does."""
    return await _save(call, "current", _first_place, first_unless_given=True)


@method("savePlayQueueByIndex", writes=True)
async def save_play_queue_by_index(call: Call) -> dict[str, Any]:
    """The one playing is ``currentIndex`` (0-based), which tells apart the places of a song
    that comes twice."""
    return await _save(call, "currentIndex", _index)


async def _queue(call: Call, by_index: bool) -> dict[str, Any]:
    """The caller's queue as ``PlayQueue`` (``current``, the id of the song playing) or
    ``PlayQueueByIndex`` (``currentIndex``). No queue, or one cleared or whose songs are all
    gone, is the element's required attributes alone: no ``entry``, nothing current."""
    found = await userstate(call).play_queue(call.user.id)
    queue: dict[str, Any] = {"username": call.user.username,
                             "changed": found.changed_at if found else NEVER,
                             "changedBy": found.changed_by if found else ""}
    if found is None or not found.songs:
        return queue
    entries = [shapes.song(song) for song in found.songs]
    await annotate(call, "song", entries)
    if found.current is not None:
        if by_index:
            queue["currentIndex"] = found.current
        else:
            queue["current"] = entries[found.current]["id"]
    return {**queue, "position": found.position_ms, "entry": entries}


@method("getPlayQueue")
async def get_play_queue(call: Call) -> dict[str, Any]:
    return {"playQueue": await _queue(call, by_index=False)}


@method("getPlayQueueByIndex")
async def get_play_queue_by_index(call: Call) -> dict[str, Any]:
    return {"playQueueByIndex": await _queue(call, by_index=True)}


# bookmarks


@method("createBookmark", writes=True)
async def create_bookmark(call: Call) -> dict[str, Any]:
    """Keep ``position`` (ms, required) in the song ``id``, with an optional ``comment``, in
    place of the caller's bookmark in it."""
    song_id = call.params.required("id")
    outcome = await userstate(call).create_bookmark(
        call.user.id, song_id, _position(call, None), call.params.get("comment") or None,
        await write_key(call))
    return written(call, outcome)


@method("deleteBookmark", writes=True)
async def delete_bookmark(call: Call) -> dict[str, Any]:
    outcome = await userstate(call).delete_bookmark(call.user.id, call.params.required("id"),
                                                    await write_key(call))
    return written(call, outcome)


@method("getBookmarks")
async def get_bookmarks(call: Call) -> dict[str, Any]:
    """The caller's own bookmarks (never another user's), each with its song as ``entry``,
    which also carries the position as ``bookmarkPosition``."""
    found = await userstate(call).bookmarks(call.user.id)
    entries = [{**shapes.song(mark.song), "bookmarkPosition": mark.position_ms}
               for mark in found]
    await annotate(call, "song", entries)
    return {"bookmarks": {"bookmark": [
        {"position": mark.position_ms, "username": call.user.username,
         "comment": mark.comment, "created": mark.created_at, "changed": mark.changed_at,
         "entry": entry}
        for mark, entry in zip(found, entries, strict=True)]}}
