"""The leader's push: every write goes to every ACTIVE follower, in version order, batched.

One FollowerLink per follower holds its acknowledged cursor (durable in node_meta, so it
survives a leader restart); the ops past it are the hints. A link sends while there is
something past the cursor and the follower is up, backs off on failure, and starts again as
soon as the follower's heartbeat returns. A cursor below the oplog floor cannot be caught up
(the ops past it may be compacted away): the follower is told to take a new snapshot.
"""
# test-case-name: tests.unit.test_push

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.cluster.membership import Membership, Peer, PeerDown, PeerEvent, PeerUp
from distpotify.diskfull import log_failure
from distpotify.failpoints import NONE, Failpoints
from distpotify.model import ZERO, Op, Version
from distpotify.replication.client import MAX_BATCH_BYTES, PeerClient, batch_body, op_text
from distpotify.store.metadata import MetadataDB, MetadataStore
from distpotify.wire import ACTIVE

log = Logger()

BATCH = 500
MIN_BACKOFF, MAX_BACKOFF = 0.05, 2.0
RESYNC_CHECK = 1.0  # seconds between looks at a follower taking the snapshot it was told to
CURSOR_EVERY = 1.0  # seconds between durable writes of a follower's cursor (FollowerLink)


def cursor_key(node_id: int) -> str:
    return f"cursor:{node_id}"


def encoded_batch_after(db: MetadataDB, cursor: Version, limit: int = BATCH
                        ) -> tuple[list[Op], list[str]] | None:
    """The ops past ``cursor``, each with its text as a batch carries it; None when some
    may be compacted away, the cursor being below the oplog floor (database thread)."""
    if cursor < db.oplog_floor():
        return None
    ops = db.ops_after(cursor, limit)
    return ops, [op_text(op) for op in ops]


def _not_stored(failure: Failure, node_id: int, what: str) -> None:
    """A durable cursor not written (harmless: see its writers), logged."""
    log_failure(log, failure, "the cursor of follower {node_id} was not {what}",
                node_id=node_id, what=what)


def fit_batch(ops: Sequence[Op], source: str, limit: int = MAX_BATCH_BYTES,
              texts: Sequence[str] | None = None) -> list[Op]:
    """The longest run of ``ops`` from the first whose batch is at most ``limit`` bytes, and
    at least the first op (one op larger than that alone is sent alone, and refused).
    ``texts``: the ops already encoded (op_text)."""
    size = len(batch_body(source, []))
    for n, op in enumerate(ops):
        size += len(op_text(op) if texts is None else texts[n]) + (1 if n else 0)
        if size > limit and n:
            return list(ops[:n])
    return list(ops)


def pushable(peer: Peer) -> bool:
    """ACTIVE followers, and JOINING ones that hold data (a snapshot installed, or a rejoin):
    an empty joiner gets a snapshot first, not the whole oplog."""
    return peer.up and (peer.state == ACTIVE or peer.head > ZERO)


