"""What an uploaded audio file says about itself: canonical MIME type, duration and tags.

The upload path calls read_audio_info in a worker thread; NotAudio becomes an HTTP 415. The
embedded cover picture (ID3 APIC, FLAC pictures, Vorbis METADATA_BLOCK_PICTURE, MP4 covr) comes
with the tags when it is an image we keep (images.py); a corrupt or oversized one is ignored.
"""
# test-case-name: tests.unit.test_media

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import string
import struct
import typing
from collections.abc import Iterable, Mapping

import attrs
import mutagen
from mutagen.aac import AAC
from mutagen.ac3 import AC3
from mutagen.aiff import AIFF
from mutagen.apev2 import APEBinaryValue, APEExtValue, APETextValue, APEv2
from mutagen.asf import ASF, ASFTags
from mutagen.dsdiff import DSDIFF
from mutagen.dsf import DSF
from mutagen.easyid3 import EasyID3
from mutagen.easymp4 import EasyMP4Tags
from mutagen.flac import FLAC, Picture
from mutagen.id3 import APIC, ID3, TCON, TextFrame
from mutagen.monkeysaudio import MonkeysAudio
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4, MP4Tags
from mutagen.musepack import Musepack
from mutagen.oggflac import OggFLAC
from mutagen.oggopus import OggOpus
from mutagen.oggspeex import OggSpeex
from mutagen.oggvorbis import OggVorbis
from mutagen.optimfrog import OptimFROG
from mutagen.tak import TAK
from mutagen.trueaudio import TrueAudio
from mutagen.wave import WAVE
from mutagen.wavpack import WavPack

from distpotify.images import MAX_COVER_BYTES, NotImage, image_mime


@attrs.frozen
class AudioInfo:
    """What an audio file says about itself; a tag that is absent or blank is None."""

    mime: str
    duration: float | None
    title: str | None
    artist: str | None
    album: str | None
    track: int | None
    year: int | None
    genre: str | None
    album_artist: str | None = None
    disc: int | None = None
    compilation: bool = False
    cover: bytes | None = None  # the embedded front cover, checked to be an image we keep


class NotAudio(Exception):
    """The upload is not audio we can read; the message says why, in one line."""


# The Content-Type each playable container is served with. mutagen's own ``mime`` lists are
# not usable as is (an MP3 says "audio/mp3" first); Ogg is "audio/ogg" whatever the codec,
# as RFC 5334 and RFC 7845 say and browsers expect. Formats mutagen reads that hold no audio
# stream (Ogg Theora, MIDI, bare ID3 or APEv2 tags) are absent, so they are NotAudio.
_MIME_BY_FORMAT: Mapping[type[mutagen.FileType], str] = {
    MP3: "audio/mpeg",
    FLAC: "audio/flac",
    OggVorbis: "audio/ogg",
    OggOpus: "audio/ogg",
    OggFLAC: "audio/ogg",
    OggSpeex: "audio/ogg",
    WAVE: "audio/wav",
    MP4: "audio/mp4",
    AAC: "audio/aac",
    AIFF: "audio/aiff",
    ASF: "audio/x-ms-wma",
    AC3: "audio/ac3",
    WavPack: "audio/x-wavpack",
    MonkeysAudio: "audio/x-ape",
    Musepack: "audio/x-musepack",
    TrueAudio: "audio/x-tta",
    OptimFROG: "audio/x-optimfrog",
    TAK: "audio/x-tak",
    DSF: "audio/x-dsf",
    DSDIFF: "audio/x-dff",
}

_FIELDS = ("title", "artist", "album", "track", "year", "genre", "album_artist", "disc",
           "compilation")
_TagKeys = Mapping[str, tuple[str, ...]]

