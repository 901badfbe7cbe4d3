"""How a replica comes to hold what the cluster holds: founding, rejoining, or joining.

At start-up every replica is JOINING. After one failure timeout of listening, ``plan`` picks:
FOUND (nobody ACTIVE has data: this replica starts or restarts the cluster; an empty one
only once it hears a majority of --cluster-size and has heard no replica holding data,
else WAIT), REJOIN (it has data: it catches up by push and anti-entropy), or JOIN, the
protocol of docs/architecture.md 5.2, driven by Joiner through ANNOUNCING -> SNAPSHOT ->
CHUNKS -> DONE, each phase persisted in node_meta so a restart resumes where it stopped.
JoinDesk is the leader's side.
"""
# test-case-name: tests.unit.test_bootstrap

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from distpotify.cluster.bully import NotLeaderError
from distpotify.cluster.membership import Peer
from distpotify.diskfull import what_is_full
from distpotify.errors import Conflict, InsufficientStorage, NotLeader, SnapshotTooOld
from distpotify.failpoints import NONE, Failpoints
from distpotify.model import ZERO, Version
from distpotify.periodic import Periodic
from distpotify.replication.client import PeerClient, PeerError, StaleSnapshot
from distpotify.replication.fetch import ChunkFetcher, ChunkRef, Fetched
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner
from distpotify.wire import ACTIVE

log = Logger()

ANNOUNCING, SNAPSHOT, CHUNKS, DONE = "ANNOUNCING", "SNAPSHOT", "CHUNKS", "DONE"
CATCHING_UP = "CATCHING_UP"
# The join protocol's transitions: each phase, when it succeeds, leads to the next.
NEXT_PHASE = {ANNOUNCING: SNAPSHOT, SNAPSHOT: CHUNKS, CHUNKS: DONE}
FOUND, REJOIN, JOIN, WAIT = "found", "rejoin", "join", "wait"
SNAPSHOT_PATH = "/sync/snapshot"
RETRY = 0.5
# A full disk waits for its operator: the join looks again this often, where every try of
# RETRY fetched the snapshot or each missing chunk again from the peers, to fail to store it.
DISK_FULL_RETRY = 5.0
PROGRESS_EVERY = 3.0


class SnapshotError(Exception):
    """A snapshot that does not decompress or fails SQLite's integrity check."""


