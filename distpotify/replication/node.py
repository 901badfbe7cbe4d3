"""A replica's replication, wired: push from the leader, /sync/ops in, anti-entropy, repair.

Peers are the live ACTIVE replicas of the peer table; the leader pushes to them, and any of
them may give chunk bytes or rows.
"""
# test-case-name: tests.integration.test_replication

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from distpotify.cluster.heartbeat import ACTIVE
from distpotify.cluster.membership import PeerEvent, PeerUp
from distpotify.cluster.node import ClusterNode
from distpotify.config import ReplicaConfig
from distpotify.replication.antientropy import AntiEntropy
from distpotify.replication.client import PeerClient, make_http_client
from distpotify.replication.fetch import ChunkFetcher
from distpotify.replication.push import Pusher
from distpotify.replication.receive import Receiver
from distpotify.replication.repair import ChunkGuard, Scrubber
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import MetadataStore

log = Logger()

SCRUB_RATE = 8 * 1024 * 1024  # bytes/s of background re-hashing


class ReplicationNode:
    def __init__(
        self,
        config: ReplicaConfig,
        reactor: Any,
        store: MetadataStore,
        chunks: ChunkStore,
        cluster: ClusterNode,
    ) -> None:
        self._cluster = cluster
        self._failure_timeout = config.failure_timeout
        self.client = PeerClient(make_http_client(reactor), reactor)
        self.fetcher = ChunkFetcher(self.client, chunks, deferToThread)
        self.guard = ChunkGuard(chunks, self.fetcher, deferToThread, self.peers)
        self.receiver = Receiver(store, chunks, self.fetcher, deferToThread, self.peers)
        self.pusher = Pusher(
            store=store, client=self.client, membership=cluster.membership, clock=reactor,
            source=config.http_url, leading=lambda: cluster.election.is_leader,
        )
        self.anti_entropy = AntiEntropy(
            store=store, client=self.client, receiver=self.receiver, guard=self.guard,
            chunks=chunks, blocking=deferToThread, peers=self.peers, clock=reactor,
            interval=config.anti_entropy_interval,
        )
        self.scrubber = Scrubber(store, self.guard, reactor, SCRUB_RATE)
        self._unsubscribe = cluster.membership.subscribe(self._peer_event)
        cluster.role_observers.append(self._role_changed)

    def peers(self) -> list[str]:
        """Base URLs of the live ACTIVE replicas other than this one."""
        return [p.http for p in self._cluster.membership.live_peers() if p.state == ACTIVE]

    def written(self) -> None:
        """The library acknowledged a write: push it."""
        self.pusher.wake()

    def start(self) -> None:
        self.anti_entropy.start()
        self.scrubber.start()

    def stop(self) -> None:
        self._unsubscribe()
        self.pusher.stop()
        self.anti_entropy.stop()
        self.scrubber.stop()

    def _role_changed(self, role: str) -> None:
        self.pusher.forget_cursors()
        self.pusher.wake()

    def _peer_event(self, event: PeerEvent) -> None:
        # A replica that comes back (restart, healed partition) may hold writes we lack.
        if isinstance(event, PeerUp) and event.peer.state == ACTIVE:
            self.anti_entropy.run_round_soon(event.peer.http, 2 * self._failure_timeout)

    async def status(self) -> dict[str, Any]:
        return {
            "push": await self.pusher.status() if self._cluster.election.is_leader else None,
            "ops_received": self.receiver.ops_applied,
            "anti_entropy": self.anti_entropy.status(),
            "repair": attrs.asdict(self.guard.counters),
            "fetch": attrs.asdict(self.fetcher.counters),
            "scrub": self.scrubber.status(),
        }
