"""The catalog's derived ids: the same for the same tags whatever their case or accents,
different for a different album artist, title or year."""

from distpotify.catalog import (
    UNKNOWN_ARTIST,
    VARIOUS,
    album_artist_of,
    album_id,
    artist_id,
    song_album_id,
    song_artist_id,
)
from distpotify.model import valid_uuid


def test_ids_are_canonical_uuids_stable_under_case_and_accents() -> None:
    assert valid_uuid(artist_id("Björk"))
    assert artist_id("Björk") == artist_id("bjork") == artist_id("  BJORK ")
    assert album_id("Björk", "Homogenic", 1997) == album_id("bjork", "HOMOGENIC", 1997)


def test_album_ids_differ_by_artist_title_and_year() -> None:
    base = album_id("A", "T", 2000)
    assert len({base, album_id("B", "T", 2000), album_id("A", "U", 2000),
                album_id("A", "T", 2001), album_id("A", "T", None)}) == 5
    assert artist_id("A") != album_id("A", "", None)


def test_album_artist_falls_back_to_the_artist_then_unknown() -> None:
    assert album_artist_of({"album_artist": VARIOUS, "artist": "X"}) == VARIOUS
    assert album_artist_of({"album_artist": None, "artist": "X"}) == "X"
    assert album_artist_of({"album_artist": " ", "artist": None}) == UNKNOWN_ARTIST
    song = {"artist": "X", "album": "Y", "year": 1999}
    assert song_album_id(song) == album_id("X", "Y", 1999)
    assert song_artist_id(song) == artist_id("X")
    assert song_album_id({**song, "year": True}) == album_id("X", "Y", None)
