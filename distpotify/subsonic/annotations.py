"""What one user has done to the songs, albums and artists a Subsonic answer shows (starred,
rated, played), filled in with one read per answer; the album lists built from it (starred,
frequent, recent, highest); the methods that make and show it (star, unstar, getStarred,
getStarred2, setRating, scrobble, getNowPlaying); and what the per-user write methods share
(their Idempotency-Key, the version their answer carries).

The per-user state itself is userstate.py's: ``call.server.state``.
"""
# test-case-name: tests.unit.test_subsonic_user

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from distpotify.idempotency import IdempotencyKey, Outcome, parse_key
from distpotify.store.metadata import MetadataDB
from distpotify.subsonic import elements as shapes
from distpotify.subsonic.call import (
    GENERIC,
    MISSING_PARAMETER,
    Call,
    SubsonicError,
    method,
)
from distpotify.userstate import MAX_RATING, UserState
from distpotify.wire import IDEMPOTENCY_KEY, REPLAYED, VERSION

ALBUM_LISTS = ("starred", "frequent", "recent", "highest")
# The parameters that prove who calls: left out of what a write's key is checked against.
CREDENTIALS = frozenset({"u", "p", "t", "s", "apiKey"})


def userstate(call: Call) -> UserState:
    state: UserState = call.server.state
    return state


async def annotate(call: Call, kind: str, elements: Sequence[dict[str, Any]]) -> None:
    """Fill ``starred`` (ISO time), ``userRating`` (1-5), and for songs and albums
    ``playCount`` and ``played`` (the last play), on each element that has an ``id`` and
    that the caller starred, rated or played; ``kind`` is song, album or artist. One read
    for all the elements."""
    ids = [str(element["id"]) for element in elements if "id" in element]
    if not ids:
        return
    found = await userstate(call).annotations(call.user.id, kind, ids)
    for element in elements:
        done = found.get(str(element.get("id")))
        if not done:
            continue
        if "starred" in done:
            element["starred"] = done["starred"]
        if "rating" in done:
            element["userRating"] = done["rating"]
        if "play_count" in done:
            element["playCount"] = done["play_count"]
            element["played"] = done["played"]


async def album_ids(call: Call, kind: str, size: int, offset: int) -> list[str]:
    """The catalog album ids of getAlbumList(2) ``type`` ``kind``, one page: ``starred``
    (newest star first), ``frequent`` (most played first), ``recent`` (last played first)
    or ``highest`` (highest rated first), the caller's own; albums with a live song only."""
    if kind not in ALBUM_LISTS:
        raise ValueError(f"no album list {kind!r}")
    state = userstate(call)
    if kind in ("starred", "highest"):
        live = await state.live_albums()
        found = (await state.starred(call.user.id, "album") if kind == "starred"
                 else await state.highest_rated(call.user.id, "album"))
        ordered = [album for album, _ in found if album in live]
    else:
        plays = await state.album_plays(call.user.id)  # albums with a live song only
        if kind == "frequent":
            ordered = sorted(plays, key=lambda a: (plays[a][0], plays[a][1], a), reverse=True)
        else:
            ordered = sorted(plays, key=lambda a: (plays[a][1], a), reverse=True)
    return ordered[offset:offset + size]


# shared by the per-user write methods


async def write_key(call: Call, secret: str | None = None) -> IdempotencyKey | None:
    """The request's Idempotency-Key (the proxy sends one with every write it forwards),
    scoped to the caller as the account API scopes keys; None if it sent none. ``secret``:
    a parameter the digest leaves out as it leaves the credentials out (changePassword's
    new password)."""
    header = call.request.getHeader(IDEMPOTENCY_KEY)
    if header is None:
        return None
    raw = header.encode("latin-1") if isinstance(header, str) else header
    text = parse_key(raw)  # a BadRequest: error 0
    key: IdempotencyKey = await call.server.library.request_key(
        f"{call.user.id} {text}", b"SUBSONIC", _identity(call, secret), None)
    return key


def _identity(call: Call, secret: str | None) -> bytes:
    """What a write's key is checked against (its digest is stored with the outcome, in every
    replica's database, for a day): the path and every parameter, from the query and a form
    body alike (GET or POST: the same call), but the credentials. The URI and body as sent
    would put an unsalted SHA-256 of the caller's password (``p``) there, open to a
    dictionary; and the key is the caller's own already."""
    path = call.request.uri.partition(b"?")[0]
    params = call.params
    kept = [(name, value) for name in sorted(params.names())
            if name not in CREDENTIALS and name != secret for value in params.all(name)]
    return path + b"?" + urlencode(kept).encode("ascii")


