"""The spec's elements for our records, as call.py's neutral trees: a song as ``Child``, an album
as ``AlbumID3`` (or as a directory ``Child``), an artist as ``ArtistID3`` (or ``Artist``).

Songs come as the store's catalog rows (store/catalog.py: a song's fields with its
``album_id``, ``artist_id`` and ``catalog_artist``); albums and artists as its summaries.
Every other part that shows songs (playlists, favourites, now playing) builds them here.
"""
# test-case-name: tests.unit.test_subsonic_api

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from distpotify import catalog

# The file name suffix of each Content-Type media.py serves.
SUFFIXES = {
    "audio/mpeg": "mp3", "audio/flac": "flac", "audio/ogg": "ogg", "audio/wav": "wav",
    "audio/mp4": "m4a", "audio/aac": "aac", "audio/aiff": "aiff", "audio/x-ms-wma": "wma",
    "audio/ac3": "ac3", "audio/x-wavpack": "wv", "audio/x-ape": "ape",
    "audio/x-musepack": "mpc", "audio/x-tta": "tta", "audio/x-optimfrog": "ofr",
    "audio/x-tak": "tak", "audio/x-dsf": "dsf", "audio/x-dff": "dff",
}


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None


def _seconds(value: Any) -> int:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
    return round(number) if math.isfinite(number) and number > 0 else 0


def _path_part(text: str) -> str:
    return text.replace("/", "_").strip() or "_"


def song(row: Mapping[str, Any]) -> dict[str, Any]:
    """A song as the spec's ``Child`` (with OpenSubsonic's additions)."""
    album_id = row.get("album_id") or catalog.song_album_id(row)
    artist_id = row.get("artist_id") or catalog.song_artist_id(row)
    mime = str(row.get("mime") or "application/octet-stream")
    suffix = SUFFIXES.get(mime, mime.rpartition("/")[2] or "bin")
    title = str(row.get("title") or "")
    artist = row.get("artist") or catalog.UNKNOWN_ARTIST
    album = row.get("album") or catalog.UNKNOWN_ALBUM
    album_artist = row.get("catalog_artist") or catalog.album_artist_of(row)
    track, disc = _int(row.get("track")), _int(row.get("disc"))
    duration = _seconds(row.get("duration"))
    size = _int(row.get("size"))
    bit_rate = (size * 8 // 1000 // duration) if size and duration else None
    number = f"{track:02d} - " if track is not None and track >= 0 else ""
    path = (f"{_path_part(album_artist)}/{_path_part(album)}/"
            f"{number}{_path_part(title)}.{suffix}")
    return {
        "id": row["id"], "parent": album_id, "isDir": False, "title": title,
        "album": album, "artist": artist, "track": track, "year": _int(row.get("year")),
        "genre": row.get("genre") or None, "coverArt": row.get("cover_sha256") or None,
        "size": size, "contentType": mime, "suffix": suffix, "duration": duration,
        "bitRate": bit_rate, "path": path, "isVideo": False, "discNumber": disc,
        "created": row.get("created_at") or None, "albumId": album_id, "artistId": artist_id,
        "type": "music",
        # OpenSubsonic
        "mediaType": "song", "displayArtist": artist, "displayAlbumArtist": album_artist,
    }


def album(summary: Mapping[str, Any]) -> dict[str, Any]:
    """An album (store/catalog.py's summary) as ``AlbumID3``."""
    return {
        "id": summary["id"], "name": summary["name"], "artist": summary["artist"],
        "artistId": summary["artist_id"], "coverArt": summary.get("cover") or None,
        "songCount": int(summary["song_count"]), "duration": _seconds(summary["duration"]),
        "created": summary["created"], "year": _int(summary.get("year")),
        "genre": summary.get("genre") or None,
        # OpenSubsonic
        "displayArtist": summary["artist"],
    }


def album_child(summary: Mapping[str, Any]) -> dict[str, Any]:
    """An album as a directory ``Child`` (getAlbumList, getMusicDirectory, search2)."""
    return {
        "id": summary["id"], "parent": summary["artist_id"], "isDir": True,
        "title": summary["name"], "album": summary["name"], "artist": summary["artist"],
        "year": _int(summary.get("year")), "genre": summary.get("genre") or None,
        "coverArt": summary.get("cover") or None, "duration": _seconds(summary["duration"]),
        "created": summary["created"], "albumId": summary["id"],
        "artistId": summary["artist_id"], "mediaType": "album",
    }


def artist(summary: Mapping[str, Any]) -> dict[str, Any]:
    """An artist (store/catalog.py's summary) as ``ArtistID3``."""
    return {"id": summary["id"], "name": summary["name"],
            "coverArt": summary.get("cover") or None,
            "albumCount": int(summary["album_count"])}


def artist_index(summary: Mapping[str, Any]) -> dict[str, Any]:
    """An artist as the older ``Artist`` (getIndexes, search2)."""
    return {"id": summary["id"], "name": summary["name"]}
