"""The cluster-internal API under /sync/ (the proxy never forwards it): pushed ops in, ops
out for a new leader's catch-up, digests and rows out for anti-entropy.

Same shape as public.py: a Klein app on a class, typed path segments (parsing.py), failures
answered by failures.py. Only signed requests reach it (trusted.py). A batch that is malformed
anywhere is refused whole (400), one larger than MAX_BATCH_BYTES too (413), and nothing of it
is applied.
"""
# test-case-name: tests.unit.test_receive, tests.unit.test_bootstrap

from __future__ import annotations

import uuid
from pathlib import Path

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from distpotify.api.failures import answer_failure
from distpotify.api.parsing import int_arg, query, read_json, typed_routes
from distpotify.api.ranges import Representation, Span, serve
from distpotify.errors import BadRequest, Unavailable
from distpotify.model import ENTITIES, Version
from distpotify.replication.bootstrap import JoinDesk, pack_snapshot
from distpotify.replication.client import MAX_BATCH_BYTES, op_from_json, row_to_json
from distpotify.replication.receive import Receiver, validate_op
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner
from distpotify.wire import ACTIVE, SNAPSHOT_VERSION, json_response

MAX_KEYS = 1000
MAX_OPS = 1000  # ops per GET /sync/ops answer


class SyncAPI:
    app = typed_routes(Klein())

    def __init__(
        self,
        store: MetadataStore,
        receiver: Receiver,
        desk: JoinDesk,
        blocking: Runner,
        tmp_dir: Path,
    ) -> None:
        self._store = store
        self._receiver = receiver
        self._desk = desk
        self._blocking = blocking
        self._tmp = tmp_dir

    @app.handle_errors(Exception)
    def _failed(self, request: IRequest, failure: Failure) -> bytes:
        return answer_failure(request, failure)

    @app.route("/sync/ops", methods=["POST"])
    async def ops(self, request: Request) -> bytes:
        body = read_json(request, MAX_BATCH_BYTES)
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
        ``limit``: what a new leader lacks (its oplog holds every op it applied, pushed by any
        leader or written by itself)."""
        args = query(request)
        try:
            after = Version.decode(args.get("after", ""))
        except ValueError:
            raise BadRequest("after must be a version (EEEEEEEEEE-NNNNN-SSSSSSSSSSSS)") from None
        limit = int_arg(args, "limit", MAX_OPS, 1, MAX_OPS)
        ops = await self._store.run(MetadataDB.ops_after, after, limit)
        head = await self._store.run(MetadataDB.head)
        return json_response(request, 200, {"ops": [op.to_json() for op in ops],
                                            "head": head.encode()})

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
        """A consistent copy of the database (SQLite online backup), gzip-compressed, built
        on disk and streamed, tagged with the version it contains."""
        copy = self._tmp / f"snapshot-{uuid.uuid4()}.sqlite3"
        packed = copy.with_name(copy.name + ".gz")
        try:
            version = await self._store.run(MetadataDB.backup_to, copy)
            await self._blocking(pack_snapshot, copy, packed)
            request.setHeader(SNAPSHOT_VERSION, version.encode().encode())
            size = packed.stat().st_size
            return await serve(
                request, [Span(packed, 0, size)],
                Representation(size, f"snapshot-{version.encode()}", "application/gzip"),
            )
        finally:
            copy.unlink(missing_ok=True)
            packed.unlink(missing_ok=True)

    @app.route("/sync/done", methods=["POST"])
    async def done(self, request: Request) -> bytes:
        body = read_json(request)
        node_id, head, missing = body.get("node_id"), body.get("head"), body.get("missing")
        if not isinstance(node_id, int) or not isinstance(missing, int) or not isinstance(
            head, str
        ):
            raise BadRequest("expected {\"node_id\": N, \"head\": VERSION, \"missing\": N}")
        try:
            version = Version.decode(head)
        except ValueError:
            raise BadRequest(f"bad head {head!r}") from None
        self._desk.done(node_id, version, missing)
        return json_response(request, 200, {"state": ACTIVE})