# Where each field lives in each tag system, best key first.
_EASY_KEYS: _TagKeys = {  # EasyID3, EasyMP4, Vorbis comments (Ogg, FLAC)
    "title": ("title",),
    "artist": ("artist", "albumartist"),
    "album": ("album",),
    "track": ("tracknumber",),
    "year": ("date", "originaldate", "year"),
    "genre": ("genre",),
    "album_artist": ("albumartist",),
    "disc": ("discnumber",),
    "compilation": ("compilation",),  # EasyMP4 has none: its "cpil" is read raw (_mp4_flag)
}
_ID3_KEYS: _TagKeys = {  # ID3 inside WAV, AIFF, DSF, DSDIFF, which have no easy variant
    "title": ("TIT2",),
    "artist": ("TPE1", "TPE2"),
    "album": ("TALB",),
    "track": ("TRCK",),
    "year": ("TDRC", "TDOR"),
    "genre": ("TCON",),
    "album_artist": ("TPE2",),
    "disc": ("TPOS",),
    "compilation": ("TCMP",),
}
_APE_KEYS: _TagKeys = {  # keys are case-insensitive
    "title": ("Title",),
    "artist": ("Artist", "Album Artist"),
    "album": ("Album",),
    "track": ("Track",),
    "year": ("Year",),
    "genre": ("Genre",),
    "album_artist": ("Album Artist", "AlbumArtist"),
    "disc": ("Disc",),
    "compilation": ("Compilation",),
}
_ASF_KEYS: _TagKeys = {
    "title": ("Title",),
    "artist": ("Author", "WM/AlbumArtist"),
    "album": ("WM/AlbumTitle",),
    "track": ("WM/TrackNumber", "WM/Track"),
    "year": ("WM/Year",),
    "genre": ("WM/Genre",),
    "album_artist": ("WM/AlbumArtist",),
    "disc": ("WM/PartOfSet",),
    "compilation": ("WM/IsCompilation",),
}
# mutagen reads only ID3 from WAV; ffmpeg, sox and most editors write a LIST/INFO chunk.
_RIFF_INFO_KEYS: _TagKeys = {
    "title": ("INAM",),
    "artist": ("IART",),
    "album": ("IPRD",),
    "track": ("ITRK", "IPRT"),
    "year": ("ICRD",),
    "genre": ("IGNR",),
    "album_artist": (),
    "disc": (),
    "compilation": (),
}
# An INFO list is a few hundred bytes; the caps stop a hostile header from making us buffer
# a huge chunk or walk millions of tiny ones.
_RIFF_INFO_MAX_BYTES = 1 << 20
_RIFF_MAX_CHUNKS = 64

# What mutagen may read while identifying a file: room for any real cover art, far below
# the upload limit.
_READ_BUDGET = 64 << 20

_ADTS_SYNC = re.compile(rb"\xff[\xf0\xf1\xf8\xf9]")  # 12 sync bits, then layer 0
_BLANK = string.whitespace + "\x00"
# Characters kept of a tag's text: what an edit or an upload's own fields may hold (upload.py),
# so a tag of megabytes (the read budget allows them) does not become a title.
MAX_TEXT = 1000
_LEADING_NUMBER = re.compile(r"\s*([0-9]{1,9})(?![0-9])")
_LEADING_YEAR = re.compile(r"\s*([0-9]{4})")
_ANY_YEAR = re.compile(r"(?<![0-9])([0-9]{4})(?![0-9])")
_TRUE = ("1", "true", "yes")
_FRONT_COVER = 3  # the picture type of a front cover (ID3v2 APIC, FLAC PICTURE)


def read_audio_info(fileobj: typing.BinaryIO) -> AudioInfo:
    """Identify the audio in a seekable binary file and read its tags, without loading it.

    Raises NotAudio when mutagen cannot read it as a playable format. Whatever happens, the
    file object is left positioned at 0.
    """
    try:
        size = fileobj.seek(0, io.SEEK_END)
        if size == 0:
            raise NotAudio("the file is empty")
        fileobj.seek(0)
        return _read(fileobj, size)
    finally:
        fileobj.seek(0)


def _read(fileobj: typing.BinaryIO, size: int) -> AudioInfo:
    reader = _BudgetedReader(fileobj, size, _READ_BUDGET)
    try:
        audio = _identify(reader)
    except Exception as e:
        if reader.exhausted:
            raise NotAudio(
                f"headers and tags take more than {_READ_BUDGET >> 20} MiB; refusing to buffer them"
            ) from e
        # mutagen signals malformed input with its own errors but also, on fuzzed files,
        # with struct.error, ValueError, IndexError, EOFError, ...: all mean "not audio".
        raise NotAudio(f"not readable as audio: {_one_line(e)}") from e
    # Test against None, not truthiness: a FileType is a mapping of its tags, so a
    # perfectly good file without tags is falsy.
    if audio is None:
        raise NotAudio("not a recognised audio format")
    mime = _mime_for(audio)
    # A container without an audio track still parses (a video-only MP4 or WMV has
    # stream info with zero channels).
    if mime is None or audio.info is None or getattr(audio.info, "channels", None) == 0:
        raise NotAudio(f"no audio stream found ({type(audio).__name__})")
    # For PCM a zero length is exact (no samples); elsewhere it may just mean "unknown".
    if isinstance(audio, WAVE | AIFF) and not getattr(audio.info, "length", 0):
        raise NotAudio(f"the {type(audio).__name__} file holds no samples")

    fields = _tag_fields(audio.tags)
    if isinstance(audio, WAVE):
        for field, text in _tag_fields(_riff_info(fileobj), _RIFF_INFO_KEYS).items():
            fields.setdefault(field, text)

    compilation = (fields.get("compilation") or "").lower() in _TRUE or _mp4_flag(audio.tags)
    return AudioInfo(
        mime=mime,
        duration=_duration(audio, size),
        title=fields.get("title"),
        artist=fields.get("artist"),
        album=fields.get("album"),
        track=_track_number(fields.get("track")),
        year=_year(fields.get("year")),
        genre=fields.get("genre"),
        album_artist=fields.get("album_artist"),
        disc=_track_number(fields.get("disc")),
        compilation=compilation,
        cover=_cover(audio),
    )


