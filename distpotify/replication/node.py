"""A replica's replication, wired: push from the leader, /sync/ops in, anti-entropy, repair.

Peers are the live ACTIVE replicas of the peer table; the leader pushes to them, and any of
them may give chunk bytes or rows.
"""
# test-case-name: tests.integration.test_replication

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from distpotify.cluster.bully import Join
from distpotify.cluster.membership import Peer, PeerChanged, PeerEvent, PeerUp
from distpotify.cluster.node import ClusterNode
from distpotify.config import ReplicaConfig
from distpotify.detach import detached
from distpotify.errors import Conflict, Unavailable
from distpotify.leadership import Leadership
from distpotify.model import Op, Version
from distpotify.periodic import Periodic
from distpotify.replication.antientropy import AntiEntropy
from distpotify.replication.applied import AppliedOps
from distpotify.replication.bootstrap import (
    ANNOUNCING,
    CHUNKS,
    DONE,
    JOIN,
    REJOIN,
    SNAPSHOT,
    WAIT,
    CatchUp,
    JoinDesk,
    Joiner,
    SyncProgress,
    holders,
    plan,
)
from distpotify.replication.client import PeerClient
from distpotify.replication.covers import CoverFetcher
from distpotify.replication.fetch import ChunkFetcher, ChunkRef
from distpotify.replication.figures import StoredFigures
from distpotify.replication.purge import Purger
from distpotify.replication.push import Pusher
from distpotify.replication.receive import Receiver
from distpotify.replication.repair import ChunkGuard, Scrubber
from distpotify.replication.retention import OplogCompactor
from distpotify.replication.semisync import SemiSync
from distpotify.replication.snapshots import SnapshotBuilds
from distpotify.replication.takeover import Takeover
from distpotify.store.chunks import ChunkStore
from distpotify.store.covers import CoverStore
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner
from distpotify.wire import ACTIVE

log = Logger()

SCRUB_RATE = 8 * 1024 * 1024  # bytes/s of background re-hashing
ACTIVE_AT_EVERY = 60.0  # seconds between records of being ACTIVE (for the tombstone TTL)
# How long a replica that has synced waits for its rounds with the peers before turning
# ACTIVE (its writes are not waiting: another replica leads meanwhile).
RECONCILE_BEFORE_ACTIVE = 10.0


