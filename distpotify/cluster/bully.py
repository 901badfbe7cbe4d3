"""Bully election with epochs (docs/architecture.md 5.1): the state machine and its AMP adapter.

BullyElection decides and never touches the network; AmpPeers and BullyProtocol carry its
messages over connections that prove the cluster key first (ampauth.py), and
follow_membership turns peer-table events into its inputs.
"""
# test-case-name: tests.unit.test_bully

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

import attrs
from automat import MethodicalMachine
from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from distpotify.cluster.ampauth import Handshake, ProvingAMP, Unproven
from distpotify.cluster.heartbeat import split_address
from distpotify.cluster.membership import Membership, PeerEvent
from distpotify.diskfull import log_failure
from distpotify.wire import CANDIDATE, FOLLOWER, LEADER


class Election(amp.Command):
    """Bully's election message, sent to every higher live id; the reply is the answer."""

    arguments = [(b"node_id", amp.Integer()), (b"epoch", amp.Integer())]
    response = [(b"alive", amp.Boolean())]
    # Each command's answer on a connection that has not proved the cluster key (ampauth.py).
    fatalErrors = {Unproven: b"UNPROVEN"}


class Coordinator(amp.Command):
    """The victory announcement of the leader of ``epoch``; the response is empty."""

    arguments = [
        (b"node_id", amp.Integer()),
        (b"epoch", amp.Integer()),
        (b"http", amp.Unicode()),
    ]
    fatalErrors = {Unproven: b"UNPROVEN"}


class NotLeaderError(Exception):
    """A Join sent to a replica that does not lead (any more)."""


class Join(amp.Command):
    """A new replica asks the leader to join (docs/architecture.md 5.2; bootstrap answers)."""

    arguments = [
        (b"node_id", amp.Integer()),
        (b"http", amp.Unicode()),
        (b"amp", amp.Unicode()),
        (b"head", amp.Unicode()),
    ]
    response = [
        (b"leader_id", amp.Integer()),
        (b"epoch", amp.Integer()),
        (b"snapshot_path", amp.Unicode()),
    ]
    errors = {NotLeaderError: b"NOT_LEADER"}
    fatalErrors = {Unproven: b"UNPROVEN"}


@attrs.frozen
class Leader:
    """The leader a replica follows (or is): who, of which epoch, and where its API is."""

    node_id: int
    epoch: int
    http: str


@attrs.frozen
class ElectionStatus:
    """What /status and the heartbeat say about us: role, and the leader we know of.

    ``epoch`` is the known leader's epoch, or the highest epoch seen while there is none.
    """

    role: str
    leader_id: int | None
    leader_http: str | None
    epoch: int


class ElectionNetwork(Protocol):
    """The election's only way out; AmpPeers is the real one, tests pass fakes."""

    def ask_alive(self, node_id: int, epoch: int) -> Deferred[bool]:
        """Send Election to ``node_id``; fires True if it answers that it is alive."""

    def announce_coordinator(self, epoch: int) -> None:
        """Send Coordinator (this node, ``epoch``) to every live peer, without waiting."""