def _raw_tags(tags: object) -> object:
    """The tag container under mutagen's "easy" wrappers (EasyID3, EasyMP4Tags), which keep
    it in a private attribute and expose no pictures; any other container as it is."""
    if isinstance(tags, EasyID3):
        return getattr(tags, "_EasyID3__id3", None)
    if isinstance(tags, EasyMP4Tags):
        return getattr(tags, "_EasyMP4Tags__mp4", None)
    return tags


def _mp4_flag(tags: object) -> bool:
    raw = _raw_tags(tags)
    return isinstance(raw, MP4Tags) and bool(raw.get("cpil"))


def _cover(audio: mutagen.FileType) -> bytes | None:
    """The embedded picture to keep as the song's cover: the front cover if one is marked,
    else the first; None when there is none, or it is not an image we keep."""
    for data in _pictures(audio):
        if len(data) > MAX_COVER_BYTES:
            continue
        try:
            image_mime(data)
        except NotImage:
            continue  # a corrupt picture costs the song its cover, never its upload
        return data
    return None


def _pictures(audio: mutagen.FileType) -> list[bytes]:
    """The embedded pictures' bytes, front covers first."""
    found: list[tuple[int, bytes]] = []  # (picture type, data)
    raw = _raw_tags(audio.tags)
    if isinstance(raw, ID3):
        # type and data are declared through APIC's _framespec, unseen by mypy
        found += [(getattr(frame, "type", 0), bytes(getattr(frame, "data", b"")))
                  for frame in raw.getall("APIC") if isinstance(frame, APIC)]
    elif isinstance(raw, MP4Tags):
        found += [(_FRONT_COVER, bytes(cover)) for cover in raw.get("covr", [])]
    elif raw is not None and not isinstance(raw, APEv2 | ASFTags):
        for text in _values(raw, "metadata_block_picture"):  # Vorbis comments (Ogg, FLAC)
            try:
                picture = Picture(base64.b64decode(str(text), validate=True))
            except (binascii.Error, ValueError, mutagen.MutagenError, struct.error, EOFError):
                continue
            found.append((picture.type, bytes(picture.data)))
    if isinstance(audio, FLAC):
        found += [(picture.type, bytes(picture.data)) for picture in audio.pictures]
    found.sort(key=lambda item: item[0] != _FRONT_COVER)  # stable: the file's order otherwise
    return [data for _, data in found]


def _identify(reader: _BudgetedReader) -> mutagen.FileType | None:
    audio = mutagen.File(reader, easy=True)
    if audio is None:
        # mutagen knows an ADTS stream only by its ".aac" file name, which we never trust.
        reader.seek(0)
        if _ADTS_SYNC.match(reader.read(2)):
            reader.seek(0)
            audio = AAC(reader)
    return audio


class _BudgetedReader:
    """The upload as mutagen sees it: read-only, nameless, and with a cap on bytes read.

    mutagen buffers whole tags (ID3, FLAC metadata blocks, Vorbis comment packets, MP4
    ``ilst``), so a header claiming a 400 MiB tag would otherwise be read into memory. Having
    no ``name`` also means the format is chosen from the content alone, never the file name.
    """

    def __init__(self, raw: typing.BinaryIO, size: int, budget: int) -> None:
        self._raw = raw
        self._size = size
        self._remaining = budget

    @property
    def exhausted(self) -> bool:
        return self._remaining < 0

    def read(self, size: int | None = -1) -> bytes:
        # Never ask for more than the file still holds: a buffered read allocates all it is
        # asked for up front. One byte past the budget tells "exactly the budget" from "more".
        wanted = self._size - self._raw.tell()
        if size is not None and size >= 0:
            wanted = min(wanted, size)
        data = self._raw.read(max(0, min(wanted, self._remaining + 1)))
        self._remaining -= len(data)
        if self._remaining < 0:
            raise _OverBudget()
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


class _OverBudget(Exception):
    pass


def _mime_for(audio: mutagen.FileType) -> str | None:
    # Walk the MRO so the easy variants (EasyMP3, EasyMP4, EasyTrueAudio) find their base.
    for kind in type(audio).__mro__:
        mime = _MIME_BY_FORMAT.get(kind)
        if mime is not None:
            return mime
    return None