class ReplicationNode(service.MultiService):
    """Everything that makes this replica hold what the cluster holds.

    Built with the replica, it takes pushes (Receiver), pushes when it leads (Pusher),
    guards and repairs chunks (ChunkGuard), answers joins (JoinDesk, SnapshotBuilds) and wakes
    reads waiting for a version (AppliedOps) from the start; ``become_active`` founds, rejoins
    or joins the cluster; its children, started after that, are its periodic jobs: the record
    of being ACTIVE, anti-entropy, scrubbing, purging (tombstones, expired idempotency keys)
    and oplog compaction. ``leadership`` says when this replica leads.
    ``resync_requested`` is the leader's word that this replica must take a new snapshot: it
    turns JOINING again until it has. ``missing_chunks`` are the live chunks start-up found
    without a file, for anti-entropy to fetch.
    """

    def __init__(
        self,
        config: ReplicaConfig,
        reactor: Any,
        store: MetadataStore,
        chunks: ChunkStore,
        cluster: ClusterNode,
        leadership: Leadership,
        client: PeerClient,
        blocking: Runner,
        covers: CoverStore | None = None,
        missing_chunks: Sequence[ChunkRef] | None = None,
    ) -> None:
        super().__init__()
        self._cluster = cluster
        self._leadership = leadership
        self._failure_timeout = config.failure_timeout
        self.client = client
        failpoints = config.failpoints
        self.fetcher = ChunkFetcher(client, chunks, blocking, reactor)
        self.guard = ChunkGuard(chunks, self.fetcher, blocking, self.peer_urls)
        self.applied = AppliedOps(store, reactor, config.read_wait, cluster.head)
        # Cover pictures: fetched with the batches that name them, repaired by a sweep.
        self.covers = None if covers is None else CoverFetcher(
            client, covers, blocking, store, self.peer_urls, reactor,
            config.anti_entropy_interval)
        self.receiver = Receiver(
            store, chunks, self.fetcher, client, blocking, self.peer_urls,
            accepting=lambda: self._planned and self.progress.phase not in (ANNOUNCING, SNAPSHOT),
            failpoints=failpoints,
            on_applied=self._ops_applied,
            covers=None if self.covers is None else self.covers.for_ops)
        # Told of every batch applied here from elsewhere, after the reads waiting for it
        # (the accounts reload when user records are among them).
        self.on_applied: list[Callable[[Sequence[Op]], object]] = []
        # Told when a join, rejoin or resync has made this replica ACTIVE: a snapshot may
        # have replaced every row without an op.
        self.on_synced: list[Callable[[], object]] = []
        # Awaited, in turn, once a join, rejoin or resync has ended and before this replica
        # turns ACTIVE: what it holds in memory from its rows (the accounts its sessions are
        # checked against) must be true of them by the time it answers as ACTIVE.
        self.before_active: list[Callable[[], Awaitable[object]]] = []
        self._figures = StoredFigures(store, reactor, blocking)  # what /status reads
        self._planned = False  # until start-up decides between founding, rejoining and joining
        self.semisync = SemiSync(
            replicas=config.sync_replicas, timeout=config.sync_timeout, clock=reactor,
            head=cluster.head, membership=cluster.membership,
        )
        self.pusher = Pusher(
            store=store, client=client, membership=cluster.membership, clock=reactor,
            source=config.http_url, leading=lambda: leadership.is_leader,
            on_ack=self.semisync.follower_acked, failpoints=failpoints,
        )
        self.takeover = Takeover(
            node_id=config.node_id, membership=cluster.membership, head=cluster.head,
            client=client, receiver=self.receiver, leadership=leadership, clock=reactor,
            timeout=config.catch_up_timeout, recheck=config.heartbeat_interval,
            reconcile=self._took_over,
            holds_op=lambda version: store.run(MetadataDB.has_op, version),
        )
        self.anti_entropy = AntiEntropy(
            store=store, client=client, receiver=self.receiver, guard=self.guard,
            chunks=chunks, blocking=blocking, peers=self._anti_entropy_peers, clock=reactor,
            interval=config.anti_entropy_interval, missing_at_start=missing_chunks,
        )
        self.scrubber = Scrubber(store, self.guard, reactor, SCRUB_RATE)
        self.purger = Purger(
            store=store, pusher=self.pusher, membership=cluster.membership,
            leading=lambda: leadership.is_leader, clock=reactor, ttl=config.tombstone_ttl,
            failpoints=failpoints,
            key_ttl=config.idempotency_ttl,
        )
        self.compactor = OplogCompactor(store=store, retention=config.oplog_retention,
                                        clock=reactor, failpoints=failpoints)
        self.desk = JoinDesk(node_id=config.node_id, leading=lambda: leadership.is_leader,
                             epoch=lambda: leadership.epoch, clock=reactor,
                             joining=self._forget_cursor)
        self.snapshots = SnapshotBuilds(store=store, tmp_dir=config.data_dir / "tmp",
                                        blocking=blocking, clock=reactor, head=cluster.head)
        self.progress = SyncProgress()
        self._config = config
        self._reactor = reactor
        self._store = store
        self._chunks = chunks
        self._blocking = blocking
        # The join or catch-up under way, if any: a resync redirects it.
        self._joiner: Joiner | None = None
        self._catch_up: CatchUp | None = None
        self._resyncing: Deferred[None] | None = None
        active_at = Periodic(self._still_active, min(ACTIVE_AT_EVERY, config.tombstone_ttl / 4),
                             reactor, name="active-at record", first=0)
        for job in (active_at, self.anti_entropy.loop, self.scrubber.loop, self.purger.loop,
                    self.compactor.loop):
            job.setServiceParent(self)
        if self.covers is not None:
            self.covers.loop.setServiceParent(self)
            # A snapshot brings rows naming covers that are not here: fetch them at once.
            self.on_synced.append(self._sweep_covers)
        self._unsubscribe = cluster.membership.subscribe(self._peer_event)
        cluster.role_observers.append(self._role_changed)

    def peer_urls(self) -> list[str]:
        """Base URLs of the live ACTIVE replicas other than this one."""
        return [p.http for p in self._cluster.membership.live_peers() if p.state == ACTIVE]

    def _sweep_covers(self) -> None:
        if self.covers is not None:
            Deferred.fromCoroutine(self.covers.sweep()).addErrback(
                lambda f: log.info("cover repair after a join failed: {error}",
                                   error=f.getErrorMessage()))

    def _forget_cursor(self, node_id: int) -> None:
        self.pusher.forget_follower(node_id)  # a failure to store it is logged there

    def _anti_entropy_peers(self) -> list[str]:
        # A replica taking a new snapshot pulls no rows: the install would wipe them.
        return self.peer_urls() if self._cluster.state == ACTIVE else []

    def written(self) -> None:
        """The library wrote: push it (the answer waits for ``acknowledged``)."""
        self.pusher.wake()

    def writable(self) -> Deferred[None]:
        """Fires when a write may start: at once, unless this replica just became leader and
        is still catching up with its peers."""
        return self.takeover.writable()

    def acknowledged(self) -> Deferred[None]:
        """Fires once the writes made so far may be acknowledged (semi-sync)."""
        return self.semisync.acknowledged()

    def _ops_applied(self, ops: Sequence[Op]) -> None:
        self.applied.applied(ops)
        for observer in self.on_applied:
            observer(ops)

    async def become_active(self) -> None:
        """Found, rejoin or join (replication/bootstrap.py), then serve as ACTIVE; the periodic
        jobs start with this service, after this."""
        config, store, cluster = self._config, self._store, self._cluster
        join_state = await store.run(MetadataDB.get_meta, "join_state")
        # Since when this replica may have missed writes: the last time it was ACTIVE, or
        # the time it installed the snapshot of a join under way.
        times = [await store.run(MetadataDB.get_meta, name) for name in ("active_at",
                                                                         "snapshot_at")]
        since = max((float(t) for t in times if t is not None), default=None)
        head = await store.run(MetadataDB.head)
        away = since is not None and self._reactor.seconds() - since > config.tombstone_ttl

        def decide() -> str:
            return plan(join_state, head, cluster.membership.peers(), away,
                        config.cluster_size)

        decision = decide()
        said: list[int] | None = None
        while decision == WAIT:  # said again whenever the replicas it waits on change
            waited = holders(cluster.membership.peers())
            if waited != said:
                self.progress.waiting_for = self._say_why_waiting(waited)
                said = waited
            await deferLater(self._reactor, config.heartbeat_interval, lambda: None)
            decision = decide()
        self.progress.waiting_for = None
        log.info("replica {node_id} at head {head} will {decision} the cluster",
                 node_id=config.node_id, head=head.encode(), decision=decision)
        if decision == JOIN:
            self.progress.phase = ANNOUNCING  # no push until the snapshot is installed
            if join_state == CHUNKS and away:
                # Deletes newer than its snapshot may be purged everywhere by now.
                log.info("join: the snapshot is older than the tombstone ttl: taking a new one")
                await store.run(MetadataDB.set_meta, "join_state", SNAPSHOT)
        self._planned = True
        await self._sync(decision)

    def _say_why_waiting(self, waited: list[int]) -> str:
        """Log why this empty replica founds no cluster yet, and return it as /status shows
        it in ``sync.waiting_for``: ``holders`` (it heard the replicas ``waited`` holding
        data, none of them ACTIVE) or ``peers`` (it hears fewer than a majority of
        --cluster-size)."""
        config, membership = self._config, self._cluster.membership
        if waited:
            log.warn("replica {node_id} is empty and has heard replica(s) {holders} holding"
                     " data, none of them ACTIVE: it founds no cluster beside theirs, and"
                     " joins it once one of them is ACTIVE",
                     node_id=config.node_id, holders=", ".join(map(str, waited)))
            return "holders"
        log.warn("replica {node_id} is empty and hears {heard} of the {size} replicas of"
                 " --cluster-size: it founds no cluster until it hears a majority of them,"
                 " and joins one that holds data as soon as it hears it",
                 node_id=config.node_id, heard=len(membership.live_peers()) + 1,
                 size=config.cluster_size)
        return "peers"

    async def _sync(self, decision: str) -> None:
        """Join or catch up until this replica holds what the cluster holds, then ACTIVE. A
        catch-up the leader can no longer serve (``resync_requested``) becomes a join."""
        config, store = self._config, self._store
        if decision == REJOIN:
            self._catch_up = CatchUp(head=self._head, leader=self._leader, clock=self._reactor,
                                     progress=self.progress)
            try:
                if not await self._catch_up.run():
                    decision = JOIN
            finally:
                self._catch_up = None
        if decision == JOIN:
            self._joiner = Joiner(
                node_id=config.node_id, http=config.http_url, amp=self._cluster.amp_address,
                store=store, chunks=self._chunks, fetcher=self.fetcher, client=self.client,
                join_rpc=self._join_rpc, leader=self._leader, sources=self.peer_urls,
                blocking=self._blocking, clock=self._reactor, tmp_dir=config.data_dir / "tmp",
                progress=self.progress, clean_up=self.receiver.clean_chunks,
                settle=self.receiver.settle, failpoints=config.failpoints,
            )
            try:
                await self._joiner.run()
            finally:
                self._joiner = None
        await store.run(MetadataDB.set_meta, "join_state", DONE)
        self.progress.phase = DONE
        # The push and the catch-up carry ops above the head this replica synced to; writes
        # below it (another leader's, made cut off from this replica or from the leader
        # it synced from) are anti-entropy's, and the peers heard while JOINING got no
        # round: one with each now, before this replica turns ACTIVE and electable (a new
        # leader lacking them answered 404 or 403 for records the other side made, until
        # its own rounds ended), for RECONCILE_BEFORE_ACTIVE seconds at most.
        peers = self.peer_urls()
        try:
            await detached(self.anti_entropy.reconcile(peers), "the rounds after a sync"
                           ).addTimeout(RECONCILE_BEFORE_ACTIVE, self._reactor)
        except defer.TimeoutError:
            log.info("the rounds with {peers} go on after {seconds}s: turning ACTIVE",
                     peers=peers, seconds=RECONCILE_BEFORE_ACTIVE)
        for prepare in self.before_active:
            try:
                await prepare()
            except Exception:
                log.failure("before turning ACTIVE")  # its own reload retries later
        self._cluster.activate()
        for observer in self.on_synced:
            observer()

    async def resync_requested(self, source: str, cursor: Version) -> str:
        """The leader (``source``) no longer holds the ops past our ``cursor``: take a new
        snapshot. A join under way takes it next; a catch-up becomes a join; an ACTIVE replica
        turns JOINING (no reads, not electable, nobody pulls its rows) until it has. The
        phase this replica is in."""
        if self._leadership.is_leader:
            raise Conflict("the leader takes no snapshot")
        if not self._planned:
            raise Unavailable("still starting: ask again shortly")
        if self._joiner is not None:
            self._joiner.snapshot_again()
            return self.progress.phase
        log.warn("the leader ({source}) no longer holds the ops past {cursor}: taking a new"
                 " snapshot", source=source, cursor=cursor.encode())
        self.progress.phase = SNAPSHOT  # pushes are refused from now on
        await self._store.run(MetadataDB.set_meta, "join_state", SNAPSHOT)
        if self._catch_up is not None:
            self._catch_up.abandon()
        elif self._resyncing is None:
            self._cluster.deactivate()
            self._resyncing = Deferred.fromCoroutine(self._sync(JOIN))
            self._resyncing.addErrback(self._resync_failed).addBoth(self._resynced)
        return SNAPSHOT

    def _resync_failed(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("the new snapshot failed", failure)

    def _resynced(self, _: object) -> None:
        self._resyncing = None

    def _leader(self) -> Peer | None:
        leader = self._cluster.membership.current_leader()
        return leader if leader is not None and leader.state == ACTIVE else None

    def _head(self) -> Version:
        return self._cluster.head()

    def _join_rpc(self, leader: Peer, arguments: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return self._cluster.amp_pool.call(leader.amp, Join, **arguments)

    def _still_active(self) -> Deferred[None] | None:
        if self._cluster.state != ACTIVE:
            return None  # taking a new snapshot: the record says when it last held everything
        return self._store.run(MetadataDB.set_meta, "active_at", str(self._reactor.seconds()))

    def stopService(self) -> Deferred[Any]:
        stopped: Deferred[Any] = super().stopService()
        self._unsubscribe()
        self.pusher.stop()
        self.semisync.stop()
        self.takeover.stop()
        self.snapshots.stop()
        if self._resyncing is not None:
            self._resyncing.cancel()
        return stopped

    def _role_changed(self, role: str) -> None:
        self.takeover.role_changed(role)
        self.pusher.forget_cursors()
        self.pusher.wake()

    def _took_over(self, peers: list[Peer]) -> Deferred[list[str]]:
        # The pull brought ops after our head; what lies below it (another leader's writes
        # in a partition, a write the old leader finished as it stepped down) and what a
        # peer compacted away below its oplog floor are anti-entropy's. Rows only: the chunk
        # files of the rows it brings come with them, and the sweep for lost files is the
        # periodic rounds' (the writes wait for these).
        return self.anti_entropy.reconcile([peer.http for peer in peers], chunks=False)

    def _peer_event(self, event: PeerEvent) -> None:
        # A replica that comes back (restart, healed partition) may hold writes we lack. Not
        # while this one is JOINING: the join owns its database and chunk files until DONE.
        # A restarted replica comes back JOINING and turns ACTIVE once caught up: that change
        # counts as its return too.
        back = isinstance(event, PeerUp) or (
            isinstance(event, PeerChanged) and event.previous.state != ACTIVE)
        if back and event.peer.state == ACTIVE and self._cluster.state == ACTIVE:
            # A leader holds its writes for a round with it at once if it may hold writes
            # we lack (a healed partition); the later round is every replica's.
            self.takeover.peer_returned(event.peer)
            self.anti_entropy.run_round_soon(event.peer.http, 2 * self._failure_timeout)

    async def status(self) -> dict[str, Any]:
        """``sync`` (the join or rejoin, live or as a record), ``takeover`` (the catch-up of
        the current or last leadership) and ``replication``."""
        leading = self._leadership.is_leader
        counts = await self._figures.counts()
        # Last: the hints are the ops past the cursors the pusher has now.
        figures = await self._figures.figures(self.pusher.cursors() if leading else ())
        return {"sync": self.progress.as_dict(self._reactor.seconds()),
                "takeover": self.takeover.status(), "replication": {
            "joins": {"joining": sorted(self.desk.joining), "joined": sorted(self.desk.joined)},
            "push": self.pusher.status(figures["head"], figures["ops_after"]) if leading
            else None,
            "semi_sync": self.semisync.status(),
            "ops_received": self.receiver.ops_applied,
            "read_wait": self.applied.status(),
            "anti_entropy": self.anti_entropy.status(),
            "repair": attrs.asdict(self.guard.counters),
            "fetch": attrs.asdict(self.fetcher.counters),
            "scrub": self.scrubber.status(),
            "covers": None if self.covers is None else self.covers.status(),
            "tombstones": figures["tombstones"],
            "purged_through": figures["purged_through"].as_list(),
            "purged_rows_refused": self.receiver.rows_fenced,
            "oplog": {**counts["oplog"],
                      "retention": str(self._config.oplog_retention),
                      "compacted": self.compactor.compacted},
            "snapshots_built": self.snapshots.built,
            "idempotency_keys": counts["idempotency_keys"],
            "keys_expired_through": figures["keys_expired_through"].as_list(),
        }}
