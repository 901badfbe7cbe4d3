"""The Subsonic playlist methods (getPlaylists, getPlaylist, createPlaylist, updatePlaylist,
deletePlaylist) on the library's own playlists and their item records: the same owner and
``public`` rules as the JSON API (a listener reads their own and public ones and changes their
own; an admin, all), the same write path (userstate.py's playlist edits, library.py's
delete), so a playlist is one thing whichever API made it.
"""
# test-case-name: tests.unit.test_subsonic_user

from __future__ import annotations

from typing import Any

from distpotify.auth.access import Actor
from distpotify.auth.users import ADMIN, name_key
from distpotify.subsonic import elements
from distpotify.subsonic.annotations import annotate, userstate, write_key, written
from distpotify.subsonic.call import (
    GENERIC,
    MISSING_PARAMETER,
    NOT_AUTHORIZED,
    NOT_FOUND,
    Call,
    SubsonicError,
    method,
)
from distpotify.userstate import shown_items


def _actor(call: Call) -> Actor:
    return Actor.of(call.user)


def _owner_name(call: Call, owner: str | None) -> str:
    """The owner's username; records from before accounts belong to the admins."""
    account = None if owner is None else call.server.accounts.directory.by_id(owner)
    return account.username if account is not None else ADMIN


def _playlist(call: Call, playlist: dict[str, Any], summary: dict[str, Any] | None
              ) -> dict[str, Any]:
    """A playlist as the spec's ``Playlist``."""
    summary = summary or {"comment": None, "song_count": 0, "duration": 0.0,
                          "changed": playlist["created_at"]}
    return {
        "id": playlist["id"], "name": playlist["name"], "comment": summary["comment"] or None,
        "owner": _owner_name(call, playlist["owner"]), "public": bool(playlist["public"]),
        "songCount": summary["song_count"], "duration": round(summary["duration"]),
        "created": playlist["created_at"], "changed": summary["changed"] or None,
    }


@method("getPlaylists")
async def get_playlists(call: Call) -> dict[str, Any]:
    """The caller's playlists and the public ones; an admin may ask another user's view."""
    actor = _actor(call)
    username = call.params.get("username")
    if username and name_key(username) != name_key(call.user.username):  # as logins compare
        if call.user.role != ADMIN:
            raise SubsonicError(NOT_AUTHORIZED, "Only an admin may list another user's"
                                " playlists")
        other = call.server.accounts.directory.by_name(username)
        if other is None:
            raise SubsonicError(NOT_FOUND, f"No user {username[:64]!r}")
        actor = Actor(other.id, admin=False)
    found = await call.server.library.playlists(actor)
    summaries = await userstate(call).playlist_summaries()
    return {"playlists": {"playlist": [_playlist(call, p, summaries.get(p["id"]))
                                       for p in found]}}


async def _with_songs(call: Call, playlist_id: str) -> dict[str, Any]:
    """``PlaylistWithSongs``: the playlist and its live songs as entries, in order."""
    playlist = await call.server.library.playlist(playlist_id, _actor(call))
    items = await call.server.store.run(shown_items, playlist)
    found = await userstate(call).songs([item["song_id"] for item in items])
    entries = [elements.song(found[item["song_id"]]) for item in items
               if item["song_id"] in found]
    await annotate(call, "song", entries)
    summaries = await userstate(call).playlist_summaries()
    return {**_playlist(call, playlist, summaries.get(playlist_id)), "entry": entries}


@method("getPlaylist")
async def get_playlist(call: Call) -> dict[str, Any]:
    return {"playlist": await _with_songs(call, call.params.required("id"))}


@method("createPlaylist", writes=True)
async def create_playlist(call: Call) -> dict[str, Any]:
    """A new playlist (``name``) of the ``songId`` songs, or, with ``playlistId``, an
    existing one's songs replaced (and renamed if ``name`` is given); answers the playlist
    (API 1.14)."""
    params = call.params
    playlist_id, name = params.get("playlistId"), params.get("name")
    song_ids = [i for i in params.all("songId") if i]
    key = await write_key(call)
    if playlist_id:
        fields = {"name": name} if name else {}
        outcome = await userstate(call).edit_playlist(_actor(call), playlist_id,
                                                      fields=fields, add=song_ids,
                                                      replace=True, key=key)
    elif name:
        outcome = await userstate(call).create_playlist(_actor(call), name, song_ids, key)
    else:
        raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: name or"
                            " playlistId")
    written(call, outcome)
    assert outcome.body is not None
    return {"playlist": await _with_songs(call, outcome.body["playlist"]["id"])}


@method("updatePlaylist", writes=True)
async def update_playlist(call: Call) -> dict[str, Any]:
    """Rename (``name``), describe (``comment``), share (``public``), add ``songIdToAdd``
    at the end and remove the songs at ``songIndexToRemove`` (indexes of getPlaylist's
    entries), all in one write."""
    params = call.params
    playlist_id = params.required("playlistId")
    fields: dict[str, Any] = {}
    if params.get("name"):
        fields["name"] = params.get("name")
    if "comment" in params:
        fields["comment"] = params.get("comment") or ""
    if params.get("public"):
        fields["public"] = params.boolean("public", False)
    remove = []
    for text in params.all("songIndexToRemove"):
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise SubsonicError(GENERIC, "Parameter songIndexToRemove must be an index (0, 1, ...)")
        remove.append(int(text))
    add = [i for i in params.all("songIdToAdd") if i]
    outcome = await userstate(call).edit_playlist(_actor(call), playlist_id, fields=fields,
                                                  add=add, remove=remove,
                                                  key=await write_key(call))
    return written(call, outcome)


@method("deletePlaylist", writes=True)
async def delete_playlist(call: Call) -> dict[str, Any]:
    playlist_id = call.params.required("id")
    outcome = await call.server.library.delete_playlist(playlist_id, await write_key(call),
                                                        _actor(call))
    return written(call, outcome)
