"""Cover pictures and album tags read at upload (media.py) from real files: clips made by
ffmpeg, pictures embedded by mutagen the way taggers write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from distpotify.images import MAX_COVER_BYTES
from distpotify.media import AudioInfo, read_audio_info
from tests.helpers.audio import make_audio
from tests.helpers.covers import COVER_FORMATS, album_tags, embed, picture

BACK_COVER = 4


def info_of(path: Path) -> AudioInfo:
    with open(path, "rb") as f:
        return read_audio_info(f)


def clip(tmp_path: Path, fmt: str) -> Path:
    return make_audio(tmp_path / f"clip.{fmt}", fmt, 1.0, {"title": "T", "artist": "A"})


@pytest.mark.parametrize("fmt", COVER_FORMATS)
def test_embedded_cover_is_read(tmp_path: Path, fmt: str) -> None:
    path = clip(tmp_path, fmt)
    cover = picture("PNG")
    embed(path, fmt, cover)

    assert info_of(path).cover == cover


@pytest.mark.parametrize("fmt", COVER_FORMATS)
def test_file_without_picture_has_no_cover(tmp_path: Path, fmt: str) -> None:
    assert info_of(clip(tmp_path, fmt)).cover is None


@pytest.mark.parametrize("fmt", ["mp3", "flac", "ogg"])
def test_front_cover_is_preferred_to_a_picture_before_it(tmp_path: Path, fmt: str) -> None:
    path = clip(tmp_path, fmt)
    back, front = picture("JPEG", color=(0, 0, 255)), picture("PNG", color=(0, 255, 0))
    embed(path, fmt, back, picture_type=BACK_COVER, mime="image/jpeg")
    embed(path, fmt, front)

    assert info_of(path).cover == front


@pytest.mark.parametrize("fmt", COVER_FORMATS)
def test_corrupt_picture_is_ignored_and_the_file_still_reads(tmp_path: Path, fmt: str) -> None:
    path = clip(tmp_path, fmt)
    embed(path, fmt, picture("PNG")[:40])  # a PNG cut short: its header, no image data

    info = info_of(path)

    assert info.cover is None and info.title == "T"


def test_picture_that_is_not_an_image_is_ignored(tmp_path: Path) -> None:
    path = clip(tmp_path, "mp3")
    embed(path, "mp3", b"<html>not a picture</html>" * 10)

    assert info_of(path).cover is None


def test_picture_of_a_format_not_kept_is_ignored(tmp_path: Path) -> None:
    path = clip(tmp_path, "flac")
    embed(path, "flac", picture("BMP"), mime="image/bmp")

    assert info_of(path).cover is None


def test_oversized_picture_is_ignored(tmp_path: Path) -> None:
    path = clip(tmp_path, "flac")
    big = picture("PNG") + b"\0" * MAX_COVER_BYTES  # trailing bytes past the PNG's end
    embed(path, "flac", big)

    assert info_of(path).cover is None


def test_a_good_picture_after_a_corrupt_one_is_kept(tmp_path: Path) -> None:
    path = clip(tmp_path, "mp3")
    good = picture("JPEG")
    embed(path, "mp3", b"garbage" * 50)
    embed(path, "mp3", good, picture_type=BACK_COVER, mime="image/jpeg")

    assert info_of(path).cover == good


@pytest.mark.parametrize("fmt", COVER_FORMATS)
def test_album_artist_and_disc_are_read(tmp_path: Path, fmt: str) -> None:
    path = clip(tmp_path, fmt)
    album_tags(path, fmt, album_artist="The Band", disc="2/3")

    info = info_of(path)

    assert (info.album_artist, info.disc, info.compilation) == ("The Band", 2, False)
    assert info.artist == "A"


@pytest.mark.parametrize("fmt", COVER_FORMATS)
def test_compilation_flag_is_read(tmp_path: Path, fmt: str) -> None:
    path = clip(tmp_path, fmt)
    album_tags(path, fmt, compilation=True)

    info = info_of(path)

    assert info.compilation and info.album_artist is None
