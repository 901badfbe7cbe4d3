"""A replica as a tree of services, and ``build_replica``, the one place its parts are wired.

Built: data dirs, database (recovering from any crash: temp and orphan chunk files removed).
Started: heartbeat and AMP ports, one failure timeout of listening (a duplicate node id stops
us here), the HTTP port, founding, rejoining or joining the cluster, the accounts (with none
yet, the setup code), the periodic jobs.
Stopped: the reverse, one part after the other, the database closed last.
"""
# test-case-name: tests.unit.test_service, tests.integration.test_replica

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.application import service
from twisted.application.internet import TCPServer
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IAgent

from distpotify import __version__
from distpotify.accounts import Accounts, account_rows
from distpotify.api.auth import AuthAPI
from distpotify.api.covers import CoversAPI
from distpotify.api.gate import Gate
from distpotify.api.public import PublicAPI, ReplicaRoot
from distpotify.api.site import ReplicaSite
from distpotify.api.sync import SyncAPI
from distpotify.api.trusted import ClusterOnly
from distpotify.auth.apikeys import ApiKeySecrets
from distpotify.auth.box import PasswordBox
from distpotify.auth.passwords import HashParams, Passwords
from distpotify.auth.tokens import TokenSigner
from distpotify.cluster.node import ClusterNode, stop_process
from distpotify.config import ConfigError, ReplicaConfig
from distpotify.covers import COVER_CACHE_BYTES, Covers
from distpotify.leadership import Leadership
from distpotify.library import Library
from distpotify.metrics import ReplicaMetrics
from distpotify.model import Version
from distpotify.replication.bootstrap import CHUNKS, SNAPSHOT
from distpotify.replication.client import PeerClient, make_agent, make_push_pool
from distpotify.replication.fetch import ChunkRef
from distpotify.replication.node import ReplicationNode
from distpotify.signing import RequestVerifier
from distpotify.store.chunks import ChunkStore
from distpotify.store.chunkspool import ChunkSpool
from distpotify.store.covers import CoverCache, CoverStore
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner
from distpotify.subsonic.api import Server, SubsonicAPI
from distpotify.subsonic.auth import Authenticator
from distpotify.userstate import UserState
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


# What an unreadable database fails with: damaged pages, or a file that is no database.
_UNREADABLE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def open_database(config: ReplicaConfig) -> MetadataDB:
    """The replica's database; an unreadable one is moved aside, and the replica, now empty,
    bootstraps from the cluster (its chunk files, orphaned, are removed and fetched again).
    Any other failure (a full disk, an I/O error, a locked file) is ConfigError: the
    database may be whole, and set aside it would be lost with the writes only it holds
    (a replica restarted on a full disk did so, found by the random lab run)."""
    path = config.data_dir / "metadata.sqlite3"
    try:
        return MetadataDB(path, config.node_id)
    except sqlite3.DatabaseError as e:
        if getattr(e, "sqlite_errorcode", 0) & 0xFF not in _UNREADABLE:
            raise ConfigError(f"cannot open the database {path}: {e}; nothing was changed"
                              " (free space, or fix the cause, and start again)") from None
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                source.rename(aside.with_name(aside.name + suffix))
        log.critical("database {path} is unreadable ({error}); moved to {aside}, starting"
                     " empty to bootstrap from the cluster", path=str(path), error=e,
                     aside=str(aside))
        return MetadataDB(path, config.node_id)


def thread_runner(reactor: Any) -> Runner:
    """Blocking work (hashing, chunk files) on ``reactor``'s thread pool."""

    def run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)

    return run


class DatabaseThread(service.Service):
    """The one thread SQLite runs on. Stopping it closes the database, so it is the replica's
    first child: the last to stop, once nothing uses the database any more."""

    def __init__(self, db: MetadataDB, reactor: Any) -> None:
        self.db = db
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="sqlite")

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """``f(*args, **kwargs)`` on the database thread."""
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()  # runs what is queued, then joins the thread
        self.db.close()