class BullyElection:
    """One replica's view of the election, as an Automat state machine.

    States: follower, candidate (asked the higher ids, waiting answer_timeout for an
    answer), waiting (a higher id answered; waiting coordinator_timeout for its
    Coordinator), claiming (nobody higher answered; persisting the new epoch) and leader.
    The role we publish is the state's own: candidate, waiting and claiming all publish
    "candidate". The public methods check the guards (epochs, ids, electability) and feed
    the inputs; the leader we follow (or are) is kept beside the state.
    """

    m = MethodicalMachine()
    log = Logger()

    def __init__(
        self,
        *,
        node_id: int,
        http: str,
        clock: IReactorTime,
        network: ElectionNetwork,
        higher_peers: Callable[[], Iterable[int]],
        persist_epoch: Callable[[int], Deferred[Any]],
        is_electable: Callable[[], bool],
        on_change: Callable[[ElectionStatus], object],
        answer_timeout: float,
        coordinator_timeout: float,
        epoch: int = 0,
    ) -> None:
        self._node_id = node_id
        self._http = http
        self._clock = clock
        self._network = network
        self._higher_peers = higher_peers
        self._persist_epoch = persist_epoch
        self._is_electable = is_electable
        self._on_change = on_change
        self._answer_timeout = answer_timeout
        self._coordinator_timeout = coordinator_timeout
        self._max_epoch = epoch
        # The highest (epoch, node_id) leader claim accepted or held: a Coordinator or a
        # leader heartbeat below it is stale.
        self._floor = (0, 0)
        self._leader: Leader | None = None
        self._claim_epoch: int | None = None
        self._timer: IDelayedCall | None = None
        self._published: tuple[str, Leader | None] = (self._role(), self._leader)

    # -- what the rest of the replica reads

    @property
    def status(self) -> ElectionStatus:
        leader = self._leader
        return ElectionStatus(
            role=self._role(),
            leader_id=leader.node_id if leader else None,
            leader_http=leader.http if leader else None,
            epoch=leader.epoch if leader else self._max_epoch,
        )

    @property
    def leader_id(self) -> int | None:
        return self._leader.node_id if self._leader else None

    @property
    def is_leader(self) -> bool:
        return self._role() == LEADER

    # -- what the rest of the replica tells us

    def start(self, wait: float) -> None:
        """Listen ``wait`` seconds (failure_timeout) for a leader; hold an election if none."""
        self._set_timer(wait, self._no_leader_heard)

    def stop(self) -> None:
        self._cancel_timer()

    def observe_epoch(self, epoch: int) -> None:
        """Any epoch announced by anyone: the next epoch we claim must exceed it."""
        self._max_epoch = max(self._max_epoch, epoch)

    def data_seen(self, epoch: int, leader_id: int) -> None:
        """Writes a leader ``leader_id`` numbered in ``epoch`` are held here now (pushed,
        pulled by anti-entropy or a takeover). The next epoch we claim must exceed it; and
        if we lead in an epoch at or below it, we claim a new one above before writing
        again: numbered in ours, our writes would be older than the records they change,
        and lose every merge to them (a lone leader that later pulls a newer replica's rows:
        the acknowledged edit lost, found by a second reader)."""
        self.observe_epoch(epoch)
        leader = self._leader
        if (leader is not None and leader.node_id == self._node_id
                and (epoch, leader_id) > (leader.epoch, self._node_id)):
            self.log.info("data of epoch {epoch} (leader {leader_id}) is above ours ({ours}):"
                          " leading on in a new epoch", epoch=epoch, leader_id=leader_id,
                          ours=leader.epoch)
            self._outdated()

    def leader_seen(self, node_id: int, epoch: int, http: str) -> None:
        """A heartbeat from ``node_id`` announcing itself leader of ``epoch``."""
        self.observe_epoch(epoch)
        if node_id == self._node_id:
            return
        claim = (epoch, node_id)
        # The leader we lost, heard again, is taken back; a leader equal to the one we
        # follow is not news, and one we are trying to bully away must not stop us.
        if claim > self._floor or (claim == self._floor and self._leader is None):
            self._accept_leader(node_id, epoch, http)

    def leader_lost(self, node_id: int) -> None:
        """``node_id`` went silent or stopped leading; an election if it was our leader."""
        if self._leader is None or self._leader.node_id != node_id or node_id == self._node_id:
            return
        self.log.info("leader {leader_id} lost", leader_id=node_id)
        self._forget_leader()
        self._try_start()

    def coordinator_received(self, node_id: int, epoch: int, http: str) -> None:
        """A Coordinator message: follow it unless it is older than what we know."""
        self.observe_epoch(epoch)
        if node_id == self._node_id:
            return
        if (epoch, node_id) < self._floor:
            self.log.info(
                "stale coordinator {node_id} epoch={epoch} rejected; we know {floor}",
                node_id=node_id,
                epoch=epoch,
                floor=self._floor,
            )
            return
        self._accept_leader(node_id, epoch, http)
        if node_id < self._node_id:
            # Bully: a lower id announced itself (both claimed at once, or we were not
            # electable yet); the higher id answers with an election of its own.
            self._clock.callLater(0, self.claim_if_higher)

    def election_requested(self, node_id: int, epoch: int) -> bool:
        """An Election message from a lower id: answer alive, and take part (Bully)."""
        self.observe_epoch(epoch)
        if node_id >= self._node_id or not self._is_electable():
            return False
        if self._leader is not None and epoch > self._leader.epoch:
            # The candidate has seen a newer epoch than our leader's (or ours, if we lead).
            self._outdated()
        else:
            self._challenged()
        return True

    def claim_if_higher(self) -> None:
        """Bully's returning higher id: once electable, take over from a lower leader."""
        if self._leader is None or self._leader.node_id < self._node_id:
            self._try_start()

    def _try_start(self) -> None:
        if self._is_electable():
            self._start()
        else:
            self.log.info("node {node_id} is not electable; waiting for a leader",
                          node_id=self._node_id)

    def _no_leader_heard(self) -> None:
        self._timer = None
        if self._leader is None:
            self._try_start()

    def _answer(self, alive: bool, node_id: int) -> None:
        if alive and node_id > self._node_id:
            self._answered()

    def _no_answer(self, failure: Failure, node_id: int) -> None:
        self.log.debug("no answer from {node_id}: {error}", node_id=node_id,
                       error=failure.getErrorMessage())

    def _persisted(self, _: object, epoch: int) -> None:
        if epoch == self._claim_epoch:
            self._epoch_persisted()

    def _persist_error(self, failure: Failure, epoch: int) -> None:
        log_failure(self.log, failure, "cannot persist epoch {epoch}", epoch=epoch)
        if epoch == self._claim_epoch:
            self._persist_failed()

    # -- the machine: states, each declaring the role it publishes (its serialized value)

    @m.state(initial=True, serialized=FOLLOWER)
    def follower(self) -> None:
        """Following a leader, or none known yet."""

    @m.state(serialized=CANDIDATE)
    def candidate(self) -> None:
        """Asked every higher live id; waiting answer_timeout for one to answer."""

    @m.state(serialized=CANDIDATE)
    def waiting(self) -> None:
        """A higher id answered; waiting coordinator_timeout for its Coordinator."""

    @m.state(serialized=CANDIDATE)
    def claiming(self) -> None:
        """Nobody higher answered: persisting the new epoch before announcing it."""

    @m.state(serialized=LEADER)
    def leader(self) -> None:
        """Leading; the only replica that accepts writes."""

    @m.serializer()
    def _role(self, role: str) -> str:
        """The role of the current state: what /status and our heartbeats say we are.

        Three states share "candidate", so there is no unserializer to go with this.
        """
        return role

    # -- inputs

    @m.input()
    def _start(self) -> None:
        """No leader heard (start-up, leader lost), or a bully claim."""

    @m.input()
    def _challenged(self) -> None:
        """An Election from a lower id."""

    @m.input()
    def _outdated(self) -> None:
        """An Election from a lower id that knows a newer epoch than our leader's."""

    @m.input()
    def _answered(self) -> None:
        """A higher id answered alive (to this election's question or an earlier one's)."""

    @m.input()
    def _answer_timed_out(self) -> None:
        """answer_timeout passed without an answer."""

    @m.input()
    def _coordinator_timed_out(self) -> None:
        """coordinator_timeout passed without a Coordinator."""

    @m.input()
    def _epoch_persisted(self) -> None:
        """persist_epoch fired for the latest epoch we claimed."""

    @m.input()
    def _persist_failed(self) -> None:
        """persist_epoch failed for the latest epoch we claimed."""

    @m.input()
    def _accept_leader(self, node_id: int, epoch: int, http: str) -> None:
        """A Coordinator or leader heartbeat at or above everything we know."""

    @m.input()
    def _forget_leader(self) -> None:
        """The leader we followed (another replica) is gone."""

    # -- outputs

    @m.output()
    def _ask_higher_peers(self) -> None:
        targets = sorted(self._higher_peers())
        self._publish()
        # The timer goes first: an answer may arrive synchronously. With nobody higher
        # alive the wait is zero and we win on the next turn of the reactor.
        self._set_timer(self._answer_timeout if targets else 0, self._answer_deadline)
        self.log.debug("asking {targets} epoch={epoch}", targets=targets, epoch=self._max_epoch)
        for node_id in targets:
            d = maybeDeferred(self._network.ask_alive, node_id, self._max_epoch)
            d.addCallbacks(
                self._answer, self._no_answer, callbackArgs=(node_id,), errbackArgs=(node_id,)
            )

    @m.output()
    def _wait_for_coordinator(self) -> None:
        self._set_timer(self._coordinator_timeout, self._coordinator_deadline)

    @m.output()
    def _step_down(self) -> None:
        # Our leadership ends with its epoch; _persist_next_epoch publishes the change.
        self._leader = None

    @m.output()
    def _persist_next_epoch(self) -> None:
        self._cancel_timer()
        epoch = self._max_epoch = self._max_epoch + 1
        self._claim_epoch = epoch
        self._publish()
        self.log.debug("claiming epoch {epoch}", epoch=epoch)
        d = maybeDeferred(self._persist_epoch, epoch)
        # Must stay the last output: a synchronous result feeds the next input right here.
        d.addCallbacks(
            self._persisted, self._persist_error, callbackArgs=(epoch,), errbackArgs=(epoch,)
        )

    @m.output()
    def _lead(self) -> None:
        epoch = cast(int, self._claim_epoch)
        self._floor = (epoch, self._node_id)
        self._leader = Leader(self._node_id, epoch, self._http)
        self._publish()
        self._send_coordinator()

    @m.output()
    def _announce(self) -> None:
        self._send_coordinator()

    @m.output()
    def _follow(self, node_id: int, epoch: int, http: str) -> None:
        self._cancel_timer()
        self._floor = max(self._floor, (epoch, node_id))
        self._leader = Leader(node_id, epoch, http)
        self._publish()

    @m.output()
    def _clear_leader(self) -> None:
        self._leader = None
        self._publish()

    # -- transitions, one state at a time: what moves it, then each input that can still
    # arrive there and is ignored, with why. Any other input cannot reach that state (the
    # public methods' guards and the one-timer rule keep it out) and would raise.
    # docs/bully.svg draws it: automat-visualize -t svg -i DIR distpotify.cluster.bully

    follower.upon(_start, enter=candidate, outputs=[_ask_higher_peers])
    follower.upon(_challenged, enter=candidate, outputs=[_ask_higher_peers])
    follower.upon(_outdated, enter=candidate, outputs=[_ask_higher_peers])
    follower.upon(_accept_leader, enter=follower, outputs=[_follow])
    follower.upon(_forget_leader, enter=follower, outputs=[_clear_leader])
    follower.upon(_answered, enter=follower, outputs=[])  # late: a leader ended that election
    follower.upon(_epoch_persisted, enter=follower, outputs=[])  # late: a claim cut short
    follower.upon(_persist_failed, enter=follower, outputs=[])  # late: a claim cut short

    candidate.upon(_answered, enter=waiting, outputs=[_wait_for_coordinator])
    candidate.upon(_answer_timed_out, enter=claiming, outputs=[_persist_next_epoch])
    candidate.upon(_accept_leader, enter=follower, outputs=[_follow])
    candidate.upon(_forget_leader, enter=candidate, outputs=[_clear_leader])
    candidate.upon(_start, enter=candidate, outputs=[])  # already electing
    candidate.upon(_challenged, enter=candidate, outputs=[])  # already electing
    candidate.upon(_outdated, enter=candidate, outputs=[])  # already electing, above that epoch
    candidate.upon(_epoch_persisted, enter=candidate, outputs=[])  # late: a claim cut short
    candidate.upon(_persist_failed, enter=candidate, outputs=[])  # late: a claim cut short

    waiting.upon(_coordinator_timed_out, enter=candidate, outputs=[_ask_higher_peers])
    waiting.upon(_accept_leader, enter=follower, outputs=[_follow])
    waiting.upon(_forget_leader, enter=waiting, outputs=[_clear_leader])
    waiting.upon(_start, enter=waiting, outputs=[])  # already electing
    waiting.upon(_challenged, enter=waiting, outputs=[])  # the higher id, asked too, will lead
    waiting.upon(_outdated, enter=waiting, outputs=[])  # the higher id, asked too, will lead
    waiting.upon(_answered, enter=waiting, outputs=[])  # a second higher id answers
    waiting.upon(_epoch_persisted, enter=waiting, outputs=[])  # late: a claim cut short
    waiting.upon(_persist_failed, enter=waiting, outputs=[])  # late: a claim cut short

    claiming.upon(_epoch_persisted, enter=leader, outputs=[_lead])
    claiming.upon(_persist_failed, enter=waiting, outputs=[_wait_for_coordinator])
    claiming.upon(_accept_leader, enter=follower, outputs=[_follow])
    claiming.upon(_forget_leader, enter=claiming, outputs=[_clear_leader])
    claiming.upon(_start, enter=claiming, outputs=[])  # already claiming
    claiming.upon(_challenged, enter=claiming, outputs=[])  # already claiming
    claiming.upon(_outdated, enter=claiming, outputs=[])  # already claiming
    claiming.upon(_answered, enter=claiming, outputs=[])  # after answer_timeout: too late

    leader.upon(_challenged, enter=leader, outputs=[_announce])
    leader.upon(_outdated, enter=claiming, outputs=[_step_down, _persist_next_epoch])
    leader.upon(_accept_leader, enter=follower, outputs=[_follow])
    leader.upon(_answered, enter=leader, outputs=[])  # late; that higher id elects itself

    # -- timers: one at a time (start-up wait, answer wait or coordinator wait)

    def _answer_deadline(self) -> None:
        self._timer = None
        self._answer_timed_out()

    def _coordinator_deadline(self) -> None:
        self._timer = None
        self.log.info("no coordinator within {timeout}s; new election",
                      timeout=self._coordinator_timeout)
        self._coordinator_timed_out()

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _send_coordinator(self) -> None:
        if self._leader is None:
            return
        try:
            self._network.announce_coordinator(self._leader.epoch)
        except Exception:
            self.log.failure("cannot announce coordinator")

    def _publish(self) -> None:
        """One log line and one on_change call per change of role or leader."""
        published = (self._role(), self._leader)
        if published == self._published:
            return
        self._published = published
        status = self.status
        if status.role == LEADER:
            self.log.info("elected {node_id} epoch={epoch}", node_id=self._node_id,
                          epoch=status.epoch)
        elif status.role == CANDIDATE:
            self.log.info("candidate {node_id} epoch={epoch} leader={leader_id}",
                          node_id=self._node_id, epoch=status.epoch, leader_id=status.leader_id)
        else:
            self.log.info("follower {node_id} of leader={leader_id} epoch={epoch} http={http}",
                          node_id=self._node_id, leader_id=status.leader_id,
                          epoch=status.epoch, http=status.leader_http)
        try:
            self._on_change(status)
        except Exception:
            self.log.failure("election on_change callback failed")


