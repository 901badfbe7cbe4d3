"""The join protocol with a Clock and fake peers; the founding/rejoin/join decision."""

from __future__ import annotations

import errno
import gc
import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from distpotify.cluster.bully import NotLeaderError
from distpotify.cluster.heartbeat import Heartbeat
from distpotify.cluster.membership import Peer
from distpotify.errors import Conflict, InsufficientStorage, SnapshotTooOld
from distpotify.model import ZERO, Op, Version
from distpotify.replication import bootstrap
from distpotify.replication.bootstrap import (
    CHUNKS,
    DISK_FULL_RETRY,
    DONE,
    FOUND,
    JOIN,
    JOIN_WORKERS,
    REJOIN,
    RETRY,
    RUN_CHUNKS,
    SNAPSHOT,
    WAIT,
    CatchUp,
    ChunkRun,
    JoinDesk,
    Joiner,
    SnapshotError,
    SyncProgress,
    pack_snapshot,
    plan,
    unpack_snapshot,
)
from distpotify.replication.client import StaleSnapshot
from distpotify.replication.fetch import ChunkRef, Fetched
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import Change, MetadataDB, MetadataStore
from tests.helpers.api import InMemoryReplica, NoLeader, result_of, run_now

SONG = "abcdef01-2345-4678-8abc-def012345678"


HELD = Version(1, 3, 9)


def peer(node_id: int, state: str = "ACTIVE", head: Version = HELD,
         role: str = "follower", up: bool = True) -> Peer:
    return Peer(node_id=node_id, role=role, state=state, http=f"http://n{node_id}",
                amp=f"n{node_id}:9000", epoch=1, head=head, last_seen=0.0, up=up)


@pytest.mark.parametrize(
    ("join_state", "head", "peers", "away", "decision"),
    [
        (None, ZERO, [], False, FOUND),
        (None, ZERO, [peer(1, head=ZERO), peer(2, "JOINING", head=ZERO)], False, FOUND),
        (None, ZERO, [peer(1)], False, JOIN),
        (None, ZERO, [peer(1, "JOINING", head=ZERO)], False, FOUND),
        (CHUNKS, Version(1, 3, 9), [], False, JOIN),
        (DONE, Version(1, 3, 9), [peer(1)], False, REJOIN),
        (DONE, Version(1, 3, 9), [peer(1, "JOINING")], False, FOUND),
        (DONE, Version(1, 3, 9), [peer(1)], True, JOIN),
        (DONE, ZERO, [peer(1)], False, JOIN),
    ],
)
def test_plan(join_state: str | None, head: Version, peers: list[Peer], away: bool,
              decision: str) -> None:
    assert plan(join_state, head, peers, away) == decision


@pytest.mark.parametrize(
    ("join_state", "head", "peers", "size", "decision"),
    [
        # Empty, it founds only once it hears a majority of --cluster-size, itself included.
        (None, ZERO, [], 3, WAIT),
        (None, ZERO, [peer(1, head=ZERO)], 3, FOUND),
        (None, ZERO, [peer(1, "JOINING", head=ZERO), peer(2, "JOINING", head=ZERO)], 3, FOUND),
        (None, ZERO, [peer(1, head=ZERO)], 4, WAIT),
        (None, ZERO, [peer(1, head=ZERO), peer(2, "JOINING", head=ZERO)], 4, FOUND),
        (None, ZERO, [], 2, WAIT),
        (None, ZERO, [], 1, FOUND),
        # A peer heard no more counts for nothing.
        (None, ZERO, [peer(1, head=ZERO, up=False)], 3, WAIT),
        # One ACTIVE peer with data is enough to join, whatever the size.
        (None, ZERO, [peer(1)], 5, JOIN),
        (DONE, ZERO, [peer(1)], 5, JOIN),
        # Nor while it has heard a replica holding data that is not ACTIVE: a majority of
        # empty replicas beside one still joining (its snapshot installed) is no new cluster.
        (None, ZERO, [peer(1, "JOINING"), peer(2, "JOINING", head=ZERO)], 3, WAIT),
        (None, ZERO, [peer(1, "JOINING"), peer(2, head=ZERO)], 3, WAIT),
        (DONE, ZERO, [peer(1, "JOINING"), peer(2, head=ZERO)], 3, WAIT),
        # ... or that it heard holding data and hears no more.
        (None, ZERO, [peer(1, up=False), peer(2, head=ZERO)], 3, WAIT),
        # Once one holder is ACTIVE it joins it.
        (None, ZERO, [peer(1), peer(2, "JOINING")], 3, JOIN),
        # A replica with data, or a join under way, never waits for the others.
        (DONE, Version(1, 3, 9), [peer(1, "JOINING")], 3, FOUND),
        (DONE, Version(1, 3, 9), [], 3, FOUND),
        (CHUNKS, Version(1, 3, 9), [], 3, JOIN),
        (SNAPSHOT, ZERO, [], 3, JOIN),
    ],
)
def test_an_empty_replica_founds_only_once_it_hears_a_majority(
        join_state: str | None, head: Version, peers: list[Peer], size: int,
        decision: str) -> None:
    assert plan(join_state, head, peers, cluster_size=size) == decision


