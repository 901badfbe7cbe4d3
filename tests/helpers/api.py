"""An in-memory replica for unit tests: the graph build_replica wires for twistd, driven
through StubTreq, on a Clock, with no thread and no port."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from hyperlink import EncodedURL
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.client import URI
from twisted.web.resource import Resource

from distpotify.auth.passwords import HashParams
from distpotify.config import ReplicaConfig
from distpotify.errors import NotLeader
from distpotify.keys import ClusterKeys
from distpotify.leadership import Leadership
from distpotify.service import build_replica
from distpotify.signing import body_sha256, sign
from tests.helpers.replica import Response

# The cluster key of every in-memory replica unless it is given another: one cluster.
CLUSTER_KEYS = ClusterKeys.generate()
# argon2id at its cheapest: a login costs microseconds, not the production 137 ms.
CHEAP_HASHES = HashParams(time_cost=1, memory_cost=8, parallelism=1)

T = TypeVar("T")



def request_target(url: str) -> bytes:
    """What goes on the request line for ``url`` when treq sends it (StubTreq here): treq
    normalises a URL with hyperlink, and the Agent sends its path and query."""
    normalised = EncodedURL.from_text(url).to_uri().to_text().encode("ascii")
    target: bytes = URI.fromBytes(normalised).originForm
    return target

def site_treq(root: Any) -> StubTreq:
    """A StubTreq whose server side parses bodies as the replica's site does: treq's testing
    Site parses form and multipart bodies into ``request.args`` (twisted.web's default),
    where ReplicaSite does not (``parsePOSTFormSubmission=False``), which made a multipart
    upload's fields look like query arguments to the API under test."""
    stub = StubTreq(root)
    stub._agent._serverFactory._parsePOSTFormSubmission = False
    return stub


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
    is_leader = True

    def require_leader(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"role": "leader", "state": "ACTIVE", "epoch": 1, "leader_id": 1,
                "leader_http": "http://127.0.0.1:8001"}


class NoLeader:
    """A follower that knows no leader: every write is refused."""

    epoch = 0
    is_leader = False

    def require_leader(self) -> None:
        raise NotLeader("no leader is known; retry shortly", leader_id=None, leader_http=None)

    def status(self) -> dict[str, Any]:
        return {"role": "follower", "state": "ACTIVE", "epoch": 0, "leader_id": None,
                "leader_http": None}


class InMemoryReplica:
    """A replica as build_replica makes it, never started: the store and blocking work run at
    once on this thread, peers exist only as an in-memory agent that answers 404 (so a missing or
    corrupt chunk cannot be repaired here: 503), ``leadership`` (by default LoneLeader)
    decides who writes, and it has founded its cluster, so it serves and takes pushes. Its
    cluster key is ``keys`` (CLUSTER_KEYS by default); ``call`` signs with it unless told not
    to, as another replica of the cluster would. ``auth`` is its ``--auth`` (accounts
    enforced): off unless a test of accounts says on, since most tests are about other
    things (as processes.AUTH_OFF for real processes); its password hashes are cheap
    (CHEAP_HASHES)."""

    def __init__(
        self, root: Path, chunk_size: int = 16 * 1024, leadership: Leadership | None = None,
        keys: ClusterKeys = CLUSTER_KEYS, auth: bool = False, metrics_token: str | None = None,
        admin_password: str | None = None, subsonic_token_auth: bool = True,
    ) -> None:
        self.chunk_size = chunk_size
        self.clock = Clock()
        self.keys = keys
        self.service = build_replica(
            ReplicaConfig(node_id=1, data_dir=root, chunk_size=chunk_size, cluster_keys=keys,
                          auth=auth, metrics_token=metrics_token,
                          admin_password=admin_password,
                          subsonic_token_auth=subsonic_token_auth),
            self.clock,
            run_db=run_now, blocking=run_now,
            agent=RequestTraversalAgent(Resource()),
            leadership=leadership or LoneLeader(),
            password_params=CHEAP_HASHES,
        )
        self.db = self.service.db
        self.db.begin_leading(1)
        self.library = self.service.library
        self.chunks = self.library.chunks
        replication = self.service.replication
        self.fetcher, self.guard = replication.fetcher, replication.guard
        self.receiver, self.desk = replication.receiver, replication.desk
        result_of(Deferred.fromCoroutine(replication.become_active()))
        self.accounts = self.service.accounts
        assert self.accounts is not None
        result_of(Deferred.fromCoroutine(self.accounts.started()))
        self.root = self.service.resource
        self.treq = site_treq(self.root)

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, signed: bool = True,
             cookies: bool = True, tls: bool = False) -> Answer:
        """``method path`` answered by the replica; signed with its cluster key unless
        ``signed`` is false (a stranger's request). Without ``cookies``, by a client that
        sends none of the cookies earlier answers set (only those in ``headers``); with
        ``tls``, over https."""
        url = ("https" if tls else "http") + "://replica" + path
        headers = dict(headers or {})
        if signed:
            signature = sign(self.keys, method.encode(), request_target(url),
                             body_sha256(body or b""), self.clock.seconds())
            headers.update({k.decode(): v.decode() for k, v in signature.items()})
        client = self.treq if cookies else site_treq(self.root)
        d = client.request(method, url, data=body, headers=headers)
        client.flush()
        response = result_of(d)
        content = client.content(response)
        client.flush()
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
