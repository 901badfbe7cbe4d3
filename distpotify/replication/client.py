"""The HTTP client replicas use to talk to each other: /sync/* and chunk bytes.

One persistent connection pool; every request and every body read is bounded by a timeout,
so a dead or paused peer costs a timeout, never a hang.
"""
# test-case-name: tests.integration.test_replication

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from treq.client import HTTPClient
from treq.response import _Response
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from distpotify.model import Op, Row, Version


class PeerError(Exception):
    """A peer answered something we cannot use: wrong status, garbage, wrong bytes."""


def op_from_json(value: Any) -> Op:
    """An op from its JSON form; ValueError (or KeyError/TypeError) when malformed."""
    if not isinstance(value, dict) or not isinstance(value.get("fields"), dict):
        raise ValueError("an op is an object with version, entity, key and fields")
    return Op(Version.decode(value["version"]), str(value["entity"]), str(value["key"]),
              value["fields"])


def row_to_json(row: Row) -> dict[str, Any]:
    return {
        "entity": row.entity, "key": row.key, "fields": dict(row.fields),
        "versions": {name: v.encode() for name, v in row.versions.items()},
    }


def row_from_json(value: Any) -> Row:
    if not isinstance(value, dict) or not isinstance(value.get("versions"), dict):
        raise ValueError("a row is an object with entity, key, fields and versions")
    fields, versions = value["fields"], value["versions"]
    if not isinstance(fields, dict) or set(fields) != set(versions):
        raise ValueError("a row's fields and versions must name the same fields")
    return Row(str(value["entity"]), str(value["key"]), fields,
               {name: Version.decode(text) for name, text in versions.items()})


def make_http_client(reactor: Any) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    pool.cachedConnectionTimeout = 30
    return HTTPClient(Agent(reactor, pool=pool, connectTimeout=2.0))