def leader_snapshot(tmp_path: Path, chunk_count: int = 1) -> Path:
    """A real snapshot, as the leader packs it: one song of ``chunk_count`` chunks."""
    source = MetadataDB(tmp_path / "leader.sqlite3", node_id=3)
    source.begin_leading(1)
    source.set_meta("epoch", "1")
    source.write([
        *(Change("chunks", f"{SONG}/{idx}", {"size": 5, "sha256": "a" * 64, "deleted": 0})
          for idx in range(chunk_count)),
        Change("songs", SONG, {"title": "t", "sha256": "b" * 64, "size": 5 * chunk_count,
                               "chunk_count": chunk_count,
                               "created_at": "2026-01-01T00:00:00.000Z", "deleted": 0}),
    ])
    source.backup_to(tmp_path / "copy.sqlite3")
    pack_snapshot(tmp_path / "copy.sqlite3", tmp_path / "snapshot.gz")
    return tmp_path / "snapshot.gz"


class FakePeers:
    db: MetadataDB

    def __init__(self, snapshot: Path, chunks: ChunkStore) -> None:
        self.snapshot_file = snapshot
        self.chunks = chunks
        self.snapshots = 0
        self.bad_first = False
        self.done_calls: list[tuple[int, int]] = []
        self.joins: list[dict[str, Any]] = []
        self.leader: Peer | None = None
        self.runs: list[tuple[int, list[int]]] = []
        self.settled: list[tuple[list[str], str]] = []
        self.deleted_since = False  # the leader deleted the song after its snapshot
        self.unavailable: set[str] = set()  # peers that answered 503 (the fetcher's memory)

    async def settle(self, names: Sequence[str], source: str) -> int:
        """As Receiver.settle: the leader's current rows merged (here: the song's delete,
        made by a leader of a later epoch that died before replicating it)."""
        self.settled.append((list(names), source))
        if not self.deleted_since:
            return 0
        deleted = Version(2, 1, 1)
        self.db.apply_ops([Op(deleted, "songs", SONG, {"deleted": 1}),
                           *(Op(deleted, "chunks", name.replace("_", "/"), {"deleted": 1})
                             for name in names)])
        return 1 + len(names)

    async def snapshot(self, base: str, path: str, dest: Path) -> Version:
        self.snapshots += 1
        if self.bad_first and self.snapshots == 1:
            dest.write_bytes(b"\x1f\x8b not really gzip")
        else:
            dest.write_bytes(self.snapshot_file.read_bytes())
        return Version(1, 3, 2)

    async def done(self, base: str, node_id: int, head: Version, missing: int) -> None:
        self.done_calls.append((node_id, missing))

    async def sync(self) -> None:
        pass

    def by_readiness(self, sources: Sequence[str]) -> list[str]:
        return [base for base in sources if base not in self.unavailable] + [
            base for base in sources if base in self.unavailable]

    async def fetch_run(self, refs: list[ChunkRef], start: int, song_sha256: str,
                        base: str) -> list[ChunkRef]:
        self.runs.append((start, [ref.idx for ref in refs]))
        return [ref for ref in refs if await self.fetch(ref, [base])]

    async def fetch_outcome(self, ref: ChunkRef, sources: list[str]) -> Fetched:
        return Fetched.DONE if await self.fetch(ref, sources) else Fetched.FAILED

    async def fetch(self, ref: ChunkRef, sources: list[str]) -> bool:
        if self.deleted_since:
            return False  # every peer answers 404: the song is deleted
        self.chunks.path(ref.song_id, ref.idx).write_bytes(b"x" * ref.size)
        return True

    def join_rpc(self, leader: Peer, arguments: dict[str, Any]) -> Deferred[dict[str, Any]]:
        self.joins.append(arguments)
        return succeed({"leader_id": leader.node_id, "epoch": 1,
                        "snapshot_path": "/sync/snapshot"})


