"""The checker's verdicts on made-up replica views (no namespaces needed), and the report."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from distpotify.store.schema import SCHEMA
from lab.checker import (
    DATABASE,
    ReplicaView,
    converged,
    covered,
    divergence,
    keep_evidence,
    log_errors,
    missing_writes,
    stored_versions,
)
from lab.report import Check, Report
from lab.workload import Operation

SONG, OTHER, PLAYLIST = "song-a", "song-b", "playlist-a"


def _upload(key: str, sha: str = "aa") -> Operation:
    return Operation("w1", 0, "upload", "node 1", 1.0, 1.1, True, 201, "1", None, key, sha, sha)


def _playlist(key: str) -> Operation:
    return Operation("w1", 1, "playlist", "node 1", 1.2, 1.3, True, 201, "1", None, key)


def test_an_acknowledged_write_absent_from_a_replica_is_reported_missing_there() -> None:
    views = {
        1: ReplicaView(1, {SONG: "aa"}, frozenset({PLAYLIST})),
        2: ReplicaView(2, {}, frozenset()),
    }

    missing = missing_writes(views, [_upload(SONG), _playlist(PLAYLIST)])

    assert [(m["key"], m["missing_on"]) for m in missing] == [(SONG, [2]), (PLAYLIST, [2])]


def test_a_song_held_with_another_sha256_is_reported_different() -> None:
    views = {1: ReplicaView(1, {SONG: "aa"}), 2: ReplicaView(2, {SONG: "bb"})}

    missing = missing_writes(views, [_upload(SONG, "aa")])

    assert missing[0]["different_on"] == [2] and missing[0]["missing_on"] == []
    assert [d["songs_conflicting"] for d in divergence(views)] == [1, 1]


def test_a_replica_lacking_a_row_another_has_diverges_even_if_nobody_acked_it() -> None:
    views = {1: ReplicaView(1, {SONG: "aa", OTHER: "cc"}), 2: ReplicaView(2, {SONG: "aa"})}

    assert [(d["node"], d["songs_missing"]) for d in divergence(views)] == [(2, 1)]
    assert not converged(views, [])


def test_identical_replicas_holding_every_acknowledged_write_have_converged() -> None:
    views = {n: ReplicaView(n, {SONG: "aa"}, frozenset({PLAYLIST})) for n in (1, 2, 3)}

    assert converged(views, [_upload(SONG), _playlist(PLAYLIST)])


def test_an_unreachable_replica_has_not_converged() -> None:
    views = {1: ReplicaView(1, {}), 2: ReplicaView(2, error="ConnectionRefusedError")}

    assert not converged(views, [])


def test_the_report_is_a_table_and_json_and_fails_when_one_check_fails(tmp_path: Path) -> None:
    report = Report("follower-crash", "2024-01-01T00:00:00+00:00",
                    lab={"nodes": 3, "replica": "twistd", "shaper": "netem"},
                    checks=[Check("writes acknowledged", True), Check("converged", False, "no")])
    report.replicas = [{"node": 1, "state": "up", "songs": 3, "playlists": 1,
                        "acked_missing": 0, "differs": ""}]

    path = report.save(tmp_path)

    saved = json.loads(path.read_text())
    assert saved["ok"] is False and saved["checks"][1] == {"name": "converged", "ok": False,
                                                           "detail": "no"}
    table = report.table()
    assert "follower-crash | FAIL" in table and "FAIL  converged: no" in table
    assert (tmp_path / "report.txt").read_text().strip() == table


UNHANDLED = """\
2026-12-02T15:51:34+0000 [distpotify.api.site#info] GET /songs/a/stream -> 404
2026-12-02T15:51:34+0000 [_GenericHTTPChannelProtocol,203,10.77.0.1] Unhandled Error
\tTraceback (most recent call last):
\t  File "/x/twisted/web/http.py", line 1848, in dataReceived
\t    self.dataCallback(data)
\tbuiltins.OSError: [Errno 28] No space left on device
\t
2026-12-02T15:51:34+0000 [distpotify.api.site#info] GET /songs/b/stream -> 404
"""
CRITICAL = """\
2026-12-02T15:51:35+0000 [distpotify.api.failures#critical] unhandled error on b'POST'
\tTraceback (most recent call last):
\t  File "/x/distpotify/api/sync.py", line 70, in ops
\t    head = await self._receiver.apply_ops(ops, source)
\ttwisted.internet.defer.FirstError: FirstError[#4, [Failure instance: OSError]]
\t/x/fetch.py:102:fetch
\t]]
2026-12-02T15:51:36+0000 [distpotify.leadership#error] no quorum for the write
"""


def test_log_errors_counts_each_logged_error_once_by_the_exception_it_ends_in(
        tmp_path: Path) -> None:
    quiet, noisy = tmp_path / "node1.log", tmp_path / "node2.log"
    quiet.write_text("2026-12-02T15:51:34+0000 [distpotify.api.site#info] GET / -> 200\n")
    noisy.write_text(UNHANDLED + UNHANDLED + CRITICAL)

    assert log_errors([quiet, noisy]) == [
        "node2.log: 4 error(s) logged: "
        "2 x builtins.OSError: [Errno 28] No space left on device; "
        "1 x twisted.internet.defer.FirstError: FirstError[#4, [Failure instance: OSError]]; "
        "1 x no quorum for the write"]


def test_a_replica_is_covered_when_others_hold_each_field_as_new_or_newer() -> None:
    song = ("songs", "song-a")
    mine = {song: {"title": "0000000002-00001-000000000005",
                   "album": "0000000002-00001-000000000003"}}
    newer_title = {song: {"title": "0000000003-00002-000000000001"}}
    same_album = {song: {"album": "0000000002-00001-000000000003"}}
    older_album = {song: {"album": "0000000001-00001-000000000009"}}

    assert covered(mine, [newer_title, same_album])
    assert not covered(mine, [newer_title, older_album])
    assert not covered(mine, [same_album, {}])
    assert covered({}, [])


def test_stored_versions_reads_every_rows_field_versions(tmp_path: Path) -> None:
    database = sqlite3.connect(tmp_path / DATABASE)
    for statement in SCHEMA:
        database.execute(statement)
    database.execute("INSERT INTO playlists (id, name, version, field_versions, bucket) "
                     "VALUES ('p1', 'n', 'v', ?, 0)", (json.dumps({"name": "v"}),))
    database.commit()
    database.close()

    assert stored_versions(tmp_path) == {("playlists", "p1"): {"name": "v"}}
    assert stored_versions(tmp_path / "missing") is None


class _EvidenceLab:
    """What keep_evidence asks of a lab: its folder, each replica's data dir, its /status."""

    def __init__(self, root: Path, statuses: dict[int, dict[str, Any] | None]) -> None:
        self.dir = root / "lab"
        self.replicas = {n: SimpleNamespace(data_dir=root / f"node{n}") for n in statuses}
        self._statuses = statuses

    def status(self, node_id: int, timeout: float = 1.0) -> dict[str, Any] | None:
        return self._statuses[node_id]


def test_a_failed_wait_keeps_each_replicas_database_and_status(tmp_path: Path) -> None:
    lab = _EvidenceLab(tmp_path, {1: {"state": "ACTIVE", "head": "v9"}, 2: None})
    (tmp_path / "node1").mkdir()
    database = sqlite3.connect(tmp_path / "node1" / DATABASE)
    for statement in SCHEMA:
        database.execute(statement)
    database.execute("INSERT INTO playlists (id, name, version, field_versions, bucket) "
                     "VALUES ('p1', 'kept', 'v', '{}', 0)")
    database.commit()

    lines = keep_evidence(lab, [1, 2])  # type: ignore[arg-type]
    database.execute("UPDATE playlists SET name = 'later'")  # the replica goes on writing
    database.commit()
    database.close()

    evidence = lab.dir / "evidence"
    copy = sqlite3.connect(evidence / "node1.sqlite3")
    assert copy.execute("SELECT name FROM playlists").fetchall() == [("kept",)]
    copy.close()
    assert json.loads((evidence / "node1.status.json").read_text())["head"] == "v9"
    assert json.loads((evidence / "node2.status.json").read_text()) is None  # did not answer
    assert not (evidence / "node2.sqlite3").exists()
    assert lines == ["node 1: database and /status kept in evidence/", "node 2: no database"]
