"""Chunk files: durable writes in batches, names only from validated ids, crash recovery."""

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


def write(chunks: ChunkStore, idx: int, data: bytes) -> str:
    with chunks.batch(SONG) as batch:
        written = batch.add(idx, data)
        batch.commit()
    return written.result()


def test_a_batch_stores_the_bytes_and_returns_their_sha256(chunks: ChunkStore) -> None:
    digest = write(chunks, 3, b"abc")

    assert digest == hashlib.sha256(b"abc").hexdigest()
    assert chunks.read(SONG, 3) == b"abc"
    assert os.listdir(chunks.root) == [f"{SONG}_3"]
    assert chunks.verify(SONG, 3, digest) and not chunks.verify(SONG, 3, "0" * 64)


def test_a_batch_renames_its_chunks_into_place_only_once_all_are_durable(
    chunks: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(
        f"/proc/self/fd/{fd}")), real_fsync(fd))[1])

    with chunks.batch(SONG) as batch:
        for idx in range(5):
            batch.add(idx, bytes([idx]) * 1000)
        batch.written()
        assert sorted(os.listdir(chunks.root)) == [f"{SONG}_{n}.tmp" for n in range(5)]
        batch.commit()

    assert sorted(os.listdir(chunks.root)) == [f"{SONG}_{n}" for n in range(5)]
    # each chunk once, as its temp file, then the directory once
    assert sorted(Path(p).name for p in synced[:-1]) == [f"{SONG}_{n}.tmp" for n in range(5)]
    assert synced[-1] == str(chunks.root)


def test_a_batch_that_fails_leaves_none_of_its_files(chunks: ChunkStore) -> None:
    with pytest.raises(OSError, match="disk went away"), chunks.batch(SONG) as batch:
        batch.add(0, b"a" * 100)
        batch.add(1, b"b" * 100)
        raise OSError("disk went away")

    assert os.listdir(chunks.root) == []


@pytest.mark.parametrize(("song_id", "idx"), [("../../etc/passwd", 0), (SONG.upper(), 0),
                                              ("", 0), (SONG, -1), (SONG, "0")])
def test_only_validated_names_become_paths(chunks: ChunkStore, song_id: str, idx: int) -> None:
    with pytest.raises(ValueError):
        chunks.path(song_id, idx)


def test_clean_removes_temp_and_orphan_files_only(chunks: ChunkStore) -> None:
    write(chunks, 0, b"live")
    write(chunks, 1, b"orphan")
    (chunks.root / f"{SONG}_2.tmp").write_bytes(b"half")

    assert chunks.clean({f"{SONG}_0"}) == (1, 1)
    assert os.listdir(chunks.root) == [f"{SONG}_0"]


def test_clean_and_list_names_the_complete_live_files_that_stay(chunks: ChunkStore) -> None:
    write(chunks, 0, b"live")
    write(chunks, 1, b"orphan")
    (chunks.root / f"{SONG}_2.part").write_bytes(b"half of a live one")
    (chunks.root / f"{SONG}_3.tmp").write_bytes(b"half")

    temps, orphans, kept = chunks.clean_and_list({f"{SONG}_0", f"{SONG}_2"})

    assert (temps, orphans, kept) == (1, 1, {f"{SONG}_0"})
    assert sorted(os.listdir(chunks.root)) == [f"{SONG}_0", f"{SONG}_2.part"]


def test_remove_ignores_missing_files(chunks: ChunkStore) -> None:
    write(chunks, 0, b"x")

    assert chunks.remove([(SONG, 0), (SONG, 1)]) == 1
    assert os.listdir(chunks.root) == []


def test_a_batch_whose_fsync_fails_on_a_full_disk_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(tmp_path / "chunks")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError), store.batch(SONG) as batch:
        batch.add(0, b"x" * 1000)
        batch.commit()

    assert os.listdir(tmp_path / "chunks") == []


def test_a_batch_hashes_its_chunks_in_order_and_stops_at_the_first_failure(
    chunks: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = [bytes([n]) * 5000 for n in range(40)]  # more than the pool holds at once
    with chunks.batch(SONG) as batch:
        for idx, block in enumerate(blocks):
            batch.add(idx, block)
        assert batch.written() == [hashlib.sha256(b).hexdigest() for b in blocks]
        batch.commit()
    assert [chunks.read(SONG, n) for n in range(40)] == blocks

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    other = "abcdef33-3333-4333-8333-333333333333"
    with pytest.raises(OSError, match="No space"), chunks.batch(other) as batch:
        batch.add(0, b"x")
        with pytest.raises(OSError, match="No space"):
            batch.written()
        batch.add(1, b"y")  # raises: nothing more is written once the batch failed
        raise AssertionError("add went on after a failed write")
    assert sorted(os.listdir(chunks.root)) == sorted(f"{SONG}_{n}" for n in range(40))
