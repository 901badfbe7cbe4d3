"""The cluster-internal API under /sync/ (the proxy never forwards it): pushed ops in, ops
out for a new leader's catch-up, digests and rows out for anti-entropy, snapshots and the
end of a join, and the leader's word to a follower that it must take a new snapshot.

Same shape as public.py: a Klein app on a class, typed path segments (parsing.py), failures
answered by failures.py. Only signed requests reach it (trusted.py). A batch that is malformed
anywhere is refused whole (400), one larger than MAX_BATCH_BYTES too (413), and nothing of it
is applied.
"""
# test-case-name: tests.unit.test_receive, tests.unit.test_bootstrap, tests.unit.test_sync_api

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from distpotify.api.failures import answer_failure
from distpotify.api.parsing import int_arg, json_body, query, typed_routes
from distpotify.api.ranges import Representation, Span, serve
from distpotify.errors import BadRequest, BelowFloor, Conflict, NotFound, Unavailable
from distpotify.model import ENTITIES, Version
from distpotify.replication.bootstrap import JoinDesk
from distpotify.replication.client import MAX_BATCH_BYTES, op_from_json, op_text, row_to_json
from distpotify.replication.push import fit_batch
from distpotify.replication.receive import Receiver, validate_op
from distpotify.replication.snapshots import SnapshotBuilds
from distpotify.store.covers import CoverStore, valid_sha256
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner
from distpotify.wire import ACTIVE, SNAPSHOT_VERSION, encoded_json_response, json_response

MAX_KEYS = 1000
MAX_OPS = 1000  # ops per GET /sync/ops answer
# How long a snapshot request waits for a build before 503 (the joiner asks again, and waits
# for the same build): well inside a joiner's header timeout.
BUILD_WAIT = 2.0


