"""The chunk cache: bounded, oldest out first, filled by lookups on the database thread,
emptied of a chunk as soon as an op for it is applied, and read without the database thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from distpotify.model import Op, Version
from distpotify.store.chunkcache import ChunkCache
from distpotify.store.metadata import Change, MetadataDB, MetadataStore

SONG = "11111111-1111-4111-8111-111111111111"
ROW = {"idx": 0, "size": 5, "sha256": "c" * 64}


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    database = MetadataDB(tmp_path / "meta.sqlite3", node_id=2)
    database.begin_leading(1)
    database.write([Change("chunks", f"{SONG}/{idx}", {"size": 5, "sha256": "c" * 64,
                                                       "deleted": 0}) for idx in range(3)])
    return database


def test_a_full_cache_drops_its_oldest_row_first() -> None:
    cache = ChunkCache(capacity=2)
    for idx in range(3):
        cache.remember(SONG, idx, {**ROW, "idx": idx})

    assert len(cache) == 2
    assert cache.get(SONG, 0) is None
    assert cache.get(SONG, 1) == {**ROW, "idx": 1} and cache.get(SONG, 2) == {**ROW, "idx": 2}


def test_forget_drops_one_row_and_clear_drops_all() -> None:
    cache = ChunkCache()
    cache.remember(SONG, 0, ROW)
    cache.remember(SONG, 1, {**ROW, "idx": 1})

    cache.forget(SONG, 0)
    cache.forget(SONG, 7)  # never cached: nothing to do
    assert cache.get(SONG, 0) is None and cache.get(SONG, 1) is not None

    cache.clear()
    assert len(cache) == 0


def test_only_a_chunk_looked_up_before_is_cached(db: MetadataDB) -> None:
    assert db.cached_chunk(SONG, 1) is None

    found = db.chunk(SONG, 1)

    assert found == {"idx": 1, "size": 5, "sha256": "c" * 64}
    assert db.cached_chunk(SONG, 1) == found
    assert db.cached_chunk(SONG, 2) is None


def test_a_missing_chunk_is_not_cached(db: MetadataDB) -> None:
    assert db.chunk(SONG, 9) is None
    assert db.cached_chunk(SONG, 9) is None


def test_tombstoning_a_chunk_drops_it_from_the_cache(db: MetadataDB) -> None:
    db.chunk(SONG, 0)
    db.chunk(SONG, 1)

    db.write([Change("chunks", f"{SONG}/0", {"deleted": 1})])

    assert db.cached_chunk(SONG, 0) is None
    assert db.cached_chunk(SONG, 1) is not None


def test_a_replicated_op_for_a_chunk_drops_it_from_the_cache(db: MetadataDB) -> None:
    db.chunk(SONG, 2)

    db.apply_ops([Op(Version(5, 1, 1), "chunks", f"{SONG}/2", {"deleted": 1})])

    assert db.cached_chunk(SONG, 2) is None and db.chunk(SONG, 2) is None


def test_the_store_reads_a_cached_chunk_without_the_database_thread(db: MetadataDB) -> None:
    calls: list[Any] = []

    def runner(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        calls.append(f)
        return Deferred()  # the database thread is busy: nothing it runs completes

    db.chunk(SONG, 0)
    store = MetadataStore(db, runner)

    assert store.cached_chunk(SONG, 0) == {"idx": 0, "size": 5, "sha256": "c" * 64}
    assert calls == []
