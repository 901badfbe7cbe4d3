"""A new leader's catch-up: before its first write it pulls the ops it lacks from its peers.

Writes that arrive meanwhile wait (``writable``) instead of being refused, for at most
--catch-up-timeout; anti-entropy then mends whatever the pull could not reach, such as the
ops a peer compacted away below its oplog floor.
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
from distpotify.diskfull import what_is_full
from distpotify.errors import InsufficientStorage
from distpotify.leadership import Leadership
from distpotify.model import ZERO, Version
from distpotify.replication.client import BelowFloor, PeerClient
from distpotify.replication.receive import Receiver
from distpotify.wire import ACTIVE, LEADER

log = Logger()

# The phases of one leadership, in order. IDLE: not leading. CATCHING_UP: leading, pulling
# what peers hold beyond our head; writes wait. COMPLETE: writes go through.
IDLE, CATCHING_UP, COMPLETE = "IDLE", "CATCHING_UP", "COMPLETE"
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

    def as_dict(self, now: float) -> dict[str, Any]:
        end = self.finished if self.finished is not None else now
        return {
            "phase": self.phase, "epoch": self.epoch,
            # When this leadership began (the clock's time: Unix seconds), to line up with logs.
            "started_at": None if self.started is None else round(self.started, 3),
            "seconds": None if self.started is None else round(end - self.started, 3),
            "ops_pulled": self.ops_pulled, "sources": self.sources,
            "timed_out": self.timed_out, "held_writes": self.held_writes,
            "below_floor": self.below_floor,
        }


class Takeover:
    """This replica's catch-up each time it becomes leader (docs/architecture.md 5.1).

    ``role_changed`` (from the election) starts one: IDLE -> CATCHING_UP when this replica
    leads, back to IDLE when it stops. While CATCHING_UP it waits until no live ACTIVE
    peer still claims leadership (the old leader has heard our Coordinator, so what it
    holds is final) or was last heard from before the epoch we claimed ours above, and,
    meanwhile and after, pulls ``GET /sync/ops?after=<our head>`` from
    the live ACTIVE peer with the highest head, as long as some peer's head is above ours;
    then COMPLETE. A peer whose oplog floor is above our head (409 ``below_floor``: the ops
    between are compacted away there) is not pulled from again until our head reaches that
    floor. Past ``timeout`` it is COMPLETE anyway (``timed_out``). Either way
    ``on_complete`` gets the peers to reconcile with (the old leader, else the last peer
    pulled from; then every peer that answered ``below_floor``), so anti-entropy can mend
    what ops after our head do not cover: ops of another leader below it (a partition), a
    write the old leader finished as it stepped down, ops compacted away below a floor.

    ``writable()`` is what the library awaits before each write: it fires at once while
    COMPLETE (or IDLE with a leadership that never told us, as in tests), waits while
    CATCHING_UP, and fails with NotLeader once this replica no longer leads.
    """

    def __init__(
        self,
        *,
        membership: Membership,
        head: Callable[[], Version],
        client: PeerClient,
        receiver: Receiver,
        leadership: Leadership,
        clock: IReactorTime,
        timeout: float,
        recheck: float,
        on_complete: Callable[[list[Peer]], object] = lambda peers: None,
    ) -> None:
        self._membership = membership
        self._head = head
        self._client = client
        self._receiver = receiver
        self._leadership = leadership
        self._clock = clock
        self._timeout = timeout
        self._recheck = recheck  # how often the peer table is read again (a heartbeat)
        self._on_complete = on_complete
        self.record = TakeoverRecord()
        self.takeovers = 0
        self.timeouts = 0
        self._run: Deferred[None] | None = None
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
        if self.phase != CATCHING_UP:
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
                "timeouts": self.timeouts}

    # transitions

    def _begin(self) -> None:
        """IDLE -> CATCHING_UP: this replica leads; nothing is written until it is complete."""
        self.takeovers += 1
        self._old_leader = self._pulled_from = None
        self._nothing_from = {}
        self._floors = {}
        self._below_floor = []
        self.record = TakeoverRecord(phase=CATCHING_UP, epoch=self._leadership.epoch,
                                     started=self._clock.seconds())
        log.info("takeover: leading epoch {epoch} from head {head}; catching up before the"
                 " first write", epoch=self.record.epoch, head=self._head().encode())
        # Set before the callbacks: with nobody to wait for, the catch-up is over at once.
        run = self._run = Deferred.fromCoroutine(self._catch_up())
        run.addTimeout(self._timeout, self._clock)
        run.addBoth(self._caught_up, run)

    def _caught_up(self, result: object, run: Deferred[None]) -> None:
        """CATCHING_UP -> COMPLETE, whether the pull finished or its time ran out."""
        if self._run is not run:
            return  # this leadership ended (_end) before its catch-up did
        self._run = None
        record = self.record
        if isinstance(result, Failure):
            if not result.check(defer.TimeoutError):
                log.failure("takeover: catch-up failed", result)
            record.timed_out = True
            self.timeouts += 1
        record.phase = COMPLETE
        record.finished = self._clock.seconds()
        log.info("takeover: epoch {epoch} {how} at head {head} after {seconds}s: {ops} ops"
                 " pulled from {sources}, {held} writes held", epoch=record.epoch,
                 how="timed out" if record.timed_out else "complete",
                 head=self._head().encode(), seconds=record.as_dict(record.finished)["seconds"],
                 ops=record.ops_pulled, sources=record.sources, held=record.held_writes)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)
        first = self._old_leader or self._pulled_from
        peers = [] if first is None else [first]
        peers += [p for p in self._below_floor
                  if p.node_id not in {q.node_id for q in peers}]
        try:
            self._on_complete(peers)
        except Exception:
            log.failure("takeover: on_complete failed")

    def _end(self) -> None:
        """-> IDLE: no longer leading; held writes learn who leads now (a 421)."""
        run, self._run = self._run, None
        if run is not None:
            run.cancel()
        if self.record.phase == CATCHING_UP:
            self.record.finished = self._clock.seconds()
        self.record.phase = IDLE
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