def _tag_fields(tags: object, keys: _TagKeys | None = None) -> dict[str, str]:
    """The first non-blank text of each field found in a tag container."""
    if tags is None:
        return {}
    if keys is None:
        keys = _keys_for(tags)
    fields: dict[str, str] = {}
    for field in _FIELDS:
        for key in keys[field]:
            text = _first_text(_values(tags, key))
            if text is not None:
                fields[field] = text
                break
    return fields


def _keys_for(tags: object) -> _TagKeys:
    if isinstance(tags, ID3):
        return _ID3_KEYS
    if isinstance(tags, APEv2):
        return _APE_KEYS
    if isinstance(tags, ASFTags):
        return _ASF_KEYS
    return _EASY_KEYS


def _values(tags: typing.Any, key: str) -> Iterable[object]:
    """The values under one key, as a sequence, whichever container shape holds them."""
    try:
        found = tags[key]
    except (KeyError, ValueError):
        return ()
    if isinstance(found, TCON):
        return found.genres  # resolves ID3v1 genre numbers such as "(17)"
    if isinstance(found, TextFrame):
        text: list[object] = getattr(found, "text", [])  # declared through _framespec
        return text
    if isinstance(found, APETextValue):
        return list(found)
    if isinstance(found, APEBinaryValue | APEExtValue):
        return ()  # binary data or an external link, never a name
    if isinstance(found, list | tuple):
        return found
    return (found,)


def _first_text(values: Iterable[object]) -> str | None:
    for value in values:
        text = str(value).strip(_BLANK)
        if text:
            return text[:MAX_TEXT].rstrip(_BLANK)
    return None


def _duration(audio: mutagen.FileType, size: int) -> float | None:
    length = getattr(audio.info, "length", None)
    if not isinstance(length, int | float) or isinstance(length, bool):
        return None
    seconds = float(length)
    # A WAV written to a pipe cannot go back to fill in its sizes, so its header claims
    # 4 GiB of samples; PCM has an exact bit rate, so the file size bounds the truth.
    bitrate = getattr(audio.info, "bitrate", 0)
    if isinstance(audio, WAVE | AIFF) and isinstance(bitrate, int) and bitrate > 0:
        seconds = min(seconds, size * 8 / bitrate)
    # Some containers report 0 when they do not know (fragmented MP4, ASF without a
    # duration field), so 0 means "unknown" rather than "silent".
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _track_number(text: str | None) -> int | None:
    """'3', '03' and '3/12' -> 3; anything that does not start with a number -> None."""
    if text is None:
        return None
    match = _LEADING_NUMBER.match(text)
    if match is None:
        return None
    number = int(match.group(1))
    return number if number > 0 else None


def _year(text: str | None) -> int | None:
    """'2019', '2019-05-01', '20190501' and '01.05.2019' -> 2019; no plausible year -> None."""
    if text is None:
        return None
    match = _LEADING_YEAR.match(text) or _ANY_YEAR.search(text)
    if match is None:
        return None
    year = int(match.group(1))
    return year if year >= 1000 else None


def _riff_info(fileobj: typing.BinaryIO) -> dict[str, list[str]]:
    """The LIST/INFO texts of a RIFF/WAVE file, found by seeking from chunk to chunk."""
    fileobj.seek(0)
    header = fileobj.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return {}
    texts: dict[str, list[str]] = {}
    for _ in range(_RIFF_MAX_CHUNKS):
        chunk_header = fileobj.read(8)
        if len(chunk_header) < 8:
            break
        chunk_id, size = struct.unpack("<4sI", chunk_header)
        padded = size + (size & 1)
        if chunk_id == b"LIST" and 4 <= size <= _RIFF_INFO_MAX_BYTES:
            body = fileobj.read(padded)
            if body[:4] == b"INFO":
                for key, value in _riff_info_items(body[4:size]):
                    texts.setdefault(key, []).append(value)
        else:
            fileobj.seek(padded, io.SEEK_CUR)
    return texts


def _riff_info_items(body: bytes) -> Iterable[tuple[str, str]]:
    offset = 0
    while offset + 8 <= len(body):
        raw_id, size = struct.unpack_from("<4sI", body, offset)
        raw = body[offset + 8 : offset + 8 + size]
        offset += 8 + size + (size & 1)
        # The format predates UTF-8 and names no encoding; modern writers use UTF-8.
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw.decode("latin-1")
        yield raw_id.decode("latin-1"), value


def _one_line(error: Exception) -> str:
    # mutagen often wraps a bare short-read OSError, whose text is empty.
    detail = " ".join(str(error).split()) or "it ends early or is corrupt"
    return detail[:200]
