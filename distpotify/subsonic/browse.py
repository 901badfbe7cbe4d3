"""Browsing and searching: getIndexes, getMusicDirectory, getArtists, getArtist, getAlbum,
getSong, getGenres, getAlbumList(2), getRandomSongs, getSongsByGenre, search2/3, getTopSongs.

Everything is read from the store's catalog (store/catalog.py); per-user values (starred,
rating, plays) are added by annotations.py where it exists, which also provides the album
lists of the per-user types (starred, frequent, recent, highest).
"""
# test-case-name: tests.unit.test_subsonic_api

from __future__ import annotations

import datetime
import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from distpotify.model import valid_uuid
from distpotify.store.catalog import ALBUM_ORDERS, IGNORED_ARTICLES, Catalog
from distpotify.store.metadata import MetadataDB
from distpotify.store.songorder import fold
from distpotify.subsonic import elements
from distpotify.subsonic.call import (
    GENERIC,
    MISSING_PARAMETER,
    NOT_FOUND,
    Call,
    SubsonicError,
    method,
)

MAX_LIST = 500  # albums or songs in one list
MAX_SEARCH = 1000  # artists, albums or songs in one search answer (clients sync by pages)
MAX_OFFSET = 2**31 - 1
PER_USER_LISTS = ("starred", "frequent", "recent", "highest")


def _annotations() -> ModuleType | None:
    """annotations.py (per-user state), once it exists."""
    try:
        return importlib.import_module("distpotify.subsonic.annotations")
    except ModuleNotFoundError as missing:
        if missing.name != "distpotify.subsonic.annotations":
            raise
        return None


async def annotate(call: Call, kind: str, found: list[dict[str, Any]]) -> None:
    """Add the caller's starred, userRating, playCount and played to ``found`` (elements of
    ``kind``: "song", "album" or "artist")."""
    module = _annotations()
    if module is not None and found:
        await module.annotate(call, kind, found)


async def catalog_of(call: Call) -> Catalog:
    found: Catalog = await call.server.store.run(MetadataDB.catalog)
    return found


def _number(call: Call, name: str, default: int, high: int) -> int:
    found = call.params.integer(name, default, 0, high)
    assert found is not None
    return found


def _id(call: Call, what: str) -> str:
    value = call.params.required("id")
    if not valid_uuid(value):
        raise SubsonicError(NOT_FOUND, f"{what} not found")
    return value


# artists by letter


def _letter(name: str) -> str:
    words = name.split(None, 1)
    if len(words) == 2 and words[0].lower() in {a.lower() for a in IGNORED_ARTICLES}:
        name = words[1]
    first = fold(name.strip()[:1]).upper()[:1]
    return first if first.isalpha() else "#"


def _by_letter(artists: list[dict[str, Any]], shown: Any) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for artist in artists:
        groups.setdefault(_letter(artist["name"]), []).append(shown(artist))
    return [{"name": letter, "artist": groups[letter]}
            for letter in sorted(groups, key=lambda x: (x == "#", x))]


def _millis(text: str | None) -> int:
    if not text:
        return 0
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(moment.timestamp() * 1000)


@method("getIndexes")
async def get_indexes(call: Call) -> dict[str, Any]:
    catalog = await catalog_of(call)
    newest = max((a["created"] for a in catalog.albums if a["created"]), default=None)
    indexes = _by_letter(catalog.artists, elements.artist_index)
    for index in indexes:
        await annotate(call, "artist", index["artist"])
    return {"indexes": {"lastModified": _millis(newest),
                        "ignoredArticles": " ".join(IGNORED_ARTICLES), "index": indexes}}


@method("getArtists")
async def get_artists(call: Call) -> dict[str, Any]:
    catalog = await catalog_of(call)
    indexes = _by_letter(catalog.artists, elements.artist)
    for index in indexes:
        await annotate(call, "artist", index["artist"])
    return {"artists": {"ignoredArticles": " ".join(IGNORED_ARTICLES), "index": indexes}}


@method("getArtist")
async def get_artist(call: Call) -> dict[str, Any]:
    artist_id = _id(call, "Artist")
    catalog = await catalog_of(call)
    artist = catalog.artist_by_id.get(artist_id)
    if artist is None:
        raise SubsonicError(NOT_FOUND, "Artist not found")
    albums = [elements.album(a) for a in catalog.albums_of.get(artist_id, [])]
    await annotate(call, "album", albums)
    shown = elements.artist(artist)
    await annotate(call, "artist", [shown])
    return {"artist": {**shown, "album": albums}}


async def _album_songs(call: Call, album_id: str) -> list[dict[str, Any]]:
    rows = await call.server.store.run(MetadataDB.album_songs, album_id)
    songs = [elements.song(row) for row in rows]
    await annotate(call, "song", songs)
    return songs


@method("getAlbum")
async def get_album(call: Call) -> dict[str, Any]:
    album_id = _id(call, "Album")
    catalog = await catalog_of(call)
    album = catalog.album_by_id.get(album_id)
    if album is None:
        raise SubsonicError(NOT_FOUND, "Album not found")
    shown = elements.album(album)
    await annotate(call, "album", [shown])
    return {"album": {**shown, "song": await _album_songs(call, album_id)}}


@method("getSong")
async def get_song(call: Call) -> dict[str, Any]:
    song_id = _id(call, "Song")
    row = await call.server.store.run(MetadataDB.catalog_song, song_id)
    if row is None:
        raise SubsonicError(NOT_FOUND, "Song not found")
    song = elements.song(row)
    await annotate(call, "song", [song])
    return {"song": song}


