"""Turning an upload body into verified chunk files and song fields, on a worker thread.

The body is already spooled to a file by the HTTP layer; it is read once, chunk by chunk, so
memory stays at one chunk whatever the upload size.
"""
# test-case-name: tests.unit.test_upload

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

import attrs
import multipart

from distpotify.errors import BadRequest, UnsupportedMedia
from distpotify.media import MAX_TEXT, AudioInfo, NotAudio, read_audio_info
from distpotify.store.chunks import ChunkStore
from distpotify.store.chunkspool import ChunkSpool
from distpotify.store.covers import CoverStore

EDITABLE = ("title", "artist", "album", "track", "year", "genre")
_INTEGER_FIELDS = ("track", "year")


@attrs.frozen
class Body:
    """The audio part of an upload request and what the client said about it."""

    file: BinaryIO
    filename: str | None
    fields: dict[str, str]


@attrs.frozen
class Ingested:
    size: int
    sha256: str
    chunks: tuple[tuple[int, int, str], ...]  # (idx, size, sha256)
    info: AudioInfo
    cover_sha256: str | None = None  # the embedded cover, stored durably beside the chunks


def song_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate editable song fields (PATCH bodies, upload overrides); BadRequest if wrong."""
    unknown = set(values) - set(EDITABLE)
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    clean: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == "":
            clean[name] = None
        elif name in _INTEGER_FIELDS:
            try:
                number = int(value)
            except (TypeError, ValueError, OverflowError):  # OverflowError: 1e999
                raise BadRequest(f"{name} must be an integer, got {value!r}") from None
            if isinstance(value, bool) or not 0 <= number <= 100_000:
                raise BadRequest(f"{name} is out of range: {value!r}")
            clean[name] = number
        elif isinstance(value, str) and len(value) <= MAX_TEXT and encodable(value):
            clean[name] = value.strip()
        else:
            raise BadRequest(f"{name} must be a string of at most {MAX_TEXT} characters")
    return clean


def encodable(text: str) -> bool:
    """Text that can be stored and sent as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def raw_audio(content_type: str) -> bool:
    """Whether a body of this Content-Type is the audio itself (not multipart)."""
    mime, _ = multipart.parse_options_header(content_type or "")
    return mime.startswith("audio/") or mime in ("application/octet-stream", "application/ogg", "")


def parse_body(content: BinaryIO, content_type: str, query: Mapping[str, str],
               spool_dir: Path | None = None) -> Body:
    """Find the audio in a raw ``audio/*`` body or in the multipart field ``file`` (spooled,
    past SPOOL_PART bytes, to ``spool_dir``: the data dir's tmp/, not the system's)."""
    mime, options = multipart.parse_options_header(content_type or "")
    if mime == "multipart/form-data":
        return _parse_multipart(content, options.get("boundary", ""), query, spool_dir)
    if raw_audio(content_type):
        return Body(content, query.get("filename"), dict(query))
    raise UnsupportedMedia(f"expected an audio/* body or multipart/form-data, got {mime!r}")


SPOOL_PART = 1 << 20  # a file part longer than this is spooled to disk
READ_BLOCK = 1 << 16
MAX_PARTS = 128
MAX_FIELD_BYTES = 4 * MAX_TEXT  # at most 4 UTF-8 bytes a character


def _parse_multipart(content: BinaryIO, boundary: str, query: Mapping[str, str],
                     spool_dir: Path | None) -> Body:
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    fields = dict(query)
    audio: BinaryIO | None = None
    filename: str | None = None
    part: multipart.MultipartSegment | None = None
    sink: BinaryIO | bytearray | None = None  # where the current part's bytes go, if anywhere
    try:
        with multipart.PushMultipartParser(boundary, max_segment_count=MAX_PARTS) as parser:
            while not parser.closed:
                for event in parser.parse(content.read(READ_BLOCK)):
                    if isinstance(event, multipart.MultipartSegment):
                        part, sink = event, None
                        if part.name == "file" and part.filename is not None:
                            if audio is not None:
                                audio.close()  # the last file part is the one
                            audio = cast(BinaryIO, tempfile.SpooledTemporaryFile(  # noqa: SIM115
                                SPOOL_PART, dir=None if spool_dir is None else str(spool_dir)))
                            sink, filename = audio, part.filename
                        elif part.name in EDITABLE:
                            sink = bytearray()
                    elif event:
                        if isinstance(sink, bytearray):
                            sink += event
                            if len(sink) > MAX_FIELD_BYTES:
                                raise BadRequest(
                                    f"{part.name if part else 'a field'} must be at most"
                                    f" {MAX_TEXT} characters")
                        elif sink is not None:
                            sink.write(event)
                    elif part is not None and isinstance(sink, bytearray):
                        fields[str(part.name)] = bytes(sink).decode(part.charset or "utf8")
    except multipart.MultipartError as e:
        raise BadRequest(f"malformed multipart body: {e}") from None
    except (LookupError, UnicodeError) as e:  # an unknown charset, or bytes not in it
        raise BadRequest(f"a multipart text field cannot be decoded: {e}") from None
    if audio is None:
        raise BadRequest("multipart upload without a 'file' field")
    audio.seek(0)
    return Body(audio, filename, fields)


def ingest(body: Body, song_id: str, chunk_size: int, chunks: ChunkStore,
           reached: Callable[[str], None] = lambda _: None,
           covers: CoverStore | None = None) -> Ingested:
    """Read tags, then split the audio into durable chunk files, hashing as it goes: all of
    them written and fsynced together, then renamed, then the directory fsynced once; on any
    failure none is left. The embedded cover, if any, is made durable in ``covers`` too (a
    content-addressed file, perhaps shared with other songs: never removed here). ``reached``
    is told each step (failpoints)."""
    if isinstance(body.file, ChunkSpool):
        body.file.hashes()  # a piece that could not be written fails here, not as "not audio"
    try:
        info = read_audio_info(body.file)
    except NotAudio as e:
        raise UnsupportedMedia(f"not an audio file this service can read: {e}") from None
    if isinstance(body.file, ChunkSpool) and body.file.chunk_size == chunk_size:
        return _adopt(body.file, info, song_id, reached, covers)
    body.file.seek(0)
    digest = hashlib.sha256()
    sizes: list[int] = []
    with chunks.batch(song_id) as batch:
        while block := body.file.read(chunk_size):
            batch.add(len(sizes), block)  # written and hashed by the pool meanwhile
            digest.update(block)
            sizes.append(len(block))
        hashes = batch.written()
        reached("upload.chunks_written")
        batch.commit()
    reached("upload.chunks_durable")
    cover = None
    if covers is not None and info.cover is not None:
        cover = covers.put(info.cover)
    written = tuple(zip(range(len(sizes)), sizes, hashes, strict=True))
    return Ingested(sum(sizes), digest.hexdigest(), written, info, cover)


def _adopt(spool: ChunkSpool, info: AudioInfo, song_id: str, reached: Callable[[str], None],
           covers: CoverStore | None) -> Ingested:
    """The chunks of a body spooled into chunk files as it arrived: made the song's."""
    written = tuple(spool.written())
    reached("upload.chunks_written")
    spool.adopt(song_id)
    reached("upload.chunks_durable")
    cover = covers.put(info.cover) if covers is not None and info.cover is not None else None
    return Ingested(spool.size, spool.sha256(), written, info, cover)


def title_from_filename(filename: str | None) -> str | None:
    if not filename:
        return None
    stem = os.path.splitext(os.path.basename(filename.replace("\\", "/")))[0].strip()
    return stem[:MAX_TEXT] or None
