"""ReplicaService: one replica wired into one MultiService on one reactor.

Start-up order: data dirs, database (recovering from any crash: temp and orphan chunk files
removed), leadership, then the HTTP port; shutdown closes them in reverse.
"""
# test-case-name: tests.integration.test_replica

from __future__ import annotations

import os
import shutil
from functools import partial
from typing import Any

from twisted.application import internet, service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from distpotify import __version__
from distpotify.api.public import PublicAPI, ReplicaRoot
from distpotify.api.site import ReplicaSite
from distpotify.config import ConfigError, ReplicaConfig
from distpotify.leadership import Leadership, LoneLeader
from distpotify.library import Library
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import MetadataDB, MetadataStore

log = Logger()


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


class ReplicaService(service.MultiService):
    def __init__(self, config: ReplicaConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._db_pool = ThreadPool(minthreads=1, maxthreads=1, name="sqlite")
        self.db: MetadataDB | None = None
        self.library: Library | None = None
        self.leadership: Leadership | None = None

    def startService(self) -> None:
        config = self.config
        prepare_data_dir(config)
        shutil.rmtree(config.data_dir / "tmp", ignore_errors=True)
        (config.data_dir / "tmp").mkdir()
        # Start-up runs before the reactor does: the blocking recovery below delays nothing.
        self.db = db = MetadataDB(config.data_dir / "metadata.sqlite3", config.node_id)
        epoch = int(db.get_meta("epoch") or 1)
        db.set_meta("epoch", str(epoch))
        db.begin_leading(epoch)
        chunks = ChunkStore(config.data_dir / "chunks")
        temps, orphans = chunks.clean(db.live_chunk_names())
        log.info(
            "replica {node_id} starting: distpotify {version}, data dir {data_dir},"
            " head {head}, removed {temps} temp and {orphans} orphan chunk files",
            node_id=config.node_id, version=__version__, data_dir=str(config.data_dir),
            head=db.head().encode(), temps=temps, orphans=orphans,
        )
        self._db_pool.start()
        store = MetadataStore(db, partial(deferToThreadPool, self.reactor, self._db_pool))
        self.leadership = LoneLeader(config.node_id, config.http_url, epoch)
        self.library = Library(
            store, chunks, deferToThread, self.reactor, self.leadership,
            config.chunk_size,
        )
        api = PublicAPI(self.library, self.status)
        site = ReplicaSite(
            ReplicaRoot(config.node_id, api.app.resource()),
            node_id=config.node_id, max_body=config.max_upload,
            spool_dir=config.data_dir / "tmp", clock=self.reactor,
        )
        http = internet.TCPServer(config.http_port, site, interface=config.host)
        http.setServiceParent(self)
        try:
            super().startService()
        except CannotListenError as e:
            raise SystemExit(
                f"distpotify: cannot listen on {config.host}:{config.http_port}: {e.socketError}"
            ) from None
        log.info("replica {node_id} serving HTTP on {host}:{port} as {url}",
                 node_id=config.node_id, host=config.host, port=config.http_port,
                 url=config.http_url)

    def stopService(self) -> Deferred[None] | None:
        d = super().stopService()

        def close(_: object) -> None:
            self._db_pool.stop()
            if self.db is not None:
                self.db.close()
            log.info("replica {node_id} stopped", node_id=self.config.node_id)

        if d is None:
            close(None)
            return None
        return d.addCallback(close)

    async def status(self) -> dict[str, Any]:
        assert self.library is not None and self.leadership is not None
        head = await self.library.store.run(MetadataDB.head)
        return {
            "node_id": self.config.node_id,
            **self.leadership.status(),
            "head": head.as_list(),
            "http": self.config.http_url,
            "peers": [],
            "sync": {"phase": "DONE", "chunks_done": 0, "chunks_total": 0,
                     "snapshots_fetched": 0},
            "version": __version__,
            "pid": os.getpid(),
        }

