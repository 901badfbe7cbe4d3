"""validate_op: what a pushed op must be before any of its batch is applied; pulled rows purged
here stay purged; the join's chunk clean-up and the applies in flight."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from distpotify.cluster.heartbeat import Heartbeat
from distpotify.model import Op, Row, Version
from distpotify.replication.fetch import Fetched
from distpotify.replication.receive import ApplyGate, validate_op
from tests.helpers.api import InMemoryReplica, result_of

SONG = "11111111-1111-4111-8111-111111111111"
V = Version(2, 1, 9)


@pytest.mark.parametrize(("entity", "key", "fields"), [
    ("chunks", f"{SONG}/0", {"size": 262144, "sha256": "ab" * 32, "deleted": 0}),
    ("chunks", f"{SONG}/12", {"deleted": 1}),
    ("purges", "tombstones", {"through": Version(2, 1, 3).encode()}),
    ("playlists", SONG, {"name": "n", "deleted": 0}),
])
def test_well_formed_ops_pass(entity: str, key: str, fields: dict[str, Any]) -> None:
    validate_op(Op(V, entity, key, fields))


@pytest.mark.parametrize(("entity", "key", "fields"), [
    ("chunks", f"{SONG}/007", {"deleted": 1}),  # one chunk, two names
    ("chunks", f"{SONG}/²", {"deleted": 1}),
    ("chunks", f"{SONG}/0", {"size": "big", "sha256": "ab" * 32}),
    ("chunks", f"{SONG}/0", {"size": -1, "sha256": "ab" * 32}),
    ("chunks", f"{SONG}/0", {"size": 1.5, "sha256": "ab" * 32}),
    ("chunks", f"{SONG}/0", {"size": 1, "sha256": "../../etc/passwd"}),
    ("chunks", f"{SONG}/0", {"size": 1, "sha256": 7}),
    ("purges", "tombstones", {"through": "everything"}),
    ("purges", "tombstones", {"through": Version(9, 9, 9).encode()}),  # past its own op
    ("nope", SONG, {"name": "n"}),
    ("playlists", SONG, {"colour": "red"}),
    ("playlists", SONG, {"name": ["a", "list"]}),
])
def test_malformed_ops_are_refused(entity: str, key: str, fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        validate_op(Op(V, entity, key, fields))


def test_a_push_while_the_snapshot_is_taken_is_refused_and_applies_nothing(
    tmp_path: Path,
) -> None:
    """Ops applied before the snapshot is installed would be wiped by it, while the leader
    counted them as delivered: the leader is told to try again (503) instead."""
    replica = InMemoryReplica(tmp_path)
    op = Op(Version(2, 3, 1), "playlists", SONG, {"name": "pushed", "deleted": 0})
    batch = json.dumps({"source": None, "ops": [op.to_json()]}).encode()
    replica.receiver.accepting = lambda: False

    refused = replica.call("POST", "/sync/ops", batch, {"Content-Type": "application/json"})
    replica.receiver.accepting = lambda: True
    taken = replica.call("POST", "/sync/ops", batch, {"Content-Type": "application/json"})

    assert refused.status == 503 and taken.status == 200
    assert replica.db.get_row("playlists", SONG) is not None


def test_a_pushed_batch_fetches_its_chunks_from_known_peers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = InMemoryReplica(tmp_path)
    asked: list[list[str]] = []

    async def fetch(ref: object, sources: list[str]) -> Fetched:
        asked.append(list(sources))
        return Fetched.FAILED

    monkeypatch.setattr(replica.fetcher, "fetch_outcome", fetch)
    replica.service.cluster.membership.heartbeat_received(Heartbeat(
        cluster="c", node=2, epoch=1, role="leader", state="ACTIVE", http="http://peer:8000",
        amp="peer:9000", head=V))
    chunk = Op(V, "chunks", f"{SONG}/0", {"size": 4, "sha256": "ab" * 32, "deleted": 0})
    batch = json.dumps({"source": "http://10.9.9.9:80/anywhere",
                        "ops": [chunk.to_json()]}).encode()

    answer = replica.call("POST", "/sync/ops", batch, {"Content-Type": "application/json"})

    assert asked == [["http://peer:8000"]]
    assert answer.status == 503  # the chunk could not be fetched: nothing applied
    assert replica.db.get_row("chunks", f"{SONG}/0") is None


def test_rows_pulled_by_anti_entropy_are_checked_like_pushed_ops(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    good = Row("playlists", SONG, {"name": "ok", "deleted": 0}, {"name": V, "deleted": V})
    bad = Row("chunks", f"{SONG}/0", {"size": -5, "sha256": "nope", "deleted": 0},
              {"size": V, "sha256": V, "deleted": V})

    with pytest.raises(ValueError, match="malformed row"):
        result_of(Deferred.fromCoroutine(replica.receiver.apply_rows([good, bad], "http://peer")))

    assert replica.db.get_row("playlists", SONG) is None  # refused whole


OTHER = "22222222-2222-4222-8222-222222222222"


def purge_through(replica: InMemoryReplica, through: Version) -> None:
    replica.db.apply_ops([Op(Version(through.epoch, through.leader_id, through.seq + 100),
                             "purges", "tombstones", {"through": through.encode()})])


def test_a_row_purged_here_is_not_taken_back_from_a_replica_that_missed_its_delete(
    tmp_path: Path,
) -> None:
    """A replica that was away still holds a row deleted and purged here: every field of it
    is at or below the watermark, and taking it would undo the delete."""
    replica = InMemoryReplica(tmp_path)
    replica.db.apply_ops([Op(Version(2, 1, 1), "playlists", SONG, {"name": "x", "deleted": 0}),
                          Op(Version(2, 1, 5), "playlists", SONG, {"deleted": 1})])
    purge_through(replica, Version(2, 1, 5))
    assert replica.db.get_row("playlists", SONG) is None  # purged
    stale = Row("playlists", SONG, {"name": "x", "deleted": 0},
                {"name": Version(2, 1, 1), "deleted": Version(2, 1, 1)})
    newer = Row("playlists", OTHER, {"name": "new", "deleted": 0},
                {"name": Version(2, 1, 1), "deleted": Version(2, 1, 200)})

    result_of(Deferred.fromCoroutine(replica.receiver.apply_rows([stale, newer], "http://n2")))

    assert replica.db.get_row("playlists", SONG) is None
    assert replica.db.get_row("playlists", OTHER) is not None  # written after the watermark
    assert replica.receiver.rows_fenced == 1


def test_a_row_held_here_takes_a_pulled_update_below_the_watermark(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)
    replica.db.apply_ops([Op(Version(2, 1, 1), "playlists", SONG, {"name": "x", "deleted": 0})])
    purge_through(replica, Version(2, 1, 9))
    update = Row("playlists", SONG, {"name": "y", "deleted": 0},
                 {"name": Version(2, 1, 3), "deleted": Version(2, 1, 1)})

    result_of(Deferred.fromCoroutine(replica.receiver.apply_rows([update], "http://n2")))

    row = replica.db.get_row("playlists", SONG)
    assert row is not None and row.fields["name"] == "y"


def test_the_chunk_clean_up_waits_for_an_apply_whose_chunks_have_no_row_yet() -> None:
    gate = ApplyGate()
    order: list[str] = []
    applying = Deferred.fromCoroutine(gate.enter())
    assert applying.called

    async def clean() -> None:
        order.append("clean")

    cleaning = Deferred.fromCoroutine(gate.alone(clean))
    late = Deferred.fromCoroutine(gate.enter())  # an apply that arrives during the wait
    assert order == [] and not cleaning.called and not late.called

    order.append("applied")
    gate.leave()

    assert order == ["applied", "clean"] and cleaning.called and late.called
    gate.leave()
