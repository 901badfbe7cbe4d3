"""Applying what other replicas send (pushed ops, rows pulled by anti-entropy) to this one.

Chunk bytes come first: every chunk an op makes live is fetched and verified before the op is
applied, so no replica lists a chunk it cannot serve; chunks the ops tombstone are deleted
after the ops are durable. Chunks the peers say they do not hold (deleted since the ops were
written) are settled by the source's current rows, merged into the same apply. Pulled rows
that were purged here are not taken back. The join's clean-up of unlisted chunk files waits
for the applies in flight, whose chunk files have no row yet.
"""
# test-case-name: tests.integration.test_replication

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.logger import Logger

from distpotify.errors import InsufficientStorage, Unavailable
from distpotify.failpoints import NONE, Failpoints
from distpotify.model import ENTITIES, Op, Row, Version
from distpotify.replication.client import KEYS_PER_REQUEST, PeerClient
from distpotify.replication.fetch import ChunkFetcher, ChunkRef, Fetched, sources_for
from distpotify.store.chunks import ChunkStore
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner, row_ops

log = Logger()
T = TypeVar("T")

# Chunk downloads an apply keeps going (the fetcher's own limit: its slots are shared with
# read repair and the other applies); no new one starts once one found the disk full.
FETCH_WORKERS = 8

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def validate_op(op: Op) -> None:
    """ValueError unless ``op`` names a known entity, a well-formed key and known fields."""
    entity = ENTITIES.get(op.entity)
    if entity is None:
        raise ValueError(f"unknown entity {op.entity!r}")
    entity.split_key(op.key)
    if not entity.valid_key(op.key):
        raise ValueError(f"malformed {op.entity} key {op.key!r}")
    unknown = set(op.fields) - set(entity.fields)
    if unknown or not op.fields:
        raise ValueError(f"{op.entity} op with unknown or no fields: {sorted(unknown)}")
    for name, value in op.fields.items():
        if value is not None and type(value) not in (str, int, float):
            raise ValueError(f"{op.entity}.{name} has a value of type {type(value).__name__}")
    # The fields other code relies on: a chunk's size and digest, the purge watermark.
    fields = op.fields
    if op.entity == "chunks":
        size, sha256 = fields.get("size"), fields.get("sha256")
        if "size" in fields and (type(size) is not int or size < 0):
            raise ValueError(f"chunks.size must be a non-negative integer, got {size!r}")
        if "sha256" in fields and not (isinstance(sha256, str) and _SHA256.match(sha256)):
            raise ValueError(f"chunks.sha256 must be 64 hex digits, got {sha256!r}")
    if "cover_sha256" in fields:  # becomes a file name (store/covers.py)
        cover = fields["cover_sha256"]
        if cover is not None and not (isinstance(cover, str) and _SHA256.fullmatch(cover)):
            raise ValueError(f"{op.entity}.cover_sha256 must be 64 hex digits, got {cover!r}")
    if op.entity == "purges" and "through" in fields:
        through = fields["through"]
        if not isinstance(through, str) or Version.decode(through) >= op.version:
            raise ValueError(f"purges.through must be a version older than its op: {through!r}")
    carried = op.outcome_op()
    if carried is not None:  # a keyed write's key row: checked as the op it would be
        if op.entity == carried.entity:
            raise ValueError("an idempotency op carries no outcome")
        validate_op(carried)


def _chunk_ref(key: str, fields: dict[str, object]) -> ChunkRef:
    song_id, idx = key.split("/")
    size, sha256 = fields["size"], fields["sha256"]
    assert isinstance(size, int) and isinstance(sha256, str)
    return ChunkRef(song_id, int(idx), size, sha256)


def _chunks_made_live(db: MetadataDB, ops: Sequence[Op]) -> list[ChunkRef]:
    """Chunks whose newest 'deleted' write among ``ops`` and the local row is a creation
    (database thread)."""
    newest: dict[str, Op] = {}
    for op in ops:
        is_newest = op.key not in newest or op.version > newest[op.key].version
        if op.entity == "chunks" and "deleted" in op.fields and is_newest:
            newest[op.key] = op
    refs = []
    for key, op in newest.items():
        if op.fields["deleted"] or "sha256" not in op.fields or "size" not in op.fields:
            continue
        local = db.get_row("chunks", key)
        if local is not None and local.versions.get("deleted", Version(0, 0, 0)) > op.version:
            continue
        refs.append(_chunk_ref(key, dict(op.fields)))
    return refs


