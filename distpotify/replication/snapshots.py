"""The leader's snapshots for joiners: built off the database thread, one at a time, shared by
every joiner that asks while it is fresh, and kept on disk while any joiner reads it.

A joiner asking while the build runs waits for it a moment, then gets 503 and asks again; its
retry waits for the same build, so no retry queues another one and a slow build never
outlasts a joiner's header timeout.
"""
# test-case-name: tests.unit.test_snapshots

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from distpotify.model import Version
from distpotify.replication.bootstrap import pack_snapshot
from distpotify.store.metadata import MetadataDB, MetadataStore, Runner
from distpotify.store.snapshot import backup_copy

log = Logger()

FRESH_FOR = 30.0  # seconds a snapshot is handed out after the head has moved past it


@attrs.define(eq=False)
class Build:
    """One snapshot file: being built until ``ready`` fires; ``readers`` are serving it."""

    path: Path
    ready: Deferred[None]
    version: Version | None = None
    size: int = 0
    finished: float | None = None
    error: str | None = None
    readers: int = 0


class SnapshotBuilds:
    def __init__(self, *, store: MetadataStore, tmp_dir: Path, blocking: Runner,
                 clock: IReactorTime, head: Callable[[], Version],
                 fresh_for: float = FRESH_FOR) -> None:
        self._store = store
        self._db_path = store.path
        self._tmp = tmp_dir
        self._blocking = blocking
        self._clock = clock
        self._head = head
        self._fresh_for = fresh_for
        self._current: Build | None = None
        self.built = 0

    async def acquire(self, wait: float) -> Build | None:
        """A finished snapshot to serve, counted as read until ``release``; None while the
        build it waits for is still running after ``wait`` seconds. Raises RuntimeError if
        the build failed (the next request starts another)."""
        build = self._current
        if build is None or build.error is not None or await self._stale(build):
            build = self._start()
        if build.finished is None:
            waiting: Deferred[None] = Deferred()
            build.ready.addBoth(_pass_to, waiting)
            waiting.addTimeout(wait, self._clock)
            try:
                await waiting
            except TimeoutError:
                return None
        if build.error is not None:
            raise RuntimeError(f"the snapshot could not be built: {build.error}")
        build.readers += 1
        return build

    def release(self, build: Build) -> None:
        """A reader is done; a superseded snapshot goes once nobody reads it."""
        build.readers -= 1
        if build is not self._current and build.readers == 0:
            build.path.unlink(missing_ok=True)

    async def _stale(self, build: Build) -> bool:
        """A finished snapshot is handed out while it holds the head, or for a while after,
        unless compaction has passed it: a joiner could not be caught up from it."""
        if build.finished is None or build.version == self._head():
            return False  # being built (whoever asks waits for it), or still the newest
        assert build.version is not None
        aged = self._clock.seconds() - build.finished > self._fresh_for
        return aged or build.version < await self._store.run(MetadataDB.oplog_floor)

    def _start(self) -> Build:
        previous = self._current
        build = Build(self._tmp / f"snapshot-{uuid.uuid4()}.sqlite3.gz", Deferred())
        self._current = build
        if previous is not None and previous.readers == 0:
            previous.path.unlink(missing_ok=True)
        Deferred.fromCoroutine(self._build(build)).addBoth(build.ready.callback)
        return build

    async def _build(self, build: Build) -> None:
        copy = build.path.with_suffix("")
        started = self._clock.seconds()
        try:
            build.version = await self._blocking(backup_copy, self._db_path, copy)
            await self._blocking(pack_snapshot, copy, build.path)
            build.size = build.path.stat().st_size
        except Exception as e:
            build.error = str(e) or type(e).__name__
            build.path.unlink(missing_ok=True)
            log.warn("snapshot build failed: {error}", error=build.error)
        else:
            self.built += 1
            log.info("snapshot of version {version} built: {size} bytes in {seconds:.1f} s",
                     version=build.version.encode(), size=build.size,
                     seconds=self._clock.seconds() - started)
        finally:
            copy.unlink(missing_ok=True)
            build.finished = self._clock.seconds()

    def stop(self) -> None:
        """Forget the current snapshot (its file goes once nobody reads it)."""
        current, self._current = self._current, None
        if current is not None and current.readers == 0:
            current.path.unlink(missing_ok=True)


def _pass_to(result: object, waiting: Deferred[None]) -> object:
    if not waiting.called:
        waiting.callback(None)
    return None if isinstance(result, Failure) else result