def plan(
    join_state: str | None, head: Version, peers: Sequence[Peer], away_too_long: bool = False,
    cluster_size: int = 1,
) -> str:
    """Found, rejoin or join, from what this replica holds and which peers it hears; or wait.

    Nobody ACTIVE with data to copy: found (or refound) the cluster. An interrupted join goes
    on. An empty replica joins; one with data rejoins, unless it was away longer than the
    tombstone TTL, when merging could bring deleted data back: it joins by snapshot.

    An empty replica founds only once it hears a majority of the ``cluster_size`` replicas,
    itself included. Hearing fewer, it cannot tell a new cluster from one it is cut off from:
    one whose disk was lost, restarted in a partition, founded an empty cluster there, led
    it, and answered the clients the proxy sent it 404 for the whole library (found by the
    random lab run). It waits (WAIT): not electable, and planning again as peers are heard.

    Nor does it found while it has heard (``peers`` holds every replica heard since this one
    started, live or not) a replica that holds data, ACTIVE or not: the cluster exists, and
    this replica joins it once a holder is ACTIVE. Two replicas of three whose disks were
    lost, one still joining (its snapshot installed, its chunks not all fetched) when the
    other restarted, while the third was cut off from both, were a majority of empty
    replicas: the second founded an empty cluster beside the one that held the library, and
    clients whose session named an account of that library were refused (lab run, seed
    5353).
    """
    live = [p for p in peers if p.up]
    active = [p for p in live if p.state == ACTIVE]
    if join_state in (SNAPSHOT, CHUNKS):
        return JOIN
    if head == ZERO or away_too_long:
        if any(p.head > ZERO for p in active):
            return JOIN
        if head == ZERO and (holders(peers) or len(live) + 1 <= cluster_size // 2):
            return WAIT
        return FOUND
    return REJOIN if active else FOUND


def holders(peers: Sequence[Peer]) -> list[int]:
    """The ids of the replicas in ``peers`` that were heard holding data."""
    return [p.node_id for p in peers if p.head > ZERO]


# snapshot files (worker threads)


def pack_snapshot(db_copy: Path, out: Path) -> None:
    with open(db_copy, "rb") as source, gzip.open(out, "wb", compresslevel=1) as packed:
        shutil.copyfileobj(source, packed, 1 << 20)


def unpack_snapshot(packed: Path, out: Path) -> None:
    """Decompress and check a snapshot; SnapshotError (and nothing left behind) if bad, the
    OSError itself (nothing left behind either) if this replica's disk is full."""
    try:
        with gzip.open(packed, "rb") as source, open(out, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
            target.flush()
            os.fsync(target.fileno())
        conn = sqlite3.connect(out)
        try:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            conn.execute("SELECT count(*) FROM songs").fetchone()
        finally:
            conn.close()
    except (OSError, EOFError, gzip.BadGzipFile, sqlite3.DatabaseError) as e:
        out.unlink(missing_ok=True)
        if what_is_full(e) is not None:
            raise  # this replica's disk, not the snapshot: the join waits for space
        raise SnapshotError(f"snapshot unusable: {e}") from None
    if verdict != "ok":
        out.unlink(missing_ok=True)
        raise SnapshotError(f"snapshot fails its integrity check: {verdict}")


@attrs.define
class SyncProgress:
    """What /status shows under ``sync``, and the last sync's record once done."""

    phase: str = DONE
    chunks_done: int = 0
    chunks_total: int = 0
    snapshots_fetched: int = 0
    bad_snapshots: int = 0
    bytes: int = 0
    started: float | None = None
    finished: float | None = None
    waiting_for: str | None = None

    def as_dict(self, now: float) -> dict[str, Any]:
        end = self.finished if self.finished is not None else now
        elapsed = end - self.started if self.started is not None else 0.0
        rate = self.bytes / elapsed / 2**20 if elapsed > 0 else 0.0
        left = self.chunks_total - self.chunks_done
        eta = elapsed / self.chunks_done * left if self.chunks_done and left else 0.0
        return {
            "phase": self.phase, "chunks_done": self.chunks_done,
            "chunks_total": self.chunks_total, "snapshots_fetched": self.snapshots_fetched,
            "bad_snapshots": self.bad_snapshots, "mib_per_s": round(rate, 2),
            "eta_s": round(eta, 1), "waiting_for": self.waiting_for,
        }


RUN_CHUNKS = 64  # chunks per ranged request during a join (16 MiB of 256 KiB chunks)
# Runs fetched at once: the fetcher downloads 8 at a time, and a run being written or
# verified is not downloading.
JOIN_WORKERS = 16
RUNS_PAGE = 4096  # missing chunks whose runs are made at once
SETTLE_CHUNKS = 1000  # missing chunks whose current rows a failed try asks the leader for


@attrs.frozen
class ChunkRun:
    """Consecutive chunks of one song, fetched with one ranged request of its stream."""

    song_sha256: str
    start: int
    refs: tuple[ChunkRef, ...]


def _runs_to_fetch(db: MetadataDB, missing: Sequence[str]) -> list[ChunkRun]:
    """Group missing chunk names into runs of consecutive chunks per song (database thread)."""
    wanted: dict[str, set[int]] = {}
    for name in missing:
        song_id, _, idx = name.rpartition("_")
        wanted.setdefault(song_id, set()).add(int(idx))
    runs = []
    for song_id, indexes in sorted(wanted.items()):
        song = db.get_row("songs", song_id)
        song_sha = song.fields.get("sha256") if song is not None else None
        offset, start = 0, 0
        run: list[ChunkRef] = []
        for chunk in db.chunks_of(song_id):
            ref = ChunkRef(song_id, chunk["idx"], chunk["size"], chunk["sha256"])
            if chunk["idx"] in indexes and len(run) < RUN_CHUNKS:
                if not run:
                    start = offset
                run.append(ref)
            else:
                if run:
                    runs.append(ChunkRun(str(song_sha), start, tuple(run)))
                run = [ref] if chunk["idx"] in indexes else []
                start = offset
            offset += chunk["size"]
        if run:
            runs.append(ChunkRun(str(song_sha), start, tuple(run)))
    return runs


class Joiner:
    """The joining replica's side of the protocol, one phase at a time until DONE."""

    def __init__(
        self,
        *,
        node_id: int,
        http: str,
        amp: str,
        store: MetadataStore,
        chunks: ChunkStore,
        fetcher: ChunkFetcher,
        client: PeerClient,
        join_rpc: Callable[[Peer, dict[str, Any]], Deferred[dict[str, Any]]],
        leader: Callable[[], Peer | None],
        sources: Callable[[], Sequence[str]],
        blocking: Runner,
        clock: IReactorTime,
        tmp_dir: Path,
        progress: SyncProgress,
        clean_up: Callable[[], Awaitable[object]],
        settle: Callable[[Sequence[str], str], Awaitable[object]],
        failpoints: Failpoints = NONE,
    ) -> None:
        self._node_id = node_id
        self._http = http
        self._amp = amp
        self._store = store
        self._chunks = chunks
        self._fetcher = fetcher
        self._client = client
        self._join_rpc = join_rpc
        self._leader = leader
        self._sources = sources
        self._blocking = blocking
        self._clock = clock
        self._tmp = tmp_dir
        self.progress = progress
        self._clean_up = clean_up
        self._settle = settle
        self._failpoints = failpoints
        self._snapshot_again = False
        self._steps: dict[str, Callable[[Peer], Awaitable[None]]] = {
            ANNOUNCING: self._announce, SNAPSHOT: self._snapshot, CHUNKS: self._fetch_chunks,
        }

    async def run(self) -> None:
        progress = self.progress
        reached = await self._store.run(MetadataDB.get_meta, "join_state")
        progress.phase = reached if reached in (SNAPSHOT, CHUNKS) else ANNOUNCING
        progress.snapshots_fetched = int(
            await self._store.run(MetadataDB.get_meta, "snapshots_fetched") or 0)
        progress.started = self._clock.seconds()
        reporter = Periodic(self._report, PROGRESS_EVERY, self._clock, name="join progress")
        reporter.startService()
        try:
            while progress.phase != DONE:
                leader = self._leader()
                if leader is None:
                    if progress.waiting_for != "leader":
                        log.info("join: no leader known; staying JOINING until one is elected")
                    progress.waiting_for = "leader"
                    await deferLater(self._clock, RETRY, lambda: None)
                    continue
                progress.waiting_for = None
                if self._snapshot_again and progress.phase == CHUNKS:
                    await self._back_to_snapshot("the leader asked for a new snapshot")
                    continue
                try:
                    await self._steps[progress.phase](leader)
                except CancelledError:
                    raise  # the replica stops
                except StaleSnapshot:
                    await self._back_to_snapshot(f"leader {leader.node_id} no longer holds"
                                                 " the ops past this snapshot")
                except Exception as e:
                    # A join outlives any failure of its leader or network: it retries, with
                    # the leader of the moment, from the phase it reached.
                    await deferLater(self._clock, self._failed(progress.phase, leader, e),
                                     lambda: None)
        finally:
            reporter.stopService()
        progress.finished = self._clock.seconds()
        log.info("join: done: {chunks} chunks, {snapshots} snapshot(s) fetched",
                 chunks=progress.chunks_total, snapshots=progress.snapshots_fetched)

    @staticmethod
    def _failed(phase: str, leader: Peer, error: Exception) -> float:
        """Log a failed try of ``phase``; how long to wait before the next."""
        if isinstance(error, InsufficientStorage) or what_is_full(error) is not None:
            log.warn("join: {phase} stopped: this replica's disk is full ({error}); trying"
                     " again in {delay:g} s", phase=phase, error=error, delay=DISK_FULL_RETRY)
            return DISK_FULL_RETRY
        log.warn("join: {phase} with leader {leader} failed: {error!r}; retrying",
                 phase=phase, leader=leader.node_id, error=error)
        return RETRY

    def snapshot_again(self) -> None:
        """The leader's oplog no longer reaches back to our snapshot: take a new one (at once
        if the chunks of the old one are being fetched; a snapshot about to be installed is
        new enough)."""
        self._snapshot_again = True

    async def _back_to_snapshot(self, why: str) -> None:
        self._snapshot_again = False
        await self._store.run(MetadataDB.set_meta, "join_state", SNAPSHOT)
        log.info("join: back to phase {phase}: {why}", phase=SNAPSHOT, why=why)
        self.progress.phase = SNAPSHOT

    async def _advance(self) -> None:
        phase = NEXT_PHASE[self.progress.phase]
        await self._store.run(MetadataDB.set_meta, "join_state", phase)
        log.info("join: phase {phase}", phase=phase)
        self.progress.phase = phase

    async def _announce(self, leader: Peer) -> None:
        head = await self._store.run(MetadataDB.head)
        answer = await self._join_rpc(leader, {
            "node_id": self._node_id, "http": self._http, "amp": self._amp,
            "head": head.encode(),
        })
        log.info("join: leader {leader_id} (epoch {epoch}) accepted; snapshot at {path}",
                 leader_id=answer["leader_id"], epoch=answer["epoch"],
                 path=answer["snapshot_path"])
        await self._advance()

    async def _snapshot(self, leader: Peer) -> None:
        packed = self._tmp / "snapshot.sqlite3.gz"
        unpacked = self._tmp / "snapshot.sqlite3"
        fetched = self.progress.snapshots_fetched + 1
        try:
            version = await self._client.snapshot(leader.http, SNAPSHOT_PATH, packed)
            try:
                await self._blocking(unpack_snapshot, packed, unpacked)
            except SnapshotError:
                self.progress.bad_snapshots += 1
                raise
            self._failpoints.hit("snapshot.fetched")
            # The tables, our node_meta and the next phase in one crash-safe step: a restart
            # finds the old database in SNAPSHOT, or the new one in CHUNKS.
            head = await self._store.run(MetadataDB.install_snapshot, unpacked, {
                "join_state": CHUNKS, "snapshots_fetched": str(fetched),
                "snapshot_at": repr(self._clock.seconds()),
            })
        finally:
            packed.unlink(missing_ok=True)
            unpacked.unlink(missing_ok=True)
        self._failpoints.hit("snapshot.installed")
        self.progress.snapshots_fetched = fetched
        self._snapshot_again = False
        log.info("join: snapshot of version {version} installed (head {head})",
                 version=version.encode(), head=head.encode())
        log.info("join: phase {phase}", phase=CHUNKS)
        self.progress.phase = CHUNKS

    async def _fetch_chunks(self, leader: Peer) -> None:
        live = await self._store.run(MetadataDB.live_chunk_names)
        present: set[str] = await self._blocking(self._chunks.names)
        missing = sorted(live - present)
        self.progress.chunks_total = len(live)
        self.progress.chunks_done = len(live) - len(missing)
        del live, present
        sources = list(self._sources()) or [leader.http]
        failed = 0
        # The runs of a page of the missing chunks at a time: those of 200,000 tiny songs,
        # made at once, were some 200 MiB of a joiner's memory.
        for start in range(0, len(missing), RUNS_PAGE):
            runs = await self._store.run(_runs_to_fetch, missing[start:start + RUNS_PAGE])
            failed += (await self._fetch_runs(runs, sources, start)).count(False)
        del missing  # names of every chunk of a new library: tens of MiB
        await self._fetcher.sync()
        if failed:
            await self._settle_missing(leader)
            raise PeerError(f"{failed} runs of chunks could not be fetched yet")
        head = await self._store.run(MetadataDB.head)
        present = await self._blocking(self._chunks.names)
        still = await self._store.run(MetadataDB.count_missing_chunks, present)
        del present
        self._failpoints.hit("join.chunks_fetched")
        await self._client.done(leader.http, self._node_id, head, still)
        # Files of chunks the snapshot no longer lists (a rejoin after a long absence), but
        # none that a push or anti-entropy is fetching now for ops it has yet to apply.
        await self._clean_up()
        await self._advance()

    async def _settle_missing(self, leader: Peer) -> None:
        """The leader's current rows of (some of) the chunks still missing, merged: those
        deleted since the snapshot are then no longer wanted (Receiver.settle). A chunk
        that failed for another reason (a peer down) is merged unchanged, and fetched again
        at the next try."""
        live = await self._store.run(MetadataDB.live_chunk_names)
        present: set[str] = await self._blocking(self._chunks.names)
        missing = sorted(live - present)[:SETTLE_CHUNKS]
        del live, present
        if not missing:
            return
        rows = await self._settle(missing, leader.http)
        log.info("join: {n} chunk(s) not fetched: merged {rows} current row(s) of them and"
                 " their songs from leader {leader}", n=len(missing), rows=rows,
                 leader=leader.node_id)

    async def _fetch_runs(self, runs: Sequence[ChunkRun], sources: list[str], first: int = 0
                          ) -> list[bool]:
        """Every run fetched by JOIN_WORKERS workers, each taking the next run when it is
        done: whether each run was. (A coroutine per run, all waiting for the fetcher's few
        slots, held a joiner of a 200,000-song library at 943 MiB.) Run ``n`` of them is the
        ``first + n``-th of the join (its first source is chosen by that). A run that found
        this replica's disk full ends the fetch: no worker takes another run (each would
        fail alike, its bytes sent for nothing), and once all have stopped this raises
        InsufficientStorage."""
        results = [False] * len(runs)
        todo = iter(enumerate(runs))
        full: list[InsufficientStorage] = []

        async def worker() -> None:
            for n, run in todo:
                try:
                    results[n] = await self._fetch_run(run, sources, first + n)
                except InsufficientStorage as e:
                    full.append(e)
                if full:
                    return

        try:
            await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(JOIN_WORKERS)],
                                consumeErrors=True)
        except FirstError as e:
            # A worker's own error, not gatherResults' wrapper: a join cancelled (the replica
            # stops) fails as cancelled, which the join's loop lets through.
            e.subFailure.raiseException()
        if full:
            raise full[0]
        return results

    async def _fetch_run(self, run: ChunkRun, sources: list[str], n: int) -> bool:
        """One ranged request for a run of chunks; chunk by chunk for what it missed. Never
        raises but CancelledError, and InsufficientStorage when the disk is full: every run
        of an attempt ends before the attempt is judged."""
        try:
            return await self._fetch_run_once(run, sources, n)
        except (CancelledError, InsufficientStorage):
            raise  # the join is cancelled, or the disk full: no run after this one
        except Exception as e:
            if what_is_full(e) is not None:  # a chunk's part file, as the run wrote it
                raise InsufficientStorage(f"a run of {len(run.refs)} chunks could not be"
                                          f" stored: {e}") from e
            log.warn("join: run of {n} chunks failed: {error!r}", n=len(run.refs), error=e)
            return False

    async def _fetch_run_once(self, run: ChunkRun, sources: list[str], n: int) -> bool:
        # Spread the downloads over every ACTIVE replica, each run starting elsewhere (but
        # not at one that has just answered 503: it is joining too).
        rotated = self._fetcher.by_readiness(sources[n % len(sources):]
                                             + sources[:n % len(sources)])
        done = await self._fetcher.fetch_run(run.refs, run.start, run.song_sha256, rotated[0])
        self._count(done)
        ok = True
        for ref in run.refs:
            if ref not in done:
                fetched = await self._fetcher.fetch_outcome(ref, rotated)
                if fetched is Fetched.DONE:
                    self._count([ref])
                elif fetched is Fetched.NO_ROOM:
                    raise InsufficientStorage(f"chunk {ref.song_id}/{ref.idx} could not be"
                                              " stored")
                else:
                    ok = False
        return ok

    def _count(self, refs: Sequence[ChunkRef]) -> None:
        self.progress.chunks_done += len(refs)
        self.progress.bytes += sum(ref.size for ref in refs)

    def _report(self) -> None:
        state = self.progress.as_dict(self._clock.seconds())
        log.info(
            "join: {phase} chunks {chunks_done}/{chunks_total}, {mib_per_s} MiB/s,"
            " about {eta_s} s left", **state,
        )


