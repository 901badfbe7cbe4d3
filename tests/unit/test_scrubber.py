"""The scrubber re-hashes chunks in pages at no more than its byte rate and its file rate: with
tiny chunks the file rate bounds it (an idle replica's cost must not grow with its files), with
large ones the byte rate does."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from distpotify.replication.fetch import ChunkRef
from distpotify.replication.repair import Scrubber


class Registry:
    """``MetadataStore.run(MetadataDB.registry_after, ...)`` over ``count`` chunks of ``size``."""

    def __init__(self, count: int, size: int) -> None:
        self.rows = [(f"{n:08d}-0000-4000-8000-000000000000", 0, size, "0" * 64)
                     for n in range(count)]

    def run(self, method: Any, song_id: str, idx: int, limit: int) -> Any:
        after = [row for row in self.rows if (row[0], row[1]) > (song_id, idx)]
        return succeed(after[:limit])


class Guard:
    def __init__(self) -> None:
        self.checked: list[ChunkRef] = []

    async def ensure(self, ref: ChunkRef, recheck: bool = False) -> bool:
        assert recheck
        self.checked.append(ref)
        return True


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