def _apply_with_head(db: MetadataDB, ops: Sequence[Op]) -> tuple[int, Version]:
    """Apply ``ops`` durably (database thread): how many changed a row, and the new head."""
    return db.apply_ops(ops), db.head()


class ApplyGate:
    """Applies share it; the chunk clean-up takes it alone, once no apply is in flight, and
    the applies that arrive meanwhile wait for it to end."""

    def __init__(self) -> None:
        self._applying = 0
        self._cleaning = False
        self._applies_waiting: list[Deferred[None]] = []
        self._clean_waiting: Deferred[None] | None = None

    async def enter(self) -> None:
        if self._cleaning:
            waiting: Deferred[None] = Deferred()
            self._applies_waiting.append(waiting)
            await waiting
        self._applying += 1

    def leave(self) -> None:
        self._applying -= 1
        if not self._applying and self._clean_waiting is not None:
            waiting, self._clean_waiting = self._clean_waiting, None
            _wake(waiting)

    async def alone(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` with no apply in flight."""
        if self._cleaning:
            raise RuntimeError("one clean-up at a time")
        self._cleaning = True
        try:
            if self._applying:
                self._clean_waiting = Deferred()
                await self._clean_waiting
            return await work()
        finally:
            self._cleaning = False
            self._clean_waiting = None
            waiting, self._applies_waiting = self._applies_waiting, []
            for each in waiting:
                _wake(each)


def _wake(waiting: Deferred[None]) -> None:
    if not waiting.called:  # a waiter cancelled with its request has gone
        waiting.callback(None)


class Receiver:
    def __init__(
        self,
        store: MetadataStore,
        chunks: ChunkStore,
        fetcher: ChunkFetcher,
        client: PeerClient,
        blocking: Runner,
        peers: Callable[[], Sequence[str]],
        accepting: Callable[[], bool] = lambda: True,
        failpoints: Failpoints = NONE,
        on_applied: Callable[[Sequence[Op]], object] = lambda ops: None,
        covers: Callable[[Sequence[Op], Sequence[str]], Awaitable[object]] | None = None,
    ) -> None:
        self._store = store
        self._chunks = chunks
        self._fetcher = fetcher
        self._client = client
        self._blocking = blocking
        self._peers = peers
        # False while a join fetches or installs its snapshot: ops applied before the install
        # would be wiped by it, yet the leader would count them as delivered.
        self.accepting = accepting
        self._failpoints = failpoints
        self._gate = ApplyGate()
        # Told of every batch once it is durable: reads waiting for a version (applied.py).
        self._on_applied = on_applied
        # Fetches the cover pictures a batch names before it is applied (replication/
        # covers.py); unlike a chunk, a cover it cannot get does not hold the batch back.
        self._covers = covers
        self.ops_applied = 0
        self.rows_fenced = 0

    async def clean_chunks(self) -> tuple[int, int]:
        """Remove temp files and chunk files that no live row names (the join's clean-up),
        while no apply is in flight: its chunks are fetched before its rows are written. The
        downloads still going, of an apply whose caller went away (a push timed out), keep
        their part files."""

        async def clean() -> tuple[int, int]:
            live = await self._store.run(MetadataDB.live_chunk_names)
            live |= self._fetcher.downloading()
            removed: tuple[int, int] = await self._blocking(self._chunks.clean, live)
            return removed

        return await self._gate.alone(clean)

    async def apply_ops(self, ops: Sequence[Op], source: str | None) -> Version:
        """Fetch the chunks ``ops`` need, apply them durably; the new head."""
        await self._gate.enter()
        try:
            return await self._apply_ops(ops, source)
        finally:
            self._gate.leave()

    async def _apply_ops(self, ops: Sequence[Op], source: str | None) -> Version:
        ops = list(ops)
        sources = sources_for(source, self._peers)
        needed, unfetched = await self._fetch_chunks(ops, sources, {})
        if Fetched.NOT_HELD in unfetched.values():
            # The chunks were deleted since these ops were written (the delete is in a later
            # batch), or the peers have not received them yet: the source's current rows
            # tell which. Merged with the ops, in any order, they give the rows as they are
            # now (docs/architecture.md 2.4): chunks deleted since need no bytes.
            newer = await self._current_rows(unfetched, ops, source)
            if newer:
                ops += newer
                needed, unfetched = await self._fetch_chunks(ops, sources, unfetched)
        if Fetched.NO_ROOM in unfetched.values():
            raise InsufficientStorage(
                f"the disk is full: {len(unfetched)} of {needed} chunks could not be fetched"
                " and stored; nothing applied")
        if unfetched:
            raise Unavailable(
                f"{len(unfetched)} of {needed} chunks could not be fetched; nothing applied")
        self._failpoints.hit("apply.chunks_fetched")
        if self._covers is not None:
            await self._covers(ops, sources)
        changed, head = await self._store.run(_apply_with_head, ops)
        self.ops_applied += changed
        self._on_applied(ops)
        await self._drop_deleted_chunks(ops)
        self._failpoints.hit("apply.committed")
        return head

    async def _fetch_chunks(self, ops: Sequence[Op], sources: list[str],
                            tried: dict[ChunkRef, Fetched]) -> tuple[int, dict[ChunkRef, Fetched]]:
        """Fetch the chunks ``ops`` make live that are not here, except those ``tried``
        already in this apply (they count as failed again); how many were needed, and the
        outcome of each that is still not here."""
        # Most batches make no chunk live (playlists, edits): no thread is asked then.
        creates = any(op.entity == "chunks" and "deleted" in op.fields for op in ops)
        live = await self._store.run(_chunks_made_live, ops) if creates else []
        refs: list[ChunkRef] = await self._blocking(self._absent, live) if live else []
        unfetched = {ref: tried[ref] for ref in refs if ref in tried}
        todo = [ref for ref in refs if ref not in tried]
        if todo:
            outcomes = await self._fetch_each(todo, sources)
            unfetched.update((ref, outcome) for ref, outcome in outcomes.items()
                             if outcome is not Fetched.DONE)
            if len(unfetched) < len(refs):
                await self._fetcher.sync()
        return len(refs), unfetched

    async def _current_rows(self, unfetched: dict[ChunkRef, Fetched], ops: Sequence[Op],
                            source: str | None) -> list[Op]:
        """The source's current rows of the songs with a chunk no peer holds, and of those
        songs' chunks among ``ops``, as ops; none when the source cannot say (it is not a
        known peer, it cannot be reached, or its answer is malformed)."""
        if source is None or source not in self._peers():
            return []
        songs = {ref.song_id for ref, outcome in unfetched.items()
                 if outcome is Fetched.NOT_HELD}
        keys = [("songs", song_id) for song_id in sorted(songs)]
        keys += sorted({("chunks", op.key) for op in ops
                        if op.entity == "chunks" and op.key.split("/")[0] in songs})
        try:
            newer = await self._checked_ops(await self._rows_of(source, keys), source)
        except CancelledError:
            raise
        except Exception as e:  # unreachable, timed out, an error answer, malformed rows
            log.info("the current rows of {n} song(s) from {source} could not be had: {error}",
                     n=len(songs), source=source, error=e)
            return []
        log.info("{n} chunk(s) not fetched, some held by no peer: merging {source}'s current"
                 " rows of {songs} song(s) into the apply", n=len(unfetched), source=source,
                 songs=len(songs))
        return newer

    async def settle(self, names: Sequence[str], source: str) -> int:
        """Merge ``source``'s current rows of the chunks ``names`` (``<song id>_<idx>``, the
        chunk files' names) and of their songs: what a join does with chunks of its snapshot
        that no peer serves. Deleted since the snapshot was taken, they need no bytes; and
        the op that deleted them may be older than the snapshot's head (written by a leader
        that died before replicating it, and brought back after by anti-entropy), so no push
        will bring it to the joiner, and its own anti-entropy waits for the join to end.
        How many rows ``source`` gave."""
        chunks = sorted({(song_id, idx) for song_id, _, idx in
                         (name.rpartition("_") for name in names)})
        keys = [("songs", song_id) for song_id in sorted({song for song, _ in chunks})]
        keys += [("chunks", f"{song_id}/{idx}") for song_id, idx in chunks]
        rows = await self._rows_of(source, keys)
        ops = await self._checked_ops(rows, source)
        if ops:
            await self.apply_ops(ops, source)
        return len(rows)

    async def _rows_of(self, source: str, keys: Sequence[tuple[str, str]]) -> list[Row]:
        """``source``'s current rows of ``keys`` (entity, key), asked KEYS_PER_REQUEST at a
        time; a row it sends unasked is dropped."""
        asked = set(keys)
        rows: list[Row] = []
        for start in range(0, len(keys), KEYS_PER_REQUEST):
            found = await self._client.rows(source, keys[start:start + KEYS_PER_REQUEST])
            rows += [row for row in found if (row.entity, row.key) in asked]
        return rows

    def _absent(self, refs: list[ChunkRef]) -> list[ChunkRef]:
        """The chunks whose files are not here (worker thread: one stat each)."""
        return [ref for ref in refs if not self._chunks.path(ref.song_id, ref.idx).exists()]

    async def apply_rows(self, rows: Sequence[Row], source: str | None) -> Version:
        """Rows pulled by anti-entropy: checked like a pushed batch, and refused whole; rows
        purged here stay purged (store/tombstones.py, ``purged_here``)."""
        return await self.apply_ops(await self._checked_ops(rows, source), source)

    async def _checked_ops(self, rows: Sequence[Row], source: str | None) -> list[Op]:
        """The ops of rows pulled from ``source``, but for the rows purged here; ValueError
        if one is malformed."""
        for op in (op for row in rows for op in row_ops(row)):
            try:
                validate_op(op)
            except ValueError as e:
                raise ValueError(f"malformed row from {source}: {e}") from None
        purged = await self._store.run(MetadataDB.purged_here, rows)
        if purged:
            self.rows_fenced += len(purged)
            log.warn("{n} rows from {source} were purged here; not taken back (such as"
                     " {example})", n=len(purged), source=source, example="/".join(min(purged)))
        return [op for row in rows if (row.entity, row.key) not in purged
                for op in row_ops(row)]

    async def _fetch_each(self, refs: Sequence[ChunkRef], sources: list[str]
                          ) -> dict[ChunkRef, Fetched]:
        """Each of ``refs`` fetched, FETCH_WORKERS at a time. Once one found this replica's
        disk full, no worker asks for another: the rest are NO_ROOM unasked (their bytes
        would not fit either). Before, every chunk of the batch was asked for, its bytes
        sent and a warning logged, at each try of the push or the new leader's catch-up
        (every 0.1 s: 368 'could not be stored' lines in 2 s of a random lab run)."""
        outcomes: dict[ChunkRef, Fetched] = {}
        todo = iter(refs)
        full = failed = False

        async def worker() -> None:
            nonlocal full, failed
            for ref in todo:
                if failed:
                    return  # the apply has failed: nothing more is asked for it
                outcome = Fetched.NO_ROOM
                if not full:
                    try:
                        outcome = await self._fetcher.fetch_outcome(ref, sources)
                    except BaseException:
                        failed = True
                        raise
                    full = outcome is Fetched.NO_ROOM or full
                outcomes[ref] = outcome

        try:
            await gatherResults([Deferred.fromCoroutine(worker())
                                 for _ in range(min(FETCH_WORKERS, len(refs)))],
                                consumeErrors=True)
        except FirstError as e:
            # The fetch's own error, not gatherResults' wrapper, which api/failures.py would
            # answer 500 with a traceback: a full disk is a 507, a cancelled push (its sender
            # gone) a cancellation.
            e.subFailure.raiseException()
        return outcomes

    async def _drop_deleted_chunks(self, ops: Sequence[Op]) -> None:
        keys = {op.key for op in ops if op.entity == "chunks" and op.fields.get("deleted")}
        if not keys:
            return
        gone = []
        for key in keys:
            song_id, idx = key.split("/")
            if await self._store.run(MetadataDB.chunk, song_id, int(idx)) is None:
                gone.append((song_id, int(idx)))
        await self._blocking(self._chunks.remove, gone)