def written(call: Call, outcome: Outcome) -> dict[str, Any]:
    """A write's answer: the version it made on the response (the proxy's read-your-writes
    follows it), replayed if a key's stored outcome answered; the empty payload."""
    if outcome.version is not None:
        call.request.setHeader(VERSION, outcome.version.encode().encode())
    if outcome.replayed:
        call.request.setHeader(REPLAYED, b"true")
    return {}


# favourites and ratings


def _items(call: Call) -> list[tuple[str | None, str]]:
    """star's and unstar's items: ``id`` (a song, or an album or artist as a directory),
    ``albumId``, ``artistId``, each repeatable; error 10 when none is given."""
    params = call.params
    items: list[tuple[str | None, str]] = [(None, i) for i in params.all("id") if i]
    items += [("album", i) for i in params.all("albumId") if i]
    items += [("artist", i) for i in params.all("artistId") if i]
    if not items:
        raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: id")
    return items


@method("star", writes=True)
async def star(call: Call) -> dict[str, Any]:
    items = _items(call)
    outcome = await userstate(call).star(call.user.id, items, await write_key(call))
    return written(call, outcome)


@method("unstar", writes=True)
async def unstar(call: Call) -> dict[str, Any]:
    items = _items(call)
    outcome = await userstate(call).unstar(call.user.id, items, await write_key(call))
    return written(call, outcome)


@method("setRating", writes=True)
async def set_rating(call: Call) -> dict[str, Any]:
    item = call.params.required("id")
    call.params.required("rating")
    rating = call.params.integer("rating", None, 0, MAX_RATING)
    assert rating is not None
    outcome = await userstate(call).set_rating(call.user.id, item, rating,
                                               await write_key(call))
    return written(call, outcome)


async def _starred(call: Call, id3: bool) -> dict[str, Any]:
    """The caller's starred artists, albums and songs, each annotated."""
    state = userstate(call)
    user = call.user.id
    catalog = await call.server.store.run(MetadataDB.catalog)
    artist_ids = [i for i, _ in await state.starred(user, "artist")]
    album_ids = [i for i, _ in await state.starred(user, "album")]
    song_ids = [i for i, _ in await state.starred(user, "song")]
    found = await state.songs(song_ids)
    to_artist = shapes.artist if id3 else shapes.artist_index
    to_album = shapes.album if id3 else shapes.album_child
    artists = [to_artist(catalog.artist_by_id[i]) for i in artist_ids
               if i in catalog.artist_by_id]
    albums = [to_album(catalog.album_by_id[i]) for i in album_ids if i in catalog.album_by_id]
    songs = [shapes.song(found[i]) for i in song_ids if i in found]
    await annotate(call, "artist", artists)
    await annotate(call, "album", albums)
    await annotate(call, "song", songs)
    return {"artist": artists, "album": albums, "song": songs}


@method("getStarred")
async def get_starred(call: Call) -> dict[str, Any]:
    return {"starred": await _starred(call, id3=False)}


@method("getStarred2")
async def get_starred2(call: Call) -> dict[str, Any]:
    return {"starred2": await _starred(call, id3=True)}


# plays and now playing


@method("scrobble", writes=True)
async def scrobble(call: Call) -> dict[str, Any]:
    """``submission`` (default true): a play of each ``id`` per user, at its ``time``
    (milliseconds since 1970) or now; false: the song ``c`` (the client) plays now."""
    params = call.params
    song_ids = [i for i in params.all("id") if i]
    if not song_ids:
        raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing: id")
    times: list[float | None] = []
    for text in params.all("time"):
        if not text.isascii() or not text.isdigit() or len(text) > 15:
            raise SubsonicError(GENERIC, "Parameter time must be milliseconds since 1970")
        times.append(int(text) / 1000.0)
    submission = params.boolean("submission", True)
    outcome = await userstate(call).scrobble(call.user.id, song_ids, times, submission,
                                             params.get("c") or "unknown",
                                             await write_key(call))
    return written(call, outcome)


@method("getNowPlaying")
async def get_now_playing(call: Call) -> dict[str, Any]:
    """What every user's clients reported playing lately (this replica's copy: the reports
    are replicated records, so any replica answers)."""
    state = userstate(call)
    playing = await state.now_playing()
    found = await state.songs([entry["song_id"] for entry in playing])
    entries = []
    for entry in playing:
        song = found.get(entry["song_id"])
        account = call.server.accounts.directory.by_id(entry["user_id"])
        if song is None or account is None:
            continue
        entries.append({**shapes.song(song), "username": account.username,
                        "minutesAgo": entry["minutes_ago"],
                        "playerId": zlib.crc32(entry["client"].encode()) & 0x7FFFFFFF,
                        "playerName": entry["client"]})
    await annotate(call, "song", entries)
    return {"nowPlaying": {"entry": entries}}
