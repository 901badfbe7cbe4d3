"""A replica's place in the cluster: heartbeats, the peer table and the Bully election, wired.

ClusterNode is also the Leadership the library asks before every write: only the elected
leader writes, with versions of the epoch it persisted before announcing itself.
"""
# test-case-name: tests.integration.test_election

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from distpotify.cluster.ampauth import Handshake
from distpotify.cluster.bully import (
    AmpPeers,
    BullyElection,
    ElectionStatus,
    JoinResponder,
    bully_factory,
    follow_membership,
    tcp_connector,
)
from distpotify.cluster.heartbeat import (
    Address,
    Heartbeat,
    HeartbeatProtocol,
    HeartbeatSender,
    destinations,
    format_address,
    listen_multicast,
    listen_unicast,
)
from distpotify.cluster.membership import Membership
from distpotify.cluster.seal import ReplayGuard, Sealer
from distpotify.cluster.takeback import TakeBack
from distpotify.cluster.trust import AuthFailures
from distpotify.config import ReplicaConfig
from distpotify.errors import NotLeader
from distpotify.model import Op, Version
from distpotify.store.metadata import MetadataDB, MetadataStore
from distpotify.wire import ACTIVE, JOINING, LEADER

log = Logger()


class ClusterNode(service.Service):
    """This replica as a member of the cluster: its state (JOINING, then ACTIVE), its peer
    table fed by heartbeats, its heartbeats out, and its part in the Bully election.

    ``listen`` binds the heartbeat port; startService starts sending heartbeats and the
    election's first wait; stopService stops them and closes the port. The AMP server of the
    election is a sibling service (``amp_factory``), bound by the replica between the two.
    Also the Leadership the library asks before every write.
    """

    def __init__(
        self,
        config: ReplicaConfig,
        reactor: Any,
        store: MetadataStore,
        head: Callable[[], Version],
        epoch: int,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self._store = store
        self._head = head
        # Every replica starts JOINING; bootstrap decides when it holds enough to be ACTIVE.
        self.state = JOINING
        self.amp_address = format_address(config.advertise_host, config.amp_port)
        self.membership = Membership(
            node_id=config.node_id, clock=reactor, failure_timeout=config.failure_timeout
        )
        # Failures to prove the cluster key, by peer: heartbeats, AMP and /sync report here.
        self.trust = AuthFailures()
        # Every AMP connection, ours or a peer's, proves the key both ways before a command.
        self._handshake = Handshake(config.cluster_keys, self.trust, reactor,
                                    config.coordinator_timeout)
        # Connections to the other replicas' AMP ports, reused and reconnected.
        self.amp_pool = AmpPeers(
            node_id=config.node_id, http=config.http_url, membership=self.membership,
            clock=reactor, connect=tcp_connector(reactor, config.coordinator_timeout),
            timeout=config.coordinator_timeout, handshake=self._handshake,
        )
        self.election = BullyElection(
            node_id=config.node_id, http=config.http_url, clock=reactor, network=self.amp_pool,
            higher_peers=lambda: self.membership.electable_above(config.node_id),
            persist_epoch=self._persist_epoch, is_electable=lambda: self.state == ACTIVE,
            on_change=self._role_changed, answer_timeout=config.answer_timeout,
            coordinator_timeout=config.coordinator_timeout, epoch=epoch,
        )
        # Bully after any return (SIGCONT, a healed partition): a higher ACTIVE replica that
        # follows a lower leader takes over once caught up.
        self.takeback = TakeBack(
            node_id=config.node_id, election=self.election, membership=self.membership,
            head=head, electable=lambda: self.state == ACTIVE and bool(self.running),
            clock=reactor, interval=config.heartbeat_interval,
            patience=config.catch_up_timeout,
        )
        sealer = Sealer(config.cluster_keys, reactor)
        self.heartbeats = HeartbeatProtocol(
            cluster=config.cluster, node_id=config.node_id, http=config.http_url,
            amp=self.amp_address, sealer=sealer, guard=ReplayGuard(reactor),
            failures=self.trust, on_heartbeat=self._peer_beat,
            on_duplicate_node=self._duplicate_node,
        )
        self._sender = HeartbeatSender(
            protocol=self.heartbeats, announcement=self._announcement, seal=sealer.seal,
            destinations=lambda: destinations(config), interval=config.heartbeat_interval,
            clock=reactor,
        )
        self._port: IListeningPort | None = None  # the heartbeat port
        self._unsubscribe: Callable[[], None] | None = None
        self._started_at = 0.0
        self.elections_won = 0
        self.refused = False
        self.role_observers: list[Callable[[str], object]] = []

    def head(self) -> Version:
        return self._head()

    def ops_applied(self, ops: Sequence[Op]) -> None:
        """Ops from elsewhere applied here: the election sees the newest one's epoch."""
        if ops:
            newest = max(op.version for op in ops)
            self.election.data_seen(newest.epoch, newest.leader_id)

    # the Leadership the library asks

    @property
    def epoch(self) -> int:
        return self.election.status.epoch

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    def require_leader(self) -> None:
        if not self.election.is_leader:
            status = self.election.status
            raise NotLeader(
                "this replica is not the leader" if status.leader_id is not None
                else "no leader is known (an election is under way); retry shortly",
                leader_id=status.leader_id, leader_http=status.leader_http,
            )

    def status(self) -> dict[str, Any]:
        status = self.election.status
        return {
            "role": status.role,
            "state": self.state,
            "epoch": status.epoch,
            "leader_id": status.leader_id,
            "leader_http": status.leader_http,
            "amp": self.amp_address,
            "peers": self.membership.snapshot(),
            "heartbeats": dict(self.heartbeats.counters),
            "elections_won": self.elections_won,
            "trust": {"key_ids": list(self.config.cluster_keys.key_ids),
                      "failures": self.trust.snapshot()},
        }

    # lifecycle

    @inlineCallbacks
    def listen(self) -> Any:
        """Bind the heartbeat port (before serving anything, so a bad one stops us)."""
        config = self.config
        if config.heartbeat == "multicast":
            port = yield listen_multicast(self._reactor, config, self.heartbeats)
        else:
            port = listen_unicast(self._reactor, config, self.heartbeats)
        self._port = port

    def amp_factory(self, joins: JoinResponder) -> Factory:
        """The election's AMP server; ``joins`` answers the Join command (the leader's desk)."""
        return bully_factory(self.election, joins, self._handshake)

    def startService(self) -> None:
        super().startService()
        self._started_at = self._reactor.seconds()
        self._unsubscribe = follow_membership(self.election, self.membership)
        self._sender.start()
        self.election.start(self.config.failure_timeout)
        self.takeback.start()
        log.info(
            "node {node_id} joined cluster {cluster}: heartbeats {mode} every {interval}s,"
            " AMP on {amp}", node_id=self.config.node_id, cluster=self.config.cluster,
            mode=self.config.heartbeat, interval=self.config.heartbeat_interval,
            amp=self.amp_address,
        )

    def activate(self) -> None:
        """This replica holds what the cluster holds: ACTIVE, electable, and, as Bully's
        returning higher id, it may now take leadership from a lower leader."""
        self.state = ACTIVE
        log.info("node {node_id} is ACTIVE", node_id=self.config.node_id)
        self._sender.changed()
        if self.running:  # a node stopped (or never started) holds no election
            self.election.claim_if_higher()

    def deactivate(self) -> None:
        """This replica must take a new snapshot: JOINING again, so it serves no read, is not
        electable, and no peer pulls rows from it, until it is ACTIVE again."""
        self.state = JOINING
        log.info("node {node_id} is JOINING again", node_id=self.config.node_id)
        self._sender.changed()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._sender.stop()
        self.takeback.stop()
        self.election.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.membership.stop()
        self.amp_pool.disconnect()
        port, self._port = self._port, None
        return (port.stopListening() if port is not None else None) or succeed(None)

    # callbacks of the parts

    def _announcement(self) -> Heartbeat:
        status = self.election.status
        return Heartbeat(
            cluster=self.config.cluster, node=self.config.node_id, epoch=status.epoch,
            role=status.role, state=self.state, http=self.config.http_url,
            amp=self.amp_address, head=self._head(),
        )

    def _persist_epoch(self, epoch: int) -> Deferred[None]:
        return self._store.run(MetadataDB.set_meta, "epoch", str(epoch))

    def _role_changed(self, status: ElectionStatus) -> None:
        if status.role == LEADER:
            self.elections_won += 1
            # Queued on the database thread before any write this leadership accepts.
            self._store.run(MetadataDB.begin_leading, status.epoch)
        log.info(
            "role {role} epoch={epoch} leader={leader_id} ({leader_http})",
            role=status.role, epoch=status.epoch, leader_id=status.leader_id,
            leader_http=status.leader_http,
        )
        self.takeback.leader_changed()
        self._sender.changed()
        for observer in self.role_observers:
            observer(status.role)

    def _peer_beat(self, heartbeat: Heartbeat) -> None:
        """A peer's heartbeat: into the peer table, and ours goes with it if nearly due."""
        self.membership.heartbeat_received(heartbeat)
        self._sender.peer_beat()

    def _duplicate_node(self, heartbeat: Heartbeat, address: Address) -> None:
        """Two processes with one node id: the newcomer (us, if just started) gives way."""
        if self.refused or self._reactor.seconds() - self._started_at > self.config.failure_timeout:
            return
        self.refused = True
        log.critical(
            "node id {node_id} is already used by {http}; this replica stops",
            node_id=self.config.node_id, http=heartbeat.http,
        )
        stop_process(self._reactor, 3)


def stop_process(reactor: Any, code: int) -> None:
    """Shut down cleanly, then exit with ``code`` (twistd itself would exit 0)."""
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, code)
    reactor.stop()