class FollowerLink:
    """Pushes the ops past one follower's cursor until there are none, one batch at a time."""

    def __init__(self, pusher: Pusher, node_id: int) -> None:
        self._pusher = pusher
        self.node_id = node_id
        self.cursor: Version | None = None
        self.running = False
        self._again = False
        self._retry: IDelayedCall | None = None
        self._backoff = MIN_BACKOFF
        self.pending_since: float | None = None
        self.last_ack: float | None = None
        self.last_error: str | None = None
        self.batches = 0
        self.resyncs = 0
        # The head the follower announced when told to take a snapshot: while it still
        # announces it (and is not ACTIVE), it is taking that snapshot.
        self.resynced_at: Version | None = None
        self._keeping: IDelayedCall | None = None  # the cursor's pending durable write
        self._kept_at = -CURSOR_EVERY  # when it was last written

    def kick(self) -> None:
        if self.running:
            self._again = True
            return
        if self._retry is not None and self._retry.active():
            return
        self.running = True
        Deferred.fromCoroutine(self._run()).addErrback(
            lambda f: log.failure("push to {node_id} crashed", f, node_id=self.node_id)
        )

    def stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def close(self) -> None:
        """The leader stops: no more retries, and no cursor write left pending."""
        self.stop()
        if self._keeping is not None and self._keeping.active():
            self._keeping.cancel()
        self._keeping = None

    def rewind(self, head: Version) -> None:
        """The follower is heard again, announcing ``head``: below our cursor, it came back
        with less than it acknowledged (its data directory lost or restored from a backup,
        then founded or rejoined alone), and pushing on from the cursor would leave out
        every op between, for anti-entropy to find much later. It goes on from its head."""
        if self.cursor is None or head >= self.cursor:
            return
        log.warn("follower {node_id} is back at head {head}, below the {cursor} it"
                 " acknowledged: what it lacks is pushed from that head (an empty one joins"
                 " by snapshot first)", node_id=self.node_id, head=head.encode(),
                 cursor=self.cursor.encode())
        self.cursor = head

    def _keep_cursor(self) -> None:
        """Make the cursor durable, at most once every CURSOR_EVERY seconds: one committed
        (fsynced) transaction per follower per batch was two of every write's three commits
        under load. A durable cursor only says where a leader restarted on this disk starts
        pushing (starting_cursor: never past the follower's own head); one left behind by a
        crash sends ops again, which apply as no-ops."""
        if self._keeping is not None and self._keeping.active():
            return  # the pending write takes the cursor as it is then
        wait = self._kept_at + CURSOR_EVERY - self._pusher.clock.seconds()
        if wait <= 0:
            self._write_cursor()
        else:
            self._keeping = self._pusher.clock.callLater(wait, self._write_cursor)

    def _write_cursor(self) -> None:
        self._keeping = None
        if self.cursor is None:  # forgotten meanwhile (leadership changed, or a resync)
            return
        self._kept_at = self._pusher.clock.seconds()
        # Pushing goes on from the cursor in memory; the next batch stores it again.
        self._pusher.store.run(MetadataDB.set_meta, cursor_key(self.node_id),
                               self.cursor.encode()).addErrback(_not_stored, self.node_id,
                                                                "stored")

    async def _run(self) -> None:
        pusher = self._pusher
        try:
            while True:
                self._again = False
                peer = pusher.membership.get(self.node_id)
                if peer is None or not pushable(peer) or not pusher.leading():
                    return
                if self.cursor is None:
                    self.cursor = await pusher.starting_cursor(peer)
                batch = await pusher.batch(self.cursor)
                if batch is None:
                    await self._resync(peer)
                    return
                ops = fit_batch(batch[0], pusher.source, texts=batch[1])
                if not ops:
                    self.pending_since = None
                    if not self._again:
                        return
                    continue
                if self.pending_since is None:
                    self.pending_since = pusher.clock.seconds()
                sent_from = self.cursor
                try:
                    await pusher.client.push_ops(peer.http, pusher.source, ops,
                                                 batch[1][:len(ops)])
                except Exception as e:
                    self._failed(e)
                    return
                pusher.failpoints.hit("push.acknowledged")
                self.batches += 1
                pusher.on_ack(self.node_id, ops[-1].version)
                self._backoff = MIN_BACKOFF
                self.last_error = None
                self.resynced_at = None
                self.last_ack = pusher.clock.seconds()
                # The batch is applied: the cursor moves to its last op. Not to the head the
                # follower answers, which rows from anti-entropy or another leader can put
                # past ops of ours it has never seen. Unless the cursor was moved while the
                # batch was on its way (rewound, or forgotten): the ops before it are not
                # known to be there.
                if self.cursor == sent_from:
                    self.cursor = ops[-1].version
                    self._keep_cursor()
        finally:
            self.running = False

    async def _resync(self, peer: Peer) -> None:
        """The ops past the cursor may be gone: the follower takes a new snapshot (once; while
        it does, this link only looks in now and then) and is caught up from its head then."""
        pusher = self._pusher
        if peer.state != ACTIVE and peer.head == self.resynced_at:
            self._retry = pusher.clock.callLater(RESYNC_CHECK, self._retried)
            return
        log.warn("follower {node_id} is at {cursor}, below the oplog floor: it takes a new"
                 " snapshot", node_id=self.node_id, cursor=self.cursor.encode()
                 if self.cursor else None)
        try:
            await pusher.client.resync(peer.http, pusher.source, self.cursor or ZERO)
        except Exception as e:
            self._failed(e)
            return
        self.resyncs += 1
        self.resynced_at = peer.head
        # From now on its cursor is the head it will announce with the snapshot installed.
        await pusher.forget_stored_cursor(self.node_id)
        self.cursor = None
        self._retry = pusher.clock.callLater(RESYNC_CHECK, self._retried)

    def _failed(self, error: Exception) -> None:
        if self.last_error is None:
            log.warn("push to {node_id} failed: {error}; retrying", node_id=self.node_id,
                     error=error)
        self.last_error = str(error)
        self._retry = self._pusher.clock.callLater(self._backoff, self._retried)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    def _retried(self) -> None:
        self._retry = None
        self.kick()


