"""The replica's service tree: what build_replica assembles, the start-up order and its waits,
and a stop that goes in reverse, part after part, logging what fails and closing the database
last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.application import service
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from distpotify.config import ReplicaConfig
from distpotify.model import Op, Version
from distpotify.service import ReplicaService, build_replica, starting_epoch, thread_runner
from distpotify.store.metadata import MetadataDB
from tests.helpers.api import LoneLeader, run_now

SONG = "11111111-1111-4111-8111-111111111111"

FAILURE_TIMEOUT = 0.75


class Part(service.Service):
    """A child that records its start and stop in ``events``; ``stopping`` is what its
    stopService returns (or raises, if it is an exception)."""

    def __init__(self, events: list[str], name: str) -> None:
        self.events = events
        self.label = name
        self.stopping: Any = None

    def startService(self) -> None:
        super().startService()
        self.events.append(f"start {self.label}")

    def stopService(self) -> Any:
        super().stopService()
        self.events.append(f"stop {self.label}")
        if isinstance(self.stopping, Exception):
            raise self.stopping
        return self.stopping


class Cluster(Part):
    def __init__(self, events: list[str]) -> None:
        super().__init__(events, "cluster")
        self.refused = False
        self.listening: Deferred[None] | None = None

    def listen(self) -> Deferred[None]:
        self.events.append("listen cluster")
        self.listening = Deferred()
        return self.listening


class Replication(Part):
    def __init__(self, events: list[str]) -> None:
        super().__init__(events, "replication")
        self.joined: Deferred[None] = Deferred()

    async def become_active(self) -> None:
        self.events.append("become active")
        await self.joined


class Replica:
    def __init__(self, tmp_path: Path) -> None:
        self.events: list[str] = []

        def freeze() -> int:
            self.events.append("freeze")
            return 1

        self.reactor = MemoryReactorClock()
        self.parts = {name: Part(self.events, name) for name in ("database", "amp", "http")}
        self.cluster = Cluster(self.events)
        self.replication = Replication(self.events)
        self.service = ReplicaService(
            ReplicaConfig(node_id=1, data_dir=tmp_path, failure_timeout=FAILURE_TIMEOUT),
            self.reactor, database=self.parts["database"],  # type: ignore[arg-type]
            amp=self.parts["amp"], cluster=self.cluster,  # type: ignore[arg-type]
            http=self.parts["http"], replication=self.replication,  # type: ignore[arg-type]
            library=None, resource=None,  # type: ignore[arg-type]
            freeze=freeze,
        )

    def started(self) -> Replica:
        """Started through to its periodic jobs."""
        self.service.startService()
        assert self.cluster.listening is not None
        self.cluster.listening.callback(None)
        self.reactor.advance(FAILURE_TIMEOUT)
        self.replication.joined.callback(None)
        self.events.clear()
        return self


def test_start_up_binds_listens_for_one_failure_timeout_then_serves_and_joins(
    tmp_path: Path,
) -> None:
    replica = Replica(tmp_path)

    replica.service.startService()
    assert replica.events == ["start database", "listen cluster"]
    assert replica.cluster.listening is not None
    replica.cluster.listening.callback(None)  # the heartbeat port is bound
    assert replica.events[2:] == ["start amp", "start cluster"]
    replica.reactor.advance(FAILURE_TIMEOUT - 0.01)
    assert replica.events[4:] == []
    replica.reactor.advance(0.01)
    assert replica.events[4:] == ["start http", "become active"]
    replica.replication.joined.callback(None)

    # Started, what lives as long as the process leaves full garbage collections.
    assert replica.events[6:] == ["start replication", "freeze"]


def test_a_replica_whose_node_id_is_taken_never_serves(tmp_path: Path) -> None:
    replica = Replica(tmp_path)
    replica.service.startService()
    assert replica.cluster.listening is not None
    replica.cluster.listening.callback(None)

    replica.cluster.refused = True
    replica.reactor.advance(FAILURE_TIMEOUT)

    assert "start http" not in replica.events and "become active" not in replica.events


def test_a_failed_start_stops_the_process_with_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    replica = Replica(tmp_path)
    replica.service.startService()
    assert replica.cluster.listening is not None

    replica.cluster.listening.errback(OSError("no multicast on this interface"))

    assert replica.reactor.hasStopped
    assert "distpotify: cannot start: no multicast on this interface\n" in capfd.readouterr().err
    assert "start amp" not in replica.events


def test_stop_runs_in_reverse_each_part_after_the_one_started_after_it(tmp_path: Path) -> None:
    replica = Replica(tmp_path).started()
    http_stopping: Deferred[None] = Deferred()
    replica.parts["http"].stopping = http_stopping

    stopped = replica.service.stopService()
    assert replica.events == ["stop replication", "stop http"]
    http_stopping.callback(None)

    assert replica.events == ["stop replication", "stop http", "stop cluster", "stop amp",
                              "stop database"]
    assert stopped.called


def test_parts_that_fail_to_stop_are_logged_and_the_rest_still_stop(tmp_path: Path) -> None:
    replica = Replica(tmp_path).started()
    replica.parts["http"].stopping = RuntimeError("port gone")
    replica.cluster.stopping = fail(ValueError("still talking"))

    with capturedLogs() as events:
        stopped = replica.service.stopService()

    assert stopped.called and stopped.result is None
    assert replica.events[-1] == "stop database"
    failures = [e for e in events if e.get("log_failure") is not None]
    assert [(e["part"], e["log_failure"].type) for e in failures] == [
        ("http", RuntimeError), ("cluster", ValueError)]
    assert any("the http, cluster failed to stop" in e.get("failures", "") for e in events)


def test_stopping_during_start_up_ends_it_before_it_serves(tmp_path: Path) -> None:
    replica = Replica(tmp_path)
    replica.service.startService()
    assert replica.cluster.listening is not None
    replica.cluster.listening.callback(None)

    with capturedLogs() as events:
        stopped = replica.service.stopService()
        replica.reactor.advance(FAILURE_TIMEOUT)

    assert stopped.called and not replica.reactor.hasStopped
    assert "start http" not in replica.events
    assert replica.events[-5:] == ["stop replication", "stop http", "stop cluster", "stop amp",
                                   "stop database"]
    assert [e for e in events if e.get("log_failure") is not None] == []


def test_build_replica_assembles_the_tree_in_start_up_order(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    replica = build_replica(ReplicaConfig(node_id=3, data_dir=tmp_path), reactor,
                            run_db=run_now, blocking=run_now, leadership=LoneLeader())

    assert [part.name for part in replica] == ["database", "amp", "cluster", "http",
                                              "replication"]
    assert [job.name for job in replica.replication] == [
        "active-at record", "anti-entropy", "scrub", "purge", "oplog compaction",
        "cover repair"]
    replica.privilegedStartService()
    assert reactor.tcpServers == []  # no port is bound before its turn in startService


class InlinePool:
    """A thread pool that runs each call at once, recording it."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kw: Any) -> None:
        self.calls.append(f)
        on_result(True, f(*args, **kw))


class PoolReactor:
    def __init__(self) -> None:
        self.pool = InlinePool()

    def getThreadPool(self) -> InlinePool:
        return self.pool

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def test_blocking_work_runs_on_the_given_reactors_thread_pool() -> None:
    reactor = PoolReactor()

    done = thread_runner(reactor)(sorted, [3, 1, 2])

    assert reactor.pool.calls == [sorted]
    assert done.result == [1, 2, 3]


@pytest.mark.parametrize(("claimed", "expected"), [(None, 71), ("3", 71), ("80", 80)])
def test_a_replica_starts_from_its_last_claim_or_the_epoch_of_its_head_whichever_is_later(
    tmp_path: Path, claimed: str | None, expected: int,
) -> None:
    """A follower of leaders it never was holds writes of epochs it never claimed: its next
    claim must be above them (tests/integration/test_found_by_random_run.py)."""
    db = MetadataDB(tmp_path / "m.sqlite3", node_id=1)
    db.apply_ops([Op(Version(71, 2, 649), "playlists", SONG, {"name": "n", "deleted": 0})])
    if claimed is not None:
        db.set_meta("epoch", claimed)

    assert starting_epoch(db) == expected
