"""Chunk files: atomic durable writes, names only from validated ids, crash recovery."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from distpotify.store.chunks import ChunkStore

SONG = "abcdef22-2222-4222-8222-222222222222"


@pytest.fixture
def chunks(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path / "chunks")


def test_write_stores_the_bytes_and_returns_their_sha256(chunks: ChunkStore) -> None:
    digest = chunks.write(SONG, 3, b"abc")

    assert digest == hashlib.sha256(b"abc").hexdigest()
    assert chunks.read(SONG, 3) == b"abc"
    assert os.listdir(chunks.root) == [f"{SONG}_3"]
    assert chunks.verify(SONG, 3, digest) and not chunks.verify(SONG, 3, "0" * 64)


@pytest.mark.parametrize(("song_id", "idx"), [("../../etc/passwd", 0), (SONG.upper(), 0),
                                              ("", 0), (SONG, -1), (SONG, "0")])
def test_only_validated_names_become_paths(chunks: ChunkStore, song_id: str, idx: int) -> None:
    with pytest.raises(ValueError):
        chunks.path(song_id, idx)


def test_clean_removes_temp_and_orphan_files_only(chunks: ChunkStore) -> None:
    chunks.write(SONG, 0, b"live")
    chunks.write(SONG, 1, b"orphan")
    (chunks.root / f"{SONG}_2.tmp").write_bytes(b"half")

    assert chunks.clean({f"{SONG}_0"}) == (1, 1)
    assert os.listdir(chunks.root) == [f"{SONG}_0"]


def test_remove_ignores_missing_files(chunks: ChunkStore) -> None:
    chunks.write(SONG, 0, b"x")

    assert chunks.remove([(SONG, 0), (SONG, 1)]) == 1
    assert os.listdir(chunks.root) == []


def test_a_failed_chunk_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(tmp_path / "chunks")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        store.write("11111111-1111-4111-8111-111111111111", 0, b"x" * 1000)

    assert os.listdir(tmp_path / "chunks") == []
