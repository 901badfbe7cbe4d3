"""ReplicaService: one replica wired into one service on one reactor.

Start-up order: data dirs, database (recovering from any crash: temp and orphan chunk files
removed), heartbeat and AMP ports, one failure timeout of listening (a duplicate node id stops
us here), then the HTTP port; shutdown closes them in reverse.
"""
# test-case-name: tests.integration.test_replica

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from distpotify import __version__
from distpotify.api.public import PublicAPI, ReplicaRoot
from distpotify.api.site import ReplicaSite
from distpotify.api.sync import SyncAPI
from distpotify.cluster.node import ClusterNode, stop_process
from distpotify.config import ConfigError, ReplicaConfig
from distpotify.library import Library
from distpotify.metrics import ReplicaMetrics
from distpotify.replication.node import ReplicationNode
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import MetadataDB, MetadataStore
from distpotify.wire import ACTIVE

log = Logger()

# The proxy opens pooled connections in bursts (up to 256 per replica): the default backlog
# of 50 drops their SYNs, and each dropped one waits a second for its retransmission.
LISTEN_BACKLOG = 1024


def prepare_data_dir(config: ReplicaConfig) -> None:
    """Create the data dir layout or fail with one clear line (ConfigError)."""
    try:
        for sub in ("", "chunks", "tmp"):
            (config.data_dir / sub).mkdir(parents=True, exist_ok=True)
        probe = config.data_dir / "tmp" / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"data dir {config.data_dir} is not usable: {e.strerror or e}") from None


def open_database(config: ReplicaConfig) -> MetadataDB:
    """The replica's database; an unreadable one is moved aside, and the replica, now empty,
    bootstraps from the cluster (its chunk files, orphaned, are removed and fetched again)."""
    path = config.data_dir / "metadata.sqlite3"
    try:
        return MetadataDB(path, config.node_id)
    except sqlite3.DatabaseError as e:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                source.rename(aside.with_name(aside.name + suffix))
        log.critical("database {path} is unreadable ({error}); moved to {aside}, starting"
                     " empty to bootstrap from the cluster", path=str(path), error=e,
                     aside=str(aside))
        return MetadataDB(path, config.node_id)


class ReplicaService(service.Service):
    def __init__(self, config: ReplicaConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self._db_pool = ThreadPool(minthreads=1, maxthreads=1, name="sqlite")
        self.db: MetadataDB | None = None
        self.library: Library | None = None
        self.cluster: ClusterNode | None = None
        self.replication: ReplicationNode | None = None
        self._http: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        config = self.config
        prepare_data_dir(config)
        shutil.rmtree(config.data_dir / "tmp", ignore_errors=True)
        (config.data_dir / "tmp").mkdir()
        # Start-up runs before the reactor does: the blocking recovery below delays nothing.
        self.db = db = open_database(config)
        epoch = int(db.get_meta("epoch") or 0)
        chunks = ChunkStore(config.data_dir / "chunks")
        temps, orphans = chunks.clean(db.live_chunk_names())
        log.info(
            "replica {node_id} starting: distpotify {version}, data dir {data_dir},"
            " epoch {epoch}, head {head}, removed {temps} temp and {orphans} orphan chunk files",
            node_id=config.node_id, version=__version__, data_dir=str(config.data_dir),
            epoch=epoch, head=db.head().encode(), temps=temps, orphans=orphans,
        )
        self._db_pool.start()
        store = MetadataStore(db, lambda f, *a, **kw: deferToThreadPool(
            self.reactor, self._db_pool, f, *a, **kw))
        self.cluster = cluster = ClusterNode(config, self.reactor, store, db.cached_head, epoch)
        self.replication = replication = ReplicationNode(
            config, self.reactor, store, chunks, cluster
        )
        self.library = Library(
            store, chunks, deferToThread, self.reactor, cluster, config.chunk_size,
            on_written=replication.written,
        )
        Deferred.fromCoroutine(self._join_then_serve()).addErrback(self._fatal)

    async def _join_then_serve(self) -> None:
        assert self.cluster is not None and self.replication is not None
        await self.cluster.listen(self.replication.desk)
        self.cluster.startService()
        # One failure timeout of listening before serving: a replica that finds its node id
        # taken gives way without having answered a single request, and the peer table is
        # full enough to decide how to join.
        await deferLater(self.reactor, self.config.failure_timeout, lambda: None)
        if not self.cluster.refused:
            self._serve_http()
            await self.replication.become_active()

    def _serve_http(self) -> None:
        config = self.config
        assert self.library is not None and self.replication is not None
        metrics = ReplicaMetrics(config.node_id)
        api = PublicAPI(self.library, self.replication.guard, self.status, metrics)
        sync = SyncAPI(self.library.store, self.replication.receiver, self.replication.desk,
                       deferToThread, config.data_dir / "tmp")
        cluster = self.cluster
        assert cluster is not None
        site = ReplicaSite(
            ReplicaRoot(config.node_id, api, sync.app.resource(),
                        serving=lambda: cluster.state == ACTIVE),
            node_id=config.node_id, max_body=config.max_upload,
            spool_dir=config.data_dir / "tmp", clock=self.reactor, metrics=metrics,
        )
        self._http = self.reactor.listenTCP(config.http_port, site, interface=config.host,
                                            backlog=LISTEN_BACKLOG)
        log.info("replica {node_id} serving HTTP on {host}:{port} as {url}",
                 node_id=config.node_id, host=config.host, port=config.http_port,
                 url=config.http_url)

    def _fatal(self, failure: Failure) -> None:
        log.critical("replica {node_id} cannot start: {error}",
                     node_id=self.config.node_id, error=failure.getErrorMessage())
        os.write(2, f"distpotify: cannot start: {failure.getErrorMessage()}\n".encode())
        stop_process(self.reactor, 1)

    async def _stop(self) -> None:
        if self._http is not None:
            await maybeDeferred(self._http.stopListening)
        if self.replication is not None:
            self.replication.stop()
        if self.cluster is not None and self.cluster.running:
            await self.cluster.stopService()
        self._db_pool.stop()
        if self.db is not None:
            self.db.close()
        log.info("replica {node_id} stopped", node_id=self.config.node_id)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def status(self) -> dict[str, Any]:
        assert self.cluster is not None and self.db is not None
        assert self.replication is not None
        return {
            "node_id": self.config.node_id,
            **self.cluster.status(),
            "head": self.db.cached_head().as_list(),
            "http": self.config.http_url,
            **await self.replication.status(),
            "version": __version__,
            "pid": os.getpid(),
        }