def joiner(tmp_path: Path, chunk_count: int = 1, sources: Sequence[str] = ("http://n1",)
           ) -> tuple[Joiner, FakePeers, MetadataDB, Clock]:
    (tmp_path / "tmp").mkdir()
    db = MetadataDB(tmp_path / "me.sqlite3", node_id=4)
    chunks = ChunkStore(tmp_path / "chunks")
    fakes = FakePeers(leader_snapshot(tmp_path, chunk_count), chunks)
    fakes.db = db
    clock = Clock()
    machine = Joiner(
        node_id=4, http="http://n4", amp="n4:9000", store=MetadataStore(db, run_now),
        chunks=chunks, fetcher=fakes, client=fakes,  # type: ignore[arg-type]
        join_rpc=fakes.join_rpc, leader=lambda: fakes.leader, sources=lambda: list(sources),
        blocking=run_now, clock=clock, tmp_dir=tmp_path / "tmp", progress=SyncProgress(),
        clean_up=lambda: run_now(chunks.clean, db.live_chunk_names()), settle=fakes.settle,
    )
    return machine, fakes, db, clock


def test_the_join_tells_the_leader_how_many_chunk_files_are_still_missing(
    tmp_path: Path,
) -> None:
    machine, fakes, _, clock = joiner(tmp_path, chunk_count=3)

    async def fetch_but_lose_the_second(ref: ChunkRef, sources: list[str]) -> bool:
        if ref.idx != 1:
            fakes.chunks.path(ref.song_id, ref.idx).write_bytes(b"x" * ref.size)
        return True
    fakes.fetch = fetch_but_lose_the_second  # type: ignore[method-assign]
    fakes.leader = peer(3, role="leader")
    Deferred.fromCoroutine(machine.run())
    clock.advance(1)

    assert fakes.done_calls[0] == (4, 1)  # the leader refuses it (409) while one is missing


def test_a_chunk_deleted_after_the_snapshot_and_held_by_nobody_does_not_hold_the_join(
    tmp_path: Path,
) -> None:
    """Its delete is older than the snapshot's head, so no push brings it (the random lab
    run: a joiner retried such chunks forever, JOINING and serving nothing): the leader's
    current rows of the chunks not fetched are merged, and the join goes on without them."""
    machine, fakes, db, clock = joiner(tmp_path, chunk_count=2)
    fakes.deleted_since = True
    fakes.leader = peer(3, role="leader")

    d = Deferred.fromCoroutine(machine.run())
    clock.advance(5)

    assert d.called and db.get_meta("join_state") == DONE
    assert fakes.settled == [([f"{SONG}_0", f"{SONG}_1"], "http://n3")]
    assert db.live_chunk_names() == set() and db.song(SONG) is None
    assert fakes.done_calls == [(4, 0)]


def test_a_chunk_that_failed_for_another_reason_is_fetched_at_the_next_try(
    tmp_path: Path,
) -> None:
    machine, fakes, db, clock = joiner(tmp_path)
    tries = []

    async def down_once(ref: ChunkRef, sources: list[str]) -> bool:
        tries.append(ref.idx)
        if len(tries) <= 2:
            return False  # its peer was down: the run, then the chunk alone
        fakes.chunks.path(ref.song_id, ref.idx).write_bytes(b"x" * ref.size)
        return True
    fakes.fetch = down_once  # type: ignore[method-assign]
    fakes.leader = peer(3, role="leader")

    d = Deferred.fromCoroutine(machine.run())
    clock.advance(5)

    assert d.called and tries == [0, 0, 0]
    assert fakes.settled == [([f"{SONG}_0"], "http://n3")]  # merged unchanged
    assert db.live_chunk_names() == {f"{SONG}_0"}


