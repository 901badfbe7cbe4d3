"""Cover files and the resized cache on disk (store/covers.py): content-addressed, only hex
names ever become paths, corrupt files dropped, orphans collected at start-up, and the cache
bounded in bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from distpotify.store.covers import CoverCache, CoverStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_cover_is_stored_under_its_sha256(tmp_path: Path) -> None:
    store = CoverStore(tmp_path / "covers")

    name = store.put(b"picture bytes")

    assert name == sha(b"picture bytes")
    assert (tmp_path / "covers" / name).read_bytes() == b"picture bytes"
    assert store.put(b"picture bytes") == name and store.names() == {name}


def test_wrong_bytes_are_not_stored_under_a_name(tmp_path: Path) -> None:
    store = CoverStore(tmp_path)

    assert not store.put_verified(b"other bytes", sha(b"picture"))
    assert store.names() == set()


@pytest.mark.parametrize("name", [
    "../etc/passwd", "A" * 64, "0" * 63, "0" * 65, "0" * 63 + "/", "", "0" * 64 + "\n",
])
def test_only_lowercase_hex_digests_become_paths(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        CoverStore(tmp_path).path(name)


def test_a_corrupt_file_reads_as_missing_and_is_removed(tmp_path: Path) -> None:
    store = CoverStore(tmp_path)
    name = store.put(b"picture")
    store.path(name).write_bytes(b"pictur!")

    assert store.read(name) is None
    assert not store.has(name)


def test_clean_removes_temps_and_unnamed_covers(tmp_path: Path) -> None:
    store = CoverStore(tmp_path)
    kept, orphan = store.put(b"kept"), store.put(b"orphan")
    (tmp_path / f"{kept}.abc.tmp").write_bytes(b"half")

    assert store.clean({kept}) == (1, 1)
    assert os.listdir(tmp_path) == [kept] and orphan not in store.names()


def test_cache_returns_what_it_stored(tmp_path: Path) -> None:
    cache = CoverCache(tmp_path, limit=1 << 20)
    cache.put(sha(b"a"), 300, b"small copy")

    assert cache.get(sha(b"a"), 300) == b"small copy"
    assert cache.get(sha(b"a"), 100) is None


def test_cache_stays_within_its_byte_limit(tmp_path: Path) -> None:
    cache = CoverCache(tmp_path, limit=10_000)
    for n in range(50):
        cache.put(sha(bytes([n])), 100, bytes([n]) * 1_000)
        assert cache.size() <= 10_000

    assert cache.get(sha(bytes([49])), 100) == bytes([49]) * 1_000  # the newest stays
    assert cache.get(sha(bytes([0])), 100) is None  # the oldest went


def test_cache_keeps_the_recently_used(tmp_path: Path) -> None:
    cache = CoverCache(tmp_path, limit=4_000)
    first = sha(b"first")
    cache.put(first, 100, b"f" * 1_000)
    old = os.stat(tmp_path / f"{first}_100").st_mtime_ns
    os.utime(tmp_path / f"{first}_100", ns=(old - 10**10, old - 10**10))
    for n in range(2):
        cache.put(sha(bytes([n])), 100, bytes([n]) * 1_000)
        path = tmp_path / f"{sha(bytes([n]))}_100"
        os.utime(path, ns=(old - 5 * 10**9, old - 5 * 10**9))
    assert cache.get(first, 100) is not None  # touched: now the most recent

    for n in range(2, 4):
        cache.put(sha(bytes([n])), 100, bytes([n]) * 1_000)

    assert cache.get(first, 100) == b"f" * 1_000
    assert cache.get(sha(bytes([0])), 100) is None


def test_a_copy_larger_than_the_whole_cache_is_not_kept(tmp_path: Path) -> None:
    cache = CoverCache(tmp_path, limit=100)
    cache.put(sha(b"a"), 100, b"x" * 101)

    assert cache.size() == 0
