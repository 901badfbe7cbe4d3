"""A new leader's catch-up: before its first write it pulls the ops it lacks from its peers,
then reconciles with them by anti-entropy.

Writes that arrive meanwhile wait (``writable``) instead of being refused, for at most
--catch-up-timeout in all. The pull brings the ops after our head; the rounds of anti-entropy
mend what lies below it (another leader's writes in a partition) and what a peer compacted
away below its oplog floor, before any write can meet a record that is missing or partial
here.
"""
# test-case-name: tests.unit.test_takeover

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.cluster.membership import Membership, Peer
from distpotify.detach import detached
from distpotify.diskfull import what_is_full
from distpotify.errors import InsufficientStorage
from distpotify.leadership import Leadership
from distpotify.model import ZERO, Version
from distpotify.replication.client import BelowFloor, PeerClient
from distpotify.replication.receive import Receiver
from distpotify.wire import ACTIVE, LEADER

log = Logger()

# The phases of one leadership, in order. IDLE: not leading. CATCHING_UP: leading, pulling
# what peers hold beyond our head; writes wait. RECONCILING: a round of anti-entropy with
# each live peer; writes still wait. COMPLETE: writes go through.
IDLE, CATCHING_UP, RECONCILING, COMPLETE = "IDLE", "CATCHING_UP", "RECONCILING", "COMPLETE"
HOLDING = (CATCHING_UP, RECONCILING)
BATCH = 1000  # ops per pull (GET /sync/ops answers at most this many)
# After a pull this replica had no room to apply, the next waits this long, not one recheck:
# each pull fetched the batch's chunks again for nothing (a random lab run: a new leader on a
# full disk pulled every 0.1 s of its 2-s catch-up).
DISK_FULL_PAUSE = 1.0


@attrs.define
class TakeoverRecord:
    """/status ``takeover``: the current (or last) leadership's catch-up."""

    phase: str = IDLE
    epoch: int | None = None
    started: float | None = None
    finished: float | None = None
    ops_pulled: int = 0
    sources: list[int] = attrs.field(factory=list)
    timed_out: bool = False
    held_writes: int = 0
    # The peers that could not be pulled from by ops: our head was below their oplog floor.
    below_floor: list[dict[str, Any]] = attrs.field(factory=list)
    # The peers reconciled with before the first write, and whether that ended in time.
    reconciled_with: list[int] = attrs.field(factory=list)
    reconciled: bool | None = None

    def as_dict(self, now: float) -> dict[str, Any]:
        end = self.finished if self.finished is not None else now
        return {
            "phase": self.phase, "epoch": self.epoch,
            # When this leadership began (the clock's time: Unix seconds), to line up with logs.
            "started_at": None if self.started is None else round(self.started, 3),
            "seconds": None if self.started is None else round(end - self.started, 3),
            "ops_pulled": self.ops_pulled, "sources": self.sources,
            "timed_out": self.timed_out, "held_writes": self.held_writes,
            "below_floor": self.below_floor, "reconciled_with": self.reconciled_with,
            "reconciled": self.reconciled,
        }