class JoinDesk:
    """The leader's side: answers Join, serves snapshots (api/sync.py), accepts /sync/done."""

    def __init__(self, *, node_id: int, leading: Callable[[], bool], epoch: Callable[[], int],
                 clock: IReactorTime, joining: Callable[[int], object] = lambda _: None) -> None:
        self._node_id = node_id
        self._leading = leading
        self._epoch = epoch
        self._clock = clock
        # Told of each replica that starts a join: what it held before, and the cursor that
        # said so, is about to be replaced by a snapshot.
        self._on_joining = joining
        self.joining: dict[int, dict[str, Any]] = {}
        self.joined: dict[int, float] = {}

    def join_requested(self, node_id: int, http: str, amp: str, head: str) -> dict[str, Any]:
        if not self._leading():
            raise NotLeaderError(f"replica {self._node_id} is not the leader")
        self.joining[node_id] = {"http": http, "since": self._clock.seconds()}
        log.info("join: replica {node_id} ({http}) is joining", node_id=node_id, http=http)
        self._on_joining(node_id)
        return {"leader_id": self._node_id, "epoch": self._epoch(),
                "snapshot_path": SNAPSHOT_PATH}

    def done(self, node_id: int, head: Version, missing: int, floor: Version = ZERO) -> None:
        """A joiner holds every chunk of its snapshot. Refused while it misses chunks, and
        when our oplog no longer reaches back to its snapshot (``floor``): the ops in
        between are gone, so it must take a new one."""
        if not self._leading():
            raise NotLeader(f"replica {self._node_id} is not the leader")
        if head < floor:
            raise SnapshotTooOld(
                f"replica {node_id}'s snapshot ({head.encode()}) is older than the oldest ops"
                f" kept here (floor {floor.encode()}): it takes a new snapshot")
        if missing:
            raise Conflict(f"replica {node_id} still lacks {missing} chunks")
        self.joining.pop(node_id, None)
        self.joined[node_id] = self._clock.seconds()
        log.info("join: replica {node_id} is ACTIVE at head {head}", node_id=node_id,
                 head=head.encode())