class PeerClient:
    """Calls to another replica's HTTP API, given its base URL (``http://host:port``)."""

    def __init__(self, http: HTTPClient, clock: IReactorTime, timeout: float = 5.0) -> None:
        self._http = http
        self._clock = clock
        self.timeout = timeout
        self.bytes_received = 0

    async def _json(self, d: Deferred[_Response], what: str) -> Any:
        d.addTimeout(self.timeout, self._clock)
        response = await d
        body: Deferred[bytes] = response.content()
        body.addTimeout(self.timeout, self._clock)
        data = await body
        self.bytes_received += len(data)
        if response.code != 200:
            raise PeerError(f"{what}: HTTP {response.code}: {data[:200]!r}")
        try:
            return json.loads(data)
        except ValueError:
            raise PeerError(f"{what}: not JSON") from None

    async def push_ops(self, base: str, source: str, ops: Sequence[Op]) -> Version:
        """Send ops to a follower; its cursor (newest version it holds) after applying."""
        body = json.dumps({"source": source, "ops": [op.to_json() for op in ops]}).encode()
        answer = await self._json(
            self._http.post(f"{base}/sync/ops", data=body,
                            headers=Headers({b"Content-Type": [b"application/json"]})),
            f"push to {base}",
        )
        try:
            return Version.decode(answer["cursor"])
        except (KeyError, TypeError, ValueError):
            raise PeerError(f"push to {base}: no cursor in the answer") from None

    async def digest(self, base: str) -> list[str]:
        answer = await self._json(self._http.get(f"{base}/sync/digest"), f"digest of {base}")
        buckets = answer.get("buckets") if isinstance(answer, dict) else None
        if not isinstance(buckets, list) or not all(isinstance(b, str) for b in buckets):
            raise PeerError(f"digest of {base}: malformed")
        return buckets

    async def bucket(self, base: str, bucket: int) -> list[tuple[str, str, str]]:
        answer = await self._json(self._http.get(f"{base}/sync/digest/{bucket}"),
                                  f"bucket {bucket} of {base}")
        rows = answer.get("rows") if isinstance(answer, dict) else None
        if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) == 3 and all(isinstance(x, str) for x in r)
            for r in rows
        ):
            raise PeerError(f"bucket {bucket} of {base}: malformed")
        return [(r[0], r[1], r[2]) for r in rows]

    async def rows(self, base: str, keys: Iterable[tuple[str, str]]) -> list[Row]:
        query = "&".join(f"key={quote(f'{entity}:{key}', safe='')}" for entity, key in keys)
        answer = await self._json(self._http.get(f"{base}/sync/rows?{query}"), f"rows of {base}")
        try:
            return [row_from_json(value) for value in answer["rows"]]
        except (KeyError, TypeError, ValueError) as e:
            raise PeerError(f"rows of {base}: malformed: {e}") from None

    async def snapshot(self, base: str, path: str, dest: Path) -> Version:
        """Stream the peer's snapshot to ``dest``; the version it contains."""
        d = self._http.get(f"{base}{path}")
        d.addTimeout(self.timeout, self._clock)
        response = await d
        tag = response.headers.getRawHeaders(b"x-snapshot-version", [b""])[0].decode()
        if response.code != 200:
            await response.content()
            raise PeerError(f"snapshot from {base}: HTTP {response.code}")
        with open(dest, "wb") as out:

            def write(data: bytes) -> None:
                out.write(data)

            # No overall timeout: a large snapshot takes what it takes; a stalled one is cut
            # by the connection's own loss.
            await response.collect(write)
        self.bytes_received += dest.stat().st_size
        try:
            return Version.decode(tag)
        except ValueError:
            raise PeerError(f"snapshot from {base}: no version tag") from None

    async def done(self, base: str, node_id: int, head: Version, missing: int) -> None:
        """Tell the leader this replica holds everything (POST /sync/done)."""
        body = json.dumps({"node_id": node_id, "head": head.encode(), "missing": missing})
        await self._json(
            self._http.post(f"{base}/sync/done", data=body.encode(),
                            headers=Headers({b"Content-Type": [b"application/json"]})),
            f"join done at {base}",
        )

    async def stream_range(
        self, base: str, song_id: str, start: int, end: int, song_sha256: str,
        write: Callable[[bytes], None],
    ) -> None:
        """Stream bytes ``start..end`` (inclusive) of a song to ``write``; PeerError unless the
        peer sends exactly that range of the song whose ETag is ``song_sha256``."""
        headers: dict[str | bytes, str | bytes] = {
            "Range": f"bytes={start}-{end}", "If-Range": f'"{song_sha256}"'}
        d = self._http.get(f"{base}/songs/{song_id}/stream", headers=headers)
        d.addTimeout(self.timeout, self._clock)
        response = await d
        content_range = response.headers.getRawHeaders(b"content-range", [b""])[0].decode()
        if response.code != 206 or not content_range.startswith(f"bytes {start}-{end}/"):
            response.deliverBody(_Discard())
            raise PeerError(f"song {song_id} from {base}: HTTP {response.code} {content_range}")
        await response.collect(write)

    async def chunk(
        self, base: str, song_id: str, idx: int, offset: int, sha256: str,
        write: Callable[[bytes], None],
    ) -> None:
        """Stream chunk bytes from ``offset`` to ``write``; PeerError unless the peer sends
        exactly that part of the chunk whose ETag is ``sha256``."""
        headers: dict[str | bytes, str | bytes] = {"If-Range": f'"{sha256}"'}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        d = self._http.get(f"{base}/songs/{song_id}/chunks/{idx}", headers=headers)
        d.addTimeout(self.timeout, self._clock)
        response = await d
        etag = response.headers.getRawHeaders(b"etag", [b""])[0].decode("latin-1")
        expected = 206 if offset else 200
        if response.code != expected or etag != f'"{sha256}"':
            response.deliverBody(_Discard())
            raise PeerError(f"chunk {song_id}/{idx} from {base}: HTTP {response.code} {etag}")
        if offset:
            content_range = response.headers.getRawHeaders(b"content-range", [b""])[0]
            if not content_range.startswith(f"bytes {offset}-".encode()):
                raise PeerError(f"chunk {song_id}/{idx} from {base}: range {content_range!r}")
        body: Deferred[None] = response.collect(write)
        body.addTimeout(self.timeout, self._clock)
        await body


class _Discard:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