@method("getMusicDirectory")
async def get_music_directory(call: Call) -> dict[str, Any]:
    """An artist's directory holds its albums; an album's its songs."""
    directory_id = _id(call, "Directory")
    catalog = await catalog_of(call)
    artist = catalog.artist_by_id.get(directory_id)
    if artist is not None:
        albums = [elements.album_child(a) for a in catalog.albums_of.get(directory_id, [])]
        await annotate(call, "album", albums)
        return {"directory": {"id": directory_id, "name": artist["name"], "child": albums}}
    album = catalog.album_by_id.get(directory_id)
    if album is None:
        raise SubsonicError(NOT_FOUND, "Directory not found")
    return {"directory": {"id": directory_id, "parent": album["artist_id"],
                          "name": album["name"],
                          "child": await _album_songs(call, directory_id)}}


@method("getGenres")
async def get_genres(call: Call) -> dict[str, Any]:
    catalog = await catalog_of(call)
    return {"genres": {"genre": [
        {"songCount": g["song_count"], "albumCount": g["album_count"], "value": g["name"]}
        for g in catalog.genres]}}


# lists


async def _album_list(call: Call) -> list[dict[str, Any]]:
    params = call.params
    kind = params.required("type")
    size = params.page_size("size", 10, MAX_LIST)
    offset = _number(call, "offset", 0, MAX_OFFSET)
    catalog = await catalog_of(call)
    if kind in PER_USER_LISTS:
        module = _annotations()
        if module is None:
            return []
        ids = await module.album_ids(call, kind, size, offset)
        return [catalog.album_by_id[i] for i in ids if i in catalog.album_by_id]
    if kind not in ALBUM_ORDERS:
        raise SubsonicError(GENERIC, f"Unknown album list type: {kind[:64]!r}")
    from_year = to_year = None
    if kind == "byYear":
        from_year = params.integer("fromYear", None, -9999, 9999)
        to_year = params.integer("toYear", None, -9999, 9999)
        if from_year is None or to_year is None:
            raise SubsonicError(MISSING_PARAMETER, "Required parameter is missing:"
                                f" {'fromYear' if from_year is None else 'toYear'}")
    genre = params.required("genre") if kind == "byGenre" else None
    return catalog.album_list(kind, size, offset, from_year=from_year, to_year=to_year,
                              genre=genre)


@method("getAlbumList")
async def get_album_list(call: Call) -> dict[str, Any]:
    albums = [elements.album_child(a) for a in await _album_list(call)]
    await annotate(call, "album", albums)
    return {"albumList": {"album": albums}}


@method("getAlbumList2")
async def get_album_list2(call: Call) -> dict[str, Any]:
    albums = [elements.album(a) for a in await _album_list(call)]
    await annotate(call, "album", albums)
    return {"albumList2": {"album": albums}}


async def _songs(call: Call, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    songs = [elements.song(row) for row in rows]
    await annotate(call, "song", songs)
    return songs


@method("getRandomSongs")
async def get_random_songs(call: Call) -> dict[str, Any]:
    params = call.params
    size = params.page_size("size", 10, MAX_LIST)
    rows = await call.server.store.run(
        MetadataDB.random_songs, size, params.get("genre") or None,
        params.integer("fromYear", None, -9999, 9999), params.integer("toYear", None, -9999, 9999))
    return {"randomSongs": {"song": await _songs(call, rows)}}


@method("getSongsByGenre")
async def get_songs_by_genre(call: Call) -> dict[str, Any]:
    params = call.params
    genre = params.required("genre")
    count = params.page_size("count", 10, MAX_LIST)
    offset = params.integer("offset", 0, 0, MAX_OFFSET)
    rows = await call.server.store.run(MetadataDB.songs_by_genre, genre, count, offset)
    return {"songsByGenre": {"song": await _songs(call, rows)}}


@method("getTopSongs")
async def get_top_songs(call: Call) -> dict[str, Any]:
    """Top songs need listening figures from elsewhere (last.fm): none here, an empty list."""
    call.params.required("artist")
    return {"topSongs": {}}


# search


def _query(text: str | None) -> str:
    """The search text: quotes and a trailing wildcard some clients add left out; "" (and
    "*") list everything."""
    query = (text or "").strip().strip('"').strip()
    return query.rstrip("*").strip()


Element = Callable[[Mapping[str, Any]], dict[str, Any]]


async def _search(call: Call, answer: str, artist: Element, album: Element) -> dict[str, Any]:
    """The artists, albums and songs matching the ``query`` parameter, each in its page, under
    ``answer``; artists and albums shown by ``artist`` and ``album``."""
    params = call.params
    query = _query(params.get("query"))
    counts = [params.page_size(name, 20, MAX_SEARCH)
              for name in ("artistCount", "albumCount", "songCount")]
    offsets = [_number(call, name, 0, MAX_OFFSET)
               for name in ("artistOffset", "albumOffset", "songOffset")]
    catalog = await catalog_of(call)
    artists, albums = catalog.matching(query, counts[0], offsets[0], counts[1], offsets[1])
    rows = await call.server.store.run(MetadataDB.search_catalog_songs, query, counts[2],
                                       offsets[2]) if counts[2] else []
    shown_artists = [artist(a) for a in artists]
    shown_albums = [album(a) for a in albums]
    await annotate(call, "artist", shown_artists)
    await annotate(call, "album", shown_albums)
    return {answer: {"artist": shown_artists, "album": shown_albums,
                     "song": await _songs(call, rows)}}


@method("search2")
async def search2(call: Call) -> dict[str, Any]:
    """By folders: artists as getIndexes lists them, albums as directory children."""
    return await _search(call, "searchResult2", elements.artist_index, elements.album_child)


@method("search3")
async def search3(call: Call) -> dict[str, Any]:
    """By ID3 tags: artists and albums as getArtists and getAlbum show them."""
    return await _search(call, "searchResult3", elements.artist, elements.album)
