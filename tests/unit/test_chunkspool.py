"""A raw upload spooled straight into chunk files: pieces, reads, adoption, removal, and the
replica site choosing it only for raw audio uploads."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from distpotify.api.site import ReplicaSite
from distpotify.store.chunks import ChunkStore
from distpotify.store.chunkspool import ChunkSpool
from distpotify.upload import Body, ingest
from tests.helpers.audio import make_wav

SONG = "abcdef44-4444-4444-8444-444444444444"
CHUNK = 1000


@pytest.fixture
def chunks(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path / "chunks")


def spooled(chunks: ChunkStore, data: bytes, step: int = 333) -> ChunkSpool:
    spool = ChunkSpool(chunks, CHUNK)
    for at in range(0, len(data), step):  # writes that cross the pieces' edges
        spool.write(data[at:at + step])
    spool.seek(0)  # what twisted.web does once the body is whole
    return spool


def gone(chunks: ChunkStore, deadline: float = 5.0) -> bool:
    """Whether the chunk directory empties (the pool removes a closed spool's pieces)."""
    end = time.monotonic() + deadline
    while os.listdir(chunks.root):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_a_body_becomes_pieces_of_chunk_size_with_their_hashes_and_reads_back_whole(
    chunks: ChunkStore,
) -> None:
    data = os.urandom(3 * CHUNK + 217)
    spool = spooled(chunks, data)

    assert spool.size == len(data) and spool.sha256() == hashlib.sha256(data).hexdigest()
    pieces = [data[at:at + CHUNK] for at in range(0, len(data), CHUNK)]
    assert spool.written() == [(n, len(p), hashlib.sha256(p).hexdigest())
                               for n, p in enumerate(pieces)]
    assert spool.read() == data
    assert spool.seek(-300, io.SEEK_END) == len(data) - 300 and spool.read(50) == data[-300:-250]
    assert spool.tell() == len(data) - 250
    spool.seek(CHUNK - 10)
    assert spool.read(20) == data[CHUNK - 10:CHUNK + 10]  # across two pieces


def test_an_adopted_spool_is_the_songs_chunks_and_closing_it_leaves_them(
    chunks: ChunkStore,
) -> None:
    data = os.urandom(2 * CHUNK + 5)
    spool = spooled(chunks, data)

    spool.adopt(SONG)
    spool.close()

    assert sorted(os.listdir(chunks.root)) == [f"{SONG}_0", f"{SONG}_1", f"{SONG}_2"]
    assert b"".join(chunks.read(SONG, n) for n in range(3)) == data


def test_a_spool_closed_without_adoption_removes_its_pieces_and_takes_no_more(
    chunks: ChunkStore,
) -> None:
    spool = ChunkSpool(chunks, CHUNK)
    spool.write(os.urandom(2 * CHUNK + 1))
    spool.close()

    with pytest.raises(ValueError, match="closed"):
        spool.write(b"x" * CHUNK)
    with pytest.raises(ValueError, match="closed"):
        spool.adopt(SONG)
    # Every piece handed to the pool written, then removed: by close's clean-up, or by the
    # piece itself when it was written after it. (The directory was seen empty once a piece
    # still being written after the clean-up created its file: one full run failed so.)
    chunks.pool().shutdown(wait=True)
    assert os.listdir(chunks.root) == []


def test_a_piece_whose_fsync_fails_fails_the_spool_and_leaves_nothing(
    chunks: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    spool = spooled(chunks, os.urandom(CHUNK + 1))

    with pytest.raises(OSError, match="No space"):
        spool.adopt(SONG)
    spool.close()
    assert gone(chunks)


def test_a_piece_that_cannot_be_written_fails_the_next_write_and_leaves_nothing(
    chunks: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(path: object, mode: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("distpotify.store.chunks.open", disk_full, raising=False)
    spool = ChunkSpool(chunks, CHUNK)
    spool.write(b"a" * CHUNK)  # handed to the pool, which fails it
    end = time.monotonic() + 5
    with pytest.raises(OSError, match="No space"):
        while time.monotonic() < end:
            spool.write(b"b")
            time.sleep(0.01)
    spool.close()
    assert gone(chunks)


def test_ingest_of_a_spooled_upload_equals_ingest_of_the_same_file(
    tmp_path: Path, chunks: ChunkStore
) -> None:
    wav = tmp_path / "song.wav"
    make_wav(wav, 5 * CHUNK + 77)
    data = wav.read_bytes()
    other = ChunkStore(tmp_path / "other")
    with open(wav, "rb") as f:
        expected = ingest(Body(f, None, {}), SONG, CHUNK, other)

    got = ingest(Body(spooled(chunks, data), None, {}), SONG, CHUNK, chunks)

    assert got == expected
    assert sorted(os.listdir(chunks.root)) == sorted(os.listdir(other.root))
    assert all(chunks.read(SONG, n) == other.read(SONG, n) for n in range(len(got.chunks)))


@pytest.mark.parametrize(("head", "spooled_here"), [
    (b"POST /songs HTTP/1.1\r\nContent-Type: audio/wav\r\n", True),
    (b"POST /songs?title=x HTTP/1.1\r\nContent-Type: application/octet-stream\r\n", True),
    (b"POST /songs HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=b\r\n", False),
    (b"POST /songs/x HTTP/1.1\r\nContent-Type: audio/wav\r\n", False),
    (b"PUT /songs HTTP/1.1\r\nContent-Type: audio/wav\r\n", False),
    (b"POST /playlists HTTP/1.1\r\nContent-Type: audio/wav\r\n", False),
])
def test_the_replica_site_spools_only_raw_audio_uploads_into_chunks(
    tmp_path: Path, head: bytes, spooled_here: bool
) -> None:
    made: list[int] = []

    def spool() -> io.RawIOBase:
        made.append(1)
        return io.BytesIO()

    site = ReplicaSite(Resource(), node_id=1, max_body=1 << 30, spool_dir=tmp_path,
                       clock=Clock(), upload_spool=spool)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    channel.makeConnection(StringTransport())

    channel.dataReceived(head + b"Host: x\r\nContent-Length: 200000\r\n\r\n" + b"a" * 10)

    assert made == ([1] if spooled_here else [])