class CatchUp:
    """A rejoining replica is caught up once it holds what the leader held when it came back,
    unless the leader tells it (``abandon``) that it must take a new snapshot instead."""

    def __init__(self, *, head: Callable[[], Version], leader: Callable[[], Peer | None],
                 clock: IReactorTime, progress: SyncProgress) -> None:
        self._head = head
        self._leader = leader
        self._clock = clock
        self.progress = progress
        self._abandoned = False

    def abandon(self) -> None:
        self._abandoned = True

    async def run(self) -> bool:
        """Wait until caught up (True), or abandoned (False)."""
        self.progress.phase = CATCHING_UP
        target: Version | None = None
        source: tuple[int, int] | None = None
        while True:
            if self._abandoned:
                log.info("rejoin: abandoned for a new snapshot")
                return False
            leader = self._leader()
            # A new leader may never reach the old one's head (its last writes died with it):
            # the target is what the current leader held when it was first seen leading.
            if leader is not None and leader.claim != source:
                target, source = leader.head, leader.claim
                log.info("rejoin: catching up from {mine} to leader {leader}'s {target}",
                         mine=self._head().encode(), leader=leader.node_id,
                         target=target.encode())
            if target is not None and self._head() >= target:
                break
            await deferLater(self._clock, 0.05, lambda: None)
        self.progress.phase = DONE
        log.info("rejoin: caught up at {head}", head=self._head().encode())
        return True