def test_without_a_leader_the_joiner_waits_and_says_so(tmp_path: Path) -> None:
    machine, fakes, _, clock = joiner(tmp_path)

    d = Deferred.fromCoroutine(machine.run())
    clock.advance(5)

    assert not d.called
    assert machine.progress.phase == "ANNOUNCING" and machine.progress.waiting_for == "leader"
    assert fakes.joins == []


def test_join_goes_through_every_phase_to_done(tmp_path: Path) -> None:
    machine, fakes, db, clock = joiner(tmp_path)
    d = Deferred.fromCoroutine(machine.run())
    clock.advance(1)

    fakes.leader = peer(3, role="leader")
    clock.advance(1)

    assert d.called
    assert [j["node_id"] for j in fakes.joins] == [4]
    assert db.get_meta("join_state") == DONE and db.get_meta("snapshots_fetched") == "1"
    assert db.song(SONG) is not None and db.head() == Version(1, 3, 2)
    assert fakes.done_calls == [(4, 0)]
    assert fakes.runs == [(0, [0])]
    assert machine.progress.chunks_done == machine.progress.chunks_total == 1
    assert (tmp_path / "chunks" / f"{SONG}_0").exists()


def test_a_bad_snapshot_is_discarded_counted_and_fetched_again(tmp_path: Path) -> None:
    machine, fakes, _, clock = joiner(tmp_path)
    fakes.bad_first = True
    fakes.leader = peer(3, role="leader")

    d = Deferred.fromCoroutine(machine.run())
    clock.advance(2)

    assert d.called
    assert fakes.snapshots == 2 and machine.progress.bad_snapshots == 1
    assert machine.progress.snapshots_fetched == 1
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_join_resumed_in_the_chunk_phase_fetches_no_snapshot(tmp_path: Path) -> None:
    machine, fakes, db, clock = joiner(tmp_path)
    db.install_snapshot(tmp_path / "copy.sqlite3")
    db.set_meta("join_state", CHUNKS)
    db.set_meta("snapshots_fetched", "1")
    fakes.leader = peer(3, role="leader")

    d = Deferred.fromCoroutine(machine.run())
    clock.advance(1)

    assert d.called and fakes.snapshots == 0 and fakes.joins == []
    assert machine.progress.snapshots_fetched == 1


def test_unpack_refuses_garbage_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"SQLite format 3\0 but not really"))

    with pytest.raises(SnapshotError):
        unpack_snapshot(tmp_path / "bad.gz", tmp_path / "out.sqlite3")
    assert not (tmp_path / "out.sqlite3").exists()


def test_desk_refuses_joins_when_not_leading() -> None:
    desk = JoinDesk(node_id=2, leading=lambda: False, epoch=lambda: 1, clock=Clock())

    with pytest.raises(NotLeaderError):
        desk.join_requested(4, "http://n4", "n4:9000", ZERO.encode())


def test_done_from_a_replica_that_lacks_chunks_is_refused(tmp_path: Path) -> None:
    api = InMemoryReplica(tmp_path)

    refused = api.send_json("POST", "/sync/done",
                            {"node_id": 4, "head": ZERO.encode(), "missing": 3})
    accepted = api.send_json("POST", "/sync/done",
                             {"node_id": 4, "head": ZERO.encode(), "missing": 0})

    assert refused.status == 409 and refused.json()["error"] == "conflict"
    assert accepted.status == 200 and api.desk.joined.keys() == {4}
    with pytest.raises(Conflict):
        api.desk.done(5, ZERO, 1)


def _leader(node_id: int, epoch: int, head: Version) -> Peer:
    return Peer(node_id=node_id, role="leader", state="ACTIVE", http=f"http://n{node_id}",
                amp=f"n{node_id}:9000", epoch=epoch, head=head, last_seen=0.0, up=True)


def test_a_rejoin_whose_leader_dies_catches_up_to_the_next_one() -> None:
    clock = Clock()
    mine = [Version(1, 3, 5)]
    leader: list[Peer | None] = [_leader(3, 1, Version(1, 3, 9))]
    catch_up = CatchUp(head=lambda: mine[0], leader=lambda: leader[0], clock=clock,
                       progress=SyncProgress())
    done = Deferred.fromCoroutine(catch_up.run())
    clock.advance(1)
    assert not done.called  # behind leader 3

    leader[0] = None  # leader 3 dies with writes nobody else got
    clock.advance(1)
    leader[0] = _leader(2, 2, Version(1, 3, 5))  # node 2 leads, holding what we hold
    clock.advance(1)

    assert done.called and catch_up.progress.phase == DONE


