"""The scrubber re-hashes chunks in pages at no more than its byte rate and its file rate: with
tiny chunks the file rate bounds it (an idle replica's cost must not grow with its files), with
large ones the byte rate does."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from distpotify.replication.fetch import ChunkRef
from distpotify.replication.repair import ChunkGuard, Scrubber
from distpotify.store.chunks import ChunkStore
from tests.helpers.api import result_of, run_now


class Registry:
    """``MetadataStore.run(MetadataDB.registry_after, ...)`` over ``count`` chunks of ``size``."""

    def __init__(self, count: int, size: int) -> None:
        self.rows = [(n + 1, f"{n:08d}-0000-4000-8000-000000000000", 0, size, "0" * 64)
                     for n in range(count)]

    def run(self, method: Any, rowid: int, limit: int) -> Any:
        return succeed([row for row in self.rows if row[0] > rowid][:limit])


class Guard:
    def __init__(self) -> None:
        self.checked: list[ChunkRef] = []

    async def scrub(self, refs: list[ChunkRef]) -> None:
        self.checked += refs


def scrubbed_in(seconds: int, *, count: int, size: int, rate: float) -> tuple[int, int]:
    """Chunks and bytes the scrubber checks in ``seconds`` of a Clock."""
    clock, guard = Clock(), Guard()
    scrubber = Scrubber(Registry(count, size), guard, clock, rate)  # type: ignore[arg-type]
    scrubber.loop.startService()
    for _ in range(seconds * 10):
        clock.advance(0.1)
    scrubber.loop.stopService()
    return len(guard.checked), sum(ref.size for ref in guard.checked)


def test_tiny_chunks_are_scrubbed_at_the_file_rate() -> None:
    checked, _ = scrubbed_in(120, count=100_000, size=300, rate=8 * 1024 * 1024)
    # 32 files a second (a page of 64 every 2 s), not 64 a second as the byte rate allows.
    assert 100 * 32 <= checked <= 32 * 120 + 64


def test_large_chunks_keep_the_byte_rate() -> None:
    rate = 8 * 1024 * 1024
    _, read = scrubbed_in(120, count=100_000, size=256 * 1024, rate=rate)
    assert 100 * rate <= read <= 120 * rate + 64 * 256 * 1024


def test_status_names_both_rates() -> None:
    scrubber = Scrubber(Registry(0, 1), Guard(), Clock(), 1024)  # type: ignore[arg-type]
    assert scrubber.status()["rate_files_per_s"] == 32


class CountingRunner:
    """Runs blocking work at once, counting the hand-offs a worker thread would take."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls += 1
        return run_now(f, *args, **kwargs)


class Fetcher:
    """Stands in for the ChunkFetcher: writes the right bytes back, as a peer would give."""

    def __init__(self, chunks: ChunkStore, data: dict[str, bytes]) -> None:
        self._chunks = chunks
        self._data = data
        self.fetched: list[str] = []

    async def fetch_durably(self, ref: ChunkRef, peers: list[str]) -> bool:
        name = f"{ref.song_id}_{ref.idx}"
        self.fetched.append(name)
        self._chunks.path(ref.song_id, ref.idx).write_bytes(self._data[name])
        return True


def stored_page(tmp_path: Path, count: int) -> tuple[ChunkStore, list[ChunkRef], dict[str, bytes]]:
    chunks = ChunkStore(tmp_path / "chunks")
    refs, data = [], {}
    for n in range(count):
        song_id, body = f"{n:08d}-0000-4000-8000-000000000000", f"chunk {n}".encode()
        chunks.path(song_id, 0).write_bytes(body)
        data[f"{song_id}_0"] = body
        refs.append(ChunkRef(song_id, 0, len(body), hashlib.sha256(body).hexdigest()))
    return chunks, refs, data


def test_a_page_is_rehashed_in_one_hand_off_to_a_worker_thread(tmp_path: Path) -> None:
    chunks, refs, data = stored_page(tmp_path, 64)
    runner = CountingRunner()
    guard = ChunkGuard(chunks, Fetcher(chunks, data), runner, lambda: [])  # type: ignore[arg-type]

    result_of(Deferred.fromCoroutine(guard.scrub(refs)))

    assert runner.calls == 1
    assert guard.counters.verified == 64 and guard.counters.repaired == 0


def test_the_corrupt_and_missing_files_of_a_page_are_repaired(tmp_path: Path) -> None:
    chunks, refs, data = stored_page(tmp_path, 8)
    fetcher = Fetcher(chunks, data)
    guard = ChunkGuard(chunks, fetcher, run_now, lambda: ["http://peer"])  # type: ignore[arg-type]
    corrupt, missing = refs[2], refs[5]
    chunks.path(corrupt.song_id, 0).write_bytes(b"chunk X")  # same size, other bytes
    chunks.path(missing.song_id, 0).unlink()

    result_of(Deferred.fromCoroutine(guard.scrub(refs)))

    assert fetcher.fetched == [f"{corrupt.song_id}_0", f"{missing.song_id}_0"]
    assert guard.counters.corrupt == 1 and guard.counters.missing == 1
    assert guard.counters.repaired == 2 and guard.counters.verified == 6
    assert chunks.path(corrupt.song_id, 0).read_bytes() == data[f"{corrupt.song_id}_0"]
