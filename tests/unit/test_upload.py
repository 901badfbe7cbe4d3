"""Upload bodies: field validation, file names as titles, and no chunk left by a failure."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pytest

from distpotify.errors import BadRequest, UnsupportedMedia
from distpotify.store.chunks import ChunkStore
from distpotify.upload import Body, ingest, parse_body, song_fields, title_from_filename
from tests.helpers.audio import make_audio

SONG = "33333333-3333-4333-8333-333333333333"


def test_song_fields_coerce_numbers_and_strip_text() -> None:
    assert song_fields({"title": "  Hi ", "year": "1999", "track": 4, "genre": ""}) == {
        "title": "Hi", "year": 1999, "track": 4, "genre": None}


@pytest.mark.parametrize("values", [{"year": "soon"}, {"track": True}, {"title": 5},
                                    {"title": "x" * 1001}, {"sha256": "x"}, {"year": -3}])
def test_bad_song_fields_are_refused(values: dict) -> None:
    with pytest.raises(BadRequest):
        song_fields(values)


@pytest.mark.parametrize(("name", "title"), [("Song.mp3", "Song"), ("dir/a b.flac", "a b"),
                                             ("C:\\x\\y.wav", "y"), ("", None), (None, None)])
def test_title_from_filename(name: str | None, title: str | None) -> None:
    assert title_from_filename(name) == title


def test_other_content_types_are_415() -> None:
    with pytest.raises(UnsupportedMedia):
        parse_body(io.BytesIO(b"x"), "image/png", {})


def test_ingest_splits_into_chunks_of_the_given_size(tmp_path: Path) -> None:
    audio = make_audio(tmp_path / "a.wav", "wav", seconds=1).read_bytes()
    chunks = ChunkStore(tmp_path / "chunks")

    result = ingest(Body(io.BytesIO(audio), None, {}), SONG, 8192, chunks)

    assert [size for _, size, _ in result.chunks][:-1] == [8192] * (len(result.chunks) - 1)
    assert b"".join(chunks.read(SONG, idx) for idx, _, _ in result.chunks) == audio
    assert result.size == len(audio) and result.info.mime == "audio/wav"


def test_ingest_failure_removes_the_chunks_it_wrote(tmp_path: Path) -> None:
    audio = make_audio(tmp_path / "a.wav", "wav", seconds=1).read_bytes()
    chunks = ChunkStore(tmp_path / "chunks")

    class FailingFile(io.BytesIO):
        reads = 0

        def read(self, size: int | None = -1) -> bytes:
            if size == 8192:
                self.reads += 1
                if self.reads == 3:
                    raise OSError("disk went away")
            return super().read(size)

    with pytest.raises(OSError):
        ingest(Body(FailingFile(audio), None, {}), SONG, 8192, chunks)

    assert os.listdir(chunks.root) == []


def multipart_body(audio: bytes, **fields: str) -> bytes:
    parts = [f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                 b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n")
    return b"".join(parts) + b"--b--\r\n"


def test_a_multipart_file_over_a_mebibyte_is_spooled_to_the_given_dir(tmp_path: Path) -> None:
    audio = os.urandom(3 << 20)
    spool = tmp_path / "spool"
    spool.mkdir()

    body = parse_body(io.BytesIO(multipart_body(audio, title="Hi")),
                      "multipart/form-data; boundary=b", {}, spool)

    where = os.readlink(f"/proc/self/fd/{body.file.fileno()}")
    assert where.startswith(str(spool))
    assert body.file.read() == audio and body.fields == {"title": "Hi"}
    assert body.filename == "a.wav"


def test_a_small_multipart_file_stays_in_memory(tmp_path: Path) -> None:
    body = parse_body(io.BytesIO(multipart_body(b"RIFF" * 100)),
                      "multipart/form-data; boundary=b", {}, tmp_path)

    assert body.file.read() == b"RIFF" * 100
    assert isinstance(body.file, tempfile.SpooledTemporaryFile)
    assert isinstance(body.file._file, io.BytesIO)  # never touched the disk