def test_done_from_a_joiner_whose_snapshot_is_older_than_the_floor_is_refused() -> None:
    desk = JoinDesk(node_id=2, leading=lambda: True, epoch=lambda: 1, clock=Clock())

    with pytest.raises(SnapshotTooOld, match="takes a new snapshot"):
        desk.done(4, Version(1, 2, 5), 0, floor=Version(1, 2, 6))
    desk.done(4, Version(1, 2, 6), 0, floor=Version(1, 2, 6))

    assert desk.joined.keys() == {4}


def test_a_snapshot_too_old_for_the_leader_is_taken_again(tmp_path: Path) -> None:
    machine, fakes, db, clock = joiner(tmp_path)
    refusals = [StaleSnapshot("HTTP 409 snapshot_too_old")]

    async def done(base: str, node_id: int, head: Version, missing: int) -> None:
        if refusals:
            raise refusals.pop()
        fakes.done_calls.append((node_id, missing))

    fakes.done = done  # type: ignore[method-assign]
    fakes.leader = peer(3, role="leader")

    d = Deferred.fromCoroutine(machine.run())
    clock.advance(2)

    assert d.called and fakes.snapshots == 2 and fakes.done_calls == [(4, 0)]
    assert db.get_meta("join_state") == DONE and db.get_meta("snapshots_fetched") == "2"


def test_the_leader_may_send_a_join_in_its_chunk_phase_back_to_the_snapshot(
    tmp_path: Path,
) -> None:
    machine, fakes, db, clock = joiner(tmp_path)
    db.install_snapshot(tmp_path / "copy.sqlite3", {"join_state": CHUNKS})
    fakes.leader = None
    d = Deferred.fromCoroutine(machine.run())
    assert machine.progress.phase == CHUNKS

    machine.snapshot_again()
    fakes.leader = peer(3, role="leader")
    clock.advance(1)

    assert d.called and fakes.snapshots == 1


def test_the_snapshot_is_installed_with_the_next_phase_in_one_step(tmp_path: Path) -> None:
    machine, fakes, db, clock = joiner(tmp_path)
    seen: list[tuple[str | None, str | None, str | None]] = []
    fetch = fakes.fetch

    async def fetching(ref: ChunkRef, sources: list[str]) -> bool:
        seen.append((db.get_meta("join_state"), db.get_meta("snapshots_fetched"),
                     db.get_meta("snapshot_at")))
        return await fetch(ref, sources)

    fakes.fetch = fetching  # type: ignore[method-assign]
    fakes.leader = peer(3, role="leader")
    clock.advance(7)

    Deferred.fromCoroutine(machine.run())
    clock.advance(1)

    # What the install wrote into the database file it swapped in, nothing after it.
    assert seen == [(CHUNKS, "1", "7.0")]


def test_a_follower_told_to_take_a_new_snapshot_turns_joining(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path, leadership=NoLeader())
    cluster = replica.service.cluster
    assert cluster.state == "ACTIVE"

    answer = replica.send_json("POST", "/sync/resync",
                               {"source": "http://n3", "cursor": Version(1, 3, 1).encode()})

    assert answer.status == 200 and answer.json() == {"phase": "SNAPSHOT"}
    assert cluster.state == "JOINING" and replica.db.get_meta("join_state") == "SNAPSHOT"
    assert replica.get("/songs").status == 503  # no reads until it has the snapshot
    assert not replica.receiver.accepting()  # nor pushes, which the install would wipe
    replica.service.replication.stopService()


def test_the_leader_takes_no_resync_and_a_malformed_one_is_400(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path)

    refused = replica.send_json("POST", "/sync/resync",
                                {"source": "http://n3", "cursor": Version(1, 3, 1).encode()})
    malformed = replica.send_json("POST", "/sync/resync", {"source": "http://n3", "cursor": 7})

    assert refused.status == 409 and malformed.status == 400
    assert replica.service.cluster.state == "ACTIVE"