def follow_membership(election: BullyElection, membership: Membership) -> Callable[[], None]:
    """Feed peer-table events to the election; returns the unsubscribe function."""

    def on_event(event: PeerEvent) -> None:
        peer = event.peer
        election.observe_epoch(peer.epoch)
        if peer.up and peer.role == LEADER:
            election.leader_seen(peer.node_id, peer.epoch, peer.http)
        elif peer.node_id == election.leader_id:
            # Our leader went silent or stopped leading: another live leader, if any,
            # replaces it directly; otherwise (leader_lost) an election.
            other = membership.current_leader()
            if other is not None:
                election.leader_seen(other.node_id, other.epoch, other.http)
            election.leader_lost(peer.node_id)

    return membership.subscribe(on_event)


# -- the AMP adapter


class ElectionResponder(Protocol):
    def election_requested(self, node_id: int, epoch: int) -> bool: ...

    def coordinator_received(self, node_id: int, epoch: int, http: str) -> None: ...


class JoinResponder(Protocol):
    def join_requested(self, node_id: int, http: str, amp: str, head: str) -> dict[str, Any]: ...


class BullyProtocol(ProvingAMP):
    """The AMP port's server side: once the connector has proved the cluster key, hands
    Election and Coordinator to the election, Join to the leader's join desk."""

    def __init__(self, election: ElectionResponder, joins: JoinResponder | None = None, *,
                 handshake: Handshake) -> None:
        super().__init__(handshake)
        self._election = election
        self._joins = joins

    @Election.responder
    def _election_received(self, node_id: int, epoch: int) -> dict[str, bool]:
        return {"alive": self._election.election_requested(node_id, epoch)}

    @Coordinator.responder
    def _coordinator_received(self, node_id: int, epoch: int, http: str) -> dict[str, Any]:
        self._election.coordinator_received(node_id, epoch, http)
        return {}

    @Join.responder
    def _join_received(self, node_id: int, http: str, amp: str, head: str) -> dict[str, Any]:
        if self._joins is None:
            raise NotLeaderError("this replica takes no joins")
        return self._joins.join_requested(node_id, http, amp, head)


