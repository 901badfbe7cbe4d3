"""Pictures and audio files with embedded cover art for tests: images made by Pillow,
embedded with mutagen in clips ffmpeg made (tests/helpers/audio.py)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from mutagen.flac import FLAC, Picture
from mutagen.id3 import APIC, ID3, TCMP, TPE2, TPOS
from mutagen.mp4 import MP4, MP4Cover
from mutagen.oggvorbis import OggVorbis
from PIL import Image

from tests.helpers.audio import make_audio

FRONT_COVER = 3
COVER_FORMATS = ("mp3", "flac", "ogg", "m4a")


def picture(kind: str = "PNG", size: tuple[int, int] = (64, 48),
            color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB") -> bytes:
    """An image of one colour, encoded as ``kind`` (PNG, JPEG, WEBP, GIF, BMP, ...)."""
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, kind)
    return out.getvalue()


def embed(path: Path, fmt: str, data: bytes, *, picture_type: int = FRONT_COVER,
          mime: str = "image/png") -> None:
    """Add ``data`` to the file as its cover picture, the way taggers write it per format."""
    if fmt == "mp3":
        tags = ID3(path)
        tags.add(APIC(encoding=3, mime=mime, type=picture_type, desc=f"p{len(tags)}",
                      data=data))
        tags.save(path)
    elif fmt == "flac":
        flac = FLAC(path)
        flac.add_picture(_flac_picture(data, picture_type, mime))
        flac.save()
    elif fmt == "ogg":
        ogg = OggVorbis(path)
        block = base64.b64encode(_flac_picture(data, picture_type, mime).write()).decode()
        ogg["metadata_block_picture"] = [*ogg.get("metadata_block_picture", []), block]
        ogg.save()
    elif fmt == "m4a":
        mp4 = MP4(path)
        kind = MP4Cover.FORMAT_PNG if mime == "image/png" else MP4Cover.FORMAT_JPEG
        mp4["covr"] = [*mp4.get("covr", []), MP4Cover(data, imageformat=kind)]
        mp4.save()
    else:
        raise ValueError(f"no cover embedding for {fmt!r}")


def _flac_picture(data: bytes, picture_type: int, mime: str) -> Picture:
    found = Picture()
    found.type = picture_type
    found.mime = mime
    found.data = data
    return found


def album_tags(path: Path, fmt: str, *, album_artist: str | None = None,
               disc: str | None = None, compilation: bool = False) -> None:
    """Album artist, disc number and the compilation flag, in each format's own keys."""
    if fmt == "mp3":
        tags = ID3(path)
        if album_artist:
            tags.add(TPE2(encoding=3, text=album_artist))
        if disc:
            tags.add(TPOS(encoding=3, text=disc))
        if compilation:
            tags.add(TCMP(encoding=3, text="1"))
        tags.save(path)
    elif fmt in ("flac", "ogg"):
        comments = FLAC(path) if fmt == "flac" else OggVorbis(path)
        if album_artist:
            comments["albumartist"] = album_artist
        if disc:
            comments["discnumber"] = disc
        if compilation:
            comments["compilation"] = "1"
        comments.save()
    elif fmt == "m4a":
        mp4 = MP4(path)
        if album_artist:
            mp4["aART"] = album_artist
        if disc:
            number, _, total = disc.partition("/")
            mp4["disk"] = [(int(number), int(total or 0))]
        if compilation:
            mp4["cpil"] = True
        mp4.save()
    else:
        raise ValueError(f"no album tags for {fmt!r}")


def audio_with_cover(path: Path, fmt: str, cover: bytes | None, seconds: float = 1.0,
                     tags: dict[str, str] | None = None) -> bytes:
    """A clip made by ffmpeg with ``cover`` embedded by mutagen; its bytes."""
    make_audio(path, fmt, seconds, tags or {"title": path.stem, "artist": "Covered",
                                           "album": "Pictures"})
    if cover is not None:
        embed(path, fmt, cover)
    return path.read_bytes()