class SyncAPI:
    app = typed_routes(Klein())

    def __init__(
        self,
        store: MetadataStore,
        receiver: Receiver,
        desk: JoinDesk,
        blocking: Runner,
        snapshots: SnapshotBuilds | None = None,
        resync: Callable[[str, Version], Awaitable[str]] | None = None,
        covers: CoverStore | None = None,
    ) -> None:
        self._store = store
        self._receiver = receiver
        self._desk = desk
        self._blocking = blocking
        self._snapshots = snapshots
        self._resync = resync
        self._covers = covers

    @app.handle_errors(Exception)
    def _failed(self, request: IRequest, failure: Failure) -> bytes:
        return answer_failure(request, failure)

    @app.route("/sync/ops", methods=["POST"])
    async def ops(self, request: Request) -> bytes:
        body = await json_body(request, self._blocking, MAX_BATCH_BYTES)
        source, raw = body.get("source"), body.get("ops")
        if not isinstance(raw, list) or (source is not None and not isinstance(source, str)):
            raise BadRequest("a batch is {\"source\": URL, \"ops\": [op, ...]}")
        try:
            ops = [op_from_json(value) for value in raw]
            for op in ops:
                validate_op(op)
        except (KeyError, TypeError, ValueError) as e:
            raise BadRequest(f"malformed op in batch: {e}") from None
        if not self._receiver.accepting():
            raise Unavailable("taking a snapshot: pushes are taken again once it is installed")
        head = await self._receiver.apply_ops(ops, source)
        return json_response(request, 200, {"cursor": head.encode(), "applied": len(ops)})

    @app.route("/sync/ops", methods=["GET"])
    async def ops_after(self, request: Request) -> bytes:
        """The ops this replica applied after version ``after``, oldest first, at most
        ``limit``: what a new leader lacks (its oplog holds every op it applied above its
        floor, pushed by any leader or written by itself; older ones are compacted away, so
        ``after`` below the floor is refused, 409 ``below_floor``, rather than answered with
        a gap)."""
        args = query(request)
        try:
            after = Version.decode(args.get("after", ""))
        except ValueError:
            raise BadRequest("after must be a version (EEEEEEEEEE-NNNNN-SSSSSSSSSSSS)") from None
        limit = int_arg(args, "limit", MAX_OPS, 1, MAX_OPS)
        ops = await self._store.run(MetadataDB.ops_after, after, limit)
        # Read after the ops: compaction only ever raises the floor, so a floor still at or
        # below ``after`` now was so when the ops were read, and none past ``after`` was gone.
        floor = await self._store.run(MetadataDB.oplog_floor)
        if after < floor:
            raise BelowFloor(
                f"the ops after {after.encode()} are no longer all kept here (oplog floor"
                f" {floor.encode()}): reconcile by anti-entropy instead",
                after=after.encode(), floor=floor.encode())
        head = await self._store.run(MetadataDB.head)
        # At most MAX_BATCH_BYTES of ops, as a push batch (at least one op): a play queue's op
        # is up to 410 KB, and 1,000 of them made an answer the puller's 5 s could not
        # fetch. The puller asks again from the last op it got.
        texts = [op_text(op) for op in ops]
        kept = texts[:len(fit_batch(ops, "", MAX_BATCH_BYTES, texts))]
        body = f'{{"ops":[{",".join(kept)}],"head":{json.dumps(head.encode())}}}'
        return encoded_json_response(request, 200, body.encode())

    @app.route("/sync/digest", methods=["GET"])
    async def digest(self, request: Request) -> bytes:
        buckets = await self._store.run(MetadataDB.digest)
        return json_response(request, 200, {"buckets": buckets})

    @app.route("/sync/digest/<bucket:bucket>", methods=["GET"])
    async def bucket(self, request: Request, bucket: int) -> bytes:
        rows = await self._store.run(MetadataDB.bucket_rows, bucket)
        return json_response(request, 200, {"rows": [list(row) for row in rows]})

    @app.route("/sync/rows", methods=["GET"])
    async def rows(self, request: Request) -> bytes:
        keys = []
        for raw in (request.args or {}).get(b"key", [])[:MAX_KEYS + 1]:
            entity, _, key = raw.decode("utf-8", "replace").partition(":")
            if entity not in ENTITIES or not ENTITIES[entity].valid_key(key):
                raise BadRequest(f"bad row key {raw!r}: expected ENTITY:KEY")
            keys.append((entity, key))
        if len(keys) > MAX_KEYS:
            raise BadRequest(f"at most {MAX_KEYS} keys per request")
        found = await self._store.run(MetadataDB.rows, keys)
        return json_response(request, 200, {"rows": [row_to_json(row) for row in found]})

    @app.route("/sync/snapshot", methods=["GET"])
    async def snapshot(self, request: Request) -> bytes:
        """A consistent copy of the database (SQLite online backup), gzip-compressed, shared
        by the joiners that ask while it is fresh, tagged with the version it contains."""
        if self._snapshots is None:
            raise NotFound("no snapshots here")
        try:
            build = await self._snapshots.acquire(BUILD_WAIT)
        except RuntimeError as e:
            raise Unavailable(str(e)) from None
        if build is None:
            error = Unavailable("a snapshot is being built; ask again shortly")
            error.headers["Retry-After"] = "1"
            raise error
        try:
            assert build.version is not None
            request.setHeader(SNAPSHOT_VERSION, build.version.encode().encode())
            return await serve(
                request, [Span(build.path, 0, build.size)],
                Representation(build.size, f"snapshot-{build.version.encode()}",
                               "application/gzip"),
            )
        finally:
            self._snapshots.release(build)

    @app.route("/sync/covers/<sha256>", methods=["GET"])
    async def cover(self, request: Request, sha256: str) -> bytes:
        """A cover picture's bytes, for a replica that lacks them (replication/covers.py);
        404 unless it is here and whole. The fetcher checks the SHA-256 again."""
        if self._covers is None or not valid_sha256(sha256):
            raise NotFound(f"no cover {sha256[:64]}")
        data = await self._blocking(self._covers.read, sha256)
        if data is None:
            raise NotFound(f"no cover {sha256}")
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return bytes(data)

    @app.route("/sync/done", methods=["POST"])
    async def done(self, request: Request) -> bytes:
        body = await json_body(request, self._blocking)
        node_id, head, missing = body.get("node_id"), body.get("head"), body.get("missing")
        if not isinstance(node_id, int) or not isinstance(missing, int) or not isinstance(
            head, str
        ):
            raise BadRequest("expected {\"node_id\": N, \"head\": VERSION, \"missing\": N}")
        try:
            version = Version.decode(head)
        except ValueError:
            raise BadRequest(f"bad head {head!r}") from None
        floor = await self._store.run(MetadataDB.oplog_floor)
        self._desk.done(node_id, version, missing, floor)
        return json_response(request, 200, {"state": ACTIVE})

    @app.route("/sync/resync", methods=["POST"])
    async def resync(self, request: Request) -> bytes:
        """The leader cannot catch this replica up by cursor any more: it takes a new
        snapshot (docs/architecture.md section 5.2)."""
        body = await json_body(request, self._blocking)
        source, cursor = body.get("source"), body.get("cursor")
        if not isinstance(source, str) or not isinstance(cursor, str):
            raise BadRequest("expected {\"source\": URL, \"cursor\": VERSION}")
        try:
            version = Version.decode(cursor)
        except ValueError:
            raise BadRequest(f"bad cursor {cursor!r}") from None
        if self._resync is None:
            raise Conflict("this replica takes no resync")
        phase = await self._resync(source, version)
        return json_response(request, 200, {"phase": phase})