def test_a_join_resumed_after_the_ttl_takes_a_new_snapshot(tmp_path: Path) -> None:
    replica = InMemoryReplica(tmp_path, leadership=NoLeader())
    db, replication = replica.db, replica.service.replication
    db.set_meta("join_state", CHUNKS)
    db.set_meta("snapshot_at", "0")
    db.apply_ops([Op(Version(1, 3, 1), "playlists", SONG, {"name": "x", "deleted": 0})])
    replica.clock.advance(replica.service.config.tombstone_ttl + 1)

    Deferred.fromCoroutine(replication.become_active())

    assert db.get_meta("join_state") == "SNAPSHOT"
    replication.stopService()


def test_a_join_fetches_its_runs_with_a_few_workers_not_a_coroutine_each() -> None:
    """200,000 runs (a library of tiny songs) were 200,000 coroutines waiting at once: a
    joiner at 943 MiB. JOIN_WORKERS take the runs in turn; a failed run fails only itself."""
    runs = [ChunkRun("s" * 64, 0, (ChunkRef(f"{n:08x}-0000-4000-8000-000000000000", 0, 1,
                                            "a" * 64),)) for n in range(100)]
    waiting: list[tuple[int, Deferred[bool]]] = []
    most = [0]

    class Runs:
        def _fetch_run(self, run: ChunkRun, sources: list[str], n: int) -> Deferred[bool]:
            waiting.append((n, Deferred()))
            most[0] = max(most[0], len(waiting))
            return waiting[-1][1]

    fetched = Deferred.fromCoroutine(Joiner._fetch_runs(Runs(), runs, ["http://a"]))  # type: ignore[arg-type]
    while waiting:
        n, done = waiting.pop(0)
        done.callback(n != 7)

    assert most[0] == JOIN_WORKERS
    assert fetched.result == [n != 7 for n in range(100)]


def test_a_full_disk_ends_the_fetch_once_the_runs_in_flight_have_ended() -> None:
    """Every run of an attempt ends before the attempt is judged: the worker whose run found
    the disk full takes no other, the others finish theirs and take none, and only then is
    the fetch failed with InsufficientStorage."""
    runs = [ChunkRun("s" * 64, 0, (ChunkRef(f"{n:08x}-0000-4000-8000-000000000000", 0, 1,
                                            "a" * 64),)) for n in range(100)]
    waiting: dict[int, Deferred[bool]] = {}

    class Runs:
        def _fetch_run(self, run: ChunkRun, sources: list[str], n: int) -> Deferred[bool]:
            waiting[n] = Deferred()
            return waiting[n]

    fetched = Deferred.fromCoroutine(Joiner._fetch_runs(Runs(), runs, ["http://a"]))  # type: ignore[arg-type]
    assert sorted(waiting) == list(range(JOIN_WORKERS))
    waiting[3].errback(InsufficientStorage("chunk x/0 could not be stored"))
    for n in range(JOIN_WORKERS - 1):
        assert not fetched.called
        waiting[n if n < 3 else n + 1].callback(True)

    assert len(waiting) == JOIN_WORKERS  # no run taken after the disk was found full
    with pytest.raises(InsufficientStorage):
        result_of(fetched)


def test_a_join_makes_the_runs_of_a_page_of_missing_chunks_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("distpotify.replication.bootstrap.RUNS_PAGE", 2)
    machine, fakes, db, clock = joiner(tmp_path, chunk_count=5)
    d = Deferred.fromCoroutine(machine.run())
    fakes.leader = peer(3, role="leader")
    clock.advance(1)

    assert d.called and db.get_meta("join_state") == DONE
    # A run never spans two pages: chunks 0-1, 2-3 and 4, each at its byte offset.
    assert fakes.runs == [(0, [0, 1]), (10, [2, 3]), (20, [4])]
    assert fakes.done_calls == [(4, 0)]
    assert all((tmp_path / "chunks" / f"{SONG}_{idx}").exists() for idx in range(5))


def test_the_runs_start_at_the_peers_that_did_not_just_answer_503(tmp_path: Path) -> None:
    """Each run's ranged request starts at another ACTIVE replica in turn, but not at one
    the fetcher heard answer 503 (joining itself, though our view still says ACTIVE): every
    run sent there failed, then each of its chunks asked it first again."""
    machine, fakes, _, clock = joiner(tmp_path, chunk_count=3 * RUN_CHUNKS,
                                      sources=["http://n1", "http://n2"])
    bases: list[str] = []
    real = fakes.fetch_run

    async def fetch_run(refs: list[ChunkRef], start: int, song_sha256: str,
                        base: str) -> list[ChunkRef]:
        bases.append(base)
        return await real(refs, start, song_sha256, base)
    fakes.fetch_run = fetch_run  # type: ignore[method-assign]
    fakes.unavailable = {"http://n1"}
    fakes.leader = peer(3, role="leader")

    Deferred.fromCoroutine(machine.run())
    clock.advance(1)

    assert bases == ["http://n2"] * 3


