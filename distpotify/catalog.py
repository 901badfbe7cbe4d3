"""Artists and albums: ids derived from a song's tags, the same on every replica and across
re-uploads, so they need no record of their own and never conflict.

An album is (album artist, album title, year); its artist is the album artist, or the song's
artist when the file names none; a compilation tagged as one (and without an album artist) is
filed under VARIOUS at upload (media.py). Text is compared folded (case and accents), so
"Björk" and "bjork" are one artist.
"""
# test-case-name: tests.unit.test_catalog

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from distpotify.store.songorder import fold

# The namespace of every derived id (UUIDv5): a fixed random UUID, never to change, since ids
# are kept by clients (playlists, favourites, their caches).
NAMESPACE = uuid.UUID("7d0c8f52-3a4e-4b7f-9a51-2f0a6c1e9b3d")
VARIOUS = "Various Artists"
UNKNOWN_ARTIST = "Unknown Artist"
UNKNOWN_ALBUM = "Unknown Album"


def _id(kind: str, *parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "\x00".join((kind, *parts))))


def album_artist_of(fields: Mapping[str, Any]) -> str:
    """The name a song's album is filed under."""
    return (fields.get("album_artist") or fields.get("artist") or UNKNOWN_ARTIST).strip() \
        or UNKNOWN_ARTIST


def artist_id(name: str | None) -> str:
    """The id of the artist called ``name`` (folded: case and accents do not matter)."""
    return _id("artist", fold((name or UNKNOWN_ARTIST).strip()) or fold(UNKNOWN_ARTIST))


def album_id(album_artist: str | None, album: str | None, year: int | None) -> str:
    """The id of an album: its artist, title and year, folded."""
    return _id("album", fold((album_artist or UNKNOWN_ARTIST).strip()),
               fold((album or UNKNOWN_ALBUM).strip()), "" if year is None else str(int(year)))


def song_album_id(fields: Mapping[str, Any]) -> str:
    """The album a song belongs to, from its fields."""
    year = fields.get("year")
    return album_id(album_artist_of(fields), fields.get("album"),
                    year if isinstance(year, int) and not isinstance(year, bool) else None)


def song_artist_id(fields: Mapping[str, Any]) -> str:
    """The artist a song's album is filed under (the album artist)."""
    return artist_id(album_artist_of(fields))


# What the store keeps beside each song (store/songindex.py), so albums and artists are
# found through an index rather than by reading every song's tags.
COLUMNS = ("album_id", "artist_id", "catalog_artist")


def stored_columns(fields: Mapping[str, Any]) -> dict[str, str]:
    """A song's album id, artist id and the name its album is filed under."""
    return {"album_id": song_album_id(fields), "artist_id": song_artist_id(fields),
            "catalog_artist": album_artist_of(fields)}
