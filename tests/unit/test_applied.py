"""Reads that name a version (X-Distpotify-Min-Version), with a Clock: they wait until the op
of exactly that version is applied, are woken by the batch that applies it (never by polling
the database), and answer 409 behind once --read-wait has passed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from distpotify.model import ZERO, Op, Version
from distpotify.replication.applied import AppliedOps
from distpotify.store.metadata import MetadataDB, MetadataStore
from tests.helpers.accounts import call, first_admin
from tests.helpers.api import Answer, InMemoryReplica, NoLeader, result_of, run_now

WAIT = 0.25


class Counted:
    """A store runner that runs at once and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls += 1
        return run_now(f, *args, **kwargs)


@pytest.fixture
def db(tmp_path: Path) -> MetadataDB:
    return MetadataDB(tmp_path / "m.sqlite3", node_id=1)


def ops_of_another_leader(db: MetadataDB, n: int, epoch: int = 2) -> list[Op]:
    return [Op(Version(epoch, 2, seq), "playlists", f"{seq:08x}-0000-4000-8000-000000000000",
               {"name": str(seq)}) for seq in range(1, n + 1)]


def applied_ops(db: MetadataDB, read_wait: float = WAIT) -> tuple[AppliedOps, Clock, Counted]:
    clock, runner = Clock(), Counted()
    return AppliedOps(MetadataStore(db, runner), clock, read_wait, db.cached_head), clock, runner


def wait(applied: AppliedOps, version: Version) -> Deferred[bool]:
    return Deferred.fromCoroutine(applied.wait_for(version))


def test_the_head_and_any_op_in_the_oplog_count_as_applied(db: MetadataDB) -> None:
    ops = ops_of_another_leader(db, 3)
    db.apply_ops(ops)
    applied, _, _ = applied_ops(db)

    assert result_of(wait(applied, ops[-1].version)) is True
    assert result_of(wait(applied, ops[0].version)) is True
    assert applied.status() == {"asked": 2, "waited": 0, "behind": 0, "waiting": 0}


def test_a_version_above_the_head_waits_and_is_woken_by_the_batch_that_applies_it(
    db: MetadataDB,
) -> None:
    ops = ops_of_another_leader(db, 3)
    applied, clock, runner = applied_ops(db)

    waiting = wait(applied, ops[1].version)
    clock.advance(WAIT / 2)
    assert not waiting.called
    db.apply_ops(ops)
    applied.applied(ops)

    assert result_of(waiting) is True
    assert applied.status() == {"asked": 1, "waited": 1, "behind": 0, "waiting": 0}
    assert runner.calls == 0  # never asked the database: woken by the apply
    assert clock.getDelayedCalls() == []


def test_a_newer_head_from_another_leader_is_not_the_op_asked_for(db: MetadataDB) -> None:
    """After a partition, this replica's head may be above the version a client wrote on
    the other side: only that very op makes the read safe."""
    theirs = Op(Version(3, 1, 7), "playlists", "00000000-0000-4000-8000-000000000001",
                {"name": "written on the other side"})
    db.apply_ops(ops_of_another_leader(db, 2, epoch=5))
    applied, clock, _ = applied_ops(db)

    waiting = wait(applied, theirs.version)
    clock.advance(WAIT)

    assert result_of(waiting) is False
    assert applied.status() == {"asked": 1, "waited": 1, "behind": 1, "waiting": 0}


def test_a_version_never_applied_answers_false_after_the_read_wait(db: MetadataDB) -> None:
    applied, clock, _ = applied_ops(db)

    waiting = wait(applied, Version(1, 1, 1))
    clock.advance(WAIT - 0.01)
    assert not waiting.called
    clock.advance(0.01)

    assert result_of(waiting) is False
    applied.applied(ops_of_another_leader(db, 1))  # late news wakes nobody
    assert clock.getDelayedCalls() == []


def test_a_read_wait_of_zero_answers_at_once(db: MetadataDB) -> None:
    applied, _, _ = applied_ops(db, read_wait=0)

    assert result_of(wait(applied, Version(1, 1, 1))) is False


def test_a_read_that_goes_away_leaves_no_waiter_and_no_timer(db: MetadataDB) -> None:
    applied, clock, _ = applied_ops(db)
    first, second = wait(applied, Version(1, 1, 1)), wait(applied, Version(1, 1, 1))

    first.addErrback(lambda _: None)
    first.cancel()
    assert applied.status()["waiting"] == 1
    clock.advance(WAIT)

    assert result_of(second) is False
    assert applied.status()["waiting"] == 0 and clock.getDelayedCalls() == []


# through the API


def start_get(api: InMemoryReplica, path: str, headers: dict[str, str]) -> Deferred[Any]:
    d = api.treq.request("GET", "http://replica" + path, headers=headers)
    api.treq.flush()
    return d


