"""Snapshots of the metadata: a backup is the replicated tables without node_meta, read beside
the writer, and installing one replaces every replicated table, keeps our node_meta and resets
the head, in one step that a crash leaves whole or not at all."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from distpotify.model import Version
from distpotify.store.metadata import Change, MetadataDB
from distpotify.store.snapshot import backup_copy

SONG = "11111111-1111-4111-8111-111111111111"
OURS = "22222222-2222-4222-8222-222222222222"


def leader(tmp_path: Path) -> MetadataDB:
    db = MetadataDB(tmp_path / "leader.sqlite3", node_id=3)
    db.begin_leading(4)
    db.set_meta("epoch", "4")
    db.write([
        Change("chunks", f"{SONG}/0", {"size": 5, "sha256": "a" * 64, "deleted": 0}),
        Change("songs", SONG, {"title": "t", "sha256": "b" * 64, "size": 5, "chunk_count": 1,
                               "created_at": "2026-01-01T00:00:00.000Z", "deleted": 0}),
    ])
    return db


def joiner(tmp_path: Path) -> MetadataDB:
    """A replica with a row and a cached chunk of its own, and its own node_meta."""
    db = MetadataDB(tmp_path / "joiner.sqlite3", node_id=1)
    db.begin_leading(1)
    db.set_meta("join_state", "snapshot")
    db.write([Change("playlists", OURS, {"name": "mine", "deleted": 0}),
              Change("chunks", f"{OURS}/0", {"size": 1, "sha256": "d" * 64, "deleted": 0})])
    db.chunk(OURS, 0)
    return db


def test_a_backup_holds_the_replicated_tables_without_node_meta(tmp_path: Path) -> None:
    source = leader(tmp_path)

    version = source.backup_to(tmp_path / "copy.sqlite3")

    assert version == source.head() == Version(4, 3, 2)
    copy = sqlite3.connect(tmp_path / "copy.sqlite3")
    assert copy.execute("SELECT count(*) FROM node_meta").fetchone()[0] == 0
    assert copy.execute("SELECT title FROM songs").fetchall() == [("t",)]
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file to ship


def test_an_installed_snapshot_replaces_the_tables_and_keeps_our_node_meta(
    tmp_path: Path,
) -> None:
    source = leader(tmp_path)
    source.backup_to(tmp_path / "copy.sqlite3")
    db = joiner(tmp_path)

    head = db.install_snapshot(tmp_path / "copy.sqlite3")

    assert head == db.cached_head() == db.head() == Version(4, 3, 2)
    song = db.song(SONG)
    assert song is not None and song["title"] == "t"
    assert db.playlists() == [] and db.get_row("playlists", OURS) is None
    assert db.digest() == source.digest()
    assert db.get_meta("join_state") == "snapshot" and db.get_meta("epoch") is None


def test_an_installed_snapshot_empties_the_chunk_cache(tmp_path: Path) -> None:
    leader(tmp_path).backup_to(tmp_path / "copy.sqlite3")
    db = joiner(tmp_path)
    assert db.cached_chunk(OURS, 0) is not None

    db.install_snapshot(tmp_path / "copy.sqlite3")

    assert db.cached_chunk(OURS, 0) is None
    assert db.live_chunk_names() == {f"{SONG}_0"}


def test_an_install_writes_our_node_meta_and_its_own_in_the_same_step(tmp_path: Path) -> None:
    leader(tmp_path).backup_to(tmp_path / "copy.sqlite3")
    db = joiner(tmp_path)

    db.install_snapshot(tmp_path / "copy.sqlite3", {"join_state": "CHUNKS", "snapshots": "1"})

    assert not (tmp_path / "copy.sqlite3").exists()  # it became the database
    on_disk = sqlite3.connect(tmp_path / "joiner.sqlite3")
    assert dict(on_disk.execute("SELECT name, value FROM node_meta")) == {
        "join_state": "CHUNKS", "snapshots": "1"}
    assert on_disk.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_install_that_fails_before_the_rename_leaves_the_old_database_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader(tmp_path).backup_to(tmp_path / "copy.sqlite3")
    db = joiner(tmp_path)
    head = db.head()

    def crash(*args: object) -> None:
        raise OSError("the crash, just before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="just before the rename"):
        db.install_snapshot(tmp_path / "copy.sqlite3", {"join_state": "CHUNKS"})
    monkeypatch.undo()

    assert db.head() == head and db.get_meta("join_state") == "snapshot"
    assert db.get_row("playlists", OURS) is not None
    reopened = MetadataDB(tmp_path / "joiner.sqlite3", node_id=1)
    assert reopened.head() == head and reopened.get_meta("join_state") == "snapshot"


def test_a_backup_reads_beside_a_write_in_progress(tmp_path: Path) -> None:
    source = leader(tmp_path)
    source._conn.execute("BEGIN IMMEDIATE")
    source._conn.execute("DELETE FROM songs")  # not committed: the copy must not see it
    try:
        version = backup_copy(source.path, tmp_path / "copy.sqlite3")
    finally:
        source._conn.execute("ROLLBACK")

    copy = sqlite3.connect(tmp_path / "copy.sqlite3")
    assert version == Version(4, 3, 2)
    assert copy.execute("SELECT title FROM songs").fetchall() == [("t",)]