class Pusher:
    """The leader's push to its followers: one FollowerLink per follower, woken by writes.

    ``wake()`` runs after every acknowledged write and when this replica becomes leader; a
    peer that comes up or changes state wakes the links too (one heard again below its
    cursor is pushed from the head it announces: FollowerLink.rewind), and one that goes
    down stops its link's retries. Nothing is sent unless ``leading()``; after a change of leader,
    ``forget_cursors()`` makes each link start again from its durable cursor. Every batch a
    follower applied is reported to ``on_ack`` (semi-synchronous acknowledgement waits on
    it). The purger reads the links' cursors to know what every follower has acknowledged,
    and ``status()`` is the ``replication.push`` part of /status.
    """

    def __init__(
        self,
        *,
        store: MetadataStore,
        client: PeerClient,
        membership: Membership,
        clock: IReactorTime,
        source: str,
        leading: Callable[[], bool],
        on_ack: Callable[[int, Version], object] = lambda node_id, version: None,
        failpoints: Failpoints = NONE,
    ) -> None:
        self.store = store
        self.failpoints = failpoints
        self.client = client
        self.membership = membership
        self.clock = clock
        self.source = source
        self.leading = leading
        self.on_ack = on_ack
        self.links: dict[int, FollowerLink] = {}
        # Reads of the ops past a cursor in flight, and the links waiting for each: links at
        # the same cursor (every follower keeping up) share one read and its encoding.
        self._reading: dict[Version, list[Deferred[Any]]] = {}
        self._unsubscribe = membership.subscribe(self._peer_event)

    def batch(self, cursor: Version) -> Deferred[tuple[list[Op], list[str]] | None]:
        """encoded_batch_after(cursor) on the database thread, or the same read already in
        flight for another link. Its lists are shared: links slice them, never change them."""
        waiting: Deferred[tuple[list[Op], list[str]] | None] = Deferred()
        if cursor in self._reading:
            self._reading[cursor].append(waiting)
            return waiting
        self._reading[cursor] = [waiting]

        def share(result: Any) -> None:
            for each in self._reading.pop(cursor):
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        self.store.run(encoded_batch_after, cursor).addBoth(share)
        return waiting

    def wake(self) -> None:
        """New ops exist (a write, or this replica just became leader): push them."""
        if not self.leading():
            return
        for peer in self.membership.live_peers():
            if pushable(peer):
                self._link(peer.node_id).kick()

    def forget_cursors(self) -> None:
        """Leadership changed hands: cursors are learned again from durable state and heads."""
        for link in self.links.values():
            link.stop()
            link.cursor = None

    def forget_follower(self, node_id: int) -> Deferred[None]:
        """``node_id`` starts a join: its cursor is the head of the snapshot it installs, not
        what it acknowledged before, which the snapshot replaces."""
        if node_id in self.links:
            self.links[node_id].cursor = None
            self.links[node_id].resynced_at = None
        return self.forget_stored_cursor(node_id)

    def forget_stored_cursor(self, node_id: int) -> Deferred[None]:
        """Delete ``node_id``'s durable cursor: it takes a snapshot. One left behind (a full
        disk) is older than the snapshot: the ops between are sent again and apply as no-ops,
        or, if it is below the oplog floor, the follower is told to take a snapshot again,
        until the disk has room to forget it."""
        return self.store.run(MetadataDB.delete_meta, cursor_key(node_id)).addErrback(
            _not_stored, node_id, "forgotten")

    def stop(self) -> None:
        self._unsubscribe()
        for link in self.links.values():
            link.close()

    async def starting_cursor(self, peer: Peer) -> Version:
        """Resume from the durable cursor, or the follower's announced head if it is behind."""
        stored = await self.store.run(MetadataDB.get_meta, cursor_key(peer.node_id))
        if stored is None:
            return peer.head
        return min(Version.decode(stored), peer.head)

    def _link(self, node_id: int) -> FollowerLink:
        if node_id not in self.links:
            self.links[node_id] = FollowerLink(self, node_id)
        return self.links[node_id]

    def _peer_event(self, event: PeerEvent) -> None:
        link = self.links.get(event.peer.node_id)
        if isinstance(event, PeerDown):
            if link is not None:
                link.stop()
            return
        if isinstance(event, PeerUp) and link is not None:
            link.rewind(event.peer.head)
        self.wake()

    def cursors(self) -> list[Version]:
        """The followers' known cursors: ``status`` shows the ops past each."""
        return [link.cursor for link in self.links.values() if link.cursor is not None]

    def status(self, head: Version, ops_after: Mapping[Version, int]) -> dict[str, Any]:
        """Per follower: cursor, ops past it (the hints: ``ops_after`` its cursor, read with
        ``head`` for /status), how long they have waited."""
        now = self.clock.seconds()
        followers = {}
        for node_id, link in sorted(self.links.items()):
            pending = ops_after.get(link.cursor) if link.cursor is not None else None
            followers[str(node_id)] = {
                "cursor": link.cursor.as_list() if link.cursor else None,
                "hints_pending": pending,
                "lag_seconds": round(now - link.pending_since, 3)
                if link.pending_since is not None and pending else 0.0,
                "last_ack_ms_ago": round((now - link.last_ack) * 1000)
                if link.last_ack is not None else None,
                "batches": link.batches,
                "resyncs": link.resyncs,
                "last_error": link.last_error,
            }
        return {"head": head.as_list(), "followers": followers}