def test_a_join_cancelled_while_fetching_chunks_stops_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the replica stops: the cancellation goes through the fetch workers, none of
    which takes another run or logs its run as failed, and the join is not retried."""
    monkeypatch.setattr(bootstrap, "JOIN_WORKERS", 1)  # one worker, two runs to take
    machine, fakes, _, clock = joiner(tmp_path, chunk_count=RUN_CHUNKS + 1)
    pending: list[Deferred[list[ChunkRef]]] = []

    async def fetch_run(refs: list[ChunkRef], start: int, song_sha256: str,
                        base: str) -> list[ChunkRef]:
        fakes.runs.append((start, [ref.idx for ref in refs]))
        pending.append(Deferred())
        return await pending[-1]
    fakes.fetch_run = fetch_run  # type: ignore[method-assign]
    fakes.leader = peer(3, role="leader")
    d = Deferred.fromCoroutine(machine.run())
    clock.advance(1)
    assert machine.progress.phase == CHUNKS and len(pending) == 1

    with capturedLogs() as events:
        d.cancel()
        clock.advance(60)
        with pytest.raises(CancelledError):
            result_of(d)
        gc.collect()  # a Deferred that ends in a failure nobody handled logs it once collected

    assert [e for e in events if "log_failure" in e] == []
    assert fakes.runs == [(0, list(range(RUN_CHUNKS)))] and fakes.done_calls == []
    assert [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn] == []


@pytest.mark.parametrize("where", ["the ranged run", "a chunk alone"])
def test_a_join_that_finds_its_disk_full_stops_fetching_and_tries_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:
    """A join with a full disk asked every peer for every missing chunk, each try of RETRY,
    for bytes it could not store: 1,131 'could not be stored' lines in one random lab run.
    The first chunk that finds the disk full ends the try (no worker takes another run), the
    join says so in a line of its own, and tries again after DISK_FULL_RETRY; once space is
    freed it ends."""
    monkeypatch.setattr(bootstrap, "JOIN_WORKERS", 1)  # one worker, two runs to take
    machine, fakes, db, clock = joiner(tmp_path, chunk_count=RUN_CHUNKS + 1)
    full = [True]
    asked: list[int] = []

    async def fetch_run(refs: list[ChunkRef], start: int, song_sha256: str,
                        base: str) -> list[ChunkRef]:
        fakes.runs.append((start, [ref.idx for ref in refs]))
        if full[0] and where == "the ranged run":  # as its part file is written
            raise OSError(errno.ENOSPC, "No space left on device")
        return [] if full[0] else [ref for ref in refs if await fakes.fetch(ref, [base])]

    async def fetch_outcome(ref: ChunkRef, sources: list[str]) -> Fetched:
        asked.append(ref.idx)
        return Fetched.NO_ROOM if full[0] else Fetched.DONE
    fakes.fetch_run = fetch_run  # type: ignore[method-assign]
    fakes.fetch_outcome = fetch_outcome  # type: ignore[method-assign]
    fakes.leader = peer(3, role="leader")

    with capturedLogs() as events:
        d = Deferred.fromCoroutine(machine.run())
        clock.advance(RETRY)
        clock.advance(DISK_FULL_RETRY - 2 * RETRY)

    assert machine.progress.phase == CHUNKS and not d.called
    assert fakes.runs == [(0, list(range(RUN_CHUNKS)))]  # one try, the second run not taken
    assert asked == ([] if where == "the ranged run" else [0])
    warned = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert len(warned) == 1
    assert warned[0].startswith("join: CHUNKS stopped: this replica's disk is full (")
    assert warned[0].endswith(f"); trying again in {DISK_FULL_RETRY:g} s")

    full[0] = False
    clock.advance(2 * RETRY)

    assert d.called and db.get_meta("join_state") == DONE
    assert len(fakes.runs) == 3 and fakes.done_calls == [(4, 0)]


@pytest.mark.parametrize("where", ["downloaded", "unpacked"])
def test_a_snapshot_that_finds_the_disk_full_is_fetched_again_later(
    tmp_path: Path, where: str,
) -> None:
    """Every RETRY, the leader sent the whole snapshot again for nothing; one that filled the
    disk as it was decompressed was counted a bad snapshot besides."""
    machine, fakes, db, clock = joiner(tmp_path)
    fetched = fakes.snapshot

    async def no_room_for_it(base: str, path: str, dest: Path) -> Version:
        fakes.snapshots += 1
        raise OSError(errno.ENOSPC, "No space left on device")
    if where == "downloaded":
        fakes.snapshot = no_room_for_it  # type: ignore[method-assign]
    else:  # the decompressed database is written to a device with no room
        (tmp_path / "tmp" / "snapshot.sqlite3").symlink_to("/dev/full")
    fakes.leader = peer(3, role="leader")
    d = Deferred.fromCoroutine(machine.run())
    clock.advance(DISK_FULL_RETRY - RETRY)
    assert fakes.snapshots == 1 and machine.progress.phase == bootstrap.SNAPSHOT
    assert machine.progress.bad_snapshots == 0
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing left behind

    fakes.snapshot = fetched  # type: ignore[method-assign]
    clock.advance(RETRY)
    clock.advance(1)

    assert fakes.snapshots == 2 and d.called and db.get_meta("join_state") == DONE
    assert machine.progress.bad_snapshots == 0


def test_unpack_into_a_full_disk_raises_the_full_disk_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """Not SnapshotError: the snapshot is good, this replica's disk is not."""
    out = tmp_path / "out.sqlite3"
    out.symlink_to("/dev/full")

    with pytest.raises(OSError) as raised:
        unpack_snapshot(leader_snapshot(tmp_path), out)

    assert raised.value.errno == errno.ENOSPC and not isinstance(raised.value, SnapshotError)
    assert not out.exists() and not out.is_symlink()