def bully_factory(election: ElectionResponder, joins: JoinResponder | None, handshake: Handshake
                  ) -> Factory:
    """The factory to listen with on --amp-port."""
    return Factory.forProtocol(lambda: BullyProtocol(election, joins, handshake=handshake))


class PeerConnection(amp.AMP):
    """Our end of the connection to one peer's AMP port; tells its pool when it is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.on_lost: Callable[[], object] | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.on_lost is not None:
            self.on_lost()


Connector = Callable[[str, int], Deferred[PeerConnection]]


def tcp_connector(reactor: Any, timeout: float) -> Connector:
    """Connect with the reactor's TCP and name resolution (``reactor`` must provide
    IReactorTCP and IReactorTime)."""

    def connect(host: str, port: int) -> Deferred[PeerConnection]:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        return cast(Deferred[PeerConnection], connectProtocol(endpoint, PeerConnection()))

    return connect


class AmpPeers:
    """AMP calls to peers (and the election's network): one reused connection per peer
    address, opened on first use and proven (``handshake``) before its first call,
    forgotten when lost or when a call times out, so the next call reconnects. Every call is
    bounded by ``timeout`` on ``clock``."""

    log = Logger()

    def __init__(
        self,
        *,
        node_id: int,
        http: str,
        membership: Membership,
        clock: IReactorTime,
        connect: Connector,
        timeout: float,
        handshake: Handshake,
    ) -> None:
        self._node_id = node_id
        self._http = http
        self._membership = membership
        self._clock = clock
        self._connect = connect
        self._timeout = timeout
        self._handshake = handshake
        self._connections: dict[str, PeerConnection] = {}
        self._waiters: dict[str, list[Deferred[PeerConnection]]] = {}

    def call(self, address: str, command: type[amp.Command], **arguments: Any) -> Deferred[Any]:
        """``command`` on the peer at ``address`` (HOST:PORT); fails with
        ``defer.TimeoutError`` after ``timeout`` seconds."""
        d = self._connection(address)
        d.addCallback(lambda connection: connection.callRemote(command, **arguments))
        d.addTimeout(self._timeout, self._clock)
        d.addErrback(self._call_failed, address)
        return d

    def ask_alive(self, node_id: int, epoch: int) -> Deferred[bool]:
        peer = self._membership.get(node_id)
        if peer is None or not peer.up:
            return succeed(False)
        d = self.call(peer.amp, Election, node_id=self._node_id, epoch=epoch)
        return d.addCallback(lambda response: bool(response["alive"]))

    def announce_coordinator(self, epoch: int) -> None:
        for peer in self._membership.live_peers():
            d = self.call(peer.amp, Coordinator, node_id=self._node_id, epoch=epoch,
                          http=self._http)
            d.addErrback(self._not_announced, peer.node_id)

    def disconnect(self) -> None:
        """Close every connection (service stop)."""
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            connection.on_lost = None
            if connection.transport is not None:
                connection.transport.loseConnection()

    def _connection(self, address: str) -> Deferred[PeerConnection]:
        connection = self._connections.get(address)
        if connection is not None:
            return succeed(connection)
        waiter: Deferred[PeerConnection] = Deferred()
        waiters = self._waiters.get(address)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._waiters[address] = [waiter]
        host, port = split_address(address)
        d = maybeDeferred(self._connect, host, port)
        d.addCallback(self._prove, host)
        d.addCallbacks(
            self._connected, self._not_connected, callbackArgs=(address,), errbackArgs=(address,)
        )
        return waiter

    def _prove(self, connection: PeerConnection, host: str) -> Deferred[PeerConnection]:
        """The connection, once both sides have proved the key; closed if they cannot."""

        def refused(failure: Failure) -> Failure:
            if connection.transport is not None:
                cast(Any, connection.transport).abortConnection()
            return failure

        d = Deferred.fromCoroutine(self._handshake.prove(connection, host))
        return d.addCallbacks(lambda _: connection, refused)

    def _connected(self, connection: PeerConnection, address: str) -> None:
        connection.on_lost = lambda: self._lost(address, connection)
        self._connections[address] = connection
        for waiter in self._waiters.pop(address, []):
            waiter.callback(connection)

    def _not_connected(self, failure: Failure, address: str) -> None:
        for waiter in self._waiters.pop(address, []):
            waiter.errback(failure)

    def _lost(self, address: str, connection: PeerConnection) -> None:
        if self._connections.get(address) is connection:
            del self._connections[address]

    def _call_failed(self, failure: Failure, address: str) -> Failure:
        if failure.check(defer.TimeoutError):
            # A peer that does not answer in time may hold a half-open connection (a
            # partition, a stopped process); the next call starts afresh.
            connection = self._connections.pop(address, None)
            if connection is not None and connection.transport is not None:
                cast(Any, connection.transport).abortConnection()
        return failure

    def _not_announced(self, failure: Failure, node_id: int) -> None:
        self.log.info("coordinator not delivered to {node_id}: {error}", node_id=node_id,
                      error=failure.getErrorMessage())