class ReplicaService(service.MultiService):
    """One replica, from ``build_replica``: a MultiService whose children are, in start-up
    order, the database thread, the AMP listener (the election's RPC), the cluster node
    (heartbeats, peer table, election), the HTTP listener (API and /sync) and replication
    (itself the MultiService of the periodic jobs).

    startService runs the start-up in that order, waiting where the design says to (see the
    module docstring); a failure stops the process with one line. stopService stops the
    children in reverse, each once the one after it has stopped; a part that fails to stop
    is logged and the others still stop.
    """

    def __init__(
        self,
        config: ReplicaConfig,
        reactor: Any,
        *,
        database: DatabaseThread,
        amp: service.Service,
        cluster: ClusterNode,
        http: service.Service,
        replication: ReplicationNode,
        library: Library,
        resource: ReplicaRoot,
        accounts: Accounts | None = None,  # None: tests of the start-up order alone
        subsonic: Server | None = None,
        userstate: UserState | None = None,
        covers: Covers | None = None,
        freeze: Callable[[], int] | None = None,
    ) -> None:
        super().__init__()
        self.subsonic = subsonic  # the Subsonic API's services
        # Once started, what lives as long as the process leaves full GCs (gcfreeze.py).
        self._freeze = freeze
        self.config = config
        self.reactor = reactor
        self.database = database
        self.amp = amp
        self.cluster = cluster
        self.http = http
        self.replication = replication
        self.library = library
        self.resource = resource
        self.accounts = accounts
        self.userstate = userstate
        self.covers = covers  # cover art: what the Subsonic API's getCoverArt calls
        for name, child in (("database", database), ("amp", amp), ("cluster", cluster),
                            ("http", http), ("replication", replication)):
            child.setName(name)
            child.setServiceParent(self)
        self._starting: Deferred[None] | None = None

    @property
    def db(self) -> MetadataDB:
        return self.database.db

    def privilegedStartService(self) -> None:
        # Not passed on: the children bind their ports in startService's order, not before.
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        service.Service.startService(self)
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._fatal)

    async def _start(self) -> None:
        self.database.startService()
        await self.cluster.listen()
        self.amp.startService()
        self.cluster.startService()
        # One failure timeout of listening before serving: a replica that finds its node id
        # taken gives way without having answered a single request, and the peer table is
        # full enough to decide how to join.
        await deferLater(self.reactor, self.config.failure_timeout, lambda: None)
        if self.cluster.refused:
            return
        self.http.startService()
        log.info("replica {node_id} serving HTTP on {host}:{port} as {url}",
                 node_id=self.config.node_id, host=self.config.host, port=self.config.http_port,
                 url=self.config.http_url)
        await self.replication.become_active()
        if self.accounts is not None:
            await self.accounts.started()
        self.replication.startService()
        if self._freeze is not None:
            log.info("froze {count} start-up objects out of full garbage collections",
                     count=self._freeze())

    def _fatal(self, failure: Failure) -> None:
        if failure.check(CancelledError) and not self.running:
            return  # stopped while starting
        log.critical("replica {node_id} cannot start: {error}",
                     node_id=self.config.node_id, error=failure.getErrorMessage())
        os.write(2, f"distpotify: cannot start: {failure.getErrorMessage()}\n".encode())
        stop_process(self.reactor, 1)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        if self._starting is not None:
            self._starting.cancel()  # whatever start-up step is under way
        if self.accounts is not None:
            self.accounts.stop()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        failed = []
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                failed.append(child.name)
                log.failure("replica {node_id}: stopping the {part} failed",
                            node_id=self.config.node_id, part=child.name)
        log.info("replica {node_id} stopped{failures}", node_id=self.config.node_id,
                 failures=f" (but the {', '.join(failed)} failed to stop)" if failed else "")


async def accounts_applied(replication: ReplicationNode, accounts: Accounts,
                           version: Version) -> bool:
    """Whether ``version`` is applied here (waiting up to --read-wait), with the accounts in
    memory read again after it: they reload in the background as ops apply, so a read of
    /users/* right after an admin's change could otherwise miss it."""
    if not await replication.applied.wait_for(version):
        return False
    await accounts.reload()
    return True