class Takeover:
    """This replica's catch-up each time it becomes leader (docs/architecture.md 5.1).

    ``role_changed`` (from the election) starts one: IDLE -> CATCHING_UP when this replica
    leads, back to IDLE when it stops. While CATCHING_UP it waits until no live ACTIVE
    peer still claims leadership (the old leader has heard our Coordinator, so what it
    holds is final) or was last heard from before the epoch we claimed ours above, and,
    meanwhile and after, pulls ``GET /sync/ops?after=<our head>`` from
    the live ACTIVE peer with the highest head, as long as some peer's head is above ours.
    A peer whose oplog floor is above our head (409 ``below_floor``: the ops between are
    compacted away there) is not pulled from again until our head reaches that floor.

    Then RECONCILING: ``reconcile`` runs a round of anti-entropy with each live ACTIVE
    peer (the old leader, else the last peer pulled from, first) and writes wait for it
    too. Ops after our head do not cover everything a peer may hold that we lack: a leader
    of the same epoch number as ours, or of one below, in another partition wrote ops whose
    versions are below our head, and a write to a record they made would find it missing,
    or partial (a later op's fields without its create's: no owner, so refused 403).
    Nothing shows that from heartbeats (a peer's head is ours once we pulled from it), and a
    round between replicas that agree costs one digest, so every peer gets one.

    A round that failed is tried again every ``recheck`` while its peer is heard.

    Then COMPLETE. Past ``timeout`` from the start it is COMPLETE anyway (``timed_out``):
    the writes go through and the rounds go on without them.

    ``peer_returned`` does the same for a replica heard again while this one leads (a
    partition healed): one whose newest write is an op we never applied (``holds_op``)
    from another leadership may hold writes below our head (those of a leader of its side,
    of our epoch number and a lower id, or of an epoch below), so COMPLETE -> RECONCILING
    -> COMPLETE, writes waiting for the round with it, for ``timeout`` at most. A peer
    heard again during a round gets its own before the writes go on; one whose head a
    round already covered gets none.

    ``writable()`` is what the library awaits before each write: it fires at once while
    COMPLETE (or IDLE with a leadership that never told us, as in tests), waits while
    CATCHING_UP or RECONCILING, and fails with NotLeader once this replica no longer leads.
    """

    def __init__(
        self,
        *,
        node_id: int,
        membership: Membership,
        head: Callable[[], Version],
        client: PeerClient,
        receiver: Receiver,
        leadership: Leadership,
        clock: IReactorTime,
        timeout: float,
        recheck: float,
        reconcile: Callable[[list[Peer]], Deferred[list[str]]] = lambda peers: succeed([]),
        holds_op: Callable[[Version], Deferred[bool]] = lambda version: succeed(False),
    ) -> None:
        self._node_id = node_id
        self._membership = membership
        self._head = head
        self._client = client
        self._receiver = receiver
        self._leadership = leadership
        self._clock = clock
        self._timeout = timeout
        self._recheck = recheck  # how often the peer table is read again (a heartbeat)
        self._reconcile = reconcile  # rounds with the peers; fires with those that failed
        self._holds_op = holds_op  # whether this replica applied the op of that version
        self.record = TakeoverRecord()
        self.takeovers = 0
        self.timeouts = 0
        self.peer_holds = 0  # times writes waited for a round with a peer heard again
        # What this leadership waits for: the pull, then the reconcile (None: nothing).
        self._run: Deferred[Any] | None = None
        self._waiting: list[Deferred[None]] = []
        self._old_leader: Peer | None = None
        self._pulled_from: Peer | None = None
        # Peers that answered "nothing after your head", with the head their heartbeat
        # showed then: not asked again until they announce another (a stale heartbeat).
        self._nothing_from: dict[int, Version] = {}
        # Peers that answered "below my oplog floor", with that floor: not asked again while
        # our head is below it; anti-entropy reconciles with them once the catch-up ends.
        self._floors: dict[int, Version] = {}
        self._below_floor: list[Peer] = []
        # The head each peer had when a round with it last ended well, and the peers heard
        # again during a round (a round of their own comes next).
        self._reconciled_heads: dict[int, Version] = {}
        self._returned: dict[int, Peer] = {}

    @property
    def phase(self) -> str:
        return self.record.phase

    def role_changed(self, role: str) -> None:
        if role == LEADER and self.phase == IDLE:
            self._begin()
        elif role != LEADER and self.phase != IDLE:
            self._end()

    def writable(self) -> Deferred[None]:
        """Fires when a write may start; NotLeader (a 421) if this replica does not lead."""
        self._leadership.require_leader()
        if self.phase not in HOLDING:
            return succeed(None)
        self.record.held_writes += 1
        waiter: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(waiter)
        return waiter

    def stop(self) -> None:
        """The replica stops: as if it no longer led."""
        self._end()

    def status(self) -> dict[str, Any]:
        return {**self.record.as_dict(self._clock.seconds()), "takeovers": self.takeovers,
                "timeouts": self.timeouts, "peer_holds": self.peer_holds}

    # transitions

    def _begin(self) -> None:
        """IDLE -> CATCHING_UP: this replica leads; nothing is written until it is complete."""
        self.takeovers += 1
        self._old_leader = self._pulled_from = None
        self._nothing_from = {}
        self._floors = {}
        self._below_floor = []
        self._returned = {}
        self.record = TakeoverRecord(phase=CATCHING_UP, epoch=self._leadership.epoch,
                                     started=self._clock.seconds())
        log.info("takeover: leading epoch {epoch} from head {head}; catching up before the"
                 " first write", epoch=self.record.epoch, head=self._head().encode())
        # Set before the callbacks: with nobody to wait for, the catch-up is over at once.
        run = self._run = Deferred.fromCoroutine(self._catch_up())
        run.addTimeout(self._timeout, self._clock)
        run.addBoth(self._pulled, run)

    def _pulled(self, result: object, run: Deferred[None]) -> None:
        """CATCHING_UP -> RECONCILING once the pull is over; -> COMPLETE if its time ran out
        (the rounds then go on without holding the writes)."""
        if self._run is not run:
            return  # this leadership ended (_end) before its catch-up did
        self._run = None
        record = self.record
        peers = self._peers_to_reconcile()
        record.reconciled_with = [peer.node_id for peer in peers]
        assert record.started is not None
        deadline = record.started + self._timeout
        if isinstance(result, Failure):
            self._timed_out(result)
            Deferred.fromCoroutine(self._rounds(peers, deadline))
            self._complete(catching_up=True)
            return
        self._hold_for(peers, deadline, catching_up=True)

    def peer_returned(self, peer: Peer) -> None:
        """``peer`` is heard again, ACTIVE, while this replica leads: writes wait for a round
        with it if its newest write is one we lack (a healed partition: the other side's
        leader wrote it). During the catch-up's pull nothing is needed: the rounds after it
        take every live peer."""
        ours = (self._leadership.epoch, self._node_id)
        if (self.phase in (IDLE, CATCHING_UP) or not self._leadership.is_leader
                or peer.head == ZERO or (peer.head.epoch, peer.head.leader_id) == ours
                or self._reconciled_heads.get(peer.node_id) == peer.head):
            return
        Deferred.fromCoroutine(self._hold_if_lacking(peer)).addErrback(
            lambda f: log.failure("takeover: looking at node {node_id}'s head failed", f,
                                  node_id=peer.node_id))

    async def _hold_if_lacking(self, peer: Peer) -> None:
        if await self._holds_op(peer.head):
            return  # a follower back from a pause: its newest write came from here
        if not self._leadership.is_leader or self.phase in (IDLE, CATCHING_UP):
            return
        if self.phase == RECONCILING:
            self._returned[peer.node_id] = peer  # a round of its own once these end
            return
        self._hold_for_returned([peer])

    def _hold_for_returned(self, peers: list[Peer]) -> None:
        self.peer_holds += 1
        log.info("takeover: {nodes} back with writes of another leadership (heads {heads});"
                 " writes wait for a round of anti-entropy with each",
                 nodes=[p.node_id for p in peers], heads=[p.head.encode() for p in peers])
        self._hold_for(peers, self._clock.seconds() + self._timeout, catching_up=False)

    def _hold_for(self, peers: list[Peer], deadline: float, *, catching_up: bool) -> None:
        """-> RECONCILING until the rounds with ``peers`` end or ``deadline`` passes (past
        it they go on, unwaited), then COMPLETE."""
        self.record.phase = RECONCILING
        started = self._clock.seconds()
        # Past the deadline (or _end) only the wait ends: the rounds go on, unwaited.
        wait = self._run = detached(Deferred.fromCoroutine(self._rounds(peers, deadline)),
                                    "the takeover's rounds")
        wait.addTimeout(max(deadline - started, 0.0), self._clock)
        wait.addBoth(self._reconciled, wait, peers, started, catching_up)

    async def _rounds(self, peers: list[Peer], deadline: float) -> bool:
        """A round with each of ``peers``; those whose round failed (refused, not serving
        yet), while still heard, again every recheck until ``deadline``. Whether every one
        ended well; each peer's head is remembered as reconciled."""
        left = peers
        while True:
            try:
                failed = set(await self._reconcile(left))
            except Exception:
                log.failure("takeover: reconcile failed")
                return False
            for peer in left:
                if peer.http not in failed:
                    self._reconciled_heads[peer.node_id] = peer.head
            heard = {p.node_id for p in self._membership.live_peers()}
            left = [p for p in left if p.http in failed and p.node_id in heard]
            if not failed:
                return True
            if (not left or not self._leadership.is_leader
                    or self._clock.seconds() + self._recheck >= deadline):
                return False
            await deferLater(self._clock, self._recheck, lambda: None)

    def _reconciled(self, result: object, wait: Deferred[bool], peers: list[Peer],
                    started: float, catching_up: bool) -> None:
        """RECONCILING -> COMPLETE: the rounds ended, or their time ran out."""
        if self._run is not wait:
            return  # this leadership ended (_end) first
        self._run = None
        if catching_up:
            if isinstance(result, Failure):
                self._timed_out(result)
            else:
                self.record.reconciled = bool(result)
        else:
            how = ("still going" if isinstance(result, Failure) else "over" if result
                   else "failed")
            log.info("takeover: round with {nodes} {how} after {seconds}s; writes go on",
                     nodes=[p.node_id for p in peers], how=how,
                     seconds=round(self._clock.seconds() - started, 3))
        self._complete(catching_up)

    def _timed_out(self, failure: Failure) -> None:
        if not failure.check(defer.TimeoutError):
            log.failure("takeover: catch-up failed", failure)
        self.record.timed_out = True
        self.record.reconciled = False
        self.timeouts += 1

    def _complete(self, catching_up: bool) -> None:
        """-> COMPLETE: the held writes go through, unless peers heard again meanwhile get
        a round of their own first."""
        record = self.record
        if catching_up:
            record.finished = self._clock.seconds()
            log.info("takeover: epoch {epoch} {how} at head {head} after {seconds}s: {ops} ops"
                     " pulled from {sources}, reconciled with {reconciled}, {held} writes held",
                     epoch=record.epoch, how="timed out" if record.timed_out else "complete",
                     head=self._head().encode(),
                     seconds=record.as_dict(record.finished)["seconds"],
                     ops=record.ops_pulled, sources=record.sources,
                     reconciled=record.reconciled_with, held=record.held_writes)
        heard = {p.node_id: p for p in self._membership.live_peers()}
        returned = [heard[node_id] for node_id in self._returned if node_id in heard
                    and self._reconciled_heads.get(node_id) != heard[node_id].head]
        self._returned = {}
        if returned:
            self._hold_for_returned(returned)
            return
        record.phase = COMPLETE
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def _peers_to_reconcile(self) -> list[Peer]:
        """Every live ACTIVE peer, the old leader (else the last pulled from) first, then
        those below whose oplog floor we were: the likeliest to hold what we lack."""
        live = {p.node_id: p for p in self._membership.live_peers() if p.state == ACTIVE}
        first = [p for p in (self._old_leader or self._pulled_from, *self._below_floor)
                 if p is not None]
        order = [p.node_id for p in first] + sorted(live)
        return [live[node_id] for node_id in dict.fromkeys(order) if node_id in live]

    def _end(self) -> None:
        """-> IDLE: no longer leading; held writes learn who leads now (a 421)."""
        run, self._run = self._run, None
        if run is not None:
            run.cancel()
        if self.record.phase in HOLDING and self.record.finished is None:
            self.record.finished = self._clock.seconds()
        self.record.phase = IDLE
        self._returned = {}
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            try:
                self._leadership.require_leader()
            except Exception:
                waiter.errback()
            else:
                waiter.callback(None)

    # the catch-up itself

    async def _catch_up(self) -> None:
        while True:
            peers = [p for p in self._membership.live_peers() if p.state == ACTIVE]
            claiming = [p for p in peers if p.role == LEADER]
            if claiming:
                self._old_leader = claiming[0]
            # Heard last from before the highest epoch we knew when we claimed ours (ours
            # minus one): such a peer may have led that epoch since. A replica resumed after
            # SIGSTOP reads the heartbeats queued while it was paused; the old leader's may
            # be a follower's from before it led. It is heard again as soon as our
            # Coordinator reaches it (a role change is announced at once).
            stale = [p for p in peers if p.epoch < self._leadership.epoch - 1]
            mine = self._head()
            ahead = max((p for p in peers if p.head > mine
                         and self._nothing_from.get(p.node_id) != p.head
                         and mine >= self._floors.get(p.node_id, ZERO)),
                        key=lambda p: p.head, default=None)
            if ahead is not None and await self._pull(ahead, mine):
                continue
            if not claiming and not stale and ahead is None:
                return
            await deferLater(self._clock, self._recheck, lambda: None)

    async def _pull(self, peer: Peer, mine: Version) -> bool:
        """One batch of the ops ``peer`` applied after ``mine``; whether to look again at
        once: some came, or ``peer`` cannot be pulled from by ops (another peer may be)."""
        self._pulled_from = peer
        try:
            ops, _ = await self._client.ops_after(peer.http, mine, BATCH)
            if ops:
                await self._receiver.apply_ops(ops, peer.http)
        except CancelledError:
            raise
        except BelowFloor as e:
            self._cannot_pull(peer, mine, e.floor)
            return True
        except Exception as e:
            log.info("takeover: pulling from {node_id} failed: {error}", node_id=peer.node_id,
                     error=e)
            if isinstance(e, InsufficientStorage) or what_is_full(e) is not None:
                await deferLater(self._clock, DISK_FULL_PAUSE, lambda: None)
            return False
        if not ops:
            self._nothing_from[peer.node_id] = peer.head
            return False
        record = self.record
        record.ops_pulled += len(ops)
        if peer.node_id not in record.sources:
            record.sources.append(peer.node_id)
        return True

    def _cannot_pull(self, peer: Peer, mine: Version, floor: Version) -> None:
        """``peer`` compacted away ops after our head: none of its ops is pulled until our
        head reaches its floor (another peer may bring it there), and anti-entropy with it
        mends the gap when the catch-up ends."""
        self._floors[peer.node_id] = floor
        if all(p.node_id != peer.node_id for p in self._below_floor):
            self._below_floor.append(peer)
        self.record.below_floor.append({"node_id": peer.node_id, "after": mine.encode(),
                                        "floor": floor.encode()})
        log.warn("takeover: cannot pull ops from {node_id}: our head {head} is below its oplog"
                 " floor {floor}; anti-entropy with it when the catch-up ends",
                 node_id=peer.node_id, head=mine.encode(), floor=floor.encode())