def test_an_empty_replica_that_heard_holders_waits_says_so_once_each_and_joins_an_active_one(
        tmp_path: Path) -> None:
    """Lab seed 5353: a replica heard holding data, ACTIVE or not, means the cluster exists.
    The wait is logged when the replicas waited on change, not every heartbeat interval."""
    replica = InMemoryReplica(tmp_path, leadership=NoLeader())
    service, clock = replica.service, replica.clock
    membership = service.cluster.membership

    def heard(node: int, state: str, head: Version) -> None:
        membership.heartbeat_received(Heartbeat(
            cluster=service.config.cluster, node=node, epoch=4, role="follower", state=state,
            http=f"http://127.0.0.9:{8000 + node}", amp=f"127.0.0.9:{9000 + node}", head=head))

    with capturedLogs() as events:
        heard(2, "JOINING", HELD)
        heard(3, "JOINING", ZERO)
        planned = Deferred.fromCoroutine(service.replication.become_active())
        for _ in range(20):  # two seconds of planning again
            clock.advance(service.config.heartbeat_interval)
            heard(2, "JOINING", HELD)
            heard(3, "JOINING", ZERO)
        waiting = service.replication.progress.waiting_for
        heard(3, "JOINING", HELD)
        clock.advance(service.config.heartbeat_interval)
        heard(3, "ACTIVE", HELD)
        clock.advance(service.config.heartbeat_interval)

    said = [formatEvent(e) for e in events if "founds no cluster" in formatEvent(e)]
    assert waiting == "holders"
    assert said == [
        "replica 1 is empty and has heard replica(s) 2 holding data, none of them ACTIVE: it"
        " founds no cluster beside theirs, and joins it once one of them is ACTIVE",
        "replica 1 is empty and has heard replica(s) 2, 3 holding data, none of them ACTIVE:"
        " it founds no cluster beside theirs, and joins it once one of them is ACTIVE"]
    assert any("replica 1 at head 0000000000-00000-000000000000 will join the cluster"
               in formatEvent(e) for e in events)
    assert service.replication.progress.waiting_for == "leader"  # the join's, now
    planned.addErrback(lambda failure: failure.trap(CancelledError))
    planned.cancel()
    service.replication.stopService()
