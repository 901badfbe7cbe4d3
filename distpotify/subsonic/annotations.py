"""What one user has done to the songs, albums and artists a Subsonic answer shows (starred,
rated, played), filled in with one read per answer; the album lists built from it (starred,
frequent, recent); and what the per-user write methods share (their Idempotency-Key, the
version their answer carries, the library's refusals as the spec's error codes).

The per-user state itself is userstate.py's: ``call.server.state``.
"""
# test-case-name: tests.unit.test_subsonic_user

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from distpotify.errors import BadRequest, Conflict, Forbidden, KeyReused, NotFound
from distpotify.idempotency import IdempotencyKey, Outcome, parse_key
from distpotify.subsonic.call import GENERIC, NOT_AUTHORIZED, NOT_FOUND, Call, SubsonicError
from distpotify.userstate import UserState
from distpotify.wire import IDEMPOTENCY_KEY, REPLAYED, VERSION

ALBUM_LISTS = ("starred", "frequent", "recent", "highest")


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


async def write_key(call: Call) -> IdempotencyKey | None:
    """The request's Idempotency-Key (the proxy sends one with every write it forwards),
    scoped to the caller as the account API scopes keys; None if it sent none."""
    header = call.request.getHeader(IDEMPOTENCY_KEY)
    if header is None:
        return None
    raw = header.encode("latin-1") if isinstance(header, str) else header
    with refusals():
        text = parse_key(raw)
    key: IdempotencyKey = await call.server.library.request_key(
        f"{call.user.id} {text}", call.request.method, call.request.uri, call.request.content)
    return key


def written(call: Call, outcome: Outcome) -> dict[str, Any]:
    """A write's answer: the version it made on the response (the proxy's read-your-writes
    follows it), replayed if a key's stored outcome answered; the empty payload."""
    if outcome.version is not None:
        call.request.setHeader(VERSION, outcome.version.encode().encode())
    if outcome.replayed:
        call.request.setHeader(REPLAYED, b"true")
    return {}


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """The library's refusals as the spec's errors: not found 70, not allowed 50, a bad
    value or a conflict 0. Anything else (not the leader, unavailable) goes on to the
    dispatcher."""
    try:
        yield
    except NotFound as e:
        raise SubsonicError(NOT_FOUND, str(e)) from None
    except Forbidden as e:
        raise SubsonicError(NOT_AUTHORIZED, str(e)) from None
    except (BadRequest, Conflict, KeyReused) as e:
        raise SubsonicError(GENERIC, str(e)) from None