def finish(api: InMemoryReplica, d: Deferred[Any]) -> Answer:
    api.treq.flush()
    response = result_of(d)
    body = api.treq.content(response)
    api.treq.flush()
    return Answer(response.code,
                  {k.decode().lower(): v[0].decode()
                   for k, v in response.headers.getAllRawHeaders()},
                  result_of(body))


@pytest.fixture
def api(tmp_path: Path) -> InMemoryReplica:
    return InMemoryReplica(tmp_path)


def test_a_read_of_a_version_applied_here_is_served_at_once(api: InMemoryReplica) -> None:
    written = api.send_json("POST", "/playlists", {"name": "mine"})
    version = written.headers["x-distpotify-version"]

    answer = api.get("/playlists", {"X-Distpotify-Min-Version": version})

    assert answer.status == 200
    assert [p["name"] for p in answer.json()["playlists"]] == ["mine"]


def test_a_read_waits_for_the_push_that_brings_its_version(api: InMemoryReplica) -> None:
    ops = ops_of_another_leader(api.db, 2)
    reading = start_get(api, f"/playlists/{ops[1].key}",
                        {"X-Distpotify-Min-Version": ops[1].version.encode()})
    assert api.service.replication.applied.status()["waiting"] == 1

    result_of(Deferred.fromCoroutine(api.receiver.apply_ops(ops, None)))
    answer = finish(api, reading)

    assert answer.status == 200 and answer.json()["playlist"]["name"] == "2"


def test_a_read_of_a_version_not_applied_in_time_is_409_behind(api: InMemoryReplica) -> None:
    future = "0000000009-00002-000000000001"
    reading = start_get(api, "/songs", {"X-Distpotify-Min-Version": future})
    api.clock.advance(WAIT)
    answer = finish(api, reading)

    assert answer.status == 409 and answer.headers["x-served-by"] == "1"
    assert answer.json()["error"] == "behind"
    assert future in answer.json()["message"]


@pytest.mark.parametrize("header", ["yesterday", "3-3-1", "0000000003-00003-00000000000x", ""])
def test_a_malformed_min_version_is_400(api: InMemoryReplica, header: str) -> None:
    answer = api.get("/songs", {"X-Distpotify-Min-Version": header})

    assert answer.status == 400 and answer.json()["error"] == "bad_request"


def test_status_and_writes_do_not_wait(api: InMemoryReplica) -> None:
    future = {"X-Distpotify-Min-Version": "0000000009-00002-000000000001"}

    status = api.get("/status", future)
    written = api.call("POST", "/playlists", json.dumps({"name": "w"}).encode(),
                       {"Content-Type": "application/json", **future})

    assert status.status == 200 and written.status == 201
    assert api.db.head() != ZERO


def test_a_write_is_pushed_in_a_batch_that_wakes_its_readers(tmp_path: Path) -> None:
    leader = InMemoryReplica(tmp_path / "leader")
    follower = InMemoryReplica(tmp_path / "follower")
    version = leader.send_json("POST", "/playlists", {"name": "p"}).headers[
        "x-distpotify-version"]
    reading = start_get(follower, "/playlists", {"X-Distpotify-Min-Version": version})

    result_of(Deferred.fromCoroutine(
        follower.receiver.apply_ops(leader.db.ops_after(ZERO), "http://leader")))

    assert [p["name"] for p in finish(follower, reading).json()["playlists"]] == ["p"]


def test_a_read_of_the_accounts_waits_for_its_version_and_the_accounts_read_again(
        tmp_path: Path) -> None:
    """The admin page reads /users right after a change (through the proxy, with the
    version of that change): a follower that has not applied it yet waits for it, and
    answers from the accounts as they are after it, not as its memory held them."""
    leader = InMemoryReplica(tmp_path / "leader", auth=True)
    admin = first_admin(leader, tmp_path / "leader")
    follower = InMemoryReplica(tmp_path / "follower", auth=True, leadership=NoLeader())
    result_of(Deferred.fromCoroutine(
        follower.receiver.apply_ops(leader.db.ops_after(ZERO), "http://leader")))
    result_of(Deferred.fromCoroutine(follower.accounts.reload()))
    head = leader.db.head()
    created = call(leader, "POST", "/users", {"username": "otto", "password": "otto-first-1",
                                              "role": "listener"}, admin.bearer)
    assert created.status == 201, created.body
    version = created.headers["x-distpotify-version"]

    reading = start_get(follower, "/users",
                        {"X-Distpotify-Min-Version": version, **admin.bearer})
    assert follower.service.replication.applied.status()["waiting"] == 1
    result_of(Deferred.fromCoroutine(
        follower.receiver.apply_ops(leader.db.ops_after(head), "http://leader")))

    names = [user["username"] for user in finish(follower, reading).json()["users"]]
    assert sorted(names) == ["otto", "root"]