async def replica_status(
    config: ReplicaConfig, cluster: ClusterNode, replication: ReplicationNode,
    head: Callable[[], Version], store: MetadataStore, accounts: Accounts,
) -> dict[str, Any]:
    """What GET /status answers."""
    return {
        "node_id": config.node_id,
        **cluster.status(),
        "head": head().as_list(),
        "http": config.http_url,
        **await replication.status(),
        "writes": {"committed": store.writes, "commits": store.commits},
        "accounts": accounts.status(),
        "version": __version__,
        "pid": os.getpid(),
    }


def starting_epoch(db: MetadataDB) -> int:
    """The epoch a replica starts from, the next it claims being above it: the last it
    claimed itself, or the newest it holds writes of, whichever is later. A replica that
    only ever followed has claimed none, or an old one; restarted cut off from the others,
    it leads alone, and in an epoch below its own head its writes would carry versions older
    than those of the records they change: every edit and delete it acknowledged would lose
    the merge to the write it replaced (found by the random lab run)."""
    return max(int(db.get_meta("epoch") or 0), db.head().epoch)


def build_replica(
    config: ReplicaConfig,
    reactor: Any,
    *,
    run_db: Runner | None = None,
    blocking: Runner | None = None,
    agent: IAgent | None = None,
    leadership: Leadership | None = None,
    password_params: HashParams | None = None,
    freeze: Callable[[], int] | None = None,
) -> ReplicaService:
    """The replica ``config`` describes, its data dir opened and recovered, ready to start.

    The defaults are production's: SQLite on the database thread (``run_db``), blocking work
    such as hashing and chunk files on ``reactor``'s thread pool (``blocking``), a pooled
    ``agent`` to the other replicas, the cluster node as the ``leadership`` that decides who
    writes. The in-memory test replica gives runners that call at once, an agent that answers
    in memory (treq.testing's RequestTraversalAgent), a Clock as ``reactor`` and a
    leadership stand-in, and never starts the service.
    ``password_params`` are argon2id's costs (cheaper ones in tests); ``freeze`` runs once the
    replica has started (twistd's: gcfreeze.freeze_startup_objects; a test process keeps its
    collector as it is). Raises ConfigError when
    the data dir is not usable.
    """
    # Blocking, before the reactor runs: recovery delays nothing.
    prepare_data_dir(config)
    shutil.rmtree(config.data_dir / "tmp", ignore_errors=True)
    (config.data_dir / "tmp").mkdir()
    db = open_database(config)
    epoch = starting_epoch(db)
    chunks = ChunkStore(config.data_dir / "chunks")
    live = db.live_chunk_names()
    temps, orphans, kept = chunks.clean_and_list(live)
    # Anti-entropy's first look for missing chunk files, made here while the directory is
    # listed anyway (at 200,000 songs the whole comparison costs a third of a second); not
    # in a join under way, whose chunks are still to be fetched by the join itself.
    missing = None if db.get_meta("join_state") in (SNAPSHOT, CHUNKS) else [
        ChunkRef(*row) for row in db.chunk_rows(sorted(live - kept))]
    # Covers no live song or album names any more are collected here, at start-up only: at
    # run time a cover is written before the row that names it, and could be taken for one.
    cover_files = CoverStore(config.data_dir / "covers")
    cover_temps, cover_orphans = cover_files.clean(db.live_cover_names())
    cover_cache = CoverCache(config.data_dir / "cover-cache", COVER_CACHE_BYTES)
    cover_cache.clear_temps()
    log.info(
        "replica {node_id} starting: distpotify {version}, data dir {data_dir},"
        " epoch {epoch}, head {head}, removed {temps} temp and {orphans} orphan chunk files"
        " and {cover_temps} temp and {cover_orphans} unnamed cover files, found {missing} live"
        " chunks without a file, cluster key {key_ids}",
        node_id=config.node_id, version=__version__, data_dir=str(config.data_dir),
        epoch=epoch, head=db.head().encode(), temps=temps, orphans=orphans,
        missing="the join's" if missing is None else len(missing),
        cover_temps=cover_temps, cover_orphans=cover_orphans,
        key_ids=" + ".join(config.cluster_keys.key_ids),
    )

    database = DatabaseThread(db, reactor)
    store = MetadataStore(db, run_db or database.run)
    blocking = blocking or thread_runner(reactor)
    cluster = ClusterNode(config, reactor, store, db.cached_head, epoch)
    leadership = leadership or cluster
    replication = ReplicationNode(
        config, reactor, store, chunks, cluster, leadership,
        PeerClient(agent or make_agent(reactor), reactor, config.cluster_keys,
                   pushes=None if agent else make_push_pool(reactor)),
        blocking, covers=cover_files, missing_chunks=missing,
    )
    library = Library(store, chunks, blocking, reactor, leadership, config.chunk_size,
                      on_written=replication.written, writable=replication.writable,
                      acknowledged=replication.acknowledged, spool_dir=config.data_dir / "tmp",
                      failpoints=config.failpoints, covers=cover_files)
    covers = Covers(store, cover_files, cover_cache, blocking, library, db.cached_head, reactor,
                    replication.covers, replication.peer_urls)
    # Password hashes on the worker threads, never the database's one thread.
    accounts = Accounts(store, library, reactor, Passwords(blocking, password_params),
                        TokenSigner(config.cluster_keys, reactor), config.data_dir,
                        ApiKeySecrets(config.cluster_keys), admin_password=config.admin_password,
                        box=PasswordBox(config.cluster_keys) if config.subsonic_token_auth
                        else None)
    accounts.load(*account_rows(db))
    userstate = UserState(store, library, reactor)
    replication.on_applied.append(accounts.ops_applied)
    replication.on_applied.append(cluster.ops_applied)
    replication.before_active.append(accounts.reload)
    metrics = ReplicaMetrics(config.node_id)
    api = PublicAPI(library, replication.guard,
                    partial(replica_status, config, cluster, replication, db.cached_head,
                            store, accounts),
                    blocking, metrics, sendfile=config.sendfile)
    sync = SyncAPI(store, replication.receiver, replication.desk, blocking,
                   snapshots=replication.snapshots, resync=replication.resync_requested,
                   covers=cover_files)
    # /sync/* answers signed requests only: the other replicas (api/trusted.py).
    signed_only = ClusterOnly(sync.app.resource(), RequestVerifier(config.cluster_keys, reactor),
                              cluster.trust, blocking)

    def serving() -> bool:  # reads and sessions are answered by an ACTIVE replica only
        return cluster.state == ACTIVE

    subsonic = SubsonicAPI(Server(
        library, accounts, store, blocking,
        Authenticator(accounts, token_auth=config.subsonic_token_auth),
        api.stream, serving=serving, state=userstate, covers=covers))
    gate = Gate(accounts, RequestVerifier(config.cluster_keys, reactor), enforce=config.auth,
                metrics_token=config.metrics_token, serving=serving,
                leading=lambda: leadership.is_leader)
    resource = ReplicaRoot(config.node_id, api, signed_only,
                           serving=serving,
                           wait_for=lambda v: Deferred.fromCoroutine(
                               replication.applied.wait_for(v)),
                           accounts=AuthAPI(accounts, blocking).app.resource(),
                           authorize=gate.authorize,
                           accounts_wait_for=lambda v: Deferred.fromCoroutine(
                               accounts_applied(replication, accounts, v)),
                           subsonic=subsonic,
                           covers=CoversAPI(covers).app.resource())
    site = ReplicaSite(resource, node_id=config.node_id, max_body=config.max_upload,
                       spool_dir=config.data_dir / "tmp", clock=reactor, metrics=metrics,
                       timeouts=config.timeouts,
                       upload_spool=partial(ChunkSpool, chunks, config.chunk_size))
    return ReplicaService(
        config, reactor,
        database=database,
        amp=TCPServer(config.amp_port, cluster.amp_factory(replication.desk),
                      interface=config.host, reactor=reactor),
        cluster=cluster,
        http=TCPServer(config.http_port, site, backlog=LISTEN_BACKLOG, interface=config.host,
                       reactor=reactor),
        replication=replication, library=library, resource=resource, accounts=accounts,
        subsonic=subsonic.services, userstate=userstate, covers=covers,
        freeze=freeze,
    )
