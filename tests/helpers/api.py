"""An in-memory replica API for unit tests: StubTreq over the real resource, no threads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from distpotify.api.public import PublicAPI, ReplicaRoot
from distpotify.api.sync import SyncAPI
from distpotify.errors import NotLeader
from distpotify.leadership import Leadership
from distpotify.library import Library
from distpotify.replication.bootstrap import JoinDesk
from distpotify.replication.client import PeerClient
from distpotify.replication.fetch import ChunkFetcher
from distpotify.replication.receive import Receiver
from distpotify.replication.repair import ChunkGuard
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import MetadataDB, MetadataStore
from tests.helpers.replica import Response

T = TypeVar("T")


def run_now(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    """A runner that calls at once on this thread: the store and file work become synchronous."""
    return defer.execute(f, *args, **kwargs)


def result_of(d: Deferred[T]) -> T:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    if isinstance(results[0], BaseException) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]


# An in-memory replica answers as a real one does (tests/helpers/replica.py).
Answer = Response


class LoneLeader:
    """Always the leader of epoch 1."""

    epoch = 1

    def require_leader(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"role": "leader", "state": "ACTIVE", "epoch": 1, "leader_id": 1,
                "leader_http": "http://127.0.0.1:8001"}


class NoLeader:
    """A follower that knows no leader: every write is refused."""

    epoch = 0

    def require_leader(self) -> None:
        raise NotLeader("no leader is known; retry shortly", leader_id=None, leader_http=None)

    def status(self) -> dict[str, Any]:
        return {"role": "follower", "state": "ACTIVE", "epoch": 0, "leader_id": None,
                "leader_http": None}


class InMemoryReplica:
    def __init__(
        self, root: Path, chunk_size: int = 16 * 1024, leadership: Leadership | None = None
    ) -> None:
        self.root = root
        self.chunk_size = chunk_size
        self.leadership = leadership
        self.clock = Clock()
        self.db = MetadataDB(self.root / "meta.sqlite3", node_id=1)
        self.db.begin_leading(1)
        self.chunks = ChunkStore(self.root / "chunks")
        self.library = Library(
            MetadataStore(self.db, run_now), self.chunks, run_now, self.clock,
            self.leadership or LoneLeader(), self.chunk_size,
        )
        # No peers: a missing or corrupt chunk cannot be repaired here, so it is a 503.
        client = PeerClient(HTTPClient(RequestTraversalAgent(Resource())), self.clock)
        self.fetcher = ChunkFetcher(client, self.chunks, run_now)
        self.guard = ChunkGuard(self.chunks, self.fetcher, run_now, lambda: [])
        self.receiver = Receiver(self.library.store, self.chunks, self.fetcher, run_now,
                                 lambda: [])
        api = PublicAPI(self.library, self.guard, self._status)
        self.desk = JoinDesk(node_id=1, leading=lambda: True, epoch=lambda: 1, clock=self.clock)
        (root / "tmp").mkdir(exist_ok=True)
        sync = SyncAPI(self.library.store, self.receiver, self.desk, run_now, root / "tmp")
        self.root = ReplicaRoot(1, api, sync.app.resource())
        self.treq = StubTreq(self.root)

    async def _status(self) -> dict[str, Any]:
        return {"node_id": 1, "head": self.db.head().as_list()}

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        url = "http://replica" + path
        d = self.treq.request(method, url, data=body, headers=headers or {})
        self.treq.flush()
        response = result_of(d)
        content = self.treq.content(response)
        self.treq.flush()
        return Answer(
            response.code,
            {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()},
            result_of(content),
        )

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.call("GET", path, headers=headers)

    def send_json(self, method: str, path: str, value: Any) -> Answer:
        return self.call(method, path, json.dumps(value).encode(),
                         {"Content-Type": "application/json"})

    def upload(self, data: bytes, content_type: str = "audio/wav", query: str = "") -> Answer:
        return self.call("POST", "/songs" + query, data, {"Content-Type": content_type})
